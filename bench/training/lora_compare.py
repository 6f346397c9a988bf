"""Full fine-tuning against LoRA (sentiment.train.method / story.train.method full or lora), through the pipeline's own stages, for both tasks.

sentiment  MiniLM (model.name from params.yaml) on an SST-2 subsample (--sst2-rows training rows,
           --sst2-epochs), accuracy on the full SST-2 dev set by the evaluate stage (on the saved,
           merged model).
story      "LoRA adapts the stories model to Tiny Shakespeare": a GPT-2 trained from scratch on
           TinyStories with the default story config (--stories-steps to shorten it), then adapted to
           Tiny Shakespeare with story.model.base = that model and story.tokenize.kind = base, full
           against LoRA for the same --shakespeare-steps; metric: Shakespeare validation loss and
           perplexity (story_evaluate on the saved model; the last 10% of the text, nanoGPT's split).
           The stories model as is gives the before-adaptation row.

Every stage runs as `python -m stages.X --params <file>` in its own process (so peak RSS is that
training's own) on a params file made from the repository's params.yaml; outputs go to a work folder.
Reported per method: learning rate, trainable / total parameters, peak RSS (and peak CUDA memory on a
GPU, where the train stage reports it), seconds per optimizer step (train_runtime / steps run, which
includes the final checkpoint save), and the metric. The markdown table is printed and written to --out
with the command line.

Run: python -m bench.training.lora_compare [--task both|sentiment|story] [--sst2-rows 4000] [--shakespeare-steps 300]
     [--sst2-lora-lr 5e-4 1e-3 2e-3] [--story-full-lr ...] [--story-lora-lr ...]   (several: a row each)
     [--work DIR (kept)] [--stories-model DIR/stories/model (reuse)]
Smoke: python -m bench.training.lora_compare --sst2-rows 64 --stories-steps 5 --shakespeare-steps 5 --out /tmp/lora.md
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench import RESULTS, ROOT

DATA = ROOT.parent / "shared" / "data"
ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "PYTHONUNBUFFERED": "1",
}
NEVER = 10**9  # eval_steps / save_steps: no evaluation or checkpoint inside the timed steps but the last


def stage(name: str, params: Path, logs: Path, **paths: Path) -> None:
    """One stage as dvc repro would run it; its log goes to logs/<name>.log, a failure stops the bench."""
    cmd = [sys.executable, "-m", f"stages.{name}", "--params", str(params)]
    if "metrics" in paths:  # the bench reads whole reports; the headline numbers go beside them
        paths["report_file"], paths["metrics"] = paths["metrics"], paths["metrics"].with_suffix(".metrics.json")
    for flag, path in paths.items():
        cmd += [f"--{flag.replace('_', '-')}", str(path)]
    log = logs / f"{name}-{params.stem}.log"
    started = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **ENV}, stdout=out, stderr=subprocess.STDOUT)
    print(f"  {name} ({params.stem}): {time.perf_counter() - started:.0f} s", flush=True)
    if done.returncode:
        tail = log.read_text(errors="replace")[-3000:]
        sys.exit(f"stage {name} failed (exit {done.returncode}); log {log}:\n{tail}")


def params_file(base: dict, path: Path, overrides: dict[str, Any]) -> Path:
    """params.yaml with dotted-key overrides (story.train.method: lora), as dvc exp run -S would set them."""
    raw = copy.deepcopy(base)
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def runs(full_lrs: list[float], lora_lrs: list[float]) -> list[tuple[str, float]]:
    return [("full", lr) for lr in full_lrs] + [("lora", lr) for lr in lora_lrs]


def result_row(method: str, lr: float | None, train: dict | None, metric: dict) -> dict:
    steps = train["global_step"] - train["resumed_from_step"] if train else 0
    return {
        "method": method,
        "learning rate": lr if lr is not None else "-",
        "trainable / total parameters": (
            f"{train['trainable_parameters']:,} / {train['total_parameters']:,} "
            f"({100 * train['trainable_parameters'] / train['total_parameters']:.2f}%)"
            if train
            else "-"
        ),
        "peak RSS MB": train["peak_rss_mb"] if train else "-",
        "peak CUDA MB": (train.get("peak_gpu_mb") or "-") if train else "-",
        "steps": steps or "-",
        "s/step": round(train["train_runtime_s"] / steps, 3) if steps else "-",
        **metric,
    }


def sentiment(args, base: dict, work: Path) -> list[dict]:
    print("sentiment: MiniLM on SST-2, full vs LoRA", flush=True)
    work.mkdir(parents=True, exist_ok=True)
    common = {
        "sentiment.prepare.source": str(args.data / "sst2"),
        "sentiment.prepare.max_train_rows": args.sst2_rows,
        "sentiment.train.epochs": args.sst2_epochs,
        "sentiment.train.batch_size": args.sst2_batch,
        "sentiment.train.eval_steps": NEVER,
        "sentiment.train.save_steps": NEVER,
        "sentiment.tracking.enabled": False,
        "sentiment.evaluate.min_accuracy": 0.0,
    }
    # prepare and tokenize read no train.* key: one run serves every training
    p = params_file(base, work / "sentiment-data.yaml", common)
    stage("sentiment_prepare", p, work, out=work / "prepared", metrics=work / "prepare.json")
    stage(
        "sentiment_tokenize",
        p,
        work,
        prepared=work / "prepared",
        out=work / "tokenized",
        metrics=work / "tokenize.json",
        report=work / "tokenize.md",
    )
    rows = []
    for method, lr in runs(args.sst2_full_lr, args.sst2_lora_lr):
        p = params_file(
            base,
            work / f"sentiment-{method}-{lr:g}.yaml",
            {**common, "sentiment.train.method": method, "sentiment.train.learning_rate": lr},
        )
        m = work / f"{method}-{lr:g}"
        stage(
            "sentiment_train",
            p,
            work,
            tokenized=work / "tokenized",
            prepare_report=work / "prepare.json",
            out=m / "model",
            checkpoints=m / "checkpoints",
            curve=m / "curve",
            metrics=m / "train.json",
        )
        stage(
            "sentiment_evaluate",
            p,
            work,
            model=m / "model",
            prepared=work / "prepared",
            metrics=m / "evaluate.json",
            predictions=m / "predictions.csv",
            figures=m / "figures",
        )
        train, evaluate = read(m / "train.json"), read(m / "evaluate.json")
        rows.append(
            result_row(
                method,
                lr,
                train,
                {"dev accuracy": evaluate["accuracy"], "dev accuracy before merge": train["eval_accuracy"]},
            )
        )
    prepared = read(work / "prepare.json")["rows"]
    return [
        {
            "_note": f"{prepared['train']} training rows, {prepared['eval']} dev rows, {args.sst2_epochs} epoch(s), "
            f"batch {args.sst2_batch}"
        }
    ] + rows


def story_evaluate(p: Path, model: Path, tokenized: Path, out: Path) -> dict:
    stage(
        "story_evaluate",
        p,
        out.parent,
        model=model,
        tokenized=tokenized,
        metrics=out / "evaluate.json",
        report=out / "generations.md",
    )
    e = read(out / "evaluate.json")
    return {"Shakespeare eval loss": e["eval_loss"], "perplexity": e["perplexity"]}


def stories_model(args, base: dict, work: Path) -> Path:
    """GPT-2 from scratch on TinyStories with the default story config (the model LoRA then adapts)."""
    s = work / "stories"
    s.mkdir(parents=True, exist_ok=True)
    p = params_file(
        base,
        s / "stories.yaml",
        {
            "story.prepare.source": str(args.data / "tinystories" / "stories.txt"),
            "story.tracking.enabled": False,
            "story.train.max_steps": args.stories_steps,
        },
    )
    stage("story_prepare", p, s, out=s / "prepared", metrics=s / "prepare.json")
    stage(
        "story_tokenize",
        p,
        s,
        prepared=s / "prepared",
        out=s / "tokenized",
        metrics=s / "tokenize.json",
        report=s / "tokenize.md",
    )
    stage(
        "story_train",
        p,
        s,
        tokenized=s / "tokenized",
        prepare_report=s / "prepare.json",
        out=s / "model",
        checkpoints=s / "checkpoints",
        curve=s / "curve",
        metrics=s / "train.json",
    )
    return s / "model"


def story(args, base: dict, work: Path) -> list[dict]:
    print("story: the stories model adapted to Tiny Shakespeare, full vs LoRA", flush=True)
    model = args.stories_model or stories_model(args, base, work)
    cheap_eval = {
        "story.evaluate.prompts": ["ROMEO:"],
        "story.evaluate.seeds": [0],
        "story.evaluate.max_new_tokens": 32,
        "story.evaluate.max_perplexity": 1e12,
        "story.evaluate.strategies": {"greedy": {"do_sample": False}},
    }
    common = {
        "story.prepare.source": str(args.data / "tinyshakespeare" / "input.txt"),
        "story.prepare.eval_split": "tail",
        "story.model.base": str(model),
        "story.tokenize.kind": "base",
        "story.tracking.enabled": False,
        "story.train.max_steps": args.shakespeare_steps,
        "story.train.warmup_steps": max(1, args.shakespeare_steps // 10),
        "story.train.eval_steps": NEVER,
        "story.train.save_steps": NEVER,
        **cheap_eval,
    }
    sh = work / "shakespeare"
    sh.mkdir(parents=True, exist_ok=True)
    p = params_file(base, sh / "shakespeare-before.yaml", common)
    stage("story_prepare", p, sh, out=sh / "prepared", metrics=sh / "prepare.json")
    stage(
        "story_tokenize",
        p,
        sh,
        prepared=sh / "prepared",
        out=sh / "tokenized",
        metrics=sh / "tokenize.json",
        report=sh / "tokenize.md",
    )
    rows = [
        result_row("none (stories model as is)", None, None, story_evaluate(p, model, sh / "tokenized", sh / "before"))
    ]
    for method, lr in runs(args.story_full_lr, args.story_lora_lr):
        p = params_file(
            base,
            sh / f"shakespeare-{method}-{lr:g}.yaml",
            {
                **common,
                "story.train.method": method,
                "story.train.learning_rate": lr,
                "story.train.min_learning_rate": lr / 10,
            },
        )
        m = sh / f"{method}-{lr:g}"
        stage(
            "story_train",
            p,
            sh,
            tokenized=sh / "tokenized",
            prepare_report=sh / "prepare.json",
            out=m / "model",
            checkpoints=m / "checkpoints",
            curve=m / "curve",
            metrics=m / "train.json",
        )
        rows.append(result_row(method, lr, read(m / "train.json"), story_evaluate(p, m / "model", sh / "tokenized", m)))
    tokens = read(sh / "tokenize.json")["tokens"]
    if args.stories_model:
        origin = f"Stories model: {args.stories_model} (given)."
    else:
        s = read(work / "stories" / "train.json")
        origin = (
            f"Stories model: {s['global_step']} steps from scratch, TinyStories eval loss {s['eval_loss']} "
            f"(perplexity {s['eval_perplexity']})."
        )
    return [
        {
            "_note": f"{origin} Tiny Shakespeare in its "
            f"tokenizer: {tokens['train']:,} train / {tokens['eval']:,} eval tokens. Adaptation: "
            f"{args.shakespeare_steps} steps of batch {base['story']['train']['batch_size']} x context "
            f"{base['story']['model']['context']}, warmup {common['story.train.warmup_steps']}, "
            f"cosine to lr/10."
        }
    ] + rows


def markdown(title: str, rows: list[dict]) -> str:
    notes = [r["_note"] for r in rows if "_note" in r]
    rows = [r for r in rows if "_note" not in r]
    head = list(rows[0])
    lines = [f"### {title}", "", *notes, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r[k]) for k in head) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def arguments(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", choices=["both", "sentiment", "story"], default="both")
    ap.add_argument("--data", type=Path, default=DATA, help="folder holding sst2/, tinystories/, tinyshakespeare/")
    ap.add_argument("--sst2-rows", type=int, default=4000, help="SST-2 training rows (seeded subsample)")
    ap.add_argument("--sst2-epochs", type=float, default=1.0)
    ap.add_argument("--sst2-batch", type=int, default=16, help="bench/training/sst2.sh's recipe: batch 16")
    # Several values give a row each: a small learning-rate sweep per method.
    ap.add_argument(
        "--sst2-full-lr", type=float, nargs="+", default=[1e-4], help="bench/training/sst2.sh's recipe: 1e-4"
    )
    ap.add_argument("--sst2-lora-lr", type=float, nargs="+", default=[2e-3])
    ap.add_argument("--stories-steps", type=int, default=None, help="default: the story config's epochs")
    ap.add_argument(
        "--stories-model",
        type=Path,
        default=None,
        help="a stories model folder from an earlier run (work/stories/model): skips training one",
    )
    ap.add_argument("--shakespeare-steps", type=int, default=300)
    # Starting points, not tuned here (the machine was shared): sweep them on a quiet one.
    ap.add_argument("--story-full-lr", type=float, nargs="+", default=[3e-4])
    ap.add_argument("--story-lora-lr", type=float, nargs="+", default=[2e-3])
    ap.add_argument("--work", type=Path, default=None, help="kept when given; default: a temporary folder, deleted")
    ap.add_argument("--note", default="", help="a line for the results file (e.g. how quiet the machine was)")
    ap.add_argument("--out", type=Path, default=RESULTS / "lora_compare.md")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = arguments(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="lora-compare-"))
    work.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    load_before, started = os.getloadavg()[0], time.perf_counter()
    sections = []
    try:
        if args.task in ("both", "sentiment"):
            sections.append(markdown("Sentiment: MiniLM on SST-2", sentiment(args, base, work / "sentiment")))
        if args.task in ("both", "story"):
            sections.append(markdown("Story: the stories model adapted to Tiny Shakespeare", story(args, base, work)))
    except BaseException:
        print(f"work folder kept for its logs: {work}", file=sys.stderr)
        raise
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    command = "python -m bench.training.lora_compare " + shlex.join(sys.argv[1:] if argv is None else argv)
    header = (
        f"# Full fine-tuning vs LoRA\n\n$ {command}\n\n{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} "
        f"CPU cores, load average {load_before:.1f} at the start and {os.getloadavg()[0]:.1f} at the end, "
        f"{time.perf_counter() - started:.0f} s in all. s/step is train_runtime over the steps run, one "
        f"checkpoint save at the end included (full fine-tuning saves every weight's optimizer state, LoRA "
        f"the adapters'). Peak RSS is the training process's own.\n"
    )
    text = header + (f"\n{args.note}\n" if args.note else "") + "\n" + "\n".join(sections)
    print("\n" + text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
