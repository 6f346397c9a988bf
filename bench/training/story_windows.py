"""story_train's training samples: random windows (nanoGPT) against fixed non-overlapping blocks.

Trains the same config once per sampling scheme on already tokenized data and prints the final eval
loss of each (the full eval split, as story_evaluate measures it). stages/story_train.py keeps the
better one as WINDOWS; the result is in bench/results/story_windows.md.
Run (after story_prepare and story_tokenize with the Tiny Shakespeare settings of bench/training/story_shakespeare.sh):
  python -m bench.training.story_windows --params params.yaml --tokenized outputs/story/tokenized --work /tmp/windows
"""

from __future__ import annotations

import argparse
from pathlib import Path

from textops.params import load_params
from textops.story import training as story_train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--tokenized", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--windows", nargs="+", default=["random", "fixed"])
    args = parser.parse_args()
    params = load_params(args.params)
    rows = []
    for windows in args.windows:
        m = story_train.train(
            params, args.tokenized, args.work / windows / "model", args.work / windows / "ckpt", windows=windows
        )["metrics"]
        rows.append(
            f"| {windows} | {m['global_step']} | {m['train_loss']} | {m['eval_loss']} | {m['train_runtime_s']} |"
        )
        print(rows[-1], flush=True)
    print("\n| windows | steps | train loss (mean over the run) | eval loss | train s |\n|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
