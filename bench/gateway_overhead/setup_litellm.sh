#!/usr/bin/env bash
# Install LiteLLM's proxy into its own virtualenv, for the gateway_overhead benchmark.
# Usage: bash bench/gateway_overhead/setup_litellm.sh [VENV_DIR]   (default: /tmp/litellm-venv,
# or $LITELLM_VENV). The version is pinned exactly on purpose: some LiteLLM releases on PyPI
# were compromised, so never loosen this pin without checking the release.
set -euo pipefail
VENV="${1:-${LITELLM_VENV:-/tmp/litellm-venv}}"
LITELLM_VERSION="1.106.2"
PY="${PYTHON:-python3}"

if [ -x "$VENV/bin/litellm" ] && "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(0 if m.version('litellm') == '$LITELLM_VERSION' else 1)" 2>/dev/null; then
  echo "litellm $LITELLM_VERSION already installed in $VENV"
  exit 0
fi

"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "litellm[proxy]==${LITELLM_VERSION}"
"$VENV/bin/litellm" --version || true
echo "litellm $LITELLM_VERSION installed in $VENV"
