#!/usr/bin/env bash
# Creates or refreshes .venv with the locked environment (requirements.lock) and this package, editable.
# The lock is complete (every transitive pin; mysqlclient dropped by overrides.txt), hence --no-deps.
# Idempotent, no root needed; a no-op when the lock has not changed. Downloads only from PyPI.
# The lock also pins pip and setuptools: the old copies a new venv gets from the interpreter (ensurepip; known
# CVEs) are replaced by the locked versions (tests/unit/test_bootstrap.py checks .venv against the lock).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-}
if [ -z "$python" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      python=$candidate
      break
    fi
  done
fi
[ -n "$python" ] || { echo "bootstrap: Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

[ -x .venv/bin/python ] || "$python" -m venv .venv
[ -x .venv/bin/uv ] || .venv/bin/python -m pip install --quiet --disable-pip-version-check "uv==0.13.9"

want=$(cat requirements.lock setup.cfg | sha256sum | cut -c1-16)
if [ "$(cat .venv/.jobmon-lock 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing the locked environment into .venv"
  export UV_PYTHON_DOWNLOADS=never
  # Trust the system's CA store, as pip does: uv's bundled roots miss a site's own CA (TLS-inspecting proxies).
  export UV_NATIVE_TLS="${UV_NATIVE_TLS:-1}"
  .venv/bin/uv pip install --quiet --python .venv/bin/python --compile-bytecode --no-deps -r requirements.lock
  .venv/bin/uv pip install --quiet --python .venv/bin/python --no-deps -e .
  echo "$want" > .venv/.jobmon-lock
fi
