"""The CLI's messages reach the user verbatim and whole.

``jetscan`` prints through rich, which reads square brackets as markup and folds lines at 80
columns when stderr is not a terminal (a Slurm log, ``nohup ... > log``). So an error's fix
``pip install 'ray[default]'`` printed as ``pip install 'ray'``, a message naming ``[qcd, top]``
lost it, one holding ``[/tmp/x]`` raised a MarkupError instead of the error, and long lines came
out broken in log files.
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
