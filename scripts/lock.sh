#!/usr/bin/env bash
# Re-resolve requirements.lock from requirements.in.
# uv resolves in seconds but lists torch's CUDA wheels; this project installs the
# CPU torch with pip, so drop them (keep nvidia-ml-py: bentoml needs it).
set -euo pipefail
cd "$(dirname "$0")/.."
uv pip compile requirements.in --python-version 3.11 --no-header --no-annotate \
  | grep -vP '^(nvidia-(?!ml-py)|triton|cuda-)' > requirements.lock
echo "wrote requirements.lock ($(wc -l < requirements.lock) pins)"
