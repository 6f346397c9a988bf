"""sentiment_tokenize's markdown report (textops.tokenizers, shared with story_tokenize) on tiny data: the model's
WordPiece beside a byte-level BPE trained on the sentiment train split; and the check of its params."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
from transformers import AutoTokenizer

from conftest import ROOT
from stages import sentiment_prepare, sentiment_tokenize
from textops.params import ParamsError, for_stage, parse_params
from textops.tokenizers import train_byte_level_bpe

LLMS = "LLMs are transforming AI"
KNOWN = "the film was good"  # every word in the tiny model's toy vocabulary
SEP = " \\| "  # pieces are joined by " | " in the report's table, the pipe escaped
WORDPIECE = "sentiment WordPiece"
BPE = "byte-level BPE (sentiment train split)"


def cells(md: str, text: str, tokenizer: str = WORDPIECE) -> list[str]:
    [row] = [line for line in md.splitlines() if line.startswith(f"| {text} | {tokenizer} |")]
    return [cell.strip() for cell in row.strip("|").split(" | ")]


def test_sentiment_tokenize_report_shows_the_pieces(make_params, tiny_model_dir, tmp_path):
    params = make_params(tokenize__compare_sentences=[LLMS, KNOWN])

    def view(stage):
        return for_stage(params, stage, ROOT / "dvc.yaml")

    sentiment_prepare.run(view("sentiment_prepare"), tmp_path / "prepared", tmp_path / "pm.json", tmp_path / "p.json")
    sentiment_tokenize.run(
        view("sentiment_tokenize"),
        tmp_path / "prepared",
        tmp_path / "tok",
        tmp_path / "tm.json",
        tmp_path / "t.json",
        tmp_path / "reports" / "tokenize.md",
    )
    md = (tmp_path / "reports" / "tokenize.md").read_text()
    wordpiece = AutoTokenizer.from_pretrained(tiny_model_dir)
    for text in (LLMS, KNOWN):
        expected = wordpiece.tokenize(text)
        row = cells(md, text)
        assert row[1] == WORDPIECE and row[2] == str(len(text.split()))
        assert row[3:] == [
            str(len(expected)),
            str(round(len(expected) / len(text.split()), 3)),
            str(expected.count("[UNK]")),
            f"`{SEP.join(expected)}`",
        ]
    # The toy vocabulary knows none of the first sentence's words and all of the second's.
    assert cells(md, LLMS)[5] == str(len(LLMS.split())) and cells(md, KNOWN)[5:] == [
        "0",
        f"`{SEP.join(KNOWN.split())}`",
    ]
    report = json.loads((tmp_path / "t.json").read_text())
    for tokenizer in (WORDPIECE, BPE):
        eval_row = cells(md, f"(eval split, {report['eval']['texts']} texts)", tokenizer)
        assert eval_row[5] == "0" and eval_row[-1] == "-"  # the tiny data uses the toy words only
    assert f"train {report['train']['truncated']} of {report['train']['texts']}" in md
    headline = {"truncated_fraction": report["train"]["truncated_fraction"]}
    assert json.loads((tmp_path / "tm.json").read_text()) == headline  # the headline metrics as before


def test_compare_sentences_must_hold_text(repo_params_raw):
    raw = copy.deepcopy(repo_params_raw)
    raw["sentiment"]["tokenize"]["compare_sentences"] = ["fine", "  "]
    with pytest.raises(ParamsError, match=r"sentiment\.tokenize\.compare_sentences\.1"):
        parse_params(raw)
    del raw["sentiment"]["tokenize"]["compare_sentences"]
    with pytest.raises(ParamsError, match="missing key 'sentiment.tokenize.compare_sentences'"):
        parse_params(raw)


@pytest.mark.parametrize("key", ["bpe_vocab_size", "bpe_min_frequency"])
def test_the_report_bpe_sizes_have_no_default(repo_params_raw, key):
    raw = copy.deepcopy(repo_params_raw)
    del raw["sentiment"]["tokenize"][key]
    with pytest.raises(ParamsError, match=f"missing key 'sentiment.tokenize.{key}'"):
        parse_params(raw)


def test_sentiment_tokenize_report_sets_a_bpe_trained_on_its_train_split_beside_the_wordpiece(
    make_params, tiny_model_dir, tmp_path
):
    """The same table holds the WordPiece's pieces and those of a byte-level BPE trained on the sentiment train
    split (sentiment.tokenize.bpe_*), not the story task's; the tokenized outputs stay the WordPiece's."""
    params = make_params(tokenize__compare_sentences=[LLMS], tokenize__bpe_vocab_size=300)

    def view(stage):
        return for_stage(params, stage, ROOT / "dvc.yaml")

    prepared, out, md_path = tmp_path / "prepared", tmp_path / "tok", tmp_path / "reports" / "tokenize.md"
    sentiment_prepare.run(view("sentiment_prepare"), prepared, tmp_path / "pm.json", tmp_path / "p.json")
    sentiment_tokenize.run(
        view("sentiment_tokenize"), prepared, out, tmp_path / "tm.json", tmp_path / "t.json", md_path
    )
    md = md_path.read_text()

    # The BPE as the stage trains it: the prepared train split, the params' vocabulary size and min frequency.
    train = list(pd.read_parquet(prepared / "train.parquet")["text"])
    t = params.sentiment.tokenize
    bpe = train_byte_level_bpe(train, t.bpe_vocab_size, t.bpe_min_frequency)
    ids = bpe.encode(LLMS).ids
    bpe_pieces = [bpe.decode([i]).replace(" ", "␣") for i in ids]
    assert "".join(bpe_pieces).replace("␣", " ") == LLMS and len(bpe_pieces) > 4
    wp_pieces = AutoTokenizer.from_pretrained(tiny_model_dir).tokenize(LLMS)

    assert cells(md, LLMS, BPE)[2:] == [
        "4",
        str(len(bpe_pieces)),
        str(round(len(bpe_pieces) / 4, 3)),
        "0",  # byte-level: nothing is unknown
        f"`{SEP.join(bpe_pieces)}`",
    ]
    assert cells(md, LLMS, WORDPIECE)[-1] == f"`{SEP.join(wp_pieces)}`"
    table = [line for line in md.splitlines() if line.startswith(f"| {LLMS} |")]
    assert [line.split(" | ")[1] for line in table] == [WORDPIECE, BPE]  # one table, a row each
    assert "trained on the sentiment train split" in md and "the model still uses the WordPiece" in md

    report = json.loads((tmp_path / "t.json").read_text())
    assert report["bpe"]["train_texts"] == len(train) and report["bpe"]["vocab_size"] == bpe.get_vocab_size()
    assert f"vocabulary {bpe.get_vocab_size()} of sentiment.tokenize.bpe_vocab_size=300" in md
    # The BPE is for the report only: training reads the WordPiece's ids, and nothing else lands in --out.
    assert sorted(p.name for p in out.iterdir()) == ["eval.parquet", "train.parquet"]
    wordpiece = AutoTokenizer.from_pretrained(tiny_model_dir)
    first = pd.read_parquet(out / "train.parquet")["input_ids"].iloc[0].tolist()
    assert first == wordpiece(train[0], truncation=True, max_length=params.sentiment.model.max_length)["input_ids"]
