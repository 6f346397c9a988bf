"""What makes a service safe to expose, shared by both services (params: `host`, `max_concurrency`, `auth_token_env`
in `sentiment.serve` and `story.serve`; docs/serving.md):

- bind: `bentoml serve` listens on `host` (127.0.0.1 in params.yaml) unless --host or BENTOML_HOST says otherwise;
  BentoML's own default is every interface.
- token: with `auth_token_env` set, every endpoint but the health checks wants `Authorization: Bearer <token>`,
  the token being that environment variable's value; `bentoml serve` refuses to start when it is unset.
- cap: BentoML's `traffic.max_concurrency` (split evenly over the workers) turns away a request over it at once,
  as 503 with Retry-After here, instead of queueing it behind the others without bound.
- drain: on SIGTERM BentoML's arbiter stops its workers and waits for them (circus graceful_timeout, a day); each
  worker's uvicorn stops accepting, finishes the requests it has, then exits. Nothing here changes that;
  tests/service/test_exposure.py holds it to it.
"""

from __future__ import annotations

import hmac
import os
import typing as t

from serving.bentoml_private import MaxConcurrencyMiddleware, traffic_module
from serving.limits import BodyLimit, answer
from textops.params import ParamsError

# /readyz, /healthz, /livez: a load balancer's probes carry no token, and tell nothing about the model.
HEALTH_CHECKS = frozenset({"/readyz", "/healthz", "/livez"})
# The MLflow server's webhook events carry its HMAC signature instead of the token (serving/webhooks.py).
SIGNED = frozenset({"/registry_events"})
RETRY_AFTER_S = 1  # a request here takes milliseconds to seconds: a second later, slots have freed


def service_config(name: str, serve, timeout_s: float, **more: t.Any) -> dict[str, t.Any]:
    """`@bentoml.service` arguments both services share: workers, timeout, the cap, the bind address."""
    return {
        "name": name,
        "workers": serve.workers,
        "traffic": {"timeout": timeout_s, "max_concurrency": serve.max_concurrency},
        "http": {"host": str(serve.host)},
        **more,
    }


def expose(service_cls, serve, section: str) -> None:
    """The ASGI middlewares both services run, outermost first, and the 503 over the cap (see Shed)."""
    traffic_module().MaxConcurrencyMiddleware = Shed
    if serve.auth_token_env:
        service_cls.add_asgi_middleware(BearerToken, variable=serve.auth_token_env, key=f"{section}.auth_token_env")
    service_cls.add_asgi_middleware(BodyLimit, max_bytes=serve.max_body_bytes)
    service_cls.add_asgi_middleware(ReadinessReport)


def token(variable: str | None, key: str) -> str | None:
    """The bearer token in the environment variable `variable` (params key `key`; None: no token); ParamsError
    when it is unset."""
    if not variable:
        return None
    value = os.environ.get(variable, "").strip()
    if not value:
        raise ParamsError(
            f"{key} names the environment variable {variable}, which is unset or empty: set it to the bearer "
            f"token clients must send, or set {key} to null to serve without one"
        )
    return value


class BearerToken:
    """ASGI middleware: 401 unless `Authorization: Bearer <token>`, on every path but the health checks."""

    def __init__(self, app, variable: str, key: str):
        self.app = app
        self.token = token(variable, key).encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in HEALTH_CHECKS | SIGNED:
            return await self.app(scope, receive, send)
        scheme, _, given = dict(scope["headers"]).get(b"authorization", b"").partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token):
            return await self.app(scope, receive, send)
        error = "wrong bearer token" if given else "this service wants an 'Authorization: Bearer <token>' header"
        await answer(send, 401, {"error": error}, headers=((b"www-authenticate", b"Bearer"),))


class Shed(MaxConcurrencyMiddleware):
    """BentoML's cap on requests in progress, answering 503 with Retry-After where BentoML answers 429: the
    client sent nothing wrong, the server is busy (RFC 9110: 503 with Retry-After is that answer)."""

    def __init__(self, app, max_concurrency: int, skip_paths: list[str] | None = None) -> None:
        super().__init__(app, max_concurrency, skip_paths)
        self.limit = max_concurrency

    async def __call__(self, scope, receive, send):
        # No await between this test and BentoML's own: the event loop cannot slip a request in between.
        if scope["type"] == "http" and scope["path"] not in self.skip_paths and self._semaphore.locked():
            error = (
                f"busy: this worker has {self.limit} requests in progress, its share of max_concurrency; "
                f"retry after {RETRY_AFTER_S} s"
            )
            return await answer(send, 503, {"error": error}, headers=((b"retry-after", str(RETRY_AFTER_S).encode()),))
        return await super().__call__(scope, receive, send)


class ReadinessReport:
    """ASGI middleware: BentoML's /readyz (200 or 503, from the service's __is_ready__) with a JSON body saying
    whether the model is degraded and why (serving.hosting.Hosted.health), instead of an empty line."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/readyz":
            return await self.app(scope, receive, send)
        import bentoml

        status = []

        async def keep_status(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])
            elif not message.get("more_body"):  # BentoML's own body is dropped for the report below
                service = bentoml.get_current_service()
                report = service.health() if hasattr(service, "health") else {"ready": status == [200]}
                await answer(send, status[0] if status else 500, report)

        await self.app(scope, receive, keep_status)
