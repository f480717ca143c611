# jetscan: the two commands a newcomer needs are `make demo` and `make test`.
# Both create .venv at the repository root and install everything into it first.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.jetscan-installed
PYTEST_ARGS ?=

# torch: the CPU build on this machine's disk; a bare `torch` would pull a multi-GB CUDA build.
TORCH_PIN := torch==2.13.0
# pythia8mc 8.317.2 has a CPython 3.11 x86_64 wheel; 8.318.0 ships only source (an hour to build).
# Horovod 0.28.1 is built from its sdist with C++17 and gloo by cluster/build_horovod.sh, once:
# the wheel is cached in ~/.cache/jetscan/wheels (about 8 minutes on 2 cores the first time).
BUILD_DEPS := 'setuptools>=69' wheel 'pybind11>=2.12' numpy fastjet==3.5.2.0

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py Makefile core/_fastsub.cpp cluster/build_horovod.sh
	@command -v g++ >/dev/null 2>&1 || { echo "installing g++ (needed to build jetscan's C++ extension)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ procps; }
	@command -v pgrep >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq procps; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIN) $(BUILD_DEPS)
	$(BIN)/python -m pip install -q --no-build-isolation -e '.[test]'
	bash cluster/build_horovod.sh $(BIN)/python
	touch $(STAMP)

demo: install
	$(BIN)/jetscan run studies/quickstart.yaml

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/generation.py

clean:
	rm -rf $(VENV) out build *.egg-info
