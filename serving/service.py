"""The sentiment service: POST /classify with adaptive batching, POST /explain (a score per word), GET /explain/view
(the same as a page), GET /metadata, hot swap in registry mode.

Run: `bentoml serve` from the repository (registry mode: follows `serve.alias` in MLflow), or
`bentoml build` then `bentoml serve sentiment:latest` (the Bento's bundled version, no MLflow).
Params: the `serve` section of params.yaml (batching, limits, poll interval), `package.model_name`.
Exposure (serving/exposure.py): binds to `serve.host` (127.0.0.1), an optional bearer token (`serve.auth_token_env`),
`serve.max_concurrency` requests in progress (503 with Retry-After over it). Start-up and health: serving/hosting.py.

Limits, each answered with 4xx and a message (never 500): empty or whitespace-only text, NUL
characters, lone surrogates, texts over `serve.max_chars` characters (rejected; texts under it are
cut at `model.max_length` tokens, as in training), more than `serve.max_items` texts, bodies over
`serve.max_body_bytes` (413), wrong JSON types (400), the pickle content type (415, BentoML). /explain has
the same limits, and smaller caps: `serve.explain_max_items` texts, `serve.explain_max_words` words per text.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import bentoml
from bentoml.exceptions import ServiceUnavailable
from bentoml.validators import ContentType
from pydantic import BaseModel, BeforeValidator, Field
from pydantic.functional_validators import AfterValidator
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from serving import batching, exposure, webhooks
from serving.hosting import Hosted, metadata_response, registry_event
from serving.limits import quiet_client_errors
from serving.models import RegistryModel, Source
from textops import explain as explaining
from textops.params import load_params

log = logging.getLogger("bentoml.service.sentiment")
# Read beside this file, so the repository and a built Bento (which includes params.yaml) agree.
PARAMS = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
SERVE = PARAMS.sentiment.serve
batching.use(SERVE.batch_wait)  # before BentoML builds the app's dispatchers (see serving/batching.py)
quiet_client_errors()  # 4xx: one log line, not a traceback (serving/limits.py)
WARMUP = ["a warm-up sentence .", "another , somewhat longer warm-up sentence so shapes vary a little ."]


def check_text(text: str) -> str:
    if not text.strip():
        raise ValueError("text is empty or whitespace only")
    if "\x00" in text:
        raise ValueError("text contains a NUL character (\\u0000)")
    if len(text) > SERVE.max_chars:
        raise ValueError(f"text has {len(text)} characters; the limit is serve.max_chars={SERVE.max_chars}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text contains a lone UTF-16 surrogate (\\ud800-\\udfff), which is not a character") from None
    return text


def one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


# The schema lists the array first: BentoML's OpenAPI keeps only the first choice of a union.
Text = Annotated[
    str, AfterValidator(check_text), Field(json_schema_extra={"minLength": 1, "maxLength": SERVE.max_chars})
]
Texts = Annotated[
    list[Text],
    BeforeValidator(one_or_many, json_schema_input_type=list[Text] | str),
    Field(
        min_length=1, max_length=SERVE.max_items, description=f"One text, or a list of 1 to {SERVE.max_items} texts."
    ),
]


def check_words(text: str) -> str:
    count = len(explaining.words_of(text))
    if count > SERVE.explain_max_words:
        raise ValueError(
            f"text has {count} words; /explain scores each one and its limit is "
            f"serve.explain_max_words={SERVE.explain_max_words}"
        )
    return text


ExplainText = Annotated[Text, AfterValidator(check_words)]
ExplainTexts = Annotated[
    list[ExplainText],
    BeforeValidator(one_or_many, json_schema_input_type=list[ExplainText] | str),
    Field(
        min_length=1,
        max_length=SERVE.explain_max_items,
        description=f"One text, or a list of 1 to {SERVE.explain_max_items} texts "
        f"(each at most {SERVE.explain_max_words} words).",
    ),
]


class WordScore(BaseModel):
    word: str
    score: float = Field(description="how much the label's probability falls when the word is left out")


class Explanation(BaseModel):
    label: str
    probability: float = Field(description="softmax probability of the label")
    probabilities: dict[str, float] = Field(description="softmax probability of every class")
    words: list[WordScore] = Field(description="each word of the text (split on whitespace), in order, scored")
    method: str = explaining.METHOD


class Prediction(BaseModel):
    label: str
    probability: float = Field(description="softmax probability of the label")
    probabilities: dict[str, float] = Field(description="softmax probability of every class")


@dataclass(frozen=True)
class Loaded:
    classifier: Any  # textops.inference.OnnxClassifier
    metadata: dict[str, Any]


def load(source: Source) -> Loaded:
    """An ONNX session on the package folder, warmed up so the first request pays no start-up cost."""
    from textops.inference import OnnxClassifier

    classifier = OnnxClassifier(source.path, "model.onnx", threads=SERVE.onnx_threads)
    classifier.classify(WARMUP)
    return Loaded(classifier, source.metadata)


async def metadata(request: Request) -> JSONResponse:
    return metadata_response()


async def explain_view(request: Request) -> HTMLResponse:
    """GET /explain/view?text=...: the explanation of one text as a page (words shaded by score)."""
    from pydantic import TypeAdapter, ValidationError

    text = request.query_params.get("text")
    if text is None:
        text = "a charming , funny film ."
    try:
        text = TypeAdapter(ExplainText).validate_python(text)
    except ValidationError as error:
        return HTMLResponse("; ".join(e["msg"] for e in error.errors()), status_code=400)
    try:
        classifier = bentoml.get_current_service().loaded.classifier
    except ServiceUnavailable as error:
        return HTMLResponse(str(error), status_code=503)
    result = await run_in_threadpool(explaining.explain, classifier, text, bucket(classifier))
    return HTMLResponse(explaining.html(result, text))


def bucket(classifier) -> int:
    """Texts per ONNX call within a gathered batch (length-sorted, tokenized in one call): serve.inference_batch_size
    when the quantize stage measured the model batch-invariant (its manifest says so), else one, so that a text's
    answer never depends on the requests batched with it."""
    return SERVE.inference_batch_size if classifier.batch_invariant else 1


ROUTES = [
    Route("/metadata", metadata, methods=["GET"]),
    Route("/explain/view", explain_view, methods=["GET"]),
    Route(webhooks.PATH, registry_event, methods=["POST"]),
]


@bentoml.asgi_app(Starlette(routes=ROUTES), path="/")
@bentoml.service(**exposure.service_config("sentiment", SERVE, 60, logging={"access": {"enabled": SERVE.access_log}}))
class Sentiment(Hosted):
    model_ref = RegistryModel(PARAMS.sentiment.package.model_name, SERVE.alias)

    def __init__(self) -> None:
        self.host(load, SERVE, log)

    @bentoml.on_deployment
    def check_token() -> None:  # in `bentoml serve`'s own process, before any worker: a missing token stops it
        exposure.token(SERVE.auth_token_env, "sentiment.serve.auth_token_env")

    @bentoml.api(batchable=True, max_batch_size=SERVE.max_batch_size, max_latency_ms=SERVE.max_latency_ms)
    # The content type is declared so BentoML does not build the output's JSON schema per response.
    def classify(self, texts: Texts) -> Annotated[list[Prediction], ContentType("application/json")]:
        """Label, its probability and every class's probability, for each text (one text is a list of one)."""
        loaded = self.loaded  # one model for the whole batch, even if a swap lands meanwhile
        rows = loaded.classifier.classify(texts, bucket(loaded.classifier), SERVE.max_padding)
        return [Prediction(**row) for row in rows]

    @bentoml.api
    def explain(self, texts: ExplainTexts) -> Annotated[list[Explanation], ContentType("application/json")]:
        """/classify's answer for each text plus a score per word: occlusion on the served model (docs/serving.md)."""
        classifier = self.loaded.classifier  # one model for the whole request
        return [Explanation(**explaining.explain(classifier, t, bucket(classifier))) for t in texts]


exposure.expose(Sentiment, SERVE, "sentiment.serve")
