#!/usr/bin/env bash
# Shared by bench/training/story_shakespeare.sh and bench/training/story_tinystories.sh: runs the story
# stages up to story_evaluate with `dvc exp run -S ...` in a fresh clone of the repository, as a user would, then
# prints the figures. BENCH_SOURCE=worktree copies the working tree instead (uncommitted work included;
# no outputs/, dvc.lock or mlflow/ data), for trying changes before they are committed.
# Usage: bash bench/training/story_run.sh NAME key=value ...
set -euo pipefail
command -v dvc > /dev/null || { echo "dvc not found: activate the project's environment (source .venv/bin/activate)" >&2; exit 1; }
repo=$(cd "$(dirname "$0")/../.." && pwd)
name=$1
shift
work=$(mktemp -d "/tmp/story-$name.XXXXXX")
if [ "${BENCH_SOURCE:-clone}" = worktree ]; then
  mkdir "$work/repo"
  (cd "$repo" && git ls-files --cached --others --exclude-standard -z) | while IFS= read -r -d '' f; do
    case "$f" in outputs/*|dvc.lock) continue ;; esac
    [ -f "$repo/$f" ] && mkdir -p "$work/repo/$(dirname "$f")" && cp "$repo/$f" "$work/repo/$f"
  done
  (cd "$work/repo" && git init -q && git add -A && git -c user.name=bench -c user.email=bench@localhost commit -qm copy)
else
  git clone -q "$repo" "$work/repo"
fi
cd "$work/repo"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true
sets=()
for kv in "$@"; do sets+=(-S "$kv"); done
echo "\$ dvc exp run story_evaluate ${sets[*]}"
start=$(date +%s)
status=0
dvc exp run story_evaluate "${sets[@]}" > "$work/run.log" 2>&1 || status=$?
wall=$(( $(date +%s) - start ))
grep -E "^(Running stage|error|ERROR)|story_(prepare|tokenize|train|evaluate) INFO" "$work/run.log" | cut -c1-400 || true
python - "$wall" <<'PY'
import json, sys
from pathlib import Path

m = {s: json.loads(p.read_text()) for s in ("prepare", "tokenize", "train", "evaluate")
     if (p := Path(f"outputs/story/reports/{s}.json")).is_file()}
rows = []
if "prepare" in m:
    rows += [("documents train / eval", f"{m['prepare']['documents']['train']} / {m['prepare']['documents']['eval']}"),
             ("quarantined", f"{m['prepare']['quarantined']} {m['prepare']['quarantine_reasons']}")]
if "tokenize" in m:
    t = m["tokenize"]
    rows += [("tokenizer / vocab", f"{t['kind']} / {t['vocab_size']}"),
             ("tokens train / eval", f"{t['tokens']['train']} / {t['tokens']['eval']}"),
             ("tokens per word (story / sentiment WordPiece)",
              f"{t['tokens_per_word']['story_eval']} / {t['tokens_per_word']['sentiment_eval']}")]
if "train" in m:
    t = m["train"]
    rows += [("parameters", t["total_parameters"]), ("steps", t["global_step"]),
             ("train loss (mean over the run)", t["train_loss"]), ("eval loss (train stage)", t["eval_loss"]),
             ("training time s (Trainer runtime)", t["train_runtime_s"]),
             ("samples/s, tokens/s", f"{t['samples_per_second']}, {t['tokens_per_second']}"),
             ("torch threads, peak RSS MB", f"{t['torch_threads']}, {t['peak_rss_mb']}")]
if "evaluate" in m:
    e = m["evaluate"]
    rows += [("eval loss per token / perplexity (story_evaluate)", f"{e['eval_loss']} / {e['perplexity']}"),
             ("eval loss per character (a break = 2 chars)", e["eval_loss_per_char"])]
    rows += [(f"  {k}: repetition, distinct-1, distinct-2", f"{v['repetition_rate']}, {v['distinct_1']}, {v['distinct_2']}")
             for k, v in e["strategies"].items()]
rows.append(("pipeline wall time s (dvc exp run)", sys.argv[1]))
for k, v in rows:
    print(f"{k:<48} {v}")
PY
if [ -f outputs/story/reports/generations.md ]; then
  echo; echo "--- outputs/story/reports/generations.md (first prompt) ---"
  awk '/^## /{n++} n<=1' outputs/story/reports/generations.md | head -60
fi
echo; echo "work folder: $work (delete when done); log: $work/run.log"
exit $status
