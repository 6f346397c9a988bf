#!/usr/bin/env bash
# Re-resolve requirements.lock from requirements.in, keeping the pins it has where they still fit
# (pass --upgrade to move everything to the newest releases).
# uv resolves in seconds but lists torch's CUDA wheels; this project installs the
# CPU torch with pip, so drop them (keep nvidia-ml-py: bentoml needs it).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp requirements.lock "$work/lock.txt"  # uv prefers the versions already in its output file
uv pip compile requirements.in --python-version 3.11 --no-header --no-annotate -o "$work/lock.txt" "$@" >/dev/null
grep -vP '^(nvidia-(?!ml-py)|triton|cuda-)' "$work/lock.txt" > requirements.lock
echo "wrote requirements.lock ($(wc -l < requirements.lock) pins)"
