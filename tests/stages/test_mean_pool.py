"""model.pooling: mean on a tiny random BERT: padding ignored, save and load, ONNX export, and the cls path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from textops.errors import PipelineError
from textops.mean_pool import MeanPooledClassifier
from textops.modeling import load_classifier, load_trained
from textops.onnx_export import export_onnx
from textops.params import parse_params

LABELS = ["negative", "positive"]
IDS = torch.tensor([[2, 10, 20, 30, 3], [2, 12, 22, 3, 0]])  # [CLS] ... [SEP], the second row padded


def logits(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=ids, attention_mask=(ids != 0).long()).logits


@pytest.fixture
def mean_model(tiny_model_dir):
    torch.manual_seed(0)
    return load_classifier(str(tiny_model_dir), LABELS, "mean")


def test_mean_model_has_no_pooler_and_names_labels(mean_model):
    assert isinstance(mean_model, MeanPooledClassifier)
    assert not any("pooler" in name for name, _ in mean_model.named_parameters())
    assert mean_model.config.id2label == {0: "negative", 1: "positive"}


def test_padding_does_not_change_the_answer(mean_model):
    alone = logits(mean_model, IDS[1:, :4])  # the padded row without its padding
    padded = logits(mean_model)[1:]
    assert torch.allclose(alone, padded, atol=1e-5)
    wider = logits(mean_model, torch.nn.functional.pad(IDS, (0, 3)))  # three more padding columns
    assert torch.allclose(wider, logits(mean_model), atol=1e-5)


def test_saved_model_loads_as_itself(mean_model, tmp_path):
    mean_model.save_pretrained(tmp_path)
    loaded = load_trained(tmp_path)
    assert isinstance(loaded, MeanPooledClassifier)
    assert torch.allclose(logits(loaded), logits(mean_model), atol=1e-6)


def test_attention_maps_from_a_mean_model(mean_model, tmp_path):
    mean_model.save_pretrained(tmp_path)
    with torch.no_grad():
        out = load_trained(tmp_path, attn_implementation="eager")(input_ids=IDS[:1], output_attentions=True)
    assert len(out.attentions) == 2 and out.attentions[-1].shape == (1, 2, 5, 5)  # layers; batch, heads, from, to


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_onnx_export_matches_pytorch(tiny_model_dir, tmp_path, pooling):
    import onnxruntime as ort

    torch.manual_seed(0)
    model = load_classifier(str(tiny_model_dir), LABELS, pooling)
    model.save_pretrained(tmp_path / "model")
    export_onnx(tmp_path / "model", tmp_path / "onnx")
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {
        "input_ids": IDS.numpy(),
        "attention_mask": (IDS != 0).long().numpy(),
        "token_type_ids": np.zeros_like(IDS.numpy()),
    }
    onnx_logits = session.run(["logits"], {i.name: feed[i.name] for i in session.get_inputs()})[0]
    assert np.allclose(onnx_logits, logits(model).numpy(), atol=1e-4)
    assert type(load_trained(tmp_path / "model")).__name__ == type(model).__name__


def test_unknown_pooling_names_the_key(repo_params_raw):
    sentiment = repo_params_raw["sentiment"]
    raw = {**repo_params_raw, "sentiment": {**sentiment, "model": {**sentiment["model"], "pooling": "max"}}}
    with pytest.raises(PipelineError, match=r"sentiment\.model\.pooling"):
        parse_params(raw)
