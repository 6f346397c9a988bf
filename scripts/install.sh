#!/usr/bin/env bash
# Install the pinned dependency set into .venv (or the interpreter in $VENV).
# torch goes first with plain pip so that it takes the CPU wheel; the lock then
# installs with --no-deps, so pip never backtracks or pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
quiet() { { grep -v "is ignored: it is neither" || true; }; }  # this machine's pip config lists absent local indexes
"${pip[@]}" install torch==2.13.0 2>&1 | quiet
"${pip[@]}" install --no-deps -r requirements.lock 2>&1 | quiet
"${pip[@]}" check
# DVC's analytics child crashes offline and litters /tmp (STACK_NOTES.md).
if [ -d .dvc ]; then
  "$venv/bin/dvc" config core.analytics false
  "$venv/bin/dvc" config core.check_update false
fi
echo "installed into $venv; activate with: source $venv/bin/activate"
