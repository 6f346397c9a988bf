#!/usr/bin/env bash
# Open the MLflow UI on the default local store (mlflow/db + mlflow/artifacts), bound to 127.0.0.1.
# One worker and no job runner: the full `mlflow ui` starts ~12 processes and 2 GB (STACK_NOTES.md).
set -euo pipefail
cd "$(dirname "$0")/.."
port=${1:-5000}
export MLFLOW_DISABLE_TELEMETRY=true MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
mkdir -p mlflow/db mlflow/artifacts
exec mlflow server --host 127.0.0.1 --port "$port" --workers 1 \
  --backend-store-uri "sqlite:///$PWD/mlflow/db/mlflow.db" \
  --default-artifact-root "$PWD/mlflow/artifacts" --serve-artifacts
