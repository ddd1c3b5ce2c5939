"""ASGI middleware that bounds how a request body is received, and refuses in one log line.

:class:`RequestGuard` sits in front of every route of every bkv server:

1. A declared ``Content-Length`` over the route's limit is refused before the
   application runs and before any of the body is read (413, or the server's
   own refusal, e.g. the HSM's ``HsmRejected``).
2. The application reads the body through the guard: past the limit it stops
   reading and refuses; if the body is not complete ``body_seconds`` after the
   head arrived it answers 408 (:mod:`bkv.serving.timeouts`); if the client
   leaves first there is no one to answer.
3. An answer that leaves before the whole body was received (a refusal, or a
   401 that the application sends before it reads the body) carries
   ``Connection: close``: the server then closes the connection instead of
   reading and discarding the rest (RFC 9112 §9.6), so a refused 10 MB body
   is not read to its end.

Each refusal is one line on stderr (client address, method, path, reason):
never a traceback, whose size a client could choose. A client that keeps
sending after the refusal may see its connection reset before it reads the
answer; it was refused either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bkv.serving.timeouts import Timeouts

Log = Callable[[str], None]
"""Where refusals are reported: one line, without a trailing newline."""

MAX_LOGGED_PATH: Final = 80
_CLOSE: Final = (b"connection", b"close")


def stderr_log(name: str) -> Log:
    """A :data:`Log` printing ``<name>: <line>`` to stderr (e.g. ``bkv hsm: refused ...``)."""

    def log(line: str) -> None:
        print(f"{name}: {line}", file=sys.stderr, flush=True)

    return log


def size_refusal(limit: int) -> Response:
    """The default answer to a body over ``limit`` bytes: 413 ``SizeLimitError``."""
    message = f"request body over the {limit}-byte limit"
    return JSONResponse({"error": "SizeLimitError", "message": message}, status_code=413)


def timeout_refusal(seconds: float) -> Response:
    """The answer to a body that did not arrive in time: 408 ``RequestTimeout``."""
    message = f"the request body was not complete within {seconds:g} s"
    return JSONResponse({"error": "RequestTimeout", "message": message}, status_code=408)


class _RefusedError(Exception):
    """Raised through the application once the guard has answered (or the client left)."""


@dataclass
class _Exchange:
    """One request's progress, as the guard sees it."""

    limit: int
    deadline: float
    received: int = 0
    body_done: bool = False
    started: bool = False
    answered: bool = False  # the guard answered, or the client left: drop the app's answer


class RequestGuard:
    """Bounds each request body in size and time; see the module docstring.

    ``body_limit(scope)`` is the largest body the route accepts (0: none);
    ``too_large(limit)`` the answer to a larger one.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        timeouts: Timeouts,
        body_limit: Callable[[Scope], int],
        log: Log,
        too_large: Callable[[int], Response] = size_refusal,
    ) -> None:
        self.app = app
        self.timeouts = timeouts
        self.body_limit = body_limit
        self.log = log
        self.too_large = too_large

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.body_limit(scope)
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            self._log_refusal(scope, f"declared body over the {limit}-byte limit")
            await _send_closing(self.too_large(limit), scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.timeouts.body_seconds
        exchange = _Exchange(limit, deadline, body_done=not _has_body(scope))
        with contextlib.suppress(_RefusedError):  # answered and logged where it was raised
            await self.app(
                scope,
                self._guarded_receive(exchange, scope, receive, send),
                self._guarded_send(exchange, send),
            )

    def _guarded_receive(
        self, exchange: _Exchange, scope: Scope, receive: Receive, send: Send
    ) -> Receive:
        async def guarded() -> Message:
            if exchange.body_done:
                return await receive()
            try:
                async with asyncio.timeout_at(exchange.deadline):
                    message = await receive()
            except TimeoutError:
                seconds = self.timeouts.body_seconds
                await self._answer(exchange, scope, receive, send, timeout_refusal(seconds))
                raise self._refusal(scope, f"body not complete within {seconds:g} s") from None
            if message["type"] == "http.disconnect":
                exchange.answered = True  # no one is left to answer
                raise self._refusal(scope, "client left before its body was complete")
            exchange.received += len(message.get("body", b""))
            if exchange.received > exchange.limit:
                await self._answer(exchange, scope, receive, send, self.too_large(exchange.limit))
                raise self._refusal(scope, f"body over the {exchange.limit}-byte limit")
            exchange.body_done = not message.get("more_body", False)
            return message

        return guarded

    @staticmethod
    def _guarded_send(exchange: _Exchange, send: Send) -> Send:
        async def guarded(message: Message) -> None:
            if exchange.answered:
                return  # e.g. the framework's 500 for the exception the guard raised
            if message["type"] == "http.response.start":
                exchange.started = True
                if not exchange.body_done:
                    message = _with_close(message)
            await send(message)

        return guarded

    @staticmethod
    async def _answer(
        exchange: _Exchange, scope: Scope, receive: Receive, send: Send, response: Response
    ) -> None:
        if exchange.started or exchange.answered:
            return  # an answer already began: uvicorn closes the unfinished response
        exchange.answered = True
        await _send_closing(response, scope, receive, send)

    def _log_refusal(self, scope: Scope, reason: str) -> None:
        self.log(f"refused {describe_request(scope)}: {reason}")

    def _refusal(self, scope: Scope, reason: str) -> _RefusedError:
        """Log the refusal; the exception to raise through the application."""
        self._log_refusal(scope, reason)
        return _RefusedError(reason)


async def _send_closing(response: Response, scope: Scope, receive: Receive, send: Send) -> None:
    async def closing(message: Message) -> None:
        await send(_with_close(message) if message["type"] == "http.response.start" else message)

    await response(scope, receive, closing)


def _with_close(start: Message) -> Message:
    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"connection"]
    return {**start, "headers": [*headers, _CLOSE]}


def request_header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lowercase), or None."""
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value)
    return None


def _declared_length(scope: Scope) -> int | None:
    """``Content-Length``, or None; an unparsable one counts as over every limit."""
    value = request_header(scope, b"content-length")
    if value is None:
        return None
    # The HTTP parser already refused a malformed one (RFC 9112 §6.3); be strict anyway.
    return int(value) if value.isdigit() and len(value) <= 19 else 2**63


def _has_body(scope: Scope) -> bool:
    # RFC 9112 §6.3: without Content-Length or Transfer-Encoding a request has no body.
    if request_header(scope, b"transfer-encoding") is not None:
        return True
    declared = _declared_length(scope)
    return declared is not None and declared > 0


def describe_request(scope: Scope) -> str:
    """``METHOD TARGET from HOST:PORT`` for a log line (bounded, no control characters)."""
    client = scope.get("client")
    who = f"{client[0]}:{client[1]}" if client else "an unknown client"
    # raw_path is the request target as sent, which the HTTP parser checked for
    # control characters; the decoded "path" could hold a %0a line break.
    raw = bytes(scope.get("raw_path") or b"?")[:MAX_LOGGED_PATH]
    path = raw.decode("ascii", "replace")
    return f"{scope.get('method', '?')} {path} from {who}"
