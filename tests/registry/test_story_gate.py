"""The story generator in the registry: story_quantize + story_package register tiny GPT-2 versions, and the
gate (python -m textops.promote gate --task story) keeps the lower-perplexity model as champion."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT
from textops import registry, tasks
from textops.params import StoryPromoteParams, for_stage, parse_params
from textops.promote import main as promote_main
from textops.story import lm
from textops.story.generation import OnnxGenerator

NAME = "story-test-gate"
CONTEXT = 32
CORPUS = [
    "Once upon a time there was a little dog named Max. Max liked to run in the park.",
    "Lily went to the park. She saw a big tree and a red ball. She was happy.",
    "Tom had a cat. The cat was soft and warm. Tom and the cat played all day.",
]


def tokenizer(folder):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        CORPUS * 4,
        trainers.BpeTrainer(
            vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        model_input_names=["input_ids", "attention_mask"],
    )


def build_model(folder, tok, stream: np.ndarray, kind: str):
    """plain: random init (perplexity near the vocabulary size); trained: 30 steps on the corpus (lower);
    noisy: a wide random init (confidently wrong, far higher)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=CONTEXT,
        n_embd=32,
        n_layer=2,
        n_head=2,
        initializer_range=1.0 if kind == "noisy" else 0.02,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    if kind == "trained":
        batch = torch.from_numpy(lm.eval_blocks(stream, CONTEXT))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # a model this small trains faster on one thread of a busy machine
        try:
            for _ in range(30):
                optimizer.zero_grad()
                model(batch, labels=batch).loss.backward()
                optimizer.step()
        finally:
            torch.set_num_threads(threads)
    model.eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return model


def reports(root, model, stream: np.ndarray) -> dict:
    """What story_prepare, story_train and story_evaluate would have written (the evaluate figure is real)."""
    loss = lm.mean_loss(lm.torch_logits(model), lm.eval_blocks(stream, CONTEXT), 8)
    data = {
        "prepare": {
            "source": "tests/corpus",
            "data_hash": "d" * 64,
            "documents": {"train": 3, "eval": 3},
            "quarantined": 0,
            "quarantine_reasons": {},
            "validation_success": True,
        },
        "train": {"method": "full", "global_step": 30, "train_loss": 1.0, "eval_loss": round(loss, 4)},
        "evaluate": {
            "eval_loss": round(loss, 4),
            "perplexity": round(lm.perplexity_of(loss), 3),
            "eval_blocks": len(stream) // CONTEXT,
            "strategies": {},
        },
    }
    paths = {}
    for name, report in data.items():
        paths[name] = root / "reports" / f"{name}.json"
        paths[name].parent.mkdir(parents=True, exist_ok=True)
        paths[name].write_text(json.dumps(report))
    return paths


@pytest.fixture(scope="module")
def params(repo_params_raw):
    raw = copy.deepcopy(repo_params_raw)
    story = raw["story"]
    story["package"]["model_name"] = NAME
    story["tracking"]["experiment"] = "story-test"
    story["evaluate"]["prompts"] = ["Once upon a time"]
    story["quantize"].update(speed_new_tokens=4, speed_repeats=1, min_greedy_agreement=0.0, max_perplexity_change=0.5)
    return parse_params(raw)


@pytest.fixture(scope="module")
def versions(tmp_path_factory, params) -> dict:
    """v1 plain, v2 trained, v3 noisy: each through story_quantize and story_package, tracked in MLflow."""
    from stages import story_package, story_quantize
    from textops.tracking import ModelRun, write_run_id

    root = tmp_path_factory.mktemp("story-registry")
    tok = tokenizer(root)
    ids = [tok.eos_token_id]
    for text in CORPUS:
        ids += tok(text)["input_ids"] + [tok.eos_token_id]
    stream = np.array(ids * 3, dtype=np.int32)
    (root / "tokenized").mkdir()
    np.save(root / "tokenized" / "eval.npy", stream)
    built = {"eval": root / "tokenized" / "eval.npy", "params": params}
    for kind in ("plain", "trained", "noisy"):
        d = root / kind
        model = build_model(d / "model", tok, stream, kind)
        run = ModelRun(True, params.story.tracking.experiment).start(f"story-{kind}", {"task": "story"})
        write_run_id(d / "model", run.run_id, run.uri)
        story_quantize.run(
            for_stage(params, "story_quantize", ROOT / "dvc.yaml"),
            d / "model",
            root / "tokenized",
            d / "fp32",
            d / "int8",
            d / "quantize.metrics.json",
            d / "quantize.json",
        )
        paths = reports(d, model, stream)
        story_package.run(
            for_stage(params, "story_package", ROOT / "dvc.yaml"),
            d / "model",
            d / "int8",
            paths["prepare"],
            paths["train"],
            paths["evaluate"],
            d / "quantize.json",
            d / "package",
        )
        built[kind] = {
            "root": d,
            "package": d / "package",
            "run_id": run.run_id,
            "quantize": json.loads((d / "quantize.json").read_text()),
        }
    return built


def story_gate(versions, **kw):
    return tasks.get("story").gate(NAME, versions["eval"], versions["params"], **kw)


def test_package_registers_each_version_with_its_evidence(versions):
    assert sorted(int(v.version) for v in registry.client().search_model_versions(f"name='{NAME}'")) == [1, 2, 3]
    assert registry.version_of(NAME, registry.CHALLENGER) == "3"
    tags = registry.require_version(NAME, "2").tags
    q = versions["trained"]["quantize"]
    assert tags["task"] == "story" and tags["int8_gate"] == "passed" and tags["run_id"] == versions["trained"]["run_id"]
    assert float(tags["int8_perplexity"]) == q["perplexity"]["onnx_int8"] and tags["data_hash"] == "d" * 64
    assert len(tags["git_commit"]) >= 7 and tags["fp32_model"].startswith("runs:/")
    package = versions["trained"]["package"]
    manifest = json.loads((package / "manifest.json").read_text())
    assert {"model.onnx", "config.json", "tokenizer.json", "MODEL_CARD.md"} <= set(manifest["files"])
    assert manifest["context"] == CONTEXT and manifest["task"] == "story"
    card = (package / "MODEL_CARD.md").read_text()
    assert str(q["perplexity"]["onnx_int8"]) in card and "onnx_int8_loop" in card


def test_lower_perplexity_wins_and_a_worse_model_is_refused(versions):
    first = story_gate(versions, version="1")
    assert first["decision"] == "promoted" and registry.version_of(NAME, registry.CHAMPION) == "1"
    better = story_gate(versions, version="2")
    ev = better["evidence"]
    assert better["decision"] == "promoted", better
    assert ev["challenger_perplexity"] < ev["champion_perplexity"] and ev["champion_version"] == "1"
    # the gate's figure is recomputed from the registered INT8 model: it equals the quantize stage's
    assert ev["challenger_perplexity"] == pytest.approx(
        versions["trained"]["quantize"]["perplexity"]["onnx_int8"], rel=1e-4
    )
    assert registry.version_of(NAME, registry.PREVIOUS) == "1"
    worse = story_gate(versions)  # the challenger alias: v3, the noisy model
    assert worse["decision"] == "refused" and worse["version"] == "3"
    text = " ".join(worse["reasons"])
    assert "exceeds champion v2" in text and "story.promote.perplexity_tolerance" in text
    assert registry.version_of(NAME, registry.CHAMPION) == "2"
    assert registry.require_version(NAME, "3").tags["gate.decision"] == "refused"


def test_decision_rules():
    p = StoryPromoteParams(perplexity_tolerance=0.01, max_perplexity=100, max_size_mb=5)
    ok = {"perplexity": 50.4, "int8_gate": "passed", "size_mb": "1.0"}
    assert tasks.get("story").decide(ok, {"version": "1", "perplexity": 50.0}, p) == []  # within 1%
    assert (
        "perplexity_tolerance"
        in tasks.get("story").decide({**ok, "perplexity": 50.6}, {"version": "1", "perplexity": 50.0}, p)[0]
    )
    assert "story.promote.max_perplexity" in tasks.get("story").decide({**ok, "perplexity": 120.0}, None, p)[0]
    assert "story.promote.max_size_mb" in tasks.get("story").decide({**ok, "size_mb": "9"}, None, p)[0]
    assert "int8_gate" in tasks.get("story").decide({**ok, "int8_gate": "failed"}, None, p)[0]


def test_champion_generates_through_the_pyfunc(versions):
    import mlflow
    from textops.params import GenerationParams

    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    out = model.predict(
        pd.DataFrame({"prompt": ["Once upon a time", ""]}), params={"max_new_tokens": 6, "do_sample": False}
    )
    local = OnnxGenerator(versions["trained"]["package"])
    assert out.to_dict("records") == [local.generate(p, 6, GenerationParams()) for p in ["Once upon a time", ""]]


def test_cli_status_and_rollback_with_task_story(versions, capsys):
    import yaml

    path = versions["trained"]["root"] / "params-cli.yaml"
    path.write_text(yaml.safe_dump(versions["params"].model_dump()))
    assert promote_main(["status", "--task", "story", "--params", str(path)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["model"] == NAME and status["aliases"]["champion"] == "2"
    assert promote_main(["rollback", "--task", "story", "--params", str(path), "--reason", "test"]) == 0
    assert registry.version_of(NAME, registry.CHAMPION) == "1" and registry.version_of(NAME, registry.PREVIOUS) == "2"
    code = promote_main(
        ["gate", "--task", "story", "--params", str(path), "--version", "3", "--eval", str(versions["eval"])]
    )
    assert code == 2 and "story.promote" in capsys.readouterr().err
