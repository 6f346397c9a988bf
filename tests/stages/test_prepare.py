"""stages.sentiment_prepare and textops.sources: every bad input ends in the quarantine with its reason and line,
or stops the stage with an error that names the file; nothing is lost without a trace."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from stages.sentiment_prepare import main, prepare, run
from textops.errors import PipelineError
from textops.params import Params, parse_params
from textops.sources import SourceError
from textops.validation import ValidationFailed

ROOT = Path(__file__).resolve().parents[2]
REPO_RAW = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
HEADER = "sentence\tlabel"


# ---------------------------------------------------------------------------------------------- helpers


def good_rows(n_per_class: int = 40, offset: int = 0) -> list[tuple[str, str]]:
    """Distinct rows, classes interleaved: data row k sits on file line k + 2 of a TSV (line 1 is the header)."""
    rows = []
    for i in range(offset, offset + n_per_class):
        rows.append((f"good film number {i}", "1"))
        rows.append((f"bad film number {i}", "0"))
    return rows


def tsv_lines(rows: list[tuple[str, str]]) -> list[str]:
    return [f"{text}\t{label}" for text, label in rows]


def write_tsv(path: Path, lines: list[str], header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    return path


def write_tsv_bytes(path: Path, lines: list[bytes], header: bytes = HEADER.encode()) -> Path:
    path.write_bytes(b"\n".join([header, *lines]) + b"\n")
    return path


def jsonl_lines(rows: list[tuple[str, str]]) -> list[str]:
    return [json.dumps({"sentence": text, "label": int(label)}) for text, label in rows]


def make_params(source: Path | str, **prepare_overrides) -> Params:
    raw = copy.deepcopy(REPO_RAW)
    raw["sentiment"]["prepare"]["source"] = str(source)
    raw["sentiment"]["prepare"].update(prepare_overrides)
    return parse_params(raw)


def kept_rows(result: dict) -> pd.DataFrame:
    return pd.concat([result["splits"]["train"], result["splits"]["eval"]], ignore_index=True)


def the_one_quarantined(result: dict):
    assert len(result["quarantine"]) == 1, [r.reason for r in result["quarantine"]]
    return result["quarantine"][0]


# ------------------------------------------------------------------------------------- row problems


def test_clean_tsv_keeps_every_row_and_passes_validation(tmp_path):
    rows = good_rows()
    src = write_tsv(tmp_path / "reviews.tsv", tsv_lines(rows))
    result = prepare(make_params(src))
    assert result["quarantine"] == []
    kept = kept_rows(result)
    expected = {(t, "positive" if y == "1" else "negative") for t, y in rows}
    assert set(zip(kept["text"], kept["label"])) == expected
    assert len(kept) == 80
    assert result["validation"]["success"] is True
    assert result["report"]["validation_success"] is True
    assert result["report"]["quarantined"] == 0


def test_tsv_row_with_three_fields_is_quarantined_as_malformed(tmp_path):
    lines = tsv_lines(good_rows())
    lines.insert(10, "good film\twith a stray tab\t1")  # data row 10 -> file line 12
    src = write_tsv(tmp_path / "reviews.tsv", lines)
    result = prepare(make_params(src))
    bad = the_one_quarantined(result)
    assert bad.reason.startswith("malformed row")
    assert bad.reason == "malformed row: 3 fields, header has 2"
    assert bad.line == 12
    assert bad.file == str(src)
    assert bad.split == "train"
    assert len(kept_rows(result)) == 80
    assert "good film" not in set(kept_rows(result)["text"])


def test_jsonl_line_that_is_not_json_is_quarantined_as_malformed(tmp_path):
    lines = jsonl_lines(good_rows())
    lines.insert(5, '{"sentence": "cut off half way", "label": 1')  # JSONL has no header: file line 6
    src = tmp_path / "reviews.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = prepare(make_params(src))
    bad = the_one_quarantined(result)
    assert bad.reason.startswith("malformed row: not JSON")
    assert bad.line == 6
    assert bad.file == str(src)
    assert len(kept_rows(result)) == 80


def test_unknown_label_is_quarantined(tmp_path):
    lines = tsv_lines(good_rows())
    lines.insert(0, "an oddly rated film\t7")  # file line 2
    src = write_tsv(tmp_path / "reviews.tsv", lines)
    result = prepare(make_params(src))
    bad = the_one_quarantined(result)
    assert bad.reason.startswith("unknown label '7'")
    assert "prepare.label_map" in bad.reason
    assert (bad.line, bad.text, bad.label) == (2, "an oddly rated film", "7")
    assert len(kept_rows(result)) == 80
    assert result["report"]["quarantine_reasons"] == {"unknown label": 1}


def test_label_names_are_accepted_as_well_as_raw_labels(tmp_path):
    lines = tsv_lines(good_rows())
    lines[0] = "good film number 0\tpositive"
    lines[1] = "bad film number 0\tnegative"
    src = write_tsv(tmp_path / "reviews.tsv", lines)
    result = prepare(make_params(src))
    assert result["quarantine"] == []
    kept = kept_rows(result).set_index("text")["label"]
    assert kept["good film number 0"] == "positive"
    assert kept["bad film number 0"] == "negative"


@pytest.mark.parametrize(
    "line, reason",
    [
        ("\t1", "empty text"),
        ("   \t0", "whitespace-only text"),
    ],
)
def test_empty_and_whitespace_only_text_is_quarantined(tmp_path, line, reason):
    lines = tsv_lines(good_rows())
    lines.insert(20, line)  # file line 22
    src = write_tsv(tmp_path / "reviews.tsv", lines)
    result = prepare(make_params(src))
    bad = the_one_quarantined(result)
    assert bad.reason == reason
    assert bad.line == 22
    assert len(kept_rows(result)) == 80


def test_undecodable_bytes_are_quarantined_and_other_lines_kept(tmp_path):
    lines = [line.encode() for line in tsv_lines(good_rows())]
    lines.insert(3, b"caf\xe9 ok\t1")  # Latin-1 e-acute: not UTF-8; file line 5
    src = write_tsv_bytes(tmp_path / "reviews.tsv", lines)
    result = prepare(make_params(src))
    bad = the_one_quarantined(result)
    assert bad.reason.startswith("undecodable bytes")
    assert bad.line == 5
    assert bad.file == str(src)
    assert bad.text.startswith("caf")
    kept = kept_rows(result)
    assert len(kept) == 80
    assert set(kept["text"]) == {t for t, _ in good_rows()}


def test_a_utf8_bom_and_crlf_line_ends_are_not_problems(tmp_path):
    src = tmp_path / "reviews.tsv"
    src.write_bytes(b"\xef\xbb\xbf" + "\r\n".join([HEADER, *tsv_lines(good_rows())]).encode() + b"\r\n")
    result = prepare(make_params(src))
    assert result["quarantine"] == []
    assert set(kept_rows(result)["text"]) == {t for t, _ in good_rows()}


# ---------------------------------------------------------------------- problems with the whole source


def test_missing_column_raises_source_error_naming_file_and_column(tmp_path):
    src = write_tsv(tmp_path / "reviews.tsv", tsv_lines(good_rows()), header="sentence\tstars")
    with pytest.raises(SourceError) as info:
        prepare(make_params(src))
    assert isinstance(info.value, PipelineError)
    message = str(info.value)
    assert message.startswith(f"{src}: missing column(s) ['label']")
    assert "prepare.label_column" in message


def test_jsonl_missing_column_raises_source_error_naming_file_and_column(tmp_path):
    src = tmp_path / "reviews.jsonl"
    src.write_text(
        "".join(json.dumps({"sentence": t, "stars": int(y)}) + "\n" for t, y in good_rows()), encoding="utf-8"
    )
    with pytest.raises(SourceError) as info:
        prepare(make_params(src))
    assert str(info.value).startswith(f"{src}: missing column(s) ['label']")


def test_source_error_is_a_pipeline_error():
    assert issubclass(SourceError, PipelineError)
    assert issubclass(ValidationFailed, PipelineError)


@pytest.mark.parametrize("suffix", [".tsv", ".csv", ".jsonl"])
def test_empty_file_raises_naming_the_file(tmp_path, suffix):
    src = tmp_path / f"reviews{suffix}"
    src.write_bytes(b"")
    with pytest.raises(SourceError) as info:
        prepare(make_params(src))
    assert str(info.value) == f"{src}: file is empty"


def test_header_only_file_raises_naming_the_file(tmp_path):
    src = write_tsv(tmp_path / "reviews.tsv", [])
    with pytest.raises(PipelineError) as info:
        prepare(make_params(src))
    assert str(src) in str(info.value)


def test_header_only_train_file_in_a_folder_raises_naming_the_file(tmp_path):
    folder = tmp_path / "glue"
    folder.mkdir()
    train = write_tsv(folder / "train.tsv", [])
    write_tsv(folder / "dev.tsv", tsv_lines(good_rows(10)))
    with pytest.raises(ValidationFailed) as info:
        prepare(make_params(folder))
    assert str(info.value).startswith(f"{train}: split 'train' has no usable rows")


def test_source_that_does_not_exist_raises_source_error_naming_prepare_source(tmp_path):
    missing = tmp_path / "nope.tsv"
    with pytest.raises(SourceError) as info:
        prepare(make_params(missing))
    message = str(info.value)
    assert message.startswith(f"sentiment.prepare.source '{missing}': no such file or folder")


def test_unsupported_file_type_raises_naming_the_file(tmp_path):
    src = tmp_path / "reviews.txt"
    src.write_text("sentence\tlabel\ngood\t1\n", encoding="utf-8")
    with pytest.raises(SourceError) as info:
        prepare(make_params(src))
    assert str(info.value).startswith(f"{src}: unsupported file type '.txt'")


# -------------------------------------------------------------------------------------- duplicates


def test_text_in_train_and_dev_is_removed_from_train_as_leakage(tmp_path):
    folder = tmp_path / "glue"
    folder.mkdir()
    shared = "a film that sits in both files"
    train_lines = tsv_lines(good_rows(40))
    train_lines.insert(7, f"{shared}\t1")  # train.tsv line 9
    dev_lines = tsv_lines(good_rows(10, offset=100))
    dev_lines.insert(3, f"{shared}\t1")
    train = write_tsv(folder / "train.tsv", train_lines)
    dev = write_tsv(folder / "dev.tsv", dev_lines)
    result = prepare(make_params(folder))

    assert result["report"]["source_files"] == {"train": str(train), "eval": str(dev)}
    assert shared not in set(result["splits"]["train"]["text"])
    assert shared in set(result["splits"]["eval"]["text"])
    assert len(result["splits"]["train"]) == 80
    assert len(result["splits"]["eval"]) == 21
    bad = the_one_quarantined(result)
    assert "leakage" in bad.reason
    assert (bad.split, bad.file, bad.line, bad.text) == ("train", str(train), 9, shared)
    assert result["report"]["quarantine_reasons"] == {"text also in the eval split": 1}


def test_duplicate_text_within_a_split_is_quarantined(tmp_path):
    rows = good_rows()  # "good film number 5" is data row 10 -> line 12
    lines = tsv_lines(rows) + ["good film number 5\t1", "  bad film number 6  \t0"]  # lines 82, 83
    src = write_tsv(tmp_path / "reviews.tsv", lines)
    result = prepare(make_params(src))

    quarantine = sorted(result["quarantine"], key=lambda r: r.line)
    assert [(r.line, r.reason) for r in quarantine] == [
        (82, "duplicate text in split 'train' (first at line 12)"),
        (83, "duplicate text in split 'train' (first at line 15)"),  # equal once stripped
    ]
    kept = kept_rows(result)
    assert len(kept) == 80
    assert list(kept["text"]).count("good film number 5") == 1
    assert list(kept["text"]).count("bad film number 6") == 1
    assert result["report"]["quarantine_reasons"] == {"duplicate text": 2}


# ------------------------------------------------------------------------------------ bad fraction


@pytest.mark.parametrize(
    "bad_line",
    [b"strange film\t7", b"three\tfields\t1", b"caf\xe9\t1"],
    ids=["unknown-label", "malformed", "undecodable"],
)
def test_more_bad_rows_than_max_bad_fraction_stops_the_stage(tmp_path, bad_line):
    lines = [line.encode() for line in tsv_lines(good_rows())]
    lines += [bad_line.replace(b"film", b"film %d" % i) if b"film" in bad_line else bad_line for i in range(5)]
    src = write_tsv_bytes(tmp_path / "reviews.tsv", lines)  # 5 of 85 rows = 5.9% > 0.05
    with pytest.raises(ValidationFailed) as info:
        prepare(make_params(src))
    message = str(info.value)
    assert message.startswith(f"{src}: 5 of 85 rows (5.9%) are unusable")
    assert "prepare.max_bad_fraction=0.05" in message


def test_bad_rows_up_to_max_bad_fraction_are_tolerated(tmp_path):
    lines = tsv_lines(good_rows()) + [f"strange film {i}\t7" for i in range(4)]  # 4 of 84 = 4.8%
    src = write_tsv(tmp_path / "reviews.tsv", lines)
    result = prepare(make_params(src))
    assert sorted(r.line for r in result["quarantine"]) == [82, 83, 84, 85]
    assert all(r.reason.startswith("unknown label '7'") for r in result["quarantine"])
    assert len(kept_rows(result)) == 80


def test_max_bad_fraction_is_read_from_params(tmp_path):
    lines = tsv_lines(good_rows()) + [f"strange film {i}\t7" for i in range(4)]  # 4.8%
    src = write_tsv(tmp_path / "reviews.tsv", lines)
    with pytest.raises(ValidationFailed, match=r"prepare\.max_bad_fraction=0\.01"):
        prepare(make_params(src, max_bad_fraction=0.01))


# ---------------------------------------------------------------------------- nothing silently lost


def test_every_data_row_is_either_kept_or_quarantined(tmp_path):
    lines = [line.encode() for line in tsv_lines(good_rows())]
    problems = {  # file line -> reason key
        3: (b"three\tfields\t1", "malformed row"),
        10: (b"some rated film\t7", "unknown label"),
        20: (b"\t1", "empty text"),
        30: (b"  \t0", "whitespace-only text"),
        40: (b"caf\xe9 ok\t1", "undecodable bytes"),
        50: (b"", "malformed row"),  # a blank line inside the file
        60: (b"x" * 2001 + b"\t1", "text too long"),
        70: (b"good film number 3\t1", "duplicate text"),
    }
    for line_number in sorted(problems):
        lines.insert(line_number - 2, problems[line_number][0])
    src = write_tsv_bytes(tmp_path / "reviews.tsv", lines)
    n_data_rows = len(src.read_bytes().rstrip(b"\n").split(b"\n")) - 1
    assert n_data_rows == 88

    result = prepare(make_params(src, max_bad_fraction=0.2))

    kept = kept_rows(result)
    assert len(kept) + len(result["quarantine"]) == n_data_rows
    quarantined = {r.line: r.reason for r in result["quarantine"]}
    assert len(quarantined) == len(result["quarantine"])  # one entry per line
    assert {line: reason for line, reason in quarantined.items() if not reason.startswith(problems[line][1])} == {}
    assert set(quarantined) == set(problems)
    kept_lines = set(kept["line"])
    assert kept_lines.isdisjoint(quarantined)
    assert kept_lines | set(quarantined) == set(range(2, n_data_rows + 2))
    assert set(kept["file"]) == {str(src)}


# ---------------------------------------------------------------------------------- the eval split


def test_source_without_eval_split_gets_a_stratified_eval_split(tmp_path):
    rows = good_rows()
    src = write_tsv(tmp_path / "reviews.tsv", tsv_lines(rows))
    result = prepare(make_params(src, eval_fraction=0.25))
    train, eval_ = result["splits"]["train"], result["splits"]["eval"]
    assert len(eval_) == 20
    assert eval_["label"].value_counts().to_dict() == {"negative": 10, "positive": 10}
    assert train["label"].value_counts().to_dict() == {"negative": 30, "positive": 30}
    assert set(train["text"]).isdisjoint(eval_["text"])
    assert set(train["text"]) | set(eval_["text"]) == {t for t, _ in rows}
    assert result["report"]["rows"] == {"train": 60, "eval": 20}
    assert result["report"]["source_files"] == {"train": str(src)}


def test_eval_split_is_the_same_for_the_same_seed(tmp_path):
    src = write_tsv(tmp_path / "reviews.tsv", tsv_lines(good_rows()))
    first = prepare(make_params(src))["splits"]["eval"]
    second = prepare(make_params(src))["splits"]["eval"]
    assert list(first["text"]) == list(second["text"])


def test_max_train_rows_subsamples_train_and_reports_the_rest(tmp_path):
    src = write_tsv(tmp_path / "reviews.tsv", tsv_lines(good_rows()))
    result = prepare(make_params(src, max_train_rows=50))
    assert len(result["splits"]["train"]) == 50
    assert len(result["splits"]["eval"]) == 16
    assert result["report"]["train_rows_available"] == 64
    assert result["report"]["train_rows_not_sampled"] == 14


# ------------------------------------------------------------------------------------------ formats


def write_source(path: Path, rows: list[tuple[str, str]]) -> Path:
    suffix = path.suffix
    if suffix == ".tsv":
        write_tsv(path, tsv_lines(rows))
    elif suffix == ".csv":
        with open(path, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["sentence", "label"])
            writer.writerows(rows)
    elif suffix == ".jsonl":
        path.write_text("\n".join(jsonl_lines(rows)) + "\n", encoding="utf-8")
    elif suffix == ".parquet":
        pd.DataFrame({"sentence": [t for t, _ in rows], "label": [int(y) for _, y in rows]}).to_parquet(path)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_csv_jsonl_and_parquet_read_the_same_rows_as_tsv(tmp_path, suffix):
    rows = good_rows()
    rows.insert(5, ('good, "quoted" film , with commas', "1"))  # needs CSV quoting; plain text in TSV
    tsv = prepare(make_params(write_source(tmp_path / "reviews.tsv", rows)))
    other = prepare(make_params(write_source(tmp_path / f"reviews{suffix}", rows)))
    assert other["quarantine"] == tsv["quarantine"] == []
    for split in ("train", "eval"):
        assert list(zip(other["splits"][split]["text"], other["splits"][split]["label"])) == list(
            zip(tsv["splits"][split]["text"], tsv["splits"][split]["label"])
        )
    assert 'good, "quoted" film , with commas' in set(kept_rows(other)["text"])
    assert len(kept_rows(other)) == 81


def test_parquet_null_text_is_quarantined_with_its_row_number(tmp_path):
    rows = good_rows()
    frame = pd.DataFrame({"sentence": [t for t, _ in rows], "label": [int(y) for _, y in rows]})
    frame.loc[4, "sentence"] = None  # row 5 (1-based)
    src = tmp_path / "reviews.parquet"
    frame.to_parquet(src)
    result = prepare(make_params(src))
    bad = the_one_quarantined(result)
    assert bad.reason == "empty text (null)"
    assert bad.line == 5
    assert len(kept_rows(result)) == 79


def test_parquet_null_label_quarantines_only_that_row(tmp_path):
    rows = good_rows()
    frame = pd.DataFrame(
        {"sentence": [t for t, _ in rows] + ["a film with no rating"], "label": [int(y) for _, y in rows] + [None]}
    )
    src = tmp_path / "reviews.parquet"
    frame.to_parquet(src)
    result = prepare(make_params(src))
    bad = the_one_quarantined(result)
    assert bad.reason.startswith("unknown label ''")
    assert bad.line == 81
    assert len(kept_rows(result)) == 80


def test_too_few_rows_for_an_eval_split_is_a_user_error(tmp_path):
    src = write_tsv(tmp_path / "reviews.tsv", tsv_lines(good_rows(2)) + ["good film extra\t1"])  # 5 rows
    try:
        result = prepare(make_params(src))
    except PipelineError as error:
        assert str(src) in str(error)
    else:
        assert len(result["splits"]["eval"]) >= 1


# ---------------------------------------------------------------------------------- run() and main()


def test_run_writes_splits_quarantine_validation_and_metrics(tmp_path):
    lines = tsv_lines(good_rows())
    lines.insert(4, "an oddly rated film\t7")  # line 6
    src = write_tsv(tmp_path / "reviews.tsv", lines)
    out, metrics = tmp_path / "prepared", tmp_path / "metrics" / "prepare.json"
    run(make_params(src), out, tmp_path / "headline.json", metrics)

    assert sorted(p.name for p in out.iterdir()) == [
        "eval.parquet",
        "quarantine.jsonl",
        "train.parquet",
        "validation.json",
        "validation.md",
    ]
    train, eval_ = pd.read_parquet(out / "train.parquet"), pd.read_parquet(out / "eval.parquet")
    assert list(train.columns) == ["text", "label"] == list(eval_.columns)
    assert (len(train), len(eval_)) == (64, 16)
    assert set(train["text"]) | set(eval_["text"]) == {t for t, _ in good_rows()}
    assert set(train["label"]) == set(eval_["label"]) == {"negative", "positive"}

    records = [json.loads(line) for line in (out / "quarantine.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(records) == 1
    record = records[0]
    assert {"split", "file", "line", "reason"} <= set(record)
    assert (record["split"], record["file"], record["line"]) == ("train", str(src), 6)
    assert record["reason"].startswith("unknown label '7'")
    assert (record["text"], record["label"]) == ("an oddly rated film", "7")

    validation = json.loads((out / "validation.json").read_text(encoding="utf-8"))
    assert validation["success"] is True
    assert {c["split"] for c in validation["checks"]} == {"train", "eval", "all"}
    assert all(c["success"] for c in validation["checks"])

    report = (out / "validation.md").read_text(encoding="utf-8")
    assert "Result: **PASSED**" in report
    assert "| train | 64 | 1 |" in report
    assert "| eval | 16 | 0 |" in report
    assert "- unknown label: 1" in report

    m = json.loads(metrics.read_text(encoding="utf-8"))
    assert m["rows"] == {"train": 64, "eval": 16}
    assert m["quarantined"] == 1
    assert m["quarantine_reasons"] == {"unknown label": 1}
    assert m["class_counts"] == {"train": {"negative": 32, "positive": 32}, "eval": {"negative": 8, "positive": 8}}
    assert m["validation_success"] is True
    assert len(m["data_hash"]) == 64


def test_run_writes_the_report_then_fails_when_validation_fails(tmp_path):
    # 76 positive, 4 negative: the negative class holds 5% < prepare.min_class_fraction=0.1.
    rows = [(f"good film number {i}", "1") for i in range(76)] + [(f"bad film number {i}", "0") for i in range(4)]
    src = write_tsv(tmp_path / "reviews.tsv", tsv_lines(rows))
    out, metrics = tmp_path / "prepared", tmp_path / "prepare.json"
    with pytest.raises(ValidationFailed) as info:
        run(make_params(src), out, tmp_path / "headline.json", metrics)
    message = str(info.value)
    assert message.startswith(f"data validation failed for {src}:")
    assert "split 'train': expect_column_values_to_be_in_set share of 'negative' >= 0.1 failed" in message
    assert str(out / "validation.md") in message
    assert "Result: **FAILED**" in (out / "validation.md").read_text(encoding="utf-8")
    assert json.loads(metrics.read_text(encoding="utf-8"))["validation_success"] is False


def write_params_file(path: Path, source: Path | str, **prepare_overrides) -> Path:
    raw = copy.deepcopy(REPO_RAW)
    raw["sentiment"]["prepare"]["source"] = str(source)
    raw["sentiment"]["prepare"].update(prepare_overrides)
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def test_main_with_a_nonexistent_source_exits_1_with_a_short_error(tmp_path, capsys):
    missing = tmp_path / "no-such-data.tsv"
    params_file = write_params_file(tmp_path / "params.yaml", missing)
    out, metrics = tmp_path / "prepared", tmp_path / "prepare.json"
    code = main(
        [
            "--params",
            str(params_file),
            "--out",
            str(out),
            "--metrics",
            str(tmp_path / "headline.json"),
            "--report-file",
            str(metrics),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith(
        f"error in stage 'sentiment_prepare': sentiment.prepare.source '{missing}': no such file or folder"
    )
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists() and not metrics.exists()


def test_main_with_an_unknown_params_key_exits_1(tmp_path, capsys):
    src = write_tsv(tmp_path / "reviews.tsv", tsv_lines(good_rows()))
    params_file = write_params_file(tmp_path / "params.yaml", src, max_bad_fracton=0.1)
    code = main(
        [
            "--params",
            str(params_file),
            "--out",
            str(tmp_path / "out"),
            "--metrics",
            str(tmp_path / "m.json"),
            "--report-file",
            str(tmp_path / "r.json"),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("error in stage 'sentiment_prepare': ")
    assert "unknown key 'sentiment.prepare.max_bad_fracton'" in err
    assert "Traceback" not in err


def test_main_on_good_data_exits_0_and_writes_outputs(tmp_path, capsys):
    src = write_tsv(tmp_path / "reviews.tsv", tsv_lines(good_rows()))
    params_file = write_params_file(tmp_path / "params.yaml", src)
    out, metrics = tmp_path / "prepared", tmp_path / "prepare.json"
    code = main(
        [
            "--params",
            str(params_file),
            "--out",
            str(out),
            "--metrics",
            str(tmp_path / "headline.json"),
            "--report-file",
            str(metrics),
        ]
    )
    assert code == 0
    assert "error" not in capsys.readouterr().err
    assert json.loads(metrics.read_text(encoding="utf-8"))["rows"] == {"train": 64, "eval": 16}
    assert (out / "train.parquet").is_file() and (out / "eval.parquet").is_file()
