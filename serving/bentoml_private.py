"""Every private BentoML name the services use, in one place: BentoML 1.4 has no public API for these.

Pinned to bentoml 1.4.39 (requirements.in). tests/service/test_bentoml_private.py imports each one and
checks the attributes and signatures used here and in serving/*.py, so a BentoML upgrade that moves or
changes one fails there by name, not deep inside a served request. Everything else comes from the public
API (`bentoml.on_shutdown`, `bentoml.models.BentoModel`, `bentoml.models.get`, `bentoml.exceptions`, ...).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

# The base of BentoML's plain-value IO descriptors (what `-> str` becomes). serving.story.TextChunks
# subclasses IORootModel[str] to set the stream's media type to text/plain: a ContentType annotation
# is ignored on a generator's return type, and the public `bentoml.IODescriptor` is the object-schema base.
from _bentoml_sdk.io_models import IORootModel

# The base class of model references (`bentoml.models.BentoModel`, `HuggingFaceModel`): a service attribute
# that is an instance of it is asked for to_info() by `bentoml build` and resolved on first access.
# serving.models.RegistryModel (an MLflow `name@alias`) is one. BentoML exports the concrete references
# only; `bentoml.models.Model` is the stored model, a different class.
from _bentoml_sdk.models import Model as ModelReference

# The container holding a built Bento's model aliases (`name@alias` -> stored tag), which
# `bentoml build` records and `bentoml serve <bento>` loads. bentoml.models.get() reads it, but
# nothing public says whether an alias is there (see bento_model_aliases below).
from bentoml._internal.configuration.containers import BentoMLContainer

# The batcher. serving.batching subclasses both to pin the learned cork wait at zero (serve.batch_wait).
from bentoml._internal.marshal.dispatcher import CorkDispatcher, Optimizer

# BentoML's cap on requests in progress (`traffic.max_concurrency`), which answers 429 over it. serving.exposure
# subclasses it to answer 503 with Retry-After, and puts the subclass in its module (see traffic_module below).
from bentoml._internal.server.http.traffic import MaxConcurrencyMiddleware

# The logger of BentoML's log_exception(), which logs every failed request at ERROR with its traceback.
# serving.limits filters it (client errors: one line). A logger name: nothing is imported from it.
BENTOML_REQUEST_LOG = "bentoml._internal.server.http_app"

# The module whose global `MaxConcurrencyMiddleware` BentoML's app factories import when they build the app's
# middleware list (after the service module is imported); serving.exposure replaces that global.
TRAFFIC_MODULE = "bentoml._internal.server.http.traffic"

# The module whose global `CorkDispatcher` BentoML's service app calls to make each batchable API's
# dispatcher; serving.batching replaces that global. Imported on demand (it takes over a second).
SERVER_APP_MODULE = "_bentoml_impl.server.app"

__all__ = [
    "BENTOML_REQUEST_LOG",
    "SERVER_APP_MODULE",
    "BentoMLContainer",
    "CorkDispatcher",
    "TRAFFIC_MODULE",
    "IORootModel",
    "MaxConcurrencyMiddleware",
    "ModelReference",
    "Optimizer",
    "bento_model_aliases",
    "bentoml_home",
    "server_app",
    "traffic_module",
]


def server_app() -> ModuleType:
    """BentoML's service app module (SERVER_APP_MODULE)."""
    return importlib.import_module(SERVER_APP_MODULE)


def bento_model_aliases() -> dict[str, str]:
    """Model aliases (`name@alias` -> stored tag) as `bentoml serve` loaded them: a built Bento's; from a source
    folder, bentofile.yaml's `models` (none here)."""
    return BentoMLContainer.model_aliases.get()


def traffic_module() -> ModuleType:
    """BentoML's traffic middleware module (TRAFFIC_MODULE)."""
    return importlib.import_module(TRAFFIC_MODULE)


def bentoml_home() -> Path:
    """BentoML's home folder as BentoML resolves it (BENTOML_HOME, else ~/bentoml)."""
    return Path(BentoMLContainer.bentoml_home.get())
