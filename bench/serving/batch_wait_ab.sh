#!/usr/bin/env bash
# A/B of serve.batch_wait (serving/batching.py): the service part of bench/serving/load_test.py, once with
# BentoML's adaptive wait and once with none. params.yaml is edited for each run and restored.
# Run after `dvc repro` and the gate:  bash bench/serving/batch_wait_ab.sh [--duration 120]
set -euo pipefail
cd "$(dirname "$0")/../.."
backup=$(mktemp)
cp params.yaml "$backup"
trap 'cp "$backup" params.yaml; rm -f "$backup"' EXIT
for mode in adaptive none; do
  sed -i "s/^  batch_wait: .*/  batch_wait: $mode/" params.yaml
  python -m bench.serving.load_test --skip-naive "$@"
  cp "$backup" params.yaml
done
