"""textops.params: params.yaml loads into typed sections; unknown keys and bad values fail by dotted name."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from textops.errors import PipelineError
from textops.params import ParamsError, UndeclaredParam, declared_keys, for_stage, load_params, parse_params

ROOT = Path(__file__).resolve().parents[2]
REPO_PARAMS_FILE = ROOT / "params.yaml"


@pytest.fixture
def raw() -> dict:
    """A fresh, mutable copy of the repository's params.yaml."""
    return copy.deepcopy(yaml.safe_load(REPO_PARAMS_FILE.read_text(encoding="utf-8")))


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def test_params_error_is_a_pipeline_error():
    # The stage CLI prints PipelineErrors without a traceback; params errors must be among them.
    assert issubclass(ParamsError, PipelineError)


def test_repository_params_yaml_loads():
    params = load_params(REPO_PARAMS_FILE)
    assert params.sentiment.labels == ["negative", "positive"]
    assert params.sentiment.prepare.source == "data/sample/sentiment.tsv"
    # YAML's `"0": negative` and `0: negative` both arrive as text keys.
    assert params.sentiment.prepare.label_map == {"0": "negative", "1": "positive"}
    assert params.sentiment.prepare.max_bad_fraction == 0.05
    assert params.sentiment.train.batch_size == 32
    assert params.sentiment.train.learning_rate == pytest.approx(1e-4)
    assert params.sentiment.evaluate.attention_sentences[1] == "not bad at all ."


def test_integer_label_map_keys_are_read_as_text(raw, tmp_path):
    raw["sentiment"]["prepare"]["label_map"] = {0: "negative", 1: "positive"}
    params = load_params(write_yaml(tmp_path / "params.yaml", raw))
    assert params.sentiment.prepare.label_map == {"0": "negative", "1": "positive"}


def test_sections_are_frozen(raw):
    params = parse_params(raw)
    with pytest.raises(ValidationError, match="frozen"):
        params.sentiment.train.batch_size = 8
    assert params.sentiment.train.batch_size == 32


def test_unknown_top_level_key_fails_naming_it(raw):
    raw["trian"] = {"epochs": 1}
    with pytest.raises(ParamsError) as info:
        parse_params(raw)
    message = str(info.value)
    assert "unknown key 'trian'" in message
    assert "params.yaml: invalid params" in message


def test_unknown_key_inside_a_section_fails_naming_the_dotted_key(raw):
    raw["sentiment"]["train"]["learnin_rate"] = 3e-4
    with pytest.raises(ParamsError) as info:
        parse_params(raw)
    assert "unknown key 'sentiment.train.learnin_rate'" in str(info.value)


def test_unknown_key_in_a_file_names_the_file_and_the_dotted_key(raw, tmp_path):
    raw["sentiment"]["prepare"]["max_bad_fracton"] = 0.1
    path = write_yaml(tmp_path / "exp.yaml", raw)
    with pytest.raises(ParamsError) as info:
        load_params(path)
    message = str(info.value)
    assert message.startswith(f"{path}: invalid params")
    assert "unknown key 'sentiment.prepare.max_bad_fracton'" in message


def test_every_problem_is_listed_not_just_the_first(raw):
    raw["sentiment"]["train"]["learnin_rate"] = 3e-4
    raw["sentiment"]["evaluate"]["min_acuracy"] = 0.7
    with pytest.raises(ParamsError) as info:
        parse_params(raw)
    message = str(info.value)
    assert "unknown key 'sentiment.train.learnin_rate'" in message
    assert "unknown key 'sentiment.evaluate.min_acuracy'" in message


def test_text_for_an_integer_fails_naming_the_key_and_value(raw):
    raw["sentiment"]["train"]["batch_size"] = "big"
    with pytest.raises(ParamsError) as info:
        parse_params(raw)
    message = str(info.value)
    assert "'sentiment.train.batch_size'" in message
    assert "valid integer" in message
    assert "'big'" in message


def test_negative_epochs_fail_naming_the_key(raw):
    raw["sentiment"]["train"]["epochs"] = -1
    with pytest.raises(ParamsError) as info:
        parse_params(raw)
    message = str(info.value)
    assert "'sentiment.train.epochs'" in message
    assert "greater than 0" in message
    assert "(got -1)" in message


@pytest.mark.parametrize(
    "key, value",
    [
        ("eval_fraction", 1.5),
        ("max_bad_fraction", -0.1),
        ("min_class_fraction", 0.5),
    ],
)
def test_out_of_range_prepare_fraction_fails_naming_the_key(raw, key, value):
    raw["sentiment"]["prepare"][key] = value
    with pytest.raises(ParamsError) as info:
        parse_params(raw)
    assert f"'sentiment.prepare.{key}'" in str(info.value)


def test_unknown_literal_value_fails_naming_the_key(raw):
    raw["sentiment"]["train"]["precision"] = "fp8"
    with pytest.raises(ParamsError) as info:
        parse_params(raw)
    message = str(info.value)
    assert "'sentiment.train.precision'" in message
    assert "'fp8'" in message


def test_missing_required_section_is_named(raw):
    del raw["sentiment"]["prepare"]
    with pytest.raises(ParamsError) as info:
        parse_params(raw)
    assert "missing key 'sentiment.prepare'" in str(info.value)


def test_missing_params_file_fails_naming_the_path(tmp_path):
    path = tmp_path / "nope" / "params.yaml"
    with pytest.raises(ParamsError) as info:
        load_params(path)
    message = str(info.value)
    assert str(path) in message
    assert "params file not found" in message


def test_a_folder_is_not_a_params_file(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path)


def test_invalid_yaml_fails_naming_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: [1, 2\n  batch_size: 8\n", encoding="utf-8")
    with pytest.raises(ParamsError) as info:
        load_params(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not valid YAML")


@pytest.mark.parametrize("text, kind", [("", "NoneType"), ("- a\n- b\n", "list"), ("just text\n", "str")])
def test_yaml_that_is_not_a_mapping_fails(tmp_path, text, kind):
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ParamsError) as info:
        load_params(path)
    assert str(info.value) == f"{path}: expected a mapping of sections, got {kind}"


def test_label_map_to_a_label_not_in_labels_fails(raw):
    raw["sentiment"]["prepare"]["label_map"] = {"0": "negative", "1": "positive", "2": "neutral"}
    with pytest.raises(ParamsError) as info:
        parse_params(raw)
    message = str(info.value)
    assert "prepare.label_map maps to ['neutral']" in message
    assert "not in labels ['negative', 'positive']" in message


def test_duplicate_labels_fail(raw):
    raw["sentiment"]["labels"] = ["negative", "positive", "negative"]
    with pytest.raises(ParamsError, match="labels holds duplicates"):
        parse_params(raw)


def test_a_single_label_fails(raw):
    raw["sentiment"]["labels"] = ["positive"]
    raw["sentiment"]["prepare"]["label_map"] = {"1": "positive"}
    with pytest.raises(ParamsError) as info:
        parse_params(raw)
    assert "'sentiment.labels'" in str(info.value)


# ---------------------------------------------------------------- one source for every value

# Mappings whose entries are data, not fields: label values, named decoding strategies, and decoding settings
# (GenerationParams keeps neutral defaults so a strategy names only what it turns on).
FREE_FORM = {"label_map", "strategies", "defaults"}


def leaf_keys(data: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in FREE_FORM:
            keys += leaf_keys(value, dotted + ".")
        else:
            keys.append(dotted)
    return keys


@pytest.mark.parametrize("key", leaf_keys(yaml.safe_load(REPO_PARAMS_FILE.read_text(encoding="utf-8"))))
def test_every_key_the_loader_needs_is_in_params_yaml_and_a_missing_one_is_named(raw, key):
    """The loader has no defaults that could disagree with params.yaml: remove any key and loading fails,
    naming that key."""
    *parents, last = key.split(".")
    section = raw
    for part in parents:
        section = section[part]
    del section[last]
    with pytest.raises(ParamsError, match=rf"missing key '{re.escape(key)}'"):
        parse_params(raw)


def test_a_stage_reading_an_undeclared_key_fails_naming_it(raw):
    params = for_stage(parse_params(raw), "sentiment_tokenize", ROOT / "dvc.yaml")
    assert params.sentiment.model.max_length == raw["sentiment"]["model"]["max_length"]  # declared
    assert params.sentiment.labels == raw["sentiment"]["labels"]
    expected = (
        r"stage 'sentiment_tokenize' reads params key 'sentiment\.train', which dvc.yaml does not list under "
        r"stages\.sentiment_tokenize\.params"
    )
    with pytest.raises(UndeclaredParam, match=expected):
        params.sentiment.train.epochs
    with pytest.raises(UndeclaredParam, match=r"'sentiment\.model\.pooling'"):  # a sibling of a declared key
        params.sentiment.model.pooling


def test_a_partly_declared_section_answers_only_its_declared_keys(raw):
    params = for_stage(parse_params(raw), "story_quantize", ROOT / "dvc.yaml")
    assert params.story.evaluate.prompts == raw["story"]["evaluate"]["prompts"]
    assert params.story.quantize.per_channel is raw["story"]["quantize"]["per_channel"]
    with pytest.raises(UndeclaredParam, match=r"'story\.evaluate\.seeds'"):
        params.story.evaluate.seeds
    # What MLflow and the model card receive: the declared keys only.
    dumped = params.model_dump()
    assert set(dumped) == {"story"} and set(dumped["story"]) == {"evaluate", "quantize", "tracking"}
    assert set(dumped["story"]["evaluate"]) == {"prompts"}


def test_declared_keys_come_from_dvc_yaml(raw):
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage, spec in stages.items():
        assert declared_keys(ROOT / "dvc.yaml", stage) == [str(k) for k in spec.get("params", [])]
    with pytest.raises(ParamsError, match="no stage 'deploy'"):
        declared_keys(ROOT / "dvc.yaml", "deploy")
