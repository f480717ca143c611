"""The CLI's messages reach the user verbatim and whole.

``jetscan`` prints through rich, which reads square brackets as markup and folds lines at 80
columns when stderr is not a terminal (a Slurm log, ``nohup ... > log``). So an error's fix
``pip install 'ray[default]'`` printed as ``pip install 'ray'``, a message naming ``[qcd, top]``
lost it, one holding ``[/tmp/x]`` raised a MarkupError instead of the error, and long lines came
out broken in log files. A stopped ``jetscan train`` counts its epochs as ``jetscan reproduce``
does, from 1.
"""

from __future__ import annotations

import pytest

from jetscan.core.errors import ConfigError


def test_an_error_prints_verbatim_on_one_line(monkeypatch, capsys):
    import jetscan.jobs.cli as cli

    message = ("samples [qcd, top] of runs[tagger] read /tmp/x/[/scratch/run]/store.zarr, which is missing: "
               "pip install 'ray[default]' or pass --store PATH")
    assert len(message) > 80

    def app() -> None:
        raise ConfigError(message)

    monkeypatch.setattr(cli, "app", app)
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"error: {message}\n" in err, err


def test_a_stopped_train_counts_its_epochs_from_one_as_reproduce_does(monkeypatch):
    """``jetscan train`` stopped on request after its third epoch says "after epoch 3", the line
    ``jetscan reproduce`` prints; it said "after epoch 2" (the summary's 0-based index)."""
    from typer.testing import CliRunner

    import jetscan.jobs.train as train_module
    from jetscan.cluster import preempt
    from jetscan.jobs.cli import app
    from jetscan.jobs.reproduce import preset_path

    monkeypatch.setattr(train_module, "train", lambda study, run, **kw: {"run": run, "stopped_after_epoch": 2, "preempted": True})
    result = CliRunner().invoke(app, ["train", str(preset_path("quickstart")), "--model", "dense_ae"], catch_exceptions=False)
    assert result.exit_code == preempt.PREEMPTED_EXIT, result.output
    assert "dense_ae: stopped on request after epoch 3 (checkpoint written); the next call resumes it\n" in result.output
