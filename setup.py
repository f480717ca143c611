"""Build of the one compiled module, jetscan.core._fastsub (pyproject.toml holds the rest).

Compiled against the C++ headers shipped inside the installed scikit-hep ``fastjet`` wheel
and deliberately not linked to its libraries (no DT_NEEDED, no rpath into a build env):
jetscan.core.substructure preloads libfastjet / libfastjettools / libfastjetcontribfragile
from that wheel with RTLD_GLOBAL before importing the module. The wheel's libraries use
the C++11 std::string ABI (``[abi:cxx11]`` symbols), g++'s default; it is stated explicitly
below all the same, so a compiler configured otherwise still matches the wheel.

Build (needs setuptools, pybind11, numpy and fastjet==3.5.2.0 in the environment):
    pip install --no-build-isolation -e .
"""

import importlib.util
import os

import pybind11
from pybind11.setup_helpers import Pybind11Extension
from setuptools import setup


def _fastjet_include() -> str:
    spec = importlib.util.find_spec("fastjet")  # locate without importing (no awkward needed)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "building jetscan needs the `fastjet` package installed: pip install fastjet==3.5.2.0"
        )
    include = os.path.join(list(spec.submodule_search_locations)[0], "include")
    if not os.path.isfile(os.path.join(include, "fastjet", "contrib", "SoftDrop.hh")):
        raise RuntimeError(
            f"no fastjet-contrib headers under {include}: reinstall fastjet==3.5.2.0"
        )
    return include


setup(
    ext_modules=[
        Pybind11Extension(  # adds pybind11's include dir and -fvisibility=hidden
            "jetscan.core._fastsub",
            sources=["core/_fastsub.cpp"],
            include_dirs=[pybind11.get_include(), _fastjet_include()],
            cxx_std=17,
            extra_compile_args=["-O2", "-D_GLIBCXX_USE_CXX11_ABI=1"],
        )
    ],
)
