"""LoRA through PEFT, for train.method: lora in both tasks; merged into the base before anything is saved."""
from __future__ import annotations

from typing import Literal

from textops.errors import PipelineError
from textops.params import LoraParams

# Where the adapters go when lora.target_modules is null: the attention projections, by architecture.
DEFAULT_TARGETS = {"bert": ["query", "value"], "distilbert": ["q_lin", "v_lin"], "roberta": ["query", "value"],
                   "gpt2": ["c_attn"]}


def targets_for(model_type: str, lora: LoraParams) -> list[str]:
    if lora.target_modules:
        return list(lora.target_modules)
    if model_type not in DEFAULT_TARGETS:
        raise PipelineError(f"train.lora.target_modules: no default for model type '{model_type}'; "
                            f"name the modules (known defaults: {sorted(DEFAULT_TARGETS)})")
    return DEFAULT_TARGETS[model_type]


def wrap(model, lora: LoraParams, task: Literal["classify", "generate"]):
    """The model with LoRA adapters; only they (and a classifier's head) train."""
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=targets_for(model.config.model_type, lora),
        task_type=TaskType.SEQ_CLS if task == "classify" else TaskType.CAUSAL_LM,
        # GPT-2's Conv1D stores weights transposed; PEFT needs to know.
        fan_in_fan_out=model.config.model_type == "gpt2")
    try:
        return get_peft_model(model, config)
    except ValueError as error:  # e.g. a target module the model does not have
        raise PipelineError(f"train.lora: {error}") from None


def merge(model):
    """A plain transformers model: adapters folded into the base weights (a no-op for full fine-tuning)."""
    from peft import PeftModel

    return model.merge_and_unload() if isinstance(model, PeftModel) else model


def parameter_counts(model) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_parameters": trainable, "total_parameters": sum(p.numel() for p in model.parameters())}
