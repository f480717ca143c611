#!/usr/bin/env bash
# Build (once) and install Horovod 0.28.1 with Gloo + PyTorch support into a Python environment.
#
#   usage: cluster/build_horovod.sh [PYTHON]        (default: .venv/bin/python of this repository)
#
# Why a script: 0.28.1 is Horovod's last release and it ships only an sdist whose CMake files pin
# C++14, while torch >= 2.1 headers need C++17 (upstream horovod PR 3998).  We download the
# sdist, raise the standard to C++17, build a wheel against the torch of the target Python and
# cache that wheel, so every later run is a quick `pip install --no-deps` of the cached wheel.
#
# Environment knobs:
#   JETSCAN_WHEEL_CACHE     wheel cache (default: $HOME/.cache/jetscan/wheels)
#   JETSCAN_BUILD_JOBS      parallel compile jobs (default: nproc)
#   JETSCAN_KEEP_BUILD=1    keep the unpacked/patched build tree (it is printed)
#   HOROVOD_*               any extra HOROVOD_* variable you export is passed to the build and
#                           becomes part of the cache key
#
# Framework flags chosen here: Gloo and PyTorch always; TensorFlow and MXNet never; MPI only when
# Open MPI is installed; NCCL (HOROVOD_GPU_OPERATIONS=NCCL) only when torch is a CUDA build and a
# CUDA toolkit is found.
set -Eeuo pipefail

readonly HOROVOD_VERSION=0.28.1
readonly HOROVOD_SDIST_SHA256=92a43f5a94c43907a56805bad15f19700c62ffc83b7ca483f9e104e229f67ef0
readonly CXX_STANDARD=17
# Bump when the patch or the build recipe below changes: it is part of the cache key.
readonly RECIPE_REVISION=1
# Runtime requirements of horovod (its setup.py require_list, plus cffi for the torch extension)
# and what a --no-build-isolation build of its setup.py needs.
readonly RUNTIME_REQS=("cloudpickle" "psutil" "pyyaml" "packaging" "cffi>=1.4.0")
readonly BUILD_REQS=("setuptools>=40.8" "wheel")

START_SECONDS=$SECONDS
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_ROOT="${JETSCAN_WHEEL_CACHE:-$HOME/.cache/jetscan/wheels}"
LOG_DIR="$CACHE_ROOT/logs"
mkdir -p "$LOG_DIR"
# keep the 20 newest logs
find "$LOG_DIR" -maxdepth 1 -name 'horovod-*.log' -printf '%T@ %p\n' 2>/dev/null | sort -rn |
    tail -n +20 | cut -d' ' -f2- | xargs -r rm -f --
LOG="$LOG_DIR/horovod-$HOROVOD_VERSION-$(date +%Y%m%d-%H%M%S)-$$.log"
: >"$LOG"
WORK=""
CURRENT_STEP="setup"

elapsed() {
    local s=$((SECONDS - START_SECONDS))
    printf '%dm%02ds' $((s / 60)) $((s % 60))
}

say() { printf 'build_horovod: %s\n' "$*"; printf '[%s] %s\n' "$(date +%T)" "$*" >>"$LOG"; }

# One line on stderr, full details in $LOG.
fail() {
    local reason="$1"
    trap - ERR
    # The first compiler/cmake/pip error line makes the one-line message actionable.
    local first_err
    # (CMake puts its message on the line after "CMake Error at ...", so take that one too.)
    first_err="$(awk '/(error:|Error:|CMake Error|ERROR:)/ && !hit { hit = 1; line = $0; next }
                      hit == 1 && NF { if (line ~ /CMake Error/) line = line " " $0; hit = 2 }
                      END { print line }' "$LOG" 2>/dev/null | tr -s ' \t' ' ' | cut -c1-240 || true)"
    [[ -n "$first_err" ]] && reason="$reason [first error: $first_err]"
    printf 'horovod build failed: %s; full log at %s\n' "$reason" "$LOG" >&2
    printf '[%s] FAILED: %s\n' "$(date +%T)" "$reason" >>"$LOG"
    exit 1
}
trap 'fail "unexpected error in step \"$CURRENT_STEP\" (line $LINENO)"' ERR

cleanup() {
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        if [[ "${JETSCAN_KEEP_BUILD:-0}" == 1 ]]; then
            echo "build_horovod: build tree kept at $WORK" >&2
        else
            rm -rf "$WORK"
        fi
    fi
}
trap cleanup EXIT

# run STEP-DESCRIPTION CMD...: run CMD with all output appended to $LOG; fail with one line.
run() {
    local what="$1"; shift
    CURRENT_STEP="$what"
    printf '[%s] $ %s\n' "$(date +%T)" "$*" >>"$LOG"
    local rc=0
    "$@" >>"$LOG" 2>&1 || rc=$?
    ((rc == 0)) || fail "$what (exit $rc)"
}

as_root() {
    if [[ $(id -u) == 0 ]]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
    else return 1
    fi
}

# ---------------------------------------------------------------------------------------------
# 0. the target Python and what it has
PY="${1:-$REPO_ROOT/.venv/bin/python}"
[[ "$PY" == */* ]] || PY="$(command -v "$PY" || echo "$PY")"
[[ -x "$PY" ]] || fail "python '$PY' not found or not executable"
# Absolute path, but do not resolve the venv's symlink (that would escape the venv).
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"
say "target python: $PY (log: $LOG)"

CURRENT_STEP="inspect python/torch"
if ! INFO="$("$PY" - 2>>"$LOG" <<'EOF'
import platform, sys, sysconfig
try:
    import torch
except Exception as e:  # noqa: BLE001
    print(f"ERROR torch is not importable: {e!r}")
    sys.exit(0)
print("TORCH", torch.__version__)
print("TORCH_CUDA", torch.version.cuda or "none")
print("TORCH_CXX11_ABI", int(torch.compiled_with_cxx11_abi()))
print("PYVER", f"{sys.implementation.name}{sys.version_info[0]}.{sys.version_info[1]}")
print("PLATFORM", sysconfig.get_platform())
print("LIBC", "-".join(platform.libc_ver()) or "unknown")
cuda_home = "none"
if torch.version.cuda:
    try:
        from torch.utils.cpp_extension import CUDA_HOME
        cuda_home = CUDA_HOME or "none"
    except Exception:  # noqa: BLE001
        pass
print("CUDA_HOME", cuda_home)
EOF
)"; then
    fail "could not run $PY"
fi
printf '%s\n' "$INFO" >>"$LOG"
if grep -q '^ERROR ' <<<"$INFO"; then fail "$(grep '^ERROR ' <<<"$INFO" | cut -d' ' -f2-) (python: $PY)"; fi
info() { awk -v k="$1" '$1 == k { $1 = ""; sub(/^ /, ""); print; exit }' <<<"$INFO"; }
TORCH_VERSION="$(info TORCH)"
TORCH_CUDA="$(info TORCH_CUDA)"
TORCH_ABI="$(info TORCH_CXX11_ABI)"
PYVER="$(info PYVER)"
PLATFORM="$(info PLATFORM)"
LIBC="$(info LIBC)"
CUDA_HOME_DIR="$(info CUDA_HOME)"

# ---------------------------------------------------------------------------------------------
# 1. build flags
if [[ "$TORCH_CUDA" != none && "$CUDA_HOME_DIR" != none ]]; then
    export HOROVOD_GPU_OPERATIONS="${HOROVOD_GPU_OPERATIONS:-NCCL}"
else
    # A CPU torch: no GPU operations, and keep CMake from picking up NVTX headers of a CUDA
    # toolkit that happens to be installed (that would add a pointless libdl/NVTX dependency).
    unset HOROVOD_GPU_OPERATIONS HOROVOD_GPU_ALLREDUCE HOROVOD_GPU_ALLGATHER HOROVOD_GPU_BROADCAST \
        HOROVOD_GPU_ALLTOALL HOROVOD_GPU_REDUCESCATTER HOROVOD_GPU
    export HOROVOD_WITHOUT_NVTX=1
fi
export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1
unset HOROVOD_WITHOUT_PYTORCH HOROVOD_WITHOUT_GLOO HOROVOD_WITH_TENSORFLOW HOROVOD_WITH_MXNET
if command -v ompi_info >/dev/null 2>&1 && command -v mpicxx >/dev/null 2>&1; then
    export HOROVOD_WITH_MPI=1; unset HOROVOD_WITHOUT_MPI
else
    export HOROVOD_WITHOUT_MPI=1; unset HOROVOD_WITH_MPI
fi
BUILD_FLAGS="$(env | grep -E '^HOROVOD_' | LC_ALL=C sort | tr '\n' ' ' | sed 's/ $//')"

# ---------------------------------------------------------------------------------------------
# 2. cache key
KEY_TEXT="horovod=$HOROVOD_VERSION recipe=$RECIPE_REVISION cxx=$CXX_STANDARD torch=$TORCH_VERSION"
KEY_TEXT+=" torch_cuda=$TORCH_CUDA cxx11abi=$TORCH_ABI python=$PYVER platform=$PLATFORM libc=$LIBC"
KEY_TEXT+=" flags=[$BUILD_FLAGS]"
KEY_HASH="$(printf '%s' "$KEY_TEXT" | sha256sum | cut -c1-16)"
KEY="horovod-$HOROVOD_VERSION-torch${TORCH_VERSION}-${PYVER}-${PLATFORM}-${KEY_HASH}"
KEY_DIR="$CACHE_ROOT/$KEY"
say "cache key: $KEY"
printf 'key text: %s\n' "$KEY_TEXT" >>"$LOG"

cached_wheel() { compgen -G "$KEY_DIR/horovod-$HOROVOD_VERSION-*.whl" | head -n1 || true; }

# Install missing requirements only (no network when everything is there already).
ensure_reqs() {
    local missing
    missing="$("$PY" - "$@" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
from packaging.requirements import Requirement
for spec in sys.argv[1:]:
    req = Requirement(spec)
    try:
        if version(req.name) not in req.specifier:
            print(spec)
    except PackageNotFoundError:
        print(spec)
EOF
)" || missing="$*"   # no `packaging` yet: let pip sort it out
    if [[ -n "$missing" ]]; then
        local -a pkgs
        mapfile -t pkgs <<<"$missing"
        say "installing into the target environment: ${pkgs[*]}"
        run "pip install ${pkgs[*]}" "$PY" -m pip install --disable-pip-version-check "${pkgs[@]}"
    fi
}

# The installed horovod came from exactly this cached wheel (pip records its file:// URL)?
installed_from() {
    "$PY" - "$1" <<'EOF' 2>/dev/null
import json, os, sys, urllib.parse, urllib.request
from importlib.metadata import distribution
d = distribution("horovod")
url = json.loads(d.read_text("direct_url.json") or "{}").get("url", "")
# pip records a local wheel as file:// + pathname2url(abspath(path))
sys.exit(0 if url == urllib.parse.urljoin("file:", urllib.request.pathname2url(os.path.abspath(sys.argv[1]))) else 1)
EOF
}

install_wheel() {
    local whl="$1"
    ensure_reqs "${RUNTIME_REQS[@]}"
    if installed_from "$whl"; then
        say "horovod $HOROVOD_VERSION from this cache entry is already installed"
    else
        run "pip install $(basename "$whl")" \
            "$PY" -m pip install --disable-pip-version-check --no-deps --force-reinstall "$whl"
    fi
}

# Concurrent runs for the same key wait for each other instead of building twice.
mkdir -p "$KEY_DIR"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$KEY_DIR/.lock"
    flock 9
fi

WHEEL="$(cached_wheel)"
if [[ -n "$WHEEL" ]]; then
    say "cache hit: $WHEEL"
    install_wheel "$WHEEL"
    say "done in $(elapsed) (cache hit)"
    exit 0
fi

# ---------------------------------------------------------------------------------------------
# 3. toolchain
say "cache miss: building horovod $HOROVOD_VERSION (flags: $BUILD_FLAGS)"
cmake_ok() {
    command -v cmake >/dev/null 2>&1 || return 1
    local v
    v="$(cmake --version | sed -n 's/^cmake version \([0-9][0-9.]*\).*/\1/p')"
    # horovod's setup.py wants >= 3.13 (otherwise it pip-installs a cmake of its own)
    [[ "$(printf '%s\n3.13.0\n' "$v" | sort -V | head -n1)" == 3.13.0 ]]
}
if ! cmake_ok || ! command -v g++ >/dev/null 2>&1 || ! command -v make >/dev/null 2>&1; then
    say "installing cmake/g++/make with apt-get"
    run "apt-get update" as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    run "apt-get install cmake g++ make" \
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake g++ make
    cmake_ok || fail "cmake >= 3.13 is still missing after apt-get install"
fi
printf 'cmake: %s\ng++: %s\n' "$(cmake --version | head -n1)" "$(g++ --version | head -n1)" >>"$LOG"

ensure_reqs "${BUILD_REQS[@]}" "${RUNTIME_REQS[@]}"

# ---------------------------------------------------------------------------------------------
# 4. sdist: download (cached next to the wheels), verify, unpack
SDIST_DIR="$CACHE_ROOT/sdist"
SDIST="$SDIST_DIR/horovod-$HOROVOD_VERSION.tar.gz"
mkdir -p "$SDIST_DIR"
if [[ ! -f "$SDIST" ]] || ! echo "$HOROVOD_SDIST_SHA256  $SDIST" | sha256sum -c --status; then
    rm -f "$SDIST"
    say "downloading the horovod $HOROVOD_VERSION sdist"
    run "pip download horovod==$HOROVOD_VERSION sdist" \
        "$PY" -m pip download --disable-pip-version-check --no-deps --no-binary :all: \
        "horovod==$HOROVOD_VERSION" -d "$SDIST_DIR"
    [[ -f "$SDIST" ]] || fail "pip download did not produce $SDIST"
    echo "$HOROVOD_SDIST_SHA256  $SDIST" | sha256sum -c --status ||
        fail "sha256 of $SDIST is not the expected $HOROVOD_SDIST_SHA256"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/horovod-build.XXXXXX")"
run "unpack sdist" tar -xzf "$SDIST" -C "$WORK"
SRC="$WORK/horovod-$HOROVOD_VERSION"

# ---------------------------------------------------------------------------------------------
# 5. patch C++14 -> C++17 in horovod's own build files (third_party/ is vendored code that is
#    either not built here or built with its own standard: gloo is compiled with the top-level
#    CMAKE_CXX_STANDARD, which overrides its -std=c++11).
CURRENT_STEP="patch C++ standard"
cd "$SRC"
CXX14_RE='CMAKE_CXX_STANDARD[[:space:]]+14|-std=(c|gnu)\+\+14|cxx_std_14|CXX_STANDARD[[:space:]]+14'
find_cxx14() {
    grep -rnE "$CXX14_RE" --exclude-dir=third_party \
        --include=CMakeLists.txt --include='*.cmake' --include='*.py' . || true
}
BEFORE="$(find_cxx14)"
printf 'C++14 occurrences before patching:\n%s\n' "$BEFORE" >>"$LOG"
[[ -n "$BEFORE" ]] || fail "no C++14 setting found in the sdist: its layout changed, review the patch"
while IFS= read -r f; do
    sed -i -E \
        -e "s/CMAKE_CXX_STANDARD([[:space:]]+)14/CMAKE_CXX_STANDARD\\1$CXX_STANDARD/g" \
        -e "s/CXX_STANDARD([[:space:]]+)14/CXX_STANDARD\\1$CXX_STANDARD/g" \
        -e "s/-std=(c|gnu)\\+\\+14/-std=\\1++$CXX_STANDARD/g" \
        -e "s/cxx_std_14/cxx_std_$CXX_STANDARD/g" \
        "$f"
done < <(cut -d: -f1 <<<"$BEFORE" | sed 's|^\./||' | sort -u)
AFTER="$(find_cxx14)"
[[ -z "$AFTER" ]] || fail "C++14 still set after patching: $(tr '\n' ' ' <<<"$AFTER")"
for f in CMakeLists.txt horovod/torch/CMakeLists.txt; do
    grep -qE "CMAKE_CXX_STANDARD[[:space:]]+$CXX_STANDARD" "$f" ||
        fail "$f does not set CMAKE_CXX_STANDARD $CXX_STANDARD after patching"
done
printf 'after patching:\n%s\n' "$(grep -rnE "CMAKE_CXX_STANDARD[[:space:]]+[0-9]+" \
    --exclude-dir=third_party --include=CMakeLists.txt .)" >>"$LOG"
say "patched C++14 -> C++$CXX_STANDARD in: $(cut -d: -f1,2 <<<"$BEFORE" | sed 's|^\./||' | tr '\n' ' ')"

# ---------------------------------------------------------------------------------------------
# 6. build the wheel (torch must be importable by CMake's python, hence no build isolation)
JOBS="${JETSCAN_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}"
export MAKEFLAGS="-j$JOBS"
say "compiling with $MAKEFLAGS (several minutes; progress in $LOG)"
BUILD_START=$SECONDS
run "pip wheel (cmake + compile)" \
    "$PY" -m pip wheel --disable-pip-version-check -v --no-deps --no-build-isolation \
    --wheel-dir "$WORK/dist" .
cd "$REPO_ROOT"
BUILT="$(compgen -G "$WORK/dist/horovod-$HOROVOD_VERSION-*.whl" | head -n1 || true)"
[[ -n "$BUILT" ]] || fail "pip wheel finished but left no horovod wheel in $WORK/dist"
say "compiled in $(( (SECONDS - BUILD_START) / 60 ))m$(( (SECONDS - BUILD_START) % 60 ))s"

# Sanity: the torch extension really was compiled as C++$CXX_STANDARD and Gloo is in the wheel.
FLAGS_MAKE="$(find "$SRC/build" -path '*pytorch.dir/flags.make' 2>/dev/null | head -n1 || true)"
if [[ -n "$FLAGS_MAKE" ]] && ! grep -q -- "-std=\(c\|gnu\)++$CXX_STANDARD" "$FLAGS_MAKE"; then
    fail "the torch extension was not compiled with -std=c++$CXX_STANDARD (see $FLAGS_MAKE)"
fi
CURRENT_STEP="inspect wheel"
"$PY" - "$BUILT" >>"$LOG" 2>&1 <<'EOF' || fail "the built wheel lacks horovod/torch/mpi_lib_v2 or metadata.json"
import json, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
names = z.namelist()
assert any(n.startswith("horovod/torch/mpi_lib_v2") and n.endswith(".so") for n in names), "no torch lib"
meta = json.loads(z.read("horovod/metadata.json"))
print("wheel metadata.json:", meta)
EOF

# ---------------------------------------------------------------------------------------------
# 7. store (atomically) and install
CURRENT_STEP="store wheel in cache"
cp "$BUILT" "$KEY_DIR/.$(basename "$BUILT").tmp"
printf '%s\n' "$KEY_TEXT" >"$KEY_DIR/key.txt"
cp "$LOG" "$KEY_DIR/build.log"
mv "$KEY_DIR/.$(basename "$BUILT").tmp" "$KEY_DIR/$(basename "$BUILT")"
WHEEL="$KEY_DIR/$(basename "$BUILT")"
say "cached $WHEEL ($(du -h "$WHEEL" | cut -f1))"
install_wheel "$WHEEL"
say "done in $(elapsed) (built from source)"
