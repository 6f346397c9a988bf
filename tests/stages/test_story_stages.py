"""The story stages on tiny corpora they write themselves: bad inputs end in the quarantine or a clear
error, tokenizers decode back exactly, a tiny GPT's loss falls, evaluate reports and gates."""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ROOT
from stages import story_evaluate, story_prepare, story_tokenize, story_train
from textops.errors import GateFailed, PipelineError
from textops.params import Params, for_stage, parse_params
from textops.story import training as story_training
from textops.story.corpus import Document, validate
from textops.story.lm import eval_blocks, mean_loss, perplexity_of, torch_logits
from textops.story.tokenizer import bpe_tokenizer, char_tokenizer, encode_stream
from textops.tokenizers import ReferenceBPE
from textops.validation import ValidationFailed

NAMES = ["Tom", "Mia", "Ben", "Lily", "Sam", "Zoe"]
ANIMALS = ["cat", "dog", "frog", "bird", "duck"]
PLACES = ["park", "garden", "pond", "farm", "beach"]
ACTS = ["ran to", "looked at", "played in", "walked to", "sang near"]


def stories(n: int, seed: int = 0) -> list[str]:
    """Distinct two- or three-sentence stories from a small vocabulary, so a tiny model can learn them."""
    rng, out = random.Random(seed), []
    while len(out) < n:
        name, animal, place = rng.choice(NAMES), rng.choice(ANIMALS), rng.choice(PLACES)
        text = (
            f"{name} had a {animal}. The {animal} {rng.choice(ACTS)} the {place}. "
            f'{name} said, "I love the {place}!"' + (" They were happy." if rng.random() < 0.5 else "")
        )
        text = f"{text} Day {len(out)}."  # every story distinct
        out.append(text)
    return out


def write_corpus(path: Path, docs: list[str]) -> Path:
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def story_params(repo_params_raw, tiny_model_dir):
    """Repository params with a tiny GPT, tracking off, a given source, and story.<section>.<key> overrides."""

    def make(source: Path | str, **overrides) -> Params:
        raw = copy.deepcopy(repo_params_raw)
        raw["sentiment"]["model"]["name"] = str(tiny_model_dir)  # the WordPiece the tokenizer report compares against
        s = raw["story"]
        s["prepare"]["source"] = str(source)
        s["model"].update(n_layer=2, n_head=2, n_embd=32, context=32)
        s["tokenize"].update(kind="char")
        s["train"].update(
            max_steps=60,
            batch_size=8,
            eval_batch_size=16,
            learning_rate=3e-3,
            min_learning_rate=3e-4,
            warmup_steps=5,
            eval_steps=30,
            save_steps=1000,
            logging_steps=5,
            num_threads=1,
            precision="fp32",  # not auto, which is bf16 on some CPUs: the tolerances below were measured in fp32
        )
        s["evaluate"].update(prompts=["Tom had", "The dog"], seeds=[0, 1], max_new_tokens=12, batch_size=8)
        s["tracking"]["enabled"] = False
        for key, value in overrides.items():
            section, name = key.split("__")
            s[section][name] = value
        return parse_params(raw)

    return make


def prepare_to(root: Path, params: Params) -> dict:
    view = for_stage(params, "story_prepare", ROOT / "dvc.yaml")
    story_prepare.run(view, root / "prepared", root / "prepare.metrics.json", root / "prepare.json")
    return json.loads((root / "prepare.json").read_text())


def quarantine(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "prepared" / "quarantine.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, story_params) -> dict:
    """prepare -> tokenize -> train -> evaluate once, on 120 tiny stories (char tokens), each stage seeing only
    the params keys dvc.yaml lists for it."""
    root = tmp_path_factory.mktemp("story")
    params = story_params(write_corpus(root / "stories.txt", stories(120)))

    def view(stage: str) -> Params:
        return for_stage(params, stage, ROOT / "dvc.yaml")

    prepare_to(root, params)
    story_tokenize.run(
        view("story_tokenize"),
        root / "prepared",
        root / "tok",
        root / "tokenize.metrics.json",
        root / "tokenize.json",
        root / "reports" / "tokenize.md",
    )
    story_train.run(
        view("story_train"),
        root / "tok",
        root / "prepare.json",
        root / "model",
        root / "ckpt",
        root / "curve",
        root / "train.metrics.json",
        root / "train.json",
    )
    story_evaluate.run(
        view("story_evaluate"),
        root / "model",
        root / "tok",
        root / "evaluate.metrics.json",
        root / "generations.md",
        root / "evaluate.json",
        root / "figures",
    )
    return {
        "root": root,
        "params": params,
        **{
            name: json.loads((root / f"{name}.json").read_text())
            for name in ("prepare", "tokenize", "train", "evaluate")
        },
    }


# ------------------------------------------------------------------------------------------- prepare


def test_prepare_writes_documents_and_report(pipeline):
    root, report = pipeline["root"], pipeline["prepare"]
    assert report["documents"] == {"train": 108, "eval": 12} and report["quarantined"] == 0
    eval_docs = (root / "prepared" / "eval.txt").read_text().split("\n\n")
    assert len(eval_docs) == 12 and all(d.endswith(".") for d in eval_docs)
    assert report["chars"]["eval"] == sum(map(len, eval_docs))
    assert len(report["data_hash"]) == 64 and report["validation_success"] is True
    assert "PASSED" in (root / "prepared" / "validation.md").read_text()


def test_missing_source_names_the_key(tmp_path, story_params):
    with pytest.raises(PipelineError, match="story.prepare.source .*no such file"):
        prepare_to(tmp_path, story_params(tmp_path / "nope.txt"))


def test_empty_file_is_an_error(tmp_path, story_params):
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(PipelineError, match="empty.txt: file is empty"):
        prepare_to(tmp_path, story_params(tmp_path / "empty.txt"))


def test_non_utf8_paragraph_is_quarantined_with_its_line(tmp_path, story_params):
    docs = stories(40)
    text = (
        "\n\n".join(docs[:30]).encode()
        + b"\n\nA bad \xff byte here.\nSecond line.\n\n"
        + "\n\n".join(docs[30:]).encode()
    )
    (tmp_path / "mixed.txt").write_bytes(text)
    report = prepare_to(tmp_path, story_params(tmp_path / "mixed.txt"))
    assert report["documents_read"] == 41 and report["quarantine_reasons"] == {"undecodable bytes": 1}
    [bad] = quarantine(tmp_path)
    assert bad["line"] == 61 and "not UTF-8" in bad["reason"] and bad["text"].endswith("Second line.")


def test_wholly_undecodable_file_is_an_error(tmp_path, story_params):
    (tmp_path / "latin1.txt").write_bytes("Caf\u00e9 cr\u00e8me.\n\nD\u00e9j\u00e0 vu.\n".encode("latin-1"))
    with pytest.raises(PipelineError, match="no line is valid UTF-8"):
        prepare_to(tmp_path, story_params(tmp_path / "latin1.txt"))


def test_disallowed_characters_and_long_documents_are_quarantined(tmp_path, story_params):
    docs = stories(60)
    docs[10] = "First line is fine.\nThe second has an emoji \U0001f600 in it."
    docs[20] = "word " * 100
    report = prepare_to(tmp_path, story_params(write_corpus(tmp_path / "s.txt", docs), prepare__max_chars=300))
    assert report["quarantine_reasons"] == {"disallowed character": 1, "too long": 1}
    reasons = {q["line"]: q["reason"] for q in quarantine(tmp_path)}
    assert reasons[22].startswith("disallowed character: U+1F600")  # doc 10 starts on line 21; the emoji is on 22
    assert reasons[42].startswith("too long: 499 chars > story.prepare.max_chars=300")


def test_too_many_bad_documents_stop_and_still_list_them(tmp_path, story_params):
    docs = stories(20)
    for i in range(0, 20, 4):
        docs[i] += " \u4e2d"  # 5 of 20 documents hold a character outside allowed_chars
    with pytest.raises(ValidationFailed, match=r"5 of 20 documents \(25.0%\).*story.prepare.max_bad_fraction=0.05"):
        prepare_to(tmp_path, story_params(write_corpus(tmp_path / "s.txt", docs)))
    assert len(quarantine(tmp_path)) == 5


def test_duplicates_and_eval_leakage_are_dropped(tmp_path, story_params):
    docs = stories(40)
    docs[5] = docs[3]  # exact duplicate inside the corpus
    docs[-1] = docs[0].upper().replace(".", "!")  # a tail-split eval document that repeats a train one
    report = prepare_to(tmp_path, story_params(write_corpus(tmp_path / "s.txt", docs), prepare__eval_split="tail"))
    assert report["quarantine_reasons"] == {"duplicate": 1, "leakage": 1}
    rows = {q["reason"].split(":")[0]: q for q in quarantine(tmp_path)}
    assert rows["duplicate"]["line"] == 11 and "s.txt:7" in rows["duplicate"]["reason"]
    assert rows["leakage"]["line"] == 79 and "s.txt:1" in rows["leakage"]["reason"]
    eval_text = (tmp_path / "prepared" / "eval.txt").read_text()
    assert docs[-2] in eval_text and docs[0] not in eval_text  # tail: the last documents, minus the leak


def test_folder_of_txt_files(tmp_path, story_params):
    (tmp_path / "src").mkdir()
    write_corpus(tmp_path / "src" / "a.txt", stories(20, seed=1))
    write_corpus(tmp_path / "src" / "b.txt", stories(20, seed=2)[10:])
    report = prepare_to(tmp_path, story_params(tmp_path / "src"))
    assert report["documents_read"] == 30 and len(report["source_files"]) == 2


def test_validation_fails_on_text_in_both_splits(repo_params_raw):
    from textops.params import StoryPrepareParams

    same = Document("x.txt", 1, "The same story.")
    prepare = StoryPrepareParams(**repo_params_raw["story"]["prepare"])
    result = validate({"train": [same, Document("x.txt", 3, "Another.")], "eval": [same]}, prepare)
    assert not result["success"]
    [failed] = [c for c in result["checks"] if not c["success"]]
    assert failed["split"] == "all" and failed["expectation"] == "expect_column_values_to_be_unique"


# ------------------------------------------------------------------------------------------ tokenize

TRICKY = ['She said, "Hi!"  Then\tleft.\nNew line .', "a , b . c", "Caf\u00e9 \u2014 na\u00efve \u201cquotes\u201d"]


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_tokenizers_decode_back_exactly(tmp_path, kind):
    from transformers import AutoTokenizer

    train = stories(50) + TRICKY
    built = char_tokenizer(train) if kind == "char" else bpe_tokenizer(train, vocab_size=300, min_frequency=2)
    built.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    for text in TRICKY:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    enc = tok("Tom had")
    assert set(enc) == {"input_ids", "attention_mask"}  # no token_type_ids (ORT generate refuses them)
    assert enc["input_ids"][0] == tok.eos_token_id == tok.bos_token_id == tok.pad_token_id  # a story starts
    stream = encode_stream(tok, ["ab", "cd"])
    assert stream.dtype == np.int32 and list(stream).count(tok.eos_token_id) == 1
    assert tok.decode(stream) == "ab<|endoftext|>cd"


def test_char_tokenizer_maps_unseen_characters_to_unknown():
    tok = char_tokenizer(["abc"])
    assert len(tok) == 5  # a, b, c, <|endoftext|>, <|unk|>
    assert tok("abz", add_special_tokens=False)["input_ids"] == [0, 1, tok.unk_token_id]


def test_tokenize_stage_streams_and_report(pipeline):
    root, report = pipeline["root"], pipeline["tokenize"]
    train = np.load(root / "tok" / "train.npy")
    assert train.dtype == np.int32 and train.ndim == 1 and report["tokens"]["train"] == train.size
    assert (train == report["vocab_size"] - 2).sum() == 107  # the eos id between 108 documents
    assert report["eval_roundtrip_failures"] == 0 and report["eval_unknown_tokens"] == 0
    # One token per character against WordPiece's about one per word.
    assert report["tokens_per_word"]["story_eval"] > 4 > 2 > report["tokens_per_word"]["sentiment_eval"] > 0
    # tokenized/ holds story_train's input only: a report change must not rerun training.
    assert sorted(p.name for p in (root / "tok").iterdir()) == ["eval.npy", "tokenizer", "train.npy"]
    md = (root / "reports" / "tokenize.md").read_text()
    assert "| Once upon a time, there was a little girl named Lily. | story characters | 11 |" in md


LLMS = "LLMs are transforming AI"
SEP = " \\| "  # pieces are joined by " | " in the report's table, the pipe escaped


def table_row(md: str, text: str, tokenizer: str) -> list[str]:
    """The cells of the report table's row for `text` and the tokenizer whose name starts with `tokenizer`."""
    [row] = [line for line in md.splitlines() if line.startswith(f"| {text} | {tokenizer}")]
    return [cell.strip() for cell in row.strip("|").split(" | ")]


def wordpiece_expected(model_dir: Path, text: str) -> tuple[list[str], int]:
    from transformers import AutoTokenizer

    tokens = AutoTokenizer.from_pretrained(model_dir).tokenize(text)
    return tokens, tokens.count("[UNK]")


def test_tokenize_report_shows_both_tokenizers_pieces(pipeline, tiny_model_dir):
    """kind char: one piece per character, unknown for characters train never had; beside it the sentiment
    WordPiece (the tiny toy vocabulary knows none of these words: [UNK] each)."""
    root, sentence = pipeline["root"], LLMS
    assert sentence in pipeline["params"].story.tokenize.compare_sentences
    md = (root / "reports" / "tokenize.md").read_text()
    seen = set((root / "prepared" / "train.txt").read_text())
    _, _, words, tokens, _, unknown, pieces = table_row(md, sentence, "story characters")
    assert (words, tokens) == ("4", str(len(sentence)))
    assert int(unknown) == sum(c not in seen for c in sentence) > 0  # "LLMs" and "AI": capitals no story holds
    assert pieces.startswith("`" + SEP.join(["L", "L", "M", "s", "␣", "a"]))  # ␣: the space between words
    wp, wp_unknown = wordpiece_expected(tiny_model_dir, sentence)
    row = table_row(md, sentence, "sentiment WordPiece")
    assert row[3:] == [str(len(wp)), str(round(len(wp) / 4, 3)), str(wp_unknown), f"`{SEP.join(wp)}`"]
    assert wp_unknown == len(wp) == 4
    compared = [r for r in pipeline["tokenize"]["compare"] if r["text"] == sentence]
    assert [r["tokenizer"].split()[0] for r in compared] == ["story", "sentiment"]


def test_tokenize_report_bpe_beside_wordpiece_and_base(pipeline, story_params, tiny_model_dir, tmp_path):
    """kind bpe with story.model.base set: the trained byte-level BPE, the sentiment WordPiece and the base
    model's own tokenizer (here the tiny BERT) in one table."""
    root = pipeline["root"]
    params = story_params(
        pipeline["params"].story.prepare.source,
        tokenize__kind="bpe",
        tokenize__vocab_size=300,
        model__base=str(tiny_model_dir),
    )
    view = for_stage(params, "story_tokenize", ROOT / "dvc.yaml")
    story_tokenize.run(
        view, root / "prepared", tmp_path / "tok", tmp_path / "m.json", tmp_path / "r.json", tmp_path / "t.md"
    )
    md = (tmp_path / "t.md").read_text()
    bpe = table_row(md, LLMS, "story byte-level BPE")
    pieces = bpe[-1].strip("`").split(SEP)
    assert "".join(pieces).replace("␣", " ") == LLMS and len(pieces) == int(bpe[3]) > 4 and bpe[5] == "0"
    assert any(p.startswith("␣") for p in pieces)  # a word's leading space travels with it
    wp, wp_unknown = wordpiece_expected(tiny_model_dir, LLMS)
    for role in ("sentiment WordPiece", "base WordPiece"):
        assert table_row(md, LLMS, role)[-2:] == [str(wp_unknown), f"`{SEP.join(wp)}`"]
    assert md.count("| (eval split, 12 texts) |") == 3
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["compare_missing"] == [] and report["tokens_per_word"]["story_eval"] > 0


def test_tokenize_report_is_a_declared_out_outside_the_training_input():
    """story_train depends on tokenized/: the report lives beside it (reports/), an uncached out like
    generations.md, so that a change to the report alone does not rerun training."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    tokenize = stages["story_tokenize"]
    assert "--report outputs/story/reports/tokenize.md" in tokenize["cmd"]
    assert {"outputs/story/reports/tokenize.md": {"cache": False}} in tokenize["outs"]
    assert "outputs/story/tokenized" in stages["story_train"]["deps"]
    assert "outputs/story/reports/tokenize.md" not in stages["story_train"]["deps"]


def test_reference_bpe_gives_the_fast_tokenizers_ids(tmp_path):
    """The pure-Python BPE of bench/training/tokenizer_speed.py: the same ids as the Rust one, and back."""
    texts = stories(60, seed=3) + TRICKY
    built = bpe_tokenizer(texts, vocab_size=400, min_frequency=2)
    built.save_pretrained(tmp_path)
    reference = ReferenceBPE(tmp_path / "tokenizer.json")
    checked = [LLMS, "  two  spaces, 'quotes' it's 42 times\n\nnext", *TRICKY, *stories(5, seed=9)]
    for text in checked:
        ids = built(text, add_special_tokens=False)["input_ids"]
        assert reference.encode(text) == ids and len(ids) < len(text.encode())  # merges were applied
        assert reference.decode(ids) == text
    char_dir = tmp_path / "char"
    char_tokenizer(["abc"]).save_pretrained(char_dir)
    with pytest.raises(PipelineError, match="not a byte-level BPE"):
        ReferenceBPE(char_dir)
    with pytest.raises(PipelineError, match="no tokenizer.json"):
        ReferenceBPE(tmp_path / "missing")


# ------------------------------------------------------------------------------------------- train


def test_train_loss_falls_and_model_is_self_contained(pipeline):
    import pandas as pd
    from transformers import AutoConfig, AutoTokenizer

    root, metrics = pipeline["root"], pipeline["train"]
    curve = pd.read_csv(root / "curve" / "loss.csv")
    assert list(curve.columns) == ["step", "loss", "learning_rate"]
    vocab = pipeline["tokenize"]["vocab_size"]
    # Uniform guessing costs ln(47) = 3.85; in 60 steps a tiny GPT learns the stories' spelling well below it.
    assert curve["loss"].iloc[0] > 3.3 and metrics["eval_loss"] < 2.7 and math.log(vocab) > 3.8
    assert curve["learning_rate"].iloc[-1] < curve["learning_rate"].max() / 5  # cosine decay to min_lr
    evals = pd.read_csv(root / "curve" / "eval.csv")
    assert list(evals.columns) == ["step", "eval_loss"] and list(evals["step"]) == [30, 60]
    assert metrics["global_step"] == 60 and metrics["tokens_per_second"] > 0 and metrics["method"] == "full"
    assert metrics["trainable_parameters"] == metrics["total_parameters"] > 0
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]), rel=1e-3)
    assert AutoConfig.from_pretrained(root / "model").n_positions == 32
    assert (root / "model" / "model.safetensors").is_file()
    assert len(AutoTokenizer.from_pretrained(root / "model")) == vocab
    assert not list((root / "ckpt").glob("checkpoint-*"))


def test_lora_saves_a_merged_plain_model(pipeline, story_params, tmp_path):
    root = pipeline["root"]
    params = story_params(
        pipeline["params"].story.prepare.source, train__method="lora", train__max_steps=4, train__eval_steps=100
    )
    result = story_training.train(params, root / "tok", tmp_path / "model", tmp_path / "ckpt")
    counts = result["metrics"]
    assert 0 < counts["trainable_parameters"] < counts["total_parameters"] / 5
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved["architectures"] == ["GPT2LMHeadModel"] and not (tmp_path / "model" / "adapter_config.json").exists()


def test_resume_after_a_kill_continues_the_same_run(pipeline, story_params, tmp_path):
    import shutil

    params = story_params(
        pipeline["params"].story.prepare.source, train__max_steps=20, train__save_steps=10, train__eval_steps=100
    )
    tok = pipeline["root"] / "tok"
    straight = story_training.train(params, tok, tmp_path / "a", tmp_path / "ckpt")
    shutil.rmtree(tmp_path / "ckpt" / "checkpoint-20")  # as if killed between steps 10 and 20
    resumed = story_training.train(params, tok, tmp_path / "b", tmp_path / "ckpt")
    assert resumed["metrics"]["resumed_from_step"] == 10 and resumed["metrics"]["global_step"] == 20

    def losses(result):
        return [e["loss"] for e in result["log_history"] if "loss" in e and e["step"] > 10]

    # Random windows come from the generator state saved in the checkpoint: the same batches again.
    assert losses(resumed) == pytest.approx(losses(straight), abs=1e-4)


# ---------------------------------------------------------------------------------------- evaluate


def test_eval_blocks_and_loss():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    blocks = eval_blocks(np.arange(10, dtype=np.int32), 4)
    assert blocks.shape == (2, 4) and blocks.dtype == np.int64 and blocks[-1, -1] == 7
    with pytest.raises(PipelineError, match="story.model.context=16"):
        eval_blocks(np.arange(10), 16)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=11, n_positions=8, n_embd=16, n_layer=1, n_head=2)).eval()
    ids = np.random.default_rng(0).integers(0, 11, size=(5, 8))
    with torch.inference_mode():
        expected = model(input_ids=torch.from_numpy(ids), labels=torch.from_numpy(ids)).loss.item()
    assert mean_loss(torch_logits(model), ids, batch_size=2) == pytest.approx(expected, rel=1e-5)
    assert perplexity_of(math.log(7.0)) == pytest.approx(7.0) and perplexity_of(1e4) == math.inf


def test_evaluate_reports_and_generations(pipeline):
    report, params = pipeline["evaluate"], pipeline["params"]
    # The same loss as the Trainer's final evaluation, computed independently.
    assert report["eval_loss"] == pytest.approx(pipeline["train"]["eval_loss"], abs=1e-3)
    assert report["perplexity"] == pytest.approx(math.exp(report["eval_loss"]), rel=1e-3)
    # Per character: one per char token, two for each document break (the blank line it replaced).
    predicted = eval_blocks(np.load(pipeline["root"] / "tok" / "eval.npy"), 32)[:, 1:]
    breaks = int((predicted == pipeline["tokenize"]["vocab_size"] - 2).sum())
    assert breaks > 0 and report["eval_loss_per_char"] == pytest.approx(
        report["eval_loss"] * predicted.size / (predicted.size + breaks), rel=1e-3
    )
    assert set(report["strategies"]) == set(params.story.evaluate.strategies)
    for stats in report["strategies"].values():
        assert 0 <= stats["repetition_rate"] <= 1 and 0 < stats["distinct_1"] <= 1 and stats["mean_new_tokens"] == 12
    md = (pipeline["root"] / "generations.md").read_text()
    assert md.count("### ") == 2 * 2 * len(params.story.evaluate.strategies)  # prompts x seeds x strategies
    assert "### top_k, seed 1" in md and "**The dog**" in md


def test_evaluate_draws_attention_per_prompt(pipeline):
    from PIL import Image

    prompts = pipeline["params"].story.evaluate.prompts
    pngs = sorted((pipeline["root"] / "figures" / "attention").glob("*.png"))
    assert [p.name for p in pngs] == [f"prompt_{i:02d}.png" for i in range(len(prompts))]
    for png in pngs:
        with Image.open(png) as image:
            assert image.format == "PNG" and min(image.size) > 200


def test_evaluate_gate_refuses_high_perplexity(pipeline, story_params, tmp_path):
    strict = story_params(
        pipeline["params"].story.prepare.source,
        evaluate__max_perplexity=1.01,
        evaluate__prompts=["Tom"],
        evaluate__seeds=[0],
    )
    with pytest.raises(GateFailed, match="story.evaluate.max_perplexity=1.01"):
        story_evaluate.run(
            strict,
            pipeline["root"] / "model",
            pipeline["root"] / "tok",
            tmp_path / "e.json",
            tmp_path / "g.md",
            tmp_path / "er.json",
            tmp_path / "figures",
        )
    assert json.loads((tmp_path / "e.json").read_text())["perplexity"] > 1.01  # written before the gate
