"""Shared fixtures: a tiny randomly initialised BERT with its tokenizer, tiny labeled data, params."""

from __future__ import annotations

import copy
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from textops.params import Params, parse_params

ROOT = Path(__file__).resolve().parents[1]
POSITIVE = ["good", "great", "wonderful", "charming", "funny", "moving", "brilliant", "delightful"]
NEGATIVE = ["bad", "awful", "dull", "boring", "tedious", "lifeless", "clumsy", "dreadful"]
FILLER = ["the", "a", "film", "movie", "plot", "acting", "score", "ending", "was", "is", "very", "truly", "and", "."]


@pytest.fixture(autouse=True, scope="session")
def _offline(tmp_path_factory):
    # Tests never reach a hub: the machines have no internet, and a test must not depend on it.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    # Tracking goes to a store of the test session's own, never the repository's mlflow/.
    store = tmp_path_factory.mktemp("mlflow") / "db"
    store.mkdir()
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlflow.db'}"


def git_commit_all(path: Path, message: str = "init") -> Path:
    """`path` as a git repository whose one commit holds every file (DVC experiments and the flows need one)."""
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message],
    ):
        subprocess.run(cmd, cwd=path, check=True)
    return path


def copy_repo(dest: Path) -> Path:
    """The repository's tracked and untracked-but-not-ignored files, without run outputs, in `dest`."""
    files = (
        subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in files:
        if name and (ROOT / name).is_file() and not name.startswith(("outputs/", "dvc.lock")):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def sentences(n_per_class: int, seed: int = 0) -> list[tuple[str, int]]:
    """Distinct toy reviews whose label is carried by sentiment words, so a tiny model can learn it."""
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < 2 * n_per_class:
        label = len(rows) % 2
        words = rng.sample(FILLER, 4) + rng.sample(POSITIVE if label else NEGATIVE, 2)
        rng.shuffle(words)
        text = " ".join(words)
        if text not in seen:
            seen.add(text)
            rows.append((text, label))
    return rows


def write_tsv(path: Path, rows: list[tuple[str, int]]) -> Path:
    path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT with random weights and a WordPiece vocabulary of the toy words."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(POSITIVE + NEGATIVE + FILLER))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def repo_params_raw() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    return write_tsv(tmp_path / "reviews.tsv", sentences(60))


@pytest.fixture(scope="session")
def params_for(repo_params_raw, tiny_model_dir):
    """Repository params with the tiny model, a given source, and section__key overrides of the sentiment task's
    sections (orchestrate__key for the shared one)."""

    def make(source: Path | str, **overrides) -> Params:
        raw = copy.deepcopy(repo_params_raw)
        raw["sentiment"]["model"]["name"] = str(tiny_model_dir)
        raw["sentiment"]["model"]["max_length"] = 16
        raw["sentiment"]["prepare"]["source"] = str(source)
        raw["sentiment"]["train"].update(
            epochs=3,
            batch_size=8,
            learning_rate=3e-3,
            save_steps=1000,
            eval_steps=1000,
            logging_steps=5,
            warmup_ratio=0.0,
            # Not auto, which picks bf16 on CPUs with avx512_bf16 or amx_bf16: the tests' tolerances were measured
            # in fp32, and their outcome must not depend on the machine's CPU (test_choices covers bf16).
            precision="fp32",
        )
        raw["sentiment"]["evaluate"]["attention_sentences"] = ["the film was good", "a dull plot"]
        raw["sentiment"]["evaluate"]["min_accuracy"] = 0.0
        raw["sentiment"]["quantize"].update(
            latency_requests=10, latency_warmup=2, min_agreement=0.0, max_accuracy_drop=1.0
        )
        for key, value in overrides.items():
            section, _, name = key.partition("__")
            target = raw if section == "orchestrate" else raw["sentiment"]
            if name:
                target[section][name] = value
            else:
                target[section] = value
        return parse_params(raw)

    return make


@pytest.fixture
def make_params(params_for, tiny_data):
    def make(**overrides) -> Params:
        return params_for(tiny_data, **overrides)

    return make


def run_all_stages(root: Path, params: Params) -> dict:
    """prepare -> package in DAG order into `root`, as dvc repro would; returns the paths and metrics."""
    import json

    from stages import sentiment_evaluate as evaluate
    from stages import sentiment_package as package
    from stages import sentiment_prepare as prepare
    from stages import sentiment_quantize as quantize
    from stages import sentiment_tokenize as tokenize
    from stages import sentiment_train as train
    from textops.params import for_stage

    def view(stage: str) -> Params:  # what the stage may read: the keys dvc.yaml lists for it, nothing else
        return for_stage(params, stage, ROOT / "dvc.yaml")

    p = {
        name: root / name
        for name in ("prepared", "tokenized", "model", "checkpoints", "curve", "figures", "fp32", "int8", "package")
    }
    steps = ("prepare", "tokenize", "train", "evaluate", "quantize")
    m = {name: root / "metrics" / f"{name}.json" for name in steps}  # headline numbers
    r = {name: root / "reports" / f"{name}.json" for name in steps}  # whole reports
    prepare.run(view("sentiment_prepare"), p["prepared"], m["prepare"], r["prepare"])
    tokenize.run(view("sentiment_tokenize"), p["prepared"], p["tokenized"], m["tokenize"], r["tokenize"])
    train.run(
        view("sentiment_train"),
        p["tokenized"],
        r["prepare"],
        p["model"],
        p["checkpoints"],
        p["curve"],
        m["train"],
        r["train"],
    )
    evaluate.run(
        view("sentiment_evaluate"),
        p["model"],
        p["prepared"],
        m["evaluate"],
        root / "predictions.csv",
        p["figures"],
        r["evaluate"],
    )
    quantize.run(
        view("sentiment_quantize"), p["model"], p["prepared"], p["fp32"], p["int8"], m["quantize"], r["quantize"]
    )
    package.run(
        view("sentiment_package"),
        p["model"],
        p["int8"],
        r["prepare"],
        r["train"],
        r["evaluate"],
        r["quantize"],
        p["package"],
    )
    return {
        "params": params,
        "root": root,
        **p,
        "reports": {k: json.loads(v.read_text()) for k, v in r.items()},
        "metrics": {k: json.loads(v.read_text()) for k, v in m.items()},
    }


def fit_tiny_lm(model, tok, texts: list[str], context: int, steps: int, stride: int | None = None) -> None:
    """A few AdamW steps of a tiny causal LM on `texts` (joined by eos): a random GPT-2 repeats one token
    under greedy decoding and its byte-level output is mostly broken UTF-8, which would make the story
    tests trivial. One batch of windows every `stride` tokens, or the first `context` tokens."""
    import torch

    ids = [tok.eos_token_id]
    for text in texts:
        ids += tok(text)["input_ids"] + [tok.eos_token_id]
    starts = range(0, len(ids) - context + 1, stride) if stride else [0]
    batch = torch.tensor([ids[i : i + context] for i in starts])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains faster on one thread of a busy machine
    try:
        for _ in range(steps):
            optimizer.zero_grad()
            model(batch, labels=batch).loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
