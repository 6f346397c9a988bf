"""The story service: POST /generate and /generate_stream with a small GPT (INT8 ONNX, KV cache), GET /metadata.

Run: `bentoml serve serving.story:StoryGenerator` from the repository (registry mode: follows
`story.serve.alias` of `story.package.model_name` in MLflow and swaps versions live), or
`bentoml build -f bentofile.story.yaml` then `bentoml serve story:latest` (the bundled version, no MLflow).
Params: `story.serve` in params.yaml (limits, decoding defaults, workers, poll interval).
Exposure, start-up and health as the sentiment service's (serving/exposure.py, serving/hosting.py): `story.serve.host`,
`auth_token_env`, `max_concurrency`.

Request: {prompt, max_new_tokens?, temperature?, top_k?, top_p?, repetition_penalty?, do_sample?, seed?};
a field left out (or null) takes its `story.serve` default. /generate answers {text, new_tokens,
finish_reason, model}; /generate_stream sends the same text as plain-text chunks as tokens are made
(same seed and setting: the same text), with the model in the X-Model-Name / X-Model-Version headers.
An empty prompt is allowed: generation starts from the end-of-text token, as a new story would.
Bad input gets 4xx naming the field, never 500 and never a stream: wrong JSON types (no coercion:
"5" is not 5), unknown fields, NaN/inf, values out of range (max_new_tokens over
`story.serve.max_new_tokens`, top_k over the vocabulary, temperature over 10, ...), prompts over
`story.serve.max_prompt_chars` characters or holding NUL or lone surrogates, bodies over
`story.serve.max_body_bytes` (413).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import anyio
import bentoml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serving import exposure, webhooks
from serving.bentoml_private import IORootModel  # the base of BentoML's plain-value outputs
from serving.hosting import Hosted, metadata_response, registry_event
from serving.limits import quiet_client_errors
from serving.models import RegistryModel, Source
from textops.params import GenerationParams, load_params

log = logging.getLogger("bentoml.service.story")
# Read beside this file, so the repository and a built Bento (which includes params.yaml) agree.
PARAMS = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
SERVE = PARAMS.story.serve
quiet_client_errors()  # 4xx: one log line, not a traceback (serving/limits.py)
WARMUP = "Once upon a time"
SEED_MAX = 2**63 - 1


def check_prompt(text: str) -> str:
    if "\x00" in text:
        raise ValueError("prompt contains a NUL character (\\u0000)")
    if len(text) > SERVE.max_prompt_chars:
        raise ValueError(
            f"prompt has {len(text)} characters; the limit is story.serve.max_prompt_chars={SERVE.max_prompt_chars}"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            "prompt contains a lone UTF-16 surrogate (\\ud800-\\udfff), which is not a character"
        ) from None
    return text


def check_max_new_tokens(value: int) -> int:
    if value > SERVE.max_new_tokens:
        raise ValueError(f"max_new_tokens {value} is over the limit story.serve.max_new_tokens={SERVE.max_new_tokens}")
    return value


def finite(**bounds: Any) -> Any:
    """An optional float field: finite (JSON NaN, Infinity and 1e400 are refused), within the bounds given."""
    return Field(None, allow_inf_nan=False, **bounds)


DEFAULTS = SERVE.defaults


class GenerateRequest(BaseModel):
    # strict: "5", 5.0 and true are not the integer 5; forbid: a misspelt field is an error, not ignored.
    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: Annotated[str, AfterValidator(check_prompt)] = Field(
        description="Text to continue; may be empty (then generation starts from the end-of-text token).",
        json_schema_extra={"maxLength": SERVE.max_prompt_chars},
    )
    max_new_tokens: (
        Annotated[
            int, Field(ge=1, json_schema_extra={"maximum": SERVE.max_new_tokens}), AfterValidator(check_max_new_tokens)
        ]
        | None
    ) = Field(
        None,
        description=f"Tokens to add (default {SERVE.default_max_new_tokens}); fewer when end-of-text comes "
        f"first or the context fills.",
    )
    do_sample: bool | None = Field(
        None, description=f"Sample (true) or take the most likely token (default {DEFAULTS.do_sample})."
    )
    temperature: float | None = finite(
        gt=0, le=10, description=f"Sampling temperature (default {DEFAULTS.temperature})."
    )
    top_k: int | None = Field(
        None,
        ge=0,
        description=f"Keep the k most likely tokens, at most the vocabulary size; 0 keeps all "
        f"(default {DEFAULTS.top_k}).",
    )
    top_p: float | None = finite(
        gt=0, le=1, description=f"Nucleus sampling mass; 1 keeps all (default {DEFAULTS.top_p})."
    )
    repetition_penalty: float | None = finite(
        ge=1,
        le=10,
        description=f"CTRL-style penalty on tokens already present; 1 is none (default {DEFAULTS.repetition_penalty}).",
    )
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="Makes sampling reproducible; none: random.")


class ModelRef(BaseModel):
    name: str
    version: str


class Generation(BaseModel):
    text: str = Field(description="The completion only, without the prompt.")
    new_tokens: int
    finish_reason: str = Field(
        description="length: max_new_tokens reached; eos: end-of-text; context: the model's context is full"
    )
    prompt_tokens: int = Field(description="prompt tokens the model saw (an empty prompt is one end-of-text token)")
    prompt_truncated: int = Field(description="tokens cut from the prompt's start to fit the model's context")
    model: ModelRef


class TextChunks(IORootModel[str]):
    """Raw text chunks. BentoML labels streams text/event-stream, but the chunks carry no SSE framing."""

    media_type = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class Loaded:
    generator: Any  # textops.story.generation.OnnxGenerator
    vocab_size: int  # the logits' width: top_k may not exceed it
    metadata: dict[str, Any]

    @property
    def ref(self) -> ModelRef:
        return ModelRef(name=self.metadata["name"], version=str(self.metadata["version"]))


def load(source: Source) -> Loaded:
    """A generator on the package folder, warmed up (prompt pass and cached steps) before it serves."""
    from textops.story.generation import OnnxGenerator

    generator = OnnxGenerator(source.path, "model.onnx", threads=SERVE.onnx_threads)
    generator.generate(WARMUP, 4, GenerationParams())
    vocab_size = int(json.loads((Path(source.path) / "config.json").read_text())["vocab_size"])
    return Loaded(generator, vocab_size, source.metadata)


def decoding(request: GenerateRequest, vocab_size: int) -> tuple[int, GenerationParams]:
    """max_new_tokens and the decoding setting of a request: its own values over the story.serve defaults."""
    if request.top_k is not None and request.top_k > vocab_size:
        # Raised as pydantic's own error, so BentoML answers 400 in the same shape as the field checks
        # (also before a stream starts: BentoML awaits the first chunk before it sends the status).
        raise ValidationError.from_exception_data(
            GenerateRequest.__name__,
            [
                {
                    "type": "value_error",
                    "loc": ("top_k",),
                    "input": request.top_k,
                    "ctx": {
                        "error": ValueError(f"top_k {request.top_k} is over the model's vocabulary size {vocab_size}")
                    },
                }
            ],
        )
    given = request.model_dump(include=set(GenerationParams.model_fields), exclude_none=True)
    setting = GenerationParams(**{**SERVE.defaults.model_dump(), **given})
    return request.max_new_tokens or SERVE.default_max_new_tokens, setting


async def metadata(request: Request) -> JSONResponse:
    return metadata_response(
        lambda service: {
            "limits": {
                "max_prompt_chars": SERVE.max_prompt_chars,
                "max_new_tokens": SERVE.max_new_tokens,
                "vocab_size": service.loaded.vocab_size,
            },
            "defaults": {"max_new_tokens": SERVE.default_max_new_tokens, **SERVE.defaults.model_dump()},
        }
    )


ROUTES = [Route("/metadata", metadata, methods=["GET"]), Route(webhooks.PATH, registry_event, methods=["POST"])]


@bentoml.asgi_app(Starlette(routes=ROUTES), path="/")
@bentoml.service(**exposure.service_config("story", SERVE, 120))
class StoryGenerator(Hosted):
    model_ref = RegistryModel(PARAMS.story.package.model_name, SERVE.alias)

    def __init__(self) -> None:
        self._steps: anyio.CapacityLimiter | None = None
        self.host(load, SERVE, log)

    @bentoml.on_deployment
    def check_token() -> None:  # in `bentoml serve`'s own process, before any worker: a missing token stops it
        exposure.token(SERVE.auth_token_env, "story.serve.auth_token_env")

    @bentoml.api(input_spec=GenerateRequest)
    def generate(self, **fields: Any) -> Generation:
        """The whole completion at once. BentoML runs it in its own thread, off the event loop and apart
        from the streams' queue, so a long completion here does not hold back a stream's first token."""
        request, loaded = GenerateRequest.model_construct(**fields), self.loaded  # one model per request
        max_new_tokens, setting = decoding(request, loaded.vocab_size)
        result = loaded.generator.generate(request.prompt, max_new_tokens, setting, seed=request.seed)
        return Generation(**result, model=loaded.ref)

    @bentoml.api(input_spec=GenerateRequest, output_spec=TextChunks, route="/generate_stream")
    async def generate_stream(self, ctx: bentoml.Context, **fields: Any) -> AsyncGenerator[str, None]:
        """The completion as plain-text chunks, each sent as soon as its token is made."""
        request, loaded = GenerateRequest.model_construct(**fields), self.loaded
        max_new_tokens, setting = decoding(request, loaded.vocab_size)  # errors before the first chunk: 4xx
        ctx.response.metadata.update({"X-Model-Name": loaded.ref.name, "X-Model-Version": loaded.ref.version})
        pieces = loaded.generator.stream(request.prompt, max_new_tokens, setting, seed=request.seed)
        if self._steps is None:  # created here: a limiter belongs to the worker's event loop
            self._steps = anyio.CapacityLimiter(1)
        # One decoding step per thread call, queued first come first served: concurrent streams take
        # turns token by token, so a new request waits for one step of each stream, not for whole
        # completions, and the event loop stays free to send what is made.
        done = object()
        while (piece := await anyio.to_thread.run_sync(next, pieces, done, limiter=self._steps)) is not done:
            yield piece  # never empty: the generator holds back only partial characters


exposure.expose(StoryGenerator, SERVE, "story.serve")
