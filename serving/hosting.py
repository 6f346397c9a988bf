"""How both services hold their model: load it at start, report health, and in registry mode follow the alias.

Registry mode, at start: the alias's version is fetched, verified against its registered sha256 (serving.models),
copied into the state folder (serving/state.py) and loaded from there. When that fails (the registry is
unreachable, the version's files differ from their digests or do not load, or the version was set aside before)
the service serves the last verified local copy, else the `previous` alias's version, and says it is degraded,
and why, on /metadata and /readyz. With nothing to serve it stays up but not ready (503 on /readyz and on the
APIs, with the reason) instead of failing its start again and again. Every `poll_interval_s` it then polls the
alias; a new version (or, when degraded, any) is loaded beside the one in service and swapped in with one
reference swap, which ends the degradation. A version at fault is set aside, persisted, until the alias moves.
On an MLflow server the alias moves can also be pushed (serving/webhooks.py): an event wakes the poll at once.

Bento mode: the bundled copy, verified against the digests recorded in the BentoML model before it is loaded;
a copy that fails the check leaves the service not ready, saying why.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import typing as t
from dataclasses import dataclass

import bentoml

from serving import models, webhooks
from serving.models import RegistryModel, Source
from serving.state import State
from serving.webhooks import Wake
from textops.params import ParamsError

NOTHING = "no model yet"  # Followed.label() before a first model is loaded


@dataclass(frozen=True)
class Serving:
    """What a worker serves, swapped as one reference: the loaded model (None: none yet) and, when it is not the
    alias's current version, why (`degraded`)."""

    loaded: t.Any
    degraded: str | None = None


class Followed(t.Protocol):
    def serving(self) -> str | None: ...
    def label(self) -> str: ...
    def swap(self, source: Source) -> None: ...
    def degrade(self, reason: str) -> None: ...


def step(name: str, alias: str, host: Followed, state: State, log: logging.Logger) -> str | None:
    """One poll of `name@alias`: load its version beside the one in service and swap it in, unless it is served
    already or set aside. Returns None when the alias's version is served, else why not. A registry error (the
    look-up, or fetching the version) is retried at the next poll; a version whose files differ from their digests
    or fail to load is set aside (persisted) until the alias moves."""
    current = host.serving()  # None: what serves (if anything) is not the alias's version
    try:
        version = models.champion_version(name, alias)
    except Exception as error:  # a registry outage must not stop serving
        log.warning("could not follow %s@%s (%s); still serving %s", name, alias, error, host.label())
        return f"the registry could not say which version {name}@{alias} is: {error}"
    aside = state.aside()
    if aside is not None and aside["version"] != version:
        state.clear_aside()  # the alias moved: should it come back to that version, it is tried again
        aside = None
    if version == current:
        return None
    if aside is not None:  # set aside by this worker, another one, or before a restart
        reason = f"{name}@{alias} is v{version}, set aside at {aside['when']}: {aside['reason']}"
        host.degrade(reason)
        return reason
    if host.label() == NOTHING:
        log.info("%s@%s is v%s: loading it", name, alias, version)
    else:
        log.info("%s@%s moved to v%s: loading it beside %s", name, alias, version, host.label())
    try:
        source = models.fetch(name, alias, version, state)
    except Exception as error:
        if not is_integrity_error(error):  # e.g. a remote store's timeout: no fault of the version
            log.warning("could not follow %s@%s (%s); still serving %s", name, alias, error, host.label())
            return f"v{version} of {name}@{alias} could not be fetched: {error}"
        return set_aside(name, alias, version, error, host, state, log)
    try:
        host.swap(source)
    except Exception as error:
        return set_aside(name, alias, version, error, host, state, log)
    state.mark_last(source)
    log.info("now serving %s v%s", name, version)
    if current is not None:  # the alias moved while serving: if by hand in the MLflow UI, the audit log says so
        record_hand_moves(name, log)
    return None


def record_hand_moves(name: str, log: logging.Logger) -> None:
    """After the swap, so a busy registry lock never delays it; a promotion in progress will record it itself."""
    from textops import registry

    try:
        for entry in registry.notice_hand_moves(name, timeout=5.0):
            log.info("recorded a hand move of %s@%s: v%s -> v%s", name, entry["alias"], entry["from"], entry["to"])
    except Exception as error:  # e.g. a registry user without write access: the next registry operation records it
        log.warning("could not check %s's aliases for hand moves (%s)", name, error)


def is_integrity_error(error: BaseException) -> bool:
    from textops.integrity import IntegrityError

    return isinstance(error, IntegrityError)


def set_aside(
    name: str, alias: str, version: str, error: Exception, host: Followed, state: State, log: logging.Logger
) -> str:
    # The error names the file, its registered and its actual sha256 when the bytes differ (textops.integrity).
    state.put_aside(version, f"{type(error).__name__}: {error}")
    reason = f"{name}@{alias} is v{version}, set aside: it failed to load ({type(error).__name__}: {error})"
    host.degrade(reason)
    log.warning(
        "could not follow %s@%s: v%s failed to load (%s: %s); still serving %s until the alias moves again",
        name,
        alias,
        version,
        type(error).__name__,
        error,
        host.label(),
    )
    return reason


def follow(
    name: str,
    alias: str,
    interval_s: float,
    stop: threading.Event,
    host: Followed,
    state: State,
    log: logging.Logger,
    wake: Wake | None = None,
) -> None:
    """Registry mode: `step` every `interval_s` until `stop`, and at once when `wake` is signalled."""
    while True:
        if wake is None:
            woken = False
            if stop.wait(interval_s):
                return
        else:
            woken = wake.wait(interval_s, stop)
            if stop.is_set():
                return
        try:
            step(name, alias, host, state, log)
        except Exception:  # the thread must outlive anything a poll meets
            log.exception("following %s@%s failed this poll; trying again at the next", name, alias)
        if woken:
            log.info("polled %s@%s on a pushed alias event", name, alias)


def subscribe(name: str, alias: str, url: str, secret: str, log: logging.Logger, hooks: list[str]) -> None:
    """In a thread: a server that refuses webhooks (an old MLflow, a policy) leaves polling, with the reason logged.
    The webhook's id goes into `hooks`, for the shutdown to remove."""
    try:
        hooks.append(webhooks.subscribe(name, alias, url, secret))
        log.info(
            "subscribed to %s@%s alias moves: the tracking server calls %s (webhook %s)", name, alias, url, hooks[-1]
        )
    except Exception as error:
        log.warning("could not subscribe to %s@%s alias moves (%s); polling only", name, alias, error)


class Hosted:
    """What both services do around their model (see the module's docstring). Subclasses are the
    `@bentoml.service` classes; they call `host(load, ...)` in `__init__` and read `self.loaded` per request.
    BentoML finds the inherited shutdown hook and __is_ready__ (it looks through `dir()`)."""

    model_ref: RegistryModel  # set on the subclass

    def host(self, load: t.Callable[[Source], t.Any], serve: t.Any, log: logging.Logger) -> None:
        """`serve`: the task's serve params (textops.params.FollowParams)."""
        self.ref = type(self).model_ref  # the reference itself (self.model_ref would resolve it, once for good)
        self.mode = "registry" if self.ref.bundled_tag() is None else "bento"
        poll_interval_s = serve.poll_interval_s
        self.poll_interval_s = poll_interval_s if self.mode == "registry" else None
        self._load, self._log = load, log
        self._now = Serving(None)
        self._stop = threading.Event()
        self.webhook_secret: str | None = None
        self._hooks: list[str] = []
        if self.mode == "bento":
            self._start_bento()
        else:
            models.bound_registry_calls(poll_interval_s)
            self.state = State.of(self.ref.name)
            self.wake = Wake(self.state.root / "wake")
            self._start_registry()
            self._subscribe(serve)
        # Everything loaded so far (transformers, onnxruntime, mlflow: millions of objects) is long-lived:
        # move it out of the collector's sight, or each full collection stalls requests (gc.freeze docs).
        gc.collect()
        gc.freeze()
        if self.mode == "registry":
            args = (self.ref.name, self.ref.alias, poll_interval_s, self._stop, self, self.state, log, self.wake)
            threading.Thread(target=follow, name="follow-alias", daemon=True, args=args).start()

    # ------------------------------------------------------------ start

    def _start_bento(self) -> None:
        try:
            self._now = Serving(self._load(self.ref.resolve()))  # resolve() verifies the bundled copy first
            self._log.info("serving %s v%s (bento mode)", self.ref.name, self.version())
        except Exception as error:
            self._now = Serving(None, f"the Bento's model cannot be served: {type(error).__name__}: {error}")
            self._log.error("not ready: %s", self._now.degraded)

    def _start_registry(self) -> None:
        reason = step(self.ref.name, self.ref.alias, self, self.state, self._log)
        if reason is None:
            self._log.info("serving %s v%s (registry mode)", self.ref.name, self.version())
            return
        for what, source in (("the last verified local copy", self.state.last), ("`previous`", self._previous)):
            try:
                found = source()
                if found is not None:
                    self._now = Serving(self._load(found), reason)
                    self.state.mark_last(found)
                    self._log.warning("degraded: %s; serving %s, v%s", reason, what, found.metadata["version"])
                    return
            except Exception as error:
                self._log.warning("could not serve %s (%s: %s)", what, type(error).__name__, error)
        self._now = Serving(None, f"{reason}; no verified local copy in {self.state.root}, no usable `previous`")
        self._log.error("not ready until %s@%s can be served: %s", self.ref.name, self.ref.alias, self._now.degraded)

    def _subscribe(self, serve: t.Any) -> None:
        import mlflow

        url = os.environ.get(serve.webhook_url_env, "").strip()
        if not url:
            return
        if not mlflow.get_tracking_uri().startswith(("http://", "https://")):
            self._log.warning(
                "%s is set, but only a tracking server sends webhooks: polling only", serve.webhook_url_env
            )
            return
        secret = os.environ.get(serve.webhook_secret_env, "").strip()
        if not secret:
            raise ParamsError(
                f"{serve.webhook_url_env} asks for alias events, but {serve.webhook_secret_env} (serve."
                f"webhook_secret_env) is unset or empty: set it to the secret the webhook's events are signed with"
            )
        self.webhook_secret = secret
        args = (self.ref.name, self.ref.alias, url, secret, self._log, self._hooks)
        threading.Thread(target=subscribe, name="subscribe-alias", daemon=True, args=args).start()

    def _previous(self) -> Source | None:
        from textops import registry

        version = registry.version_of(self.ref.name, registry.PREVIOUS)
        aside = self.state.aside()
        if version is None or (aside is not None and aside["version"] == version):
            return None
        return models.fetch(self.ref.name, registry.PREVIOUS, version, self.state)

    # ------------------------------------------------------------ what the follow thread calls (Followed)

    def serving(self) -> str | None:
        return None if self._now.degraded else self.version()

    def label(self) -> str:
        if self._now.loaded is None:
            return NOTHING
        source = self._now.loaded.metadata["source"]
        return f"v{self.version()}" + ("" if source == "registry" else f" ({source})")

    def swap(self, source: Source) -> None:
        self._now = Serving(self._load(source))  # one reference swap: atomic

    def degrade(self, reason: str) -> None:
        if self._now.degraded != reason:
            self._now = Serving(self._now.loaded, reason)

    # ------------------------------------------------------------ what requests read

    @property
    def loaded(self) -> t.Any:
        """The model in service; 503 (ServiceUnavailable, with the reason) while there is none."""
        return self._ready().loaded

    def _ready(self) -> Serving:
        now = self._now
        if now.loaded is None:
            from bentoml.exceptions import ServiceUnavailable

            raise ServiceUnavailable(f"no model is loaded: {now.degraded}")
        return now

    def version(self) -> str | None:
        loaded = self._now.loaded
        return None if loaded is None else str(loaded.metadata["version"])

    def health(self) -> dict[str, t.Any]:
        """/readyz's body: ready (a model is loaded), degraded (it is not the alias's current version, or that is
        unknown), why, and the version served and where it came from (registry, local copy, bento)."""
        now = self._now
        return {
            "ready": now.loaded is not None,
            "degraded": now.degraded is not None,
            "reason": now.degraded,
            "version": self.version(),
            "source": None if now.loaded is None else now.loaded.metadata["source"],
        }

    def describe(self) -> dict[str, t.Any]:
        """/metadata's fields both services share: the model's, the mode, the poll interval, the health."""
        now = self._ready()
        return {
            **now.loaded.metadata,
            "mode": self.mode,
            "poll_interval_s": self.poll_interval_s,
            "degraded": now.degraded is not None,
            "degraded_reason": now.degraded,
        }

    def __is_ready__(self) -> bool:
        now = getattr(self, "_now", None)
        return now is not None and now.loaded is not None

    @bentoml.on_shutdown
    def stop(self) -> None:
        self._stop.set()
        # A webhook left to a stopped service costs the server a delivery with retries (1, 2, 4 s) per event, on
        # a pool of 10 threads that live services' events wait for too: measured, 3.5 s instead of 0.3 s.
        for hook in getattr(self, "_hooks", []):
            webhooks.unsubscribe(hook, self._log)


async def registry_event(request: t.Any) -> t.Any:
    """POST /registry_events: an MLflow webhook's event (serving/webhooks.py). 401 unless signed with the secret;
    an event that moved the followed alias wakes every worker's poll. Not behind the bearer token: the signature
    is its authentication (serving/exposure.py)."""
    from starlette.responses import JSONResponse

    service = bentoml.get_current_service()
    secret = getattr(service, "webhook_secret", None)
    if not secret:
        return JSONResponse({"error": "this service takes no webhook events (serve.webhook_url_env unset)"}, 404)
    body = await request.body()
    try:
        event = webhooks.verify(secret, {k.lower(): v for k, v in request.headers.items()}, body)
    except webhooks.BadEvent as error:
        return JSONResponse({"error": str(error)}, status_code=401)
    moved = webhooks.concerns(event, service.ref.name, service.ref.alias)
    if moved:
        service.wake.signal()
    return JSONResponse({"woke": moved})


def metadata_response(more: t.Callable[[t.Any], dict[str, t.Any]] = lambda service: {}) -> t.Any:
    """GET /metadata of either service: `describe()` plus the service's `more`; 503 with the reason while no model
    is loaded (a mounted Starlette route would turn the exception into a 500)."""
    from bentoml.exceptions import ServiceUnavailable
    from starlette.responses import JSONResponse

    service = bentoml.get_current_service()
    try:
        return JSONResponse({**service.describe(), **more(service)})
    except ServiceUnavailable as error:
        return JSONResponse({"error": str(error), **service.health()}, status_code=503)
