"""serving/bentoml_private.py: the private BentoML names the services rely on are still there and still behave so.

One test per name. When a BentoML upgrade moves, renames or changes one, its test fails with the name, what
changed, the version pinned in requirements.in and the version installed; fix the adapter (and its user in
serving/) or pin BentoML back.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
import types
from collections.abc import Callable
from pathlib import Path

import bentoml
import pytest

REQUIREMENTS = Path(__file__).resolve().parents[2] / "requirements.in"
PINNED = re.search(r"^bentoml==(\S+)", REQUIREMENTS.read_text(), re.M).group(1)


def check(symbol: str, test: Callable[[], None]) -> None:
    """Run `test`; any failure (an import, a missing attribute, a changed behaviour) names `symbol`."""
    try:
        test()
    except Exception as error:
        pytest.fail(
            f"BentoML private API changed: {symbol} ({type(error).__name__}: {error}). serving/ was "
            f"written against bentoml=={PINNED} (requirements.in); installed: bentoml=={bentoml.__version__}. "
            f"See serving/bentoml_private.py.",
            pytrace=False,
        )


def require(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


def params(func) -> list[str]:
    return list(inspect.signature(func).parameters)


def test_installed_bentoml_is_the_pinned_one():
    assert bentoml.__version__ == PINNED, (
        f"bentoml=={bentoml.__version__} is installed but requirements.in pins bentoml=={PINNED}: run "
        f"scripts/install.sh, or run this file against the new version and update serving/bentoml_private.py"
    )


def test_model_reference_base():
    def test():
        from _bentoml_sdk.models import Model
        from _bentoml_sdk.service import factory

        from serving.bentoml_private import ModelReference

        require(ModelReference is Model, "serving.bentoml_private.ModelReference is not _bentoml_sdk.models.Model")
        require(issubclass(bentoml.models.BentoModel, Model), "bentoml.models.BentoModel no longer derives from it")
        require(factory.Model is Model, "the service factory no longer finds model references by this class")
        abstract = set(Model.__abstractmethods__)
        require(
            abstract == {"to_info", "from_info", "to_create_schema", "resolve"},
            f"its abstract methods are now {sorted(abstract)} (serving.models.RegistryModel implements "
            f"to_info, from_info, to_create_schema, resolve)",
        )
        require(params(Model.to_info) == ["self", "alias"], f"to_info{inspect.signature(Model.to_info)}")
        require(params(Model.resolve) == ["self", "base_path"], f"resolve{inspect.signature(Model.resolve)}")

        class Ref(Model[str]):  # resolved once, on access through an instance; the class gets the reference
            calls = 0

            def to_info(self, alias=None): ...
            @classmethod
            def from_info(cls, info): ...
            def to_create_schema(self): ...
            def resolve(self, base_path=None):
                Ref.calls += 1
                return "resolved"

        class Service:
            ref = Ref()

        require(isinstance(Service.ref, Ref), "accessed on the class, a reference no longer returns itself")
        service = Service()
        require(
            service.ref == "resolved" and service.ref == "resolved" and Ref.calls == 1,
            "accessed on an instance, a reference is no longer resolved once",
        )

    check("_bentoml_sdk.models.Model (serving.models.RegistryModel's base)", test)


def test_io_root_model():
    def test():
        from _bentoml_sdk.io_models import IORootModel as Original

        from serving.bentoml_private import IORootModel

        require(IORootModel is Original, "serving.bentoml_private.IORootModel is not _bentoml_sdk.io_models'")
        require(issubclass(IORootModel, bentoml.IODescriptor), "it no longer derives from bentoml.IODescriptor")

        class Chunks(IORootModel[str]):
            media_type = "text/plain; charset=utf-8"

        require(
            Chunks.mime_type() == "text/plain; charset=utf-8",
            f"a subclass's media_type no longer sets the response type (mime_type() = {Chunks.mime_type()!r})",
        )
        require(
            Chunks.model_json_schema().get("type") == "string",
            f"IORootModel[str]'s schema is {Chunks.model_json_schema()} (serving.story.TextChunks)",
        )

    check("_bentoml_sdk.io_models.IORootModel (serving.story.TextChunks' base)", test)


def test_cork_dispatcher_and_optimizer():
    def test():
        from bentoml._internal.marshal import dispatcher

        from serving.bentoml_private import CorkDispatcher, Optimizer

        require(
            CorkDispatcher is dispatcher.CorkDispatcher and Optimizer is dispatcher.Optimizer,
            "the adapter's classes are not bentoml._internal.marshal.dispatcher's",
        )
        require(
            params(CorkDispatcher.__init__)[:3] == ["self", "max_latency_in_ms", "max_batch_size"],
            f"CorkDispatcher.__init__{inspect.signature(CorkDispatcher.__init__)}",
        )
        require(params(Optimizer.__init__) == ["self", "max_latency"], f"Optimizer{inspect.signature(Optimizer)}")
        d = CorkDispatcher(2000, 64, fallback=lambda: None)
        require(d.max_latency == 2.0, f"CorkDispatcher.max_latency is {getattr(d, 'max_latency', None)!r}, not 2.0 s")
        require(type(d.optimizer) is Optimizer, "CorkDispatcher.optimizer is no longer an Optimizer")
        for name in ("trigger_refresh", "log_outbound", "wait", "o_a", "o_b"):
            require(hasattr(d.optimizer, name), f"Optimizer has no {name}")
        for _ in range(10):
            d.optimizer.log_outbound(n=2, wait=0.1, duration=0.01)
        d.optimizer.trigger_refresh()
        require(d.optimizer.wait > 0.05, "Optimizer.trigger_refresh() no longer learns the cork wait into .wait")

    check("bentoml._internal.marshal.dispatcher.CorkDispatcher / Optimizer (serving.batching)", test)


def test_server_app_builds_dispatchers_from_its_module_global():
    def test():
        from serving.bentoml_private import SERVER_APP_MODULE, CorkDispatcher, server_app

        app = server_app()
        require(app is importlib.import_module(SERVER_APP_MODULE), "server_app() is not SERVER_APP_MODULE")
        require(
            getattr(app, "CorkDispatcher", None) in (CorkDispatcher, *CorkDispatcher.__subclasses__()),
            f"{SERVER_APP_MODULE}.CorkDispatcher is {getattr(app, 'CorkDispatcher', None)!r}",
        )
        # serving.batching.use() replaces the module global; the app factory must look it up there.
        require(
            "CorkDispatcher" in inspect.unwrap(app.ServiceAppFactory.__init__).__code__.co_names,
            "ServiceAppFactory.__init__ no longer makes dispatchers from the module's CorkDispatcher",
        )

    check("_bentoml_impl.server.app.CorkDispatcher (serving.batching.use)", test)


def test_request_error_log():
    def test():
        from bentoml._internal.server import http_app

        from serving.bentoml_private import BENTOML_REQUEST_LOG, SERVER_APP_MODULE

        require(http_app.logger.name == BENTOML_REQUEST_LOG, f"log_exception logs to {http_app.logger.name}")
        app = importlib.import_module(SERVER_APP_MODULE)
        require(
            app.log_exception is http_app.log_exception,
            f"{SERVER_APP_MODULE} no longer logs failed requests with {BENTOML_REQUEST_LOG}.log_exception",
        )
        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logger = logging.getLogger(BENTOML_REQUEST_LOG)
        logger.addHandler(handler)
        try:
            request = types.SimpleNamespace(url=types.SimpleNamespace(path="/classify"), method="POST")
            try:
                raise ValueError("boom")
            except ValueError:
                http_app.log_exception(request)
        finally:
            logger.removeHandler(handler)
        # serving.limits.ClientErrorLog reads (path, method) from the args and the error from exc_info.
        (record,) = records
        require(
            record.levelno == logging.ERROR
            and record.args == ("/classify", "POST")
            and isinstance(record.exc_info[1], ValueError),
            f"log_exception's record is now {record.levelname} {record.msg!r} {record.args!r}",
        )

    check('logger "bentoml._internal.server.http_app" (serving.limits.ClientErrorLog)', test)


def test_model_aliases_container():
    def test():
        from bentoml._internal.configuration.containers import BentoMLContainer as Original
        from bentoml._internal.service import loader

        from serving.bentoml_private import BentoMLContainer, bento_model_aliases

        require(BentoMLContainer is Original, "serving.bentoml_private.BentoMLContainer is not BentoML's")
        require(
            "BentoMLContainer.model_aliases.set" in inspect.getsource(loader),
            "bentoml serve no longer loads a Bento's aliases into BentoMLContainer.model_aliases",
        )
        require(
            params(bentoml.models.get)[:2] == ["tag", "_model_store"] and "model_aliases" in params(bentoml.models.get),
            "bentoml.models.get no longer resolves aliases from the same container",
        )
        saved = BentoMLContainer.model_aliases.get()
        try:
            BentoMLContainer.model_aliases.set({"m@champion": "m:v1"})
            require(bento_model_aliases() == {"m@champion": "m:v1"}, "model_aliases.get() no longer returns them")
        finally:
            BentoMLContainer.model_aliases.set(saved)

    check(
        "bentoml._internal.configuration.containers.BentoMLContainer.model_aliases "
        "(serving.models.RegistryModel.bundled_tag)",
        test,
    )


def test_max_concurrency_middleware():
    def test():
        import asyncio

        from _bentoml_impl.server import app as service_app
        from bentoml._internal.server import base_app
        from bentoml._internal.server.http import traffic

        from serving.bentoml_private import TRAFFIC_MODULE, MaxConcurrencyMiddleware, traffic_module
        from serving.exposure import Shed

        require(traffic_module() is traffic and TRAFFIC_MODULE == traffic.__name__, "traffic_module() moved")
        require(
            traffic.MaxConcurrencyMiddleware in (MaxConcurrencyMiddleware, Shed),
            f"{TRAFFIC_MODULE}.MaxConcurrencyMiddleware is {traffic.MaxConcurrencyMiddleware!r}",
        )
        require(
            params(MaxConcurrencyMiddleware.__init__) == ["self", "app", "max_concurrency", "skip_paths"],
            f"MaxConcurrencyMiddleware.__init__{inspect.signature(MaxConcurrencyMiddleware.__init__)}",
        )
        # serving.exposure.expose() replaces the module global; both app factories must import it when they build
        # the middleware list, not when their module loads.
        for factory in (base_app.BaseAppFactory, service_app.ServiceAppFactory):
            code = inspect.getsource(factory.middlewares.fget)
            require(
                "import MaxConcurrencyMiddleware" in code,
                f"{factory.__name__}.middlewares no longer imports MaxConcurrencyMiddleware when it runs",
            )
        # Shed reads the semaphore and the skipped paths, and takes over from BentoML's 429.
        middleware = MaxConcurrencyMiddleware(None, 1, ["/x"])
        require(isinstance(middleware._semaphore, asyncio.Semaphore), "MaxConcurrencyMiddleware._semaphore is gone")
        require("/x" in middleware.skip_paths and "/readyz" in middleware.skip_paths, "skip_paths changed")
        sent = []

        async def hold_one():
            async with middleware._semaphore:  # one request in progress
                scope = {"type": "http", "path": "/classify", "method": "POST", "headers": []}

                async def send(message):
                    sent.append(message)

                await middleware(scope, None, send)

        asyncio.run(hold_one())
        require(sent and sent[0]["status"] == 429, f"over the cap BentoML now answers {sent[:1]}")

    check(
        "bentoml._internal.server.http.traffic.MaxConcurrencyMiddleware (serving.exposure.Shed)",
        test,
    )


def test_bentoml_home():
    def test():
        from serving.bentoml_private import bentoml_home

        require(isinstance(bentoml_home(), Path) and str(bentoml_home()), "bentoml_home() is not a folder path")

    check("BentoMLContainer.bentoml_home (serving.state.State.of)", test)


def test_serving_imports_bentoml_internals_only_through_the_adapter():
    serving = Path(__file__).resolve().parents[2] / "serving"
    private = re.compile(r"^\s*(from|import)\s+(_bentoml_\w+|bentoml\._internal)\b", re.M)
    offenders = [
        p.name for p in sorted(serving.glob("*.py")) if p.name != "bentoml_private.py" and private.search(p.read_text())
    ]
    assert not offenders, f"{offenders} import BentoML internals directly: go through serving/bentoml_private.py"


def test_public_replacements_are_public():
    """What serving/ takes from the public API instead of the internals it once used."""
    assert "on_shutdown" in bentoml.__all__ and callable(bentoml.on_shutdown)  # serving.hosting.Hosted.stop
    assert "on_deployment" in bentoml.__all__  # the services' check_token, in `bentoml serve`'s own process
    assert "BentoModel" in bentoml.models.__all__  # serving.models.RegistryModel.to_info and resolve
    assert params(bentoml.models.BentoModel.to_info) == ["self", "alias"]
