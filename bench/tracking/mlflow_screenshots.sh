#!/usr/bin/env bash
# Screenshots of the MLflow UI (run page, registered-model page) in headless Chromium, for a person
# to check that the run shows params, curves, metrics and artifacts and the model its aliases.
# Needs: a `dvc repro` and a gate run on the default store, and Debian's chromium (apt-get install chromium).
# Run: bash bench/tracking/mlflow_screenshots.sh [out_dir]   -> out_dir/{run,model}.png
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-bench/results/screenshots}
port=${PORT:-5077}
mkdir -p "$out"
command -v chromium >/dev/null || { echo "chromium not installed (apt-get install chromium)"; exit 1; }
bash mlflow/ui.sh "$port" > /tmp/mlflow-ui.log 2>&1 &
ui=$!
trap 'kill $ui 2>/dev/null; pkill -f "mlflow server --host 127.0.0.1 --port $port" 2>/dev/null || true' EXIT
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 1; done
ids=$(MLFLOW_TRACKING_URI="sqlite:///$PWD/mlflow/db/mlflow.db" python - <<'PY'
import mlflow
c = mlflow.MlflowClient()
v = c.get_model_version_by_alias("sentiment-classifier", "champion")
exp = c.get_run(v.run_id).info.experiment_id
print(exp, v.run_id)
PY
)
read -r exp run <<<"$ids"
shot() {  # url file
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --user-data-dir="$(mktemp -d)" --window-size=1400,1000 \
    --run-all-compositor-stages-before-draw --virtual-time-budget=${BUDGET_MS:-60000} --screenshot="$2" "$1" 2>/dev/null
  echo "$2 <- $1"
}
base="http://127.0.0.1:$port/#"
shot "$base/experiments/$exp/runs/$run" "$out/run.png"
shot "$base/experiments/$exp/runs/$run/model-metrics" "$out/run_metrics.png"
enc() { python -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1"; }
q="runs=$(enc "[\"$run\"]")&metric=$(enc '"train_loss"')&experiments=$(enc "[\"$exp\"]")"
q="$q&plot_metric_keys=$(enc '["train_loss","learning_rate","eval_accuracy"]')&plot_layout=$(enc '{}')&x_axis=step"
q="$q&y_axis_scale=linear&line_smoothness=1&show_point=false&deselected_curves=$(enc '[]')&last_linear_y_axis_range=$(enc '[]')"
shot "$base/metric/train_loss?$q" "$out/run_curve.png"
shot "$base/experiments/$exp/runs/$run/artifacts" "$out/run_artifacts.png"
shot "$base/models/sentiment-classifier" "$out/model.png"
