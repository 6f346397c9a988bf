"""What a client's mistakes cost the services: a request body limit (BentoML sets none: STACK_NOTES, 200 MB
bodies got 200), and one log line per client error instead of BentoML's traceback."""

from __future__ import annotations

import json
import logging

# BentoML's log_exception() logs there, at ERROR with the traceback, for every failed request.
from serving.bentoml_private import BENTOML_REQUEST_LOG


def is_client_error(error: BaseException) -> bool:
    """A 4xx: the request's fault (validation of the body, or a BentoML error under 500)."""
    from bentoml.exceptions import BentoMLException
    from pydantic import ValidationError

    if isinstance(error, ValidationError):
        return True
    return isinstance(error, BentoMLException) and int(error.error_code) < 500


class ClientErrorLog(logging.Filter):
    """Client errors become one INFO line naming the problem. BentoML formats a full traceback at ERROR for
    each one, and every 400 looked like a server fault in the log (and cost a traceback's formatting).
    Server errors (5xx, anything else) keep their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and is_client_error(error):
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            record.msg = "client error on %s [%s]: %s"
            record.args = (*(record.args or ("?", "?"))[:2], f"{type(error).__name__}: {first[:300]}")
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
        return True


def quiet_client_errors() -> None:
    """Install ClientErrorLog once (both services call it when their module loads)."""
    logger = logging.getLogger(BENTOML_REQUEST_LOG)
    if not any(isinstance(f, ClientErrorLog) for f in logger.filters):
        logger.addFilter(ClientErrorLog())


class BodyLimit:
    """ASGI middleware: 413 for bodies over `max_bytes`, by Content-Length or, when chunked, by counting.

    A chunked body is read here (at most `max_bytes` + one chunk) and replayed to the app, because an
    error raised from inside the app's receive() would reach the client as a 500.
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.strip().isdigit():
                return await self.reject(send, 400, f"Content-Length {length[:40]!r} is not a number")
            if int(length) > self.max_bytes:
                return await self.reject(send, 413, self.too_large(int(length)))
            return await self.app(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                return await self.reject(send, 413, self.too_large(size, at_least=more))
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()  # after the body: wait for a disconnect, as the server would
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    def too_large(self, size: int, at_least: bool = False) -> str:
        return (
            f"request body is {'over ' if at_least else ''}{size} bytes; the limit is "
            f"serve.max_body_bytes={self.max_bytes}"
        )

    @staticmethod
    async def reject(send, status: int, error: str) -> None:
        await answer(send, status, {"error": error}, close=True)


async def answer(send, status: int, body: dict, headers: tuple[tuple[bytes, bytes], ...] = (), close=False) -> None:
    """A JSON response sent straight from ASGI middleware. `close`: when the request body was left unread."""
    content = json.dumps(body).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode()), *headers]
    if close:
        head.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": content})
