#!/usr/bin/env bash
# The team stack on one machine, on 127.0.0.1: PostgreSQL, an S3 server (moto's server mode), the MLflow
# server on both (registry in PostgreSQL, artifacts in the bucket), the Prefect server and a process worker.
# Data, logs and pid files live in one folder, $TEXTOPS_STACK_DIR (default .stack/, git-ignored).
#
#   bash scripts/stack.sh up [service...]       start (all, or the named ones and what they need); idempotent
#   bash scripts/stack.sh status [service...]   running or not, with the address
#   bash scripts/stack.sh env                   the client settings: eval "$(bash scripts/stack.sh env)"
#   bash scripts/stack.sh down [service...]     stop (data kept)
#   bash scripts/stack.sh destroy               stop everything and delete the folder
#
# Services: postgres s3 mlflow prefect worker. Ports from TEXTOPS_{PG,S3,MLFLOW,PREFECT}_PORT (defaults
# 15432 9000 5050 4200). The same client settings point at managed services instead: docs/team.md.
# moto keeps its buckets in memory: `down s3` loses them (a local stand-in for S3 or MinIO, not storage).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(realpath -m "${TEXTOPS_STACK_DIR:-.stack}")
pg_port=${TEXTOPS_PG_PORT:-15432}
s3_port=${TEXTOPS_S3_PORT:-9000}
mlflow_port=${TEXTOPS_MLFLOW_PORT:-5050}
prefect_port=${TEXTOPS_PREFECT_PORT:-4200}
bucket=${TEXTOPS_BUCKET:-textops}
pool=${TEXTOPS_WORK_POOL:-textops}
bin=$(dirname "$(command -v python)")  # the project's venv when activated; prefect, mlflow and moto_server live there
all=(postgres s3 mlflow prefect worker)
# Debian puts initdb and pg_ctl in PostgreSQL's own folder, not on PATH.
for pg_bin in /usr/lib/postgresql/*/bin; do [ -d "$pg_bin" ] && PATH="$PATH:$pg_bin"; done

# What a client needs (also written to $dir/env). The S3 keys are placeholders: moto accepts any, and with
# AWS_ENDPOINT_URL set every S3 call goes to it, so real keys in the caller's shell are neither needed nor written.
client_env() {
  cat <<EOF
export MLFLOW_TRACKING_URI=http://127.0.0.1:$mlflow_port
export PREFECT_API_URL=http://127.0.0.1:$prefect_port/api
export AWS_ENDPOINT_URL=http://127.0.0.1:$s3_port
export AWS_ACCESS_KEY_ID=stack
export AWS_SECRET_ACCESS_KEY=stack
export AWS_DEFAULT_REGION=us-east-1
EOF
}
eval "$(client_env)"

as_postgres() {  # PostgreSQL refuses to run as root (STACK_NOTES.md)
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_dir() {
  # As root the data folder belongs to `postgres`, which must reach it: a folder under a private one
  # (pytest's tmp_path) is linked from /tmp instead.
  if [ -L "$dir/postgres" ] || [ -d "$dir/postgres" ]; then realpath "$dir/postgres"; return; fi
  if [ "$(id -u)" = 0 ] && ! runuser -u postgres -- test -x "$dir"; then
    local real
    real=$(mktemp -d /tmp/textops-postgres.XXXXXX)
    ln -s "$real" "$dir/postgres"
  else
    mkdir -p "$dir/postgres"
  fi
  realpath "$dir/postgres"
}

alive() { [ -f "$dir/$1.pid" ] && kill -0 "$(cat "$dir/$1.pid")" 2>/dev/null; }

address() {
  case $1 in
    postgres) echo "postgresql://mlflow@127.0.0.1:$pg_port/mlflow" ;;
    s3) echo "$AWS_ENDPOINT_URL (bucket $bucket)" ;;
    mlflow) echo "$MLFLOW_TRACKING_URI" ;;
    prefect) echo "$PREFECT_API_URL" ;;
    worker) echo "work pool $pool" ;;
  esac
}

wait_until() {  # wait_until NAME SECONDS COMMAND...: poll COMMAND until it succeeds
  local name=$1 limit=$2
  shift 2
  for _ in $(seq $((limit * 4))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    if [ "$name" != postgres ] && ! alive "$name"; then
      echo "$name exited; the end of $dir/$name.log:" >&2
      tail -20 "$dir/$name.log" >&2
      return 1
    fi
    sleep 0.25
  done
  echo "$name not ready after $limit s; the end of $dir/$name.log:" >&2
  tail -20 "$dir/$name.log" >&2
  return 1
}

spawn() {  # spawn NAME COMMAND...: in its own session (down stops the whole group), logging to NAME.log
  local name=$1
  shift
  setsid "$@" >"$dir/$name.log" 2>&1 </dev/null &
  echo $! >"$dir/$name.pid"
}

start_postgres() {
  local data
  data=$(pg_dir)
  if [ "$(id -u)" = 0 ]; then chown postgres "$data"; fi
  if [ ! -f "$data/PG_VERSION" ]; then
    as_postgres initdb -D "$data" -A trust -U mlflow >"$dir/postgres.log" 2>&1
  fi
  as_postgres pg_ctl -D "$data" -w -l "$data/server.log" \
    -o "-p $pg_port -k $data -c listen_addresses=127.0.0.1" start >>"$dir/postgres.log" 2>&1
  wait_until postgres 30 pg_isready -h 127.0.0.1 -p "$pg_port"
  head -1 "$data/postmaster.pid" >"$dir/postgres.pid"
  for db in mlflow; do
    psql -h 127.0.0.1 -p "$pg_port" -U mlflow -d postgres -tAc "select 1 from pg_database where datname='$db'" |
      grep -q 1 || createdb -h 127.0.0.1 -p "$pg_port" -U mlflow "$db"
  done
}

start_s3() {
  spawn s3 "$bin/moto_server" -H 127.0.0.1 -p "$s3_port"
  wait_until s3 30 curl -sf "$AWS_ENDPOINT_URL/moto-api/"
  "$bin/python" - "$bucket" <<'EOF'
import sys, boto3
s3 = boto3.client("s3")
if sys.argv[1] not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
    s3.create_bucket(Bucket=sys.argv[1])
EOF
}

start_mlflow() {
  # One worker and no job runner (STACK_NOTES.md). Artifacts go through the server (--artifacts-destination),
  # so clients need only MLFLOW_TRACKING_URI. Webhooks to this machine's services need plain http to a private
  # address, which MLflow refuses by default: allowed here for 127.0.0.1 only (docs/team.md for real servers).
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_S3_ENDPOINT_URL=$AWS_ENDPOINT_URL \
    MLFLOW_WEBHOOK_ALLOWED_SCHEMES=${MLFLOW_WEBHOOK_ALLOWED_SCHEMES:-http,https} \
    MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=${MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS:-true} \
    MLFLOW_WEBHOOK_CACHE_TTL=${MLFLOW_WEBHOOK_CACHE_TTL:-5} \
    MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY=${MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY:-$(cat "$dir/webhook.key")} \
    spawn mlflow "$bin/mlflow" server --host 127.0.0.1 --port "$mlflow_port" --workers 1 \
    --backend-store-uri "postgresql://mlflow@127.0.0.1:$pg_port/mlflow" \
    --artifacts-destination "s3://$bucket/mlflow"
  wait_until mlflow 90 curl -sf "$MLFLOW_TRACKING_URI/health"
}

start_prefect() {
  PREFECT_HOME="$dir/prefect" PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 \
    PREFECT_SERVER_API_HOST=127.0.0.1 PREFECT_SERVER_API_PORT="$prefect_port" \
    spawn prefect "$bin/prefect" server start --host 127.0.0.1 --port "$prefect_port"
  wait_until prefect 120 curl -sf "$PREFECT_API_URL/health"
}

start_worker() {
  # A process worker runs each flow run in a child process of its own, in the deployment's folder
  # (pipelines/deploy.py). The pool's queue concurrency (set there) is what keeps runs from overlapping.
  # Its runs track to the stack's MLflow server when that runs, else to each workspace's own store.
  local tracking=(-u MLFLOW_TRACKING_URI)
  if alive mlflow; then tracking=("MLFLOW_TRACKING_URI=$MLFLOW_TRACKING_URI"); fi
  PREFECT_HOME="$dir/prefect" spawn worker env "${tracking[@]}" "$bin/prefect" worker start --pool "$pool" --type process
  wait_until worker 60 grep -q "started" "$dir/worker.log"
}

needs() {
  case $1 in
    mlflow) echo postgres s3 mlflow ;;
    worker) echo prefect worker ;;
    *) echo "$1" ;;
  esac
}

up() {
  mkdir -p "$dir"
  [ -f "$dir/webhook.key" ] || "$bin/python" -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())" >"$dir/webhook.key"  # encrypts webhook secrets at rest
  local wanted=() s
  for s in "${@:-${all[@]}}"; do read -ra more <<<"$(needs "$s")"; wanted+=("${more[@]}"); done
  for s in "${all[@]}"; do
    [[ " ${wanted[*]} " == *" $s "* ]] || continue
    if alive "$s"; then echo "$s: already running"; continue; fi
    "start_$s"
    echo "$s: up, $(address "$s")"
  done
  client_env >"$dir/env"
  echo "client settings: eval \"\$(bash scripts/stack.sh env)\"  (or source $dir/env)"
}

stop_one() {
  local s=$1
  if [ "$s" = postgres ]; then
    if [ -e "$dir/postgres/PG_VERSION" ] && alive postgres; then
      as_postgres pg_ctl -D "$(realpath "$dir/postgres")" -m fast -w stop >/dev/null
    fi
  elif alive "$s"; then
    local pid group
    pid=$(cat "$dir/$s.pid")
    # The worker's flow runs have sessions of their own: SIGTERM each first (a flow stops its stage on it).
    local groups=("$pid" $(pgrep -P "$pid" || true))
    for group in "${groups[@]}"; do kill -TERM -- "-$group" 2>/dev/null || true; done
    for _ in $(seq 40); do
      local left=0
      for group in "${groups[@]}"; do kill -0 -- "-$group" 2>/dev/null && left=1; done
      [ $left = 0 ] && break
      sleep 0.25
    done
    for group in "${groups[@]}"; do kill -KILL -- "-$group" 2>/dev/null || true; done
  fi
  rm -f "$dir/$s.pid"
}

down() {
  local s i
  local order=("${@:-${all[@]}}")
  for ((i = ${#order[@]} - 1; i >= 0; i--)); do  # dependants first
    s=${order[i]}
    if alive "$s"; then stop_one "$s"; echo "$s: stopped"; else rm -f "$dir/$s.pid"; fi
  done
}

status() {
  local s code=0
  for s in "${@:-${all[@]}}"; do
    if alive "$s"; then echo "$s: running, $(address "$s")"; else echo "$s: stopped"; code=3; fi
  done
  return $code
}

cmd=${1:-}
shift || true
case $cmd in
  up) up "$@" ;;
  down) [ -d "$dir" ] && down "$@" ;;
  status) status "$@" ;;
  env) client_env ;;
  destroy)
    if [ -d "$dir" ]; then
      down
      pg=$(realpath "$dir/postgres" 2>/dev/null || true)
      rm -rf "$dir"
      if [[ -n "$pg" && "$pg" == /tmp/textops-postgres.* ]]; then rm -rf "$pg"; fi
    fi
    ;;
  *) sed -n '2,15p' "$0" >&2; exit 2 ;;
esac
