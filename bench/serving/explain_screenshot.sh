#!/usr/bin/env bash
# /explain/view in a real browser: `bentoml serve` (registry mode, the champion of the store in use), then
# headless Chromium takes a screenshot of the page for a text, for a person to check the shading reads.
# Needs: a `dvc repro` and a gate run on the store (MLFLOW_TRACKING_URI or mlflow/), Debian's chromium.
# Run: bash bench/serving/explain_screenshot.sh [out.png] [text]
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-bench/results/screenshots/explain.png}
text=${2:-"the acting is wonderful , but the plot is a dull , lifeless mess ."}
port=${PORT:-3077}
command -v chromium >/dev/null || { echo "chromium not installed (apt-get install chromium)"; exit 1; }
export BENTOML_HOME=${BENTOML_HOME:-$(mktemp -d)} BENTOML_DO_NOT_TRACK=true HF_HUB_OFFLINE=1
bentoml serve --host 127.0.0.1 --port "$port" > /tmp/explain-serve.log 2>&1 &
server=$!
trap 'kill -- -$server 2>/dev/null || kill $server 2>/dev/null; pkill -f "bentoml serve --host 127.0.0.1 --port $port" 2>/dev/null || true' EXIT
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 1; done
url="http://127.0.0.1:$port/explain/view?text=$(python -c 'import sys, urllib.parse; print(urllib.parse.quote_plus(sys.argv[1]))' "$text")"
curl -sf "$url" > /dev/null  # fails the script if the page does not answer 200
mkdir -p "$(dirname "$out")"
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$(mktemp -d)" --window-size=1200,800 \
  --screenshot="$out" "$url" 2>/dev/null
echo "$out <- $url"
