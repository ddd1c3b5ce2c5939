"""The HSM's HTTP front (Starlette): link authentication, the message endpoint, housekeeping.

Endpoints:

- ``POST /v1/message`` — body: one :class:`~bkv.protocol.messages.HsmRequest`
  (``application/octet-stream``, at most ``MAX_REQUEST_SIZE`` bytes); answer:
  :class:`~bkv.protocol.messages.HsmResponse` (200) or
  :class:`~bkv.protocol.messages.HsmRejected` (400, also for an oversized
  body); 503 once the HSM has failed safe (:mod:`bkv.hsm.node`), including
  for the request whose persist failed.
- ``GET /v1/public-keys`` — the fleet's public keys (canonical JSON), for
  pinning and for the fleet-key artifact.

Every request, to any path and with any method (HEAD and OPTIONS included),
must carry the host's link MAC (:mod:`bkv.protocol.hsm_link`). It is checked
before the request is routed or parsed; without a valid one the answer is the
same 401 with the same body whatever the path, method or reason, so an
unauthenticated caller changes nothing and cannot tell routes apart. Only
:class:`bkv.serving.guard.RequestGuard`, in front, answers earlier: it bounds
each body in size and time alike on every path (over ``MAX_REQUEST_SIZE``: an
``HsmRejected``, 400; too slow: 408), so that the MAC check never waits for or
buffers more than one small body.

Requests are handled in batches by one worker (:mod:`bkv.hsm.committer`,
group commit): an HSM is a sequential machine, and requests that arrive
while a batch is being written share the next batch's single durable write.
Housekeeping runs on the same worker, between batches. A request whose record
read the HSM refused (a broken or tampered store) gets 503 on its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Final

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bkv.errors import UnauthorizedError
from bkv.hsm.committer import GroupCommitter, QueueFullError
from bkv.hsm.node import HsmNode, Pause
from bkv.hsm.pause import no_pause
from bkv.hsm.public_keys import render_public_keys
from bkv.hsm.runner import Refused
from bkv.protocol.hsm_link import (
    LINK_KEY_SIZE,
    LINK_MAC_HEADER,
    check_link_mac,
    parse_link_mac,
)
from bkv.protocol.messages import MAX_REQUEST_SIZE, ErrorCode, HsmRejected
from bkv.serving.guard import Log, RequestGuard, describe_request, request_header
from bkv.serving.timeouts import Timeouts
from bkv.wire import encode, peek_tag, schema_of

TICK_INTERVAL_S: Final = 1.0
"""How often the worker runs :meth:`HsmNode.run_housekeeping` (between batches)."""

OCTET_STREAM: Final = "application/octet-stream"
_REJECTED_HEADER: Final = (schema_of(HsmRejected).tag, schema_of(HsmRejected).version)
_MAC_HEADER: Final = LINK_MAC_HEADER.encode("ascii")


def build_app(
    node: HsmNode,
    link_key: bytes,
    *,
    log: Log,
    timeouts: Timeouts | None = None,
    pause: Pause = no_pause,
    tick_interval_s: float = TICK_INTERVAL_S,
) -> Starlette:
    """The Starlette application around ``node``, with its housekeeping task.

    ``link_key`` authenticates the host (:mod:`bkv.protocol.hsm_link`);
    refusals are reported to ``log``, one line each.
    """
    public_keys = render_public_keys(node.app.public_keys())

    committer = GroupCommitter(node, pause=pause, tick_interval_s=tick_interval_s)

    @contextlib.asynccontextmanager
    async def lifespan(_web: Starlette) -> AsyncIterator[None]:
        async with committer.running():
            yield

    async def message(request: Request) -> Response:
        if node.failed:
            return _unavailable()
        body = await request.body()  # already read, capped and authenticated
        try:
            outcome = await committer.submit(body)
        except QueueFullError:
            return _busy()
        except Exception:
            if node.failed:  # this request's batch failed to persist: latched and logged
                return _unavailable()
            raise
        if isinstance(outcome, Refused):
            log(f"refused a request: its record read failed the HSM's checks ({outcome.error})")
            return _storage_fault()
        return _octets(outcome)

    async def keys(_request: Request) -> Response:
        return Response(public_keys, media_type="application/json")

    return Starlette(
        lifespan=lifespan,
        routes=[
            Route("/v1/message", message, methods=["POST"]),
            Route("/v1/public-keys", keys, methods=["GET"]),
        ],
        middleware=[
            # Outermost first: bound the body, then authenticate it, then route.
            Middleware(
                RequestGuard,
                timeouts=timeouts or Timeouts(),
                # One limit for every path: a refusal must not tell routes apart.
                body_limit=lambda _scope: MAX_REQUEST_SIZE,
                log=log,
                too_large=lambda _limit: _rejected(ErrorCode.MALFORMED),
            ),
            # The key goes in a closure: Starlette's Middleware repr lists its options.
            Middleware(LinkAuthentication, verify=link_verifier(link_key), log=log),
        ],
    )


LinkVerifier = Callable[[str, bytes, bytes, bytes], None]
"""``verify(method, target, body, presented_mac)``: returns, or raises UnauthorizedError."""


def link_verifier(link_key: bytes) -> LinkVerifier:
    """:func:`bkv.protocol.hsm_link.check_link_mac` under ``link_key`` (held, never shown)."""
    if not isinstance(link_key, bytes) or len(link_key) != LINK_KEY_SIZE:
        raise ValueError("a link key is exactly 32 bytes")

    def verify(method: str, target: bytes, body: bytes, presented: bytes) -> None:
        check_link_mac(link_key, method, target, body, presented)

    return verify


class LinkAuthentication:
    """ASGI middleware: only requests with the host's link MAC reach the application.

    Reads the whole body (already bounded by the guard in front), checks the
    MAC over method, target and body with ``verify`` (:func:`link_verifier`: a
    constant-time compare), and hands the application the same body. A
    missing or malformed MAC is refused before the body is read.
    """

    def __init__(self, app: ASGIApp, *, verify: LinkVerifier, log: Log) -> None:
        self.app = app
        self._verify = verify
        self._log = log

    def __repr__(self) -> str:
        return "LinkAuthentication(<link key>)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            # No other kind of connection (WebSocket) carries a MAC: none gets in.
            await send({"type": "websocket.close", "code": 1008})
            return
        try:
            presented = parse_link_mac(request_header(scope, _MAC_HEADER))
            body = await _read_body(receive)
            self._verify(str(scope["method"]), _target(scope), body, presented)
        except UnauthorizedError as exc:
            self._log(f"refused {describe_request(scope)}: {exc}")
            await _unauthenticated()(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)


async def _read_body(receive: Receive) -> bytes:
    body = bytearray()
    for _ in range(MAX_REQUEST_SIZE + 2):  # each message but the last carries >= 1 byte
        message = await receive()
        if message["type"] != "http.request":
            break
        body += message.get("body", b"")
        if len(body) > MAX_REQUEST_SIZE:
            break  # the guard refuses this first; never buffer more here
        if not message.get("more_body", False):
            return bytes(body)
    raise UnauthorizedError("the request body did not arrive whole")


def _target(scope: Scope) -> bytes:
    # The request target as sent: path, then "?query" if the query is not empty
    # (uvicorn keeps no bare "?"; the host's hsm_url has no query at all).
    raw_path = bytes(scope.get("raw_path") or scope["path"].encode("ascii"))
    query = bytes(scope.get("query_string", b""))
    return raw_path + b"?" + query if query else raw_path


def _replay(body: bytes, receive: Receive) -> Receive:
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _octets(body: bytes) -> Response:
    status = 400 if peek_tag(body) == _REJECTED_HEADER else 200
    return Response(body, status_code=status, media_type=OCTET_STREAM)


def _rejected(code: ErrorCode) -> Response:
    return _octets(encode(HsmRejected(code)))


def _unavailable() -> Response:
    return Response(
        b"hsm unavailable: restart required\n", status_code=503, media_type="text/plain"
    )


def _busy() -> Response:
    return Response(b"hsm busy: try again\n", status_code=503, media_type="text/plain")


def _storage_fault() -> Response:
    return Response(
        b"hsm refused the host's record read\n", status_code=503, media_type="text/plain"
    )


def _unauthenticated() -> Response:
    # The same answer for every refused request, whatever the path, method or reason.
    return Response(b"unauthenticated\n", status_code=401, media_type="text/plain")
