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
# Slurm 22.05 (slurm-wlm: slurmctld, slurmd, srun, ...) and munge, from Debian, for the srun tests
# (tests/cluster/test_slurm.py starts its own daemons): installed only as root where apt-get exists;
# elsewhere (or if apt-get fails) the Slurm tests skip, saying why.
# PostgreSQL (Debian's postgresql: initdb, pg_ctl) likewise, for the search test against a real server.
BUILD_DEPS := 'setuptools>=69' wheel 'pybind11>=2.12' numpy fastjet==3.5.2.0

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py Makefile core/_fastsub.cpp cluster/build_horovod.sh
	@command -v g++ >/dev/null 2>&1 || { echo "installing g++ (needed to build jetscan's C++ extension)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ procps; }
	@command -v pgrep >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq procps; }
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  ! { command -v srun && [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmd ] && [ -x /usr/sbin/munged ]; } >/dev/null 2>&1; then \
	  echo "installing slurm-wlm and munge (for the Slurm tests)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge; } || \
	  echo "warning: could not install slurm-wlm / munge: the Slurm tests will be skipped"; fi
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "installing postgresql (the search tests start a real server for Optuna's RDB storage)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql; } || \
	  echo "warning: could not install postgresql: the PostgreSQL search test will be skipped"; fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIN) $(BUILD_DEPS)
	$(BIN)/python -m pip install -q --no-build-isolation -e '.[test]'
	bash cluster/build_horovod.sh $(BIN)/python
	touch $(STAMP)

demo: install
	$(BIN)/jetscan run studies/quickstart.yaml

# `make test` runs the Slurm tests in a second pytest beside the others: they spend much of their
# time waiting on Slurm (a requeued job may start again only after its 30 s credential lifetime)
# and on job start-up, so the two share the cores well. Their output follows the others'.
# `make test PYTEST_ARGS=...` runs one pytest with those arguments.
SLURM_TESTS := tests/cluster/test_submit.py tests/cluster/test_scan_slurm.py tests/cluster/test_slurm.py
SLURM_LOG   := .pytest-slurm.log

test: install
ifeq ($(strip $(PYTEST_ARGS)),)
	@$(BIN)/python -m pytest -p no:cacheprovider --basetemp=/tmp/jetscan-pytest-slurm $(SLURM_TESTS) > $(SLURM_LOG) 2>&1 & slurm=$$!; \
	trap 'kill $$slurm 2>/dev/null' INT TERM; \
	$(BIN)/python -m pytest $(addprefix --ignore=,$(SLURM_TESTS)); rest=$$?; \
	wait $$slurm; slurm_rc=$$?; \
	echo "======== the Slurm tests (run beside the others above): $(SLURM_TESTS)"; cat $(SLURM_LOG); \
	echo "make test: exit $$rest (the others), $$slurm_rc (the Slurm tests)"; \
	[ $$rest -eq 0 ] && [ $$slurm_rc -eq 0 ]
else
	$(BIN)/python -m pytest $(PYTEST_ARGS)
endif

bench: install
	$(BIN)/python benchmarks/generation.py

clean:
	rm -rf $(VENV) out build *.egg-info
