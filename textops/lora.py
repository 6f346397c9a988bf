"""LoRA through PEFT, for train.method: lora in both tasks; merged into the base before anything is saved."""

from __future__ import annotations

from typing import Literal

from textops.errors import PipelineError
from textops.params import LoraParams

# Where the adapters go when lora.target_modules is null: the attention projections, by architecture.
DEFAULT_TARGETS = {
    "bert": ["query", "value"],
    "distilbert": ["q_lin", "v_lin"],
    "roberta": ["query", "value"],
    "gpt2": ["c_attn"],
}


def targets_for(model_type: str, lora: LoraParams, key: str = "train.lora") -> list[str]:
    if lora.target_modules:
        return list(lora.target_modules)
    if model_type not in DEFAULT_TARGETS:
        raise PipelineError(
            f"{key}.target_modules: no default for model type '{model_type}'; "
            f"name the modules (known defaults: {sorted(DEFAULT_TARGETS)})"
        )
    return DEFAULT_TARGETS[model_type]


def check_targets(model, targets: list[str], key: str = "train.lora") -> None:
    """Every target names a module (PEFT only fails when none does, so a typo beside a good name would pass)."""
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(name == t or name.endswith("." + t) for name in names)]
    if missing:
        layers = sorted(
            {
                name.rsplit(".", 1)[-1]
                for name, module in model.named_modules()
                if type(module).__name__ in ("Linear", "Conv1D")
            }
        )
        raise PipelineError(
            f"{key}.target_modules: {missing} match no module of this "
            f"{model.config.model_type} model; its linear layers are named {layers}"
        )


def wrap(model, lora: LoraParams, task: Literal["classify", "generate"], key: str = "train.lora"):
    """The model with LoRA adapters; only they (and a classifier's head) train. `key` names the params
    section in errors (story.train.lora for the story task)."""
    from peft import LoraConfig, TaskType, get_peft_model

    targets = targets_for(model.config.model_type, lora, key)
    check_targets(model, targets, key)
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        # SEQ_CLS puts the freshly initialised head (classifier / score) in modules_to_save: it trains in full.
        task_type=TaskType.SEQ_CLS if task == "classify" else TaskType.CAUSAL_LM,
        # GPT-2's Conv1D stores weights transposed; PEFT needs to know.
        fan_in_fan_out=model.config.model_type == "gpt2",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as error:  # e.g. a target that is not a layer PEFT can adapt (an embedding's parent)
        raise PipelineError(f"{key}: {error}") from None


def merge(model):
    """A plain transformers model: adapters folded into the base weights (a no-op for full fine-tuning)."""
    from peft import PeftModel

    return model.merge_and_unload() if isinstance(model, PeftModel) else model


def parameter_counts(model) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_parameters": trainable, "total_parameters": sum(p.numel() for p in model.parameters())}
