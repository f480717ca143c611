"""jetscan.core does no I/O and never imports ray, dask or horovod; ``import jetscan`` is light."""

from __future__ import annotations

import subprocess
import sys

BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("ray", "dask", "distributed", "horovod"):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Block())
"""


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True, text=True)


def test_core_imports_with_ray_dask_horovod_blocked():
    code = """
import pkgutil, importlib, jetscan.core
# _fastsub is the compiled module: jetscan.core.substructure loads it after fastjet's libraries
names = [m.name for m in pkgutil.walk_packages(jetscan.core.__path__, "jetscan.core.") if not m.name.endswith("._fastsub")]
for name in names:
    importlib.import_module(name)
print(len(names))
"""
    out = run(code)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip().splitlines()[-1]) >= 15


def test_import_jetscan_starts_nothing_heavy():
    out = run("import jetscan, sys; print(sorted(m for m in ('torch', 'ray', 'zarr') if m in sys.modules))")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------ layering
import ast  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]  # the repository root is the package ``jetscan``


def _imported_modules(path: Path, root: Path = REPO) -> set[str]:
    """Every module ``path`` imports, anywhere in the file (top level, functions, ``TYPE_CHECKING``
    blocks), as absolute names; ``importlib.import_module("...")`` with a literal name counts."""
    package = ("jetscan",) + path.relative_to(root).with_suffix("").parts[:-1]  # a module's or __init__'s
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # from jetscan import jobs
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
    return found


def _violations(layers: tuple[str, ...], forbidden: tuple[str, ...], root: Path = REPO) -> list[str]:
    bad = []
    for layer in layers:
        for path in sorted((root / layer).rglob("*.py")):
            for module in sorted(_imported_modules(path, root)):
                if any(module == f or module.startswith(f + ".") for f in forbidden):
                    bad.append(f"{path.relative_to(root)} imports {module}")
    return bad


def test_the_import_walker_sees_function_level_and_relative_imports(tmp_path):
    # the checks below are only as good as this walker: it must see the imports they forbid
    pkg = tmp_path / "cluster"
    pkg.mkdir()
    f = pkg / "x.py"
    f.write_text(
        "import os\n"
        "def run():\n"
        "    from jetscan.jobs.train import train\n"
        "    from ..jobs import cli\n"
        "    import importlib\n"
        "    importlib.import_module('jetscan.jobs.evaluate')\n"
    )
    found = _imported_modules(f, tmp_path)
    assert {"os", "jetscan.jobs.train", "jetscan.jobs.cli", "jetscan.jobs.evaluate"} <= found
    assert _violations(("cluster",), ("jetscan.jobs",), tmp_path) == [
        "cluster/x.py imports jetscan.jobs",
        "cluster/x.py imports jetscan.jobs.cli",
        "cluster/x.py imports jetscan.jobs.evaluate",
        "cluster/x.py imports jetscan.jobs.train",
        "cluster/x.py imports jetscan.jobs.train.train",
    ]


@pytest.mark.parametrize(
    "layers, forbidden",
    [
        (("cluster", "storage", "core"), ("jetscan.jobs",)),  # a runner is handed what to run
        (("core",), ("jetscan.cluster", "jetscan.storage", "jetscan.jobs")),  # core: arrays in, arrays out
    ],
)
def test_imports_run_one_way(layers, forbidden):
    """jobs -> cluster / storage -> core: no module imports a layer above its own."""
    assert sum(1 for layer in layers for _ in (REPO / layer).rglob("*.py")) >= 10
    assert _violations(layers, forbidden) == []


# ------------------------------------------------------------------------ without torch
NO_TORCH = """
import sys
sys.modules["torch"] = None  # `import torch` raises ImportError, as on a machine without torch
"""


def test_model_names_are_checked_without_torch():
    code = NO_TORCH + f"""
from jetscan.core.errors import ConfigError
from jetscan.core.models import available_models
from jetscan.core.study import Study

study = Study.from_yaml({str(REPO / "studies" / "quickstart.yaml")!r})  # train.runs name five models
print(sorted(study.train.runs), available_models("autoencoder"))
data = study.model_dump(mode="json")
data["train"]["runs"]["pca"]["model"] = "pcaa"
try:
    Study.from_dict(data)
except ConfigError as exc:
    print(str(exc).splitlines()[-1].strip())
try:
    import jetscan.core.models as models
    models.build_model("pca")
except ImportError as exc:
    print("build_model:", type(exc).__name__)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "['cnn_ae', 'dense_ae', 'image_ae', 'pca', 'tagger'] ('cnn_ae', 'dense_ae', 'image_ae', 'lola_ae')",
        "train.runs.pca.model: unknown model 'pcaa'; models: cnn_ae, deeptop_minimal, dense_ae, image_ae, lola_ae, "
        "lola_tagger, macaluso_shih, pca (got 'pcaa')",
        "build_model: ModuleNotFoundError",  # torch is needed to build a model, not to check a study
    ]


@pytest.mark.slow
@pytest.mark.pythia
def test_jetscan_generate_runs_without_torch(tmp_path):
    """``jetscan generate`` on the quickstart study (its ``train.runs`` included), in a process
    that cannot import torch: the study is validated and 20 real QCD jets are generated."""
    import yaml

    study = yaml.safe_load((REPO / "studies" / "quickstart.yaml").read_text())
    study["store"] = str(tmp_path / "q.zarr")
    study["generation"] = {"shard_jets": 10}
    for sample in study["samples"].values():
        sample["n_jets"] = 20
    path = tmp_path / "quickstart.yaml"
    path.write_text(yaml.safe_dump(study))
    code = NO_TORCH + f"""
import runpy
sys.argv = ["jetscan", "generate", {str(path)!r}, "--no-ray", "--sample", "qcd"]
try:
    runpy.run_module("jetscan.jobs.cli", run_name="__main__")
finally:
    print("torch imported:", sys.modules.get("torch") is not None)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.splitlines()[-1] == "torch imported: False"
    from jetscan.storage import catalog

    rows = catalog.read_catalog(str(tmp_path / "q.zarr"), "qcd").to_pylist()
    assert [(r["start"], r["stop"], r["n_jets"]) for r in rows] == [(0, 10, 10), (10, 20, 10)]


def test_a_scan_is_planned_and_its_done_cells_found_without_torch(tmp_path):
    """The scan's driver plans every cell (their settings hashes included) and finds the cells
    already done without the training stack: importing torch there cost ~2.5 s of every scan's
    start-up (benchmarks/scan.py), and the driver never trains. Nor does reading jets need
    vector (which imports sympy, ~0.75 s of each worker's start-up): it is imported where a
    boost needs it."""
    code = NO_TORCH + f"""
from jetscan.core.study import Study
from jetscan.jobs.scan import _done_cells, plan_scan
import jetscan.core.representations, jetscan.storage.reader

study = Study.from_yaml({str(REPO / "studies" / "scan-contamination.yaml")!r})
data = study.model_dump(mode="json")
data["store"] = {str(tmp_path / "none.zarr")!r}
plan = plan_scan(Study.from_dict(data), "contamination")
print(len(plan["cells"]), len({{t["run"] for t in plan["trainings"]}}), sorted(_done_cells(plan)))
print("vector imported:", "vector" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    n_cells, n_runs, done = out.stdout.splitlines()[0].split(" ", 2)
    assert int(n_cells) == int(n_runs) >= 12 and done == "[]"  # 2 runs x 6 fractions x repeats, each its own run
    assert out.stdout.splitlines()[1] == "vector imported: False"
