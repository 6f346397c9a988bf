"""textops.validation: the Great Expectations suite fails on the expectation that names the problem."""

from __future__ import annotations

import pandas as pd
import pytest

from textops.errors import PipelineError
from textops.validation import Bounds, ValidationFailed, failures, render_markdown, validate_splits

LABELS = ["negative", "positive"]
BOUNDS = Bounds(labels=LABELS, min_chars=1, max_chars=200, min_class_fraction=0.1)


def frame(n_positive: int, n_negative: int, tag: str) -> pd.DataFrame:
    texts = [f"good {tag} film number {i}" for i in range(n_positive)] + [
        f"bad {tag} film number {i}" for i in range(n_negative)
    ]
    return pd.DataFrame({"text": texts, "label": ["positive"] * n_positive + ["negative"] * n_negative})


def failed(result: dict) -> list[tuple[str, str, str]]:
    """(split, expectation type, check or column) of every failed expectation."""
    return sorted(
        (c["split"], c["expectation"], c["check"] or str(c["kwargs"].get("value_set", c["kwargs"])))
        for c in result["checks"]
        if not c["success"]
    )


@pytest.fixture
def clean() -> dict[str, pd.DataFrame]:
    return {"train": frame(40, 40, "train"), "eval": frame(10, 10, "eval")}


def test_clean_splits_pass(clean):
    result = validate_splits(clean, BOUNDS)
    assert result["success"] is True
    assert failures(result) == []
    assert {c["split"] for c in result["checks"]} == {"train", "eval", "all"}
    # 6 table/column expectations + 2 balance checks per label, per split; one uniqueness check across splits.
    assert len(result["checks"]) == 2 * (6 + 2 * len(LABELS)) + 1
    assert all(c["success"] for c in result["checks"])


def test_one_class_holding_95_percent_fails_class_balance(clean):
    splits = dict(clean, train=frame(76, 4, "train"))
    result = validate_splits(splits, BOUNDS)
    assert result["success"] is False
    assert failed(result) == [
        ("train", "expect_column_values_to_be_in_set", "share of 'negative' >= 0.1"),
        ("train", "expect_column_values_to_not_be_in_set", "share of 'positive' <= 0.9"),
    ]
    messages = failures(result)
    assert len(messages) == 2
    assert all(m.startswith("split 'train': ") for m in messages)
    assert "(observed: 76 unexpected (95.00%))" in messages[0]


def test_class_share_at_the_bound_passes(clean):
    splits = dict(clean, train=frame(72, 8, "train"))  # exactly 10% negative
    result = validate_splits(splits, BOUNDS)
    assert failed(result) == []


def test_text_over_max_chars_fails_the_length_expectation(clean):
    train = clean["train"].copy()
    train.loc[3, "text"] = "x" * 201
    result = validate_splits(dict(clean, train=train), BOUNDS)
    assert result["success"] is False
    checks = [c for c in result["checks"] if not c["success"]]
    assert [(c["split"], c["expectation"]) for c in checks] == [("train", "expect_column_value_lengths_to_be_between")]
    assert checks[0]["kwargs"]["max_value"] == 200
    assert checks[0]["observed"] == "1 unexpected (1.25%)"


def test_whitespace_only_text_fails_the_blank_text_expectation(clean):
    train = clean["train"].copy()
    train.loc[0, "text"] = "   "
    result = validate_splits(dict(clean, train=train), BOUNDS)
    assert [(c["split"], c["expectation"]) for c in result["checks"] if not c["success"]] == [
        ("train", "expect_column_values_to_not_match_regex")
    ]


def test_same_text_in_train_and_eval_fails_cross_split_uniqueness(clean):
    eval_ = clean["eval"].copy()
    eval_.loc[0, "text"] = clean["train"].loc[0, "text"]  # a positive text in both splits
    result = validate_splits(dict(clean, eval=eval_), BOUNDS)
    assert result["success"] is False
    assert failed(result) == [("all", "expect_column_values_to_be_unique", "no text in two rows or two splits")]
    assert failures(result) == [
        "split 'all': expect_column_values_to_be_unique no text in two rows or two splits failed "
        "(observed: 2 unexpected (2.00%))"
    ]


def test_duplicate_inside_one_split_also_fails_uniqueness(clean):
    train = clean["train"].copy()
    train.loc[1, "text"] = train.loc[0, "text"]
    result = validate_splits(dict(clean, train=train), BOUNDS)
    assert failed(result) == [("all", "expect_column_values_to_be_unique", "no text in two rows or two splits")]


def test_label_outside_the_label_set_fails(clean):
    eval_ = clean["eval"].copy()
    eval_.loc[0, "label"] = "neutral"
    result = validate_splits(dict(clean, eval=eval_), BOUNDS)
    assert result["success"] is False
    bad = [c for c in result["checks"] if not c["success"]]
    assert [(c["split"], c["expectation"], c["kwargs"]["value_set"]) for c in bad] == [
        ("eval", "expect_column_values_to_be_in_set", LABELS)
    ]
    assert bad[0]["check"] == ""  # the label-set check, not a class-share check
    assert bad[0]["examples"] == ["neutral"]


def test_markdown_report_marks_the_failed_expectation(clean):
    eval_ = clean["eval"].copy()
    eval_.loc[0, "label"] = "neutral"
    result = validate_splits(dict(clean, eval=eval_), BOUNDS)
    counts = {
        "splits": {"train": {"kept": 80, "quarantined": 0}, "eval": {"kept": 20, "quarantined": 2}},
        "quarantine_reasons": {"unknown label": 2},
    }
    md = render_markdown(result, counts)
    assert "Result: **FAILED**" in md
    assert "| eval | 20 | 2 |" in md
    assert "- unknown label: 2" in md
    no_rows = [line for line in md.splitlines() if "**NO**" in line]
    assert len(no_rows) == 1
    assert no_rows[0].startswith("| eval | expect_column_values_to_be_in_set(label) | value_set=")


def test_validation_failed_is_a_pipeline_error():
    assert issubclass(ValidationFailed, PipelineError)
