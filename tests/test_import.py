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
