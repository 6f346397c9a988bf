"""train.head_learning_rate: which parameters are the head, and the optimizer the Trainer gets from it."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    TrainingArguments,
)

from textops import lora
from textops.params import LoraParams
from textops.sentiment.training import head_names, make_trainer

BERT_HEAD = {"bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"}


@pytest.fixture
def classifier(tiny_model_dir):
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)


def test_bert_head_is_classifier_and_pooler(classifier):
    assert head_names(classifier) == BERT_HEAD


def test_distilbert_head_is_pre_classifier_and_classifier():
    model = DistilBertForSequenceClassification(
        DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2, hidden_dim=32, num_labels=2)
    )
    assert head_names(model) == {"pre_classifier.weight", "pre_classifier.bias", "classifier.weight", "classifier.bias"}


def test_lora_head_is_the_trainable_classifier_copy(classifier, repo_params_raw):
    wrapped = lora.wrap(classifier, LoraParams(**repo_params_raw["sentiment"]["train"]["lora"]), "classify")
    trainable_head = {n for n, p in wrapped.named_parameters() if p.requires_grad and n in head_names(wrapped)}
    assert trainable_head and all("classifier.modules_to_save" in n for n in trainable_head)
    assert not any("lora_" in n for n in head_names(wrapped))


def optimizer_of(model, tmp_path, head_rate):
    args = TrainingArguments(
        output_dir=str(tmp_path),
        learning_rate=1e-4,
        weight_decay=0.01,
        warmup_ratio=0.0,
        lr_scheduler_type="linear",
        report_to=[],
    )
    trainer = make_trainer(head_rate, model=model, args=args)
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    return trainer


def test_head_rate_groups_cover_every_parameter_once(classifier, tmp_path):
    trainer = optimizer_of(classifier, tmp_path, head_rate=1e-3)
    names = {id(p): n for n, p in classifier.named_parameters()}
    seen = [names[id(p)] for group in trainer.optimizer.param_groups for p in group["params"]]
    assert sorted(seen) == sorted(names.values())  # each once, none missing
    rates = {names[id(p)]: group["lr"] for group in trainer.optimizer.param_groups for p in group["params"]}
    assert {n for n, lr in rates.items() if lr == pytest.approx(1e-3)} == BERT_HEAD
    assert all(lr == pytest.approx(1e-4) for n, lr in rates.items() if n not in BERT_HEAD)
    # The Trainer's decay split is kept: biases and LayerNorm weights do not decay, in the head either.
    decay = {names[id(p)]: group["weight_decay"] for group in trainer.optimizer.param_groups for p in group["params"]}
    assert decay["classifier.bias"] == 0.0 and decay["classifier.weight"] == 0.01
    assert decay["bert.embeddings.LayerNorm.weight"] == 0.0


def test_schedule_decays_both_rates(classifier, tmp_path):
    trainer = optimizer_of(classifier, tmp_path, head_rate=1e-3)
    for _ in range(5):
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    assert sorted({round(g["lr"], 8) for g in trainer.optimizer.param_groups}) == [5e-5, 5e-4]  # halfway down


def test_no_head_rate_is_the_plain_trainer(classifier, tmp_path):
    trainer = optimizer_of(classifier, tmp_path, head_rate=None)
    assert {g["lr"] for g in trainer.optimizer.param_groups} == {1e-4}


def test_mean_pooled_head_is_its_classifier(tiny_model_dir):
    from textops.modeling import load_classifier

    model = load_classifier(str(tiny_model_dir), ["negative", "positive"], "mean")
    assert head_names(model) == {"classifier.weight", "classifier.bias"}  # no pooler: it reads the token mean
