"""Alias moves pushed by an MLflow server (its model registry webhooks), beside polling.

In registry mode on a tracking server, with the URL the server should call set (serve.webhook_url_env), each
service subscribes at start: one webhook per model, alias and URL, for `model_version_alias.created/deleted`,
signed with the secret in serve.webhook_secret_env. The server POSTs to /registry_events; a request whose
signature is right and that names the followed model and alias wakes every worker's follow loop (through a
file in the state folder the workers share), which then polls at once: the event is only a hint, the version
served is still the one the registry names, fetched and verified as on a poll. A local SQLite store has no
server to send events: polling is the only way there.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import threading
import time
from pathlib import Path

PATH = "/registry_events"
EVENTS = ["model_version_alias.created", "model_version_alias.deleted"]
MAX_AGE_S = 300  # a signed event older than this is refused (a replay)
WAKE_CHECK_S = 0.2  # how often a worker looks at the wake file: a few stat calls a second


class BadEvent(ValueError):
    """The request is not a signed MLflow event for this service (the message says why)."""


def signature(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """MLflow's: v1,base64(HMAC-SHA256(secret, "<delivery id>.<timestamp>.<body>")) (mlflow.webhooks.delivery)."""
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(secret.encode(), signed, hashlib.sha256).digest()).decode()


def verify(secret: str, headers: dict[str, str], body: bytes, now: float | None = None) -> dict:
    """The event's JSON when its signature and age are right, else BadEvent. `headers`: lower-case names."""
    delivery, stamp, given = (headers.get(f"x-mlflow-{h}", "") for h in ("delivery-id", "timestamp", "signature"))
    if not (delivery and stamp and given):
        raise BadEvent("missing X-MLflow-Delivery-Id, X-MLflow-Timestamp or X-MLflow-Signature")
    if not hmac.compare_digest(given, signature(secret, delivery, stamp, body)):
        raise BadEvent("the signature does not match the webhook secret")
    try:
        age = (time.time() if now is None else now) - int(stamp)
    except ValueError:
        raise BadEvent(f"X-MLflow-Timestamp is not a Unix time: {stamp!r}") from None
    if abs(age) > MAX_AGE_S:
        raise BadEvent(f"the event is {age:.0f} s old; at most {MAX_AGE_S} s are accepted")
    try:
        return json.loads(body)
    except ValueError:
        raise BadEvent("the body is not JSON") from None


def concerns(event: dict, name: str, alias: str) -> bool:
    """Whether the event moved `name@alias`."""
    data = event.get("data") or {}
    return event.get("entity") == "model_version_alias" and data.get("name") == name and data.get("alias") == alias


def hook_name(name: str, alias: str, url: str) -> str:
    return f"textops-{name}-{alias}-{hashlib.sha256(url.encode()).hexdigest()[:8]}"


def subscribe(name: str, alias: str, url: str, secret: str) -> str:
    """The webhook for `name@alias` to `url` on the tracking server, made or updated (idempotent: workers and
    restarts share it). Returns its id."""
    from textops import registry

    client = registry.client()
    wanted = hook_name(name, alias, url)
    found = [hook for hook in client.list_webhooks(max_results=1000) if hook.name == wanted]
    if found:
        hook = client.update_webhook(found[0].webhook_id, url=url, events=EVENTS, secret=secret, status="ACTIVE")
    else:
        hook = client.create_webhook(
            wanted, url, EVENTS, description=f"textops service following {name}@{alias}", secret=secret
        )
    return hook.webhook_id


def unsubscribe(hook: str, log) -> None:
    """Remove the webhook `hook` (every worker of a service tries; the first one does it)."""
    from mlflow.exceptions import MlflowException

    from textops import registry

    try:
        registry.client().delete_webhook(hook)
        log.info("removed webhook %s", hook)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            log.warning("could not remove webhook %s (%s); the tracking server keeps calling it", hook, error)
    except Exception as error:  # the server is down: nothing to call it then
        log.warning("could not remove webhook %s (%s); the tracking server keeps calling it", hook, error)


class Wake:
    """A signal between the workers of one service: `signal()` touches a file in their shared state folder;
    each worker's `wait()` returns True once it sees a change it had not seen."""

    def __init__(self, path: Path):
        self.path = path
        self.seen = self._stamp()

    def _stamp(self) -> int:
        try:
            return self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return 0

    def signal(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(f"{os.getpid()} {time.time()}\n")

    def wait(self, timeout: float, stop: threading.Event) -> bool:
        """Up to `timeout` s (less when `stop` is set); True when signalled since the last True."""
        deadline = time.monotonic() + timeout
        while not stop.is_set():
            stamp = self._stamp()
            if stamp != self.seen:
                self.seen = stamp
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            stop.wait(min(WAKE_CHECK_S, left))
        return False
