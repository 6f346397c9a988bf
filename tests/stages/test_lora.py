"""train.method lora on a tiny random BERT: what trains, what stays frozen, the merge, the saved folder, resume."""

from __future__ import annotations

import shutil

import pytest
import torch

from conftest import sentences, write_tsv
from stages import sentiment_prepare as prepare
from stages import sentiment_tokenize as tokenize
from textops import lora
from textops.errors import PipelineError
from textops.sentiment import training as train_stage

PROBE = torch.tensor([[2, 10, 20, 30, 3], [2, 12, 22, 3, 0]])  # [CLS] ... [SEP] rows of toy-vocabulary ids
PROBE_MASK = (PROBE != 0).long()


def logits(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=PROBE, attention_mask=PROBE_MASK).logits


@pytest.fixture(scope="module")
def lora_params(params_for, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-data")
    # 96 train rows, batch 16, 20 epochs: 120 steps (under 1 s alone), checkpoints at 50, 100 and 120 (last two kept).
    # Without length grouping: its sampler draws the resumed epoch's order afresh, so a resumed run would not
    # retrace the uninterrupted one batch for batch (full fine-tuning alike) and the resume test could not be exact.
    return params_for(
        write_tsv(root / "reviews.tsv", sentences(60)),
        tracking__enabled=False,
        train__method="lora",
        train__epochs=20,
        train__batch_size=16,
        train__learning_rate=2e-2,
        train__save_steps=50,
        train__group_by_length=False,
        train__num_threads=1,
    )


@pytest.fixture(scope="module")
def tokenized(lora_params, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-tok")
    prepare.run(lora_params, root / "prepared", root / "prepare.metrics.json", root / "prepare.json")
    tokenize.run(lora_params, root / "prepared", root / "tok", root / "tokenize.metrics.json", root / "tokenize.json")
    return root / "tok"


@pytest.fixture(scope="module")
def trained(lora_params, tokenized, tmp_path_factory):
    """One run of the stage's train(), with the PEFT model caught just before it is merged and saved."""
    root = tmp_path_factory.mktemp("lora-run")
    caught = {}
    real_merge = lora.merge

    def spy(model):
        caught["peft_state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        caught["peft_logits"] = logits(model)
        merged = real_merge(model)
        caught["merged_logits"] = logits(merged)
        return merged

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lora, "merge", spy)
        result = train_stage.train(lora_params, tokenized, root / "model", root / "ckpt")
    return {"root": root, "metrics": result["metrics"], **caught}


def with_train(params, **changes):
    sentiment = params.sentiment.model_copy(update={"train": params.sentiment.train.model_copy(update=changes)})
    return params.model_copy(update={"sentiment": sentiment})


def expected_trainable(params) -> int:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(params.sentiment.model.name)
    r, width, labels = params.sentiment.train.lora.r, config.hidden_size, len(params.sentiment.labels)
    adapters = config.num_hidden_layers * 2 * (r * width + width * r)  # query and value: A (r x in), B (out x r)
    return adapters + width * labels + labels  # and the classifier head, in full


def test_only_adapters_and_head_train(lora_params, params_for):
    model = train_stage.build_model(lora_params)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n or ".classifier.modules_to_save." in n for n in trainable)
    assert lora.parameter_counts(model)["trainable_parameters"] == expected_trainable(lora_params)
    full = lora.parameter_counts(train_stage.build_model(params_for(lora_params.sentiment.prepare.source)))
    assert full["trainable_parameters"] == full["total_parameters"]


def test_training_moves_adapters_and_head_not_base(trained, lora_params):
    from transformers import AutoModelForSequenceClassification

    state = trained["peft_state"]
    assert all(v.abs().max() > 0 for k, v in state.items() if ".lora_B." in k)  # B starts at zero
    head = "base_model.model.classifier"
    assert not torch.equal(state[f"{head}.modules_to_save.default.weight"], state[f"{head}.original_module.weight"])
    base = AutoModelForSequenceClassification.from_pretrained(
        lora_params.sentiment.model.name, num_labels=2
    ).state_dict()
    frozen = {
        k.removeprefix("base_model.model.").replace(".base_layer", ""): v
        for k, v in state.items()
        if k.startswith("base_model.model.bert.") and ".lora_" not in k
    }
    dropped = (
        "bert.pooler." if lora_params.sentiment.model.pooling == "mean" else None
    )  # a mean-pooled head has no pooler
    assert len(frozen) == len([k for k in base if k.startswith("bert.") and not (dropped and k.startswith(dropped))])
    assert all(torch.equal(v, base[k]) for k, v in frozen.items())


def test_merged_model_matches_peft_model(trained):
    assert torch.allclose(trained["merged_logits"], trained["peft_logits"], atol=1e-5)


def test_saved_folder_is_a_plain_model(trained):
    from safetensors.torch import load_file

    from textops.modeling import load_trained

    folder = trained["root"] / "model"
    assert not (folder / "adapter_config.json").exists()
    model = load_trained(folder)
    assert load_file(folder / "model.safetensors").keys() == model.state_dict().keys()  # nothing missing or extra
    assert not any("lora" in name for name, _ in model.named_parameters())
    assert torch.allclose(logits(model), trained["merged_logits"], atol=1e-5)


def test_metrics_report_method_and_parameter_counts(trained, lora_params):
    from textops.modeling import load_classifier

    m = trained["metrics"]
    assert m["method"] == "lora" and m["trainable_parameters"] == expected_trainable(lora_params)
    # The wrapped model holds the base, the adapters and a trainable copy of the head.
    base = lora.parameter_counts(
        load_classifier(
            lora_params.sentiment.model.name, lora_params.sentiment.labels, lora_params.sentiment.model.pooling
        )
    )["total_parameters"]
    assert m["total_parameters"] == base + m["trainable_parameters"]
    assert m["eval_accuracy"] >= 0.75  # the toy sentiment words are learnable by adapters on a random base


def test_resume_loads_the_adapter_checkpoint(trained, lora_params, tokenized):
    ckpt = trained["root"] / "ckpt"
    assert (ckpt / "checkpoint-100" / "adapter_model.safetensors").is_file()  # Trainer saves adapters, not the base
    shutil.rmtree(ckpt / "checkpoint-120")  # as if killed after step 100
    again = train_stage.train(lora_params, tokenized, trained["root"] / "resumed", ckpt)["metrics"]
    assert again["resumed_from_step"] == 100 and again["global_step"] == 120
    from textops.modeling import load_trained

    resumed = logits(load_trained(trained["root"] / "resumed"))
    # A resume that dropped the adapter or head would restart them from scratch and end elsewhere.
    assert torch.allclose(resumed, trained["merged_logits"], atol=1e-5)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_two_runs_train_the_same_model(lora_params, tokenized, tmp_path, method):
    from safetensors.torch import load_file

    params = with_train(lora_params, method=method, epochs=2)
    weights = []
    for run in (1, 2):
        torch.manual_seed(run)  # whatever the process drew before: the stage seeds the head itself
        train_stage.train(params, tokenized, tmp_path / f"model{run}", tmp_path / f"ckpt{run}")
        weights.append(load_file(tmp_path / f"model{run}" / "model.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.parametrize("targets", [["nope"], ["query", "valu"]])
def test_unknown_target_module_names_the_key(lora_params, targets):
    params = with_train(
        lora_params, lora=lora_params.sentiment.train.lora.model_copy(update={"target_modules": targets})
    )
    with pytest.raises(PipelineError, match=r"train\.lora\.target_modules: \['(nope|valu)'\]"):
        train_stage.build_model(params)
