"""The host's HTTP front end (Starlette): authenticates, rate-limits and relays.

The host is trusted for availability only and holds no client secret. For
each client request it:

1. refuses a declared body over :data:`bkv.protocol.messages.MAX_REQUEST_SIZE`
   (413) without reading it (:class:`bkv.serving.guard.RequestGuard`, which
   also bounds the time the body may take: 408);
2. authenticates the bearer token (401) before reading the body — the
   configuration lists only the SHA-256 of each account's token — and spends
   one token of the account's bucket (429); an answer given before the body
   was read closes the connection;
3. reads the body, up to the size limit (413 past it);
4. decodes the outer :class:`~bkv.protocol.messages.HsmRequest` strictly (400) and
   checks it names this fleet (400) and the token's account (403). The host
   can rely on these clear fields without opening anything: the HSM opens the
   seal only under an AAD of the same ``fleet_id``, ``kind`` and
   ``account_id``, and refuses a sealed message whose type is not ``kind``, so
   a client cannot label an attempt as something cheaper;
5. for attempt-costing requests (``RECOVER_START``) spends one token of the
   record's bucket (429) — a record is one account's entry in this fleet;
6. relays the exact bytes to the HSM, authenticated with the link key
   (:mod:`bkv.protocol.hsm_link`), and its exact answer back with status
   200, after checking the answer is a well-formed outer response
   (``HsmResponse`` or ``HsmRejected``; 502 otherwise, and 502 when the HSM is
   unreachable or does not answer within ``hsm_timeout_seconds``). Host-made
   errors are JSON, HSM answers are ``application/octet-stream``: the content
   type tells them apart.

Endpoints: ``POST /v1/request`` (octet-stream in and out), ``GET
/v1/bundle?since=<tree size>`` (the validation bundle, :mod:`bkv.host.bundle`),
``GET /v1/fleet-keys``, ``GET /healthz``, ``GET /openapi.json``. Errors are JSON
``{"error": <name>, "message": ...}``, where the name is a :mod:`bkv.errors`
class or one of the host's own (``NotConfigured``, ``WrongFleet``,
``RequestTimeout``); 429 carries ``Retry-After``.

When a bundle is configured, every ``/v1/request`` answer carries the header
``bkv-bundle-epoch: <epoch of the bundle now served>``, so that an over-the-air
client notices a newer epoch and fetches ``/v1/bundle`` again before its next
operation (the bundle "arrives with the vault's own response"; shipping the
whole bundle, up to 40 KiB, on every answer would cost more than one extra GET
per epoch, which happens every few years). The header is a hint from an
untrusted host: the client validates whatever bundle it then gets, and never
accepts an older epoch than it has.
"""

from __future__ import annotations

import contextlib
import hmac
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Scope

from bkv.errors import (
    BkvError,
    CodecError,
    FleetUnreachableError,
    RateLimitedError,
    StorageError,
    UnauthorizedError,
)
from bkv.host.bundle import BundleSource, parse_since
from bkv.host.config import HostConfig, token_digest
from bkv.host.link import MAX_RESPONSE_SIZE, OCTET_STREAM, HttpHsmLink
from bkv.host.ratelimit import RateLimiter
from bkv.keystore.files import read_small_file
from bkv.protocol.messages import MAX_REQUEST_SIZE, OUTER_RESPONSES, HsmRequest, RequestKind
from bkv.serving.guard import Log, RequestGuard, stderr_log
from bkv.wire import decode, decode_any

MAX_PUBLIC_KEYS_SIZE = 64 * 1024

BUNDLE_EPOCH_HEADER = "bkv-bundle-epoch"
"""Response header of ``/v1/request``: the epoch of the bundle ``/v1/bundle`` serves."""

ATTEMPT_KINDS = frozenset({RequestKind.RECOVER_START})
"""Requests that cost the record an attempt: rate-limited per record as well."""


class HsmLink(Protocol):
    """How the host reaches the HSM: request bytes in, response bytes out."""

    async def exchange(self, request: bytes) -> bytes:
        """The HSM's answer; raises :class:`FleetUnreachableError` if there is none."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def _error(
    status: int,
    exc: BkvError | str,
    message: str = "",
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    name = exc if isinstance(exc, str) else type(exc).__name__
    text = message or (str(exc) if isinstance(exc, BkvError) else "")
    return JSONResponse({"error": name, "message": text}, status_code=status, headers=headers)


def _monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class Host:
    """Per-process state of the front end: accounts, limiters and the HSM link."""

    def __init__(
        self, config: HostConfig, link: HsmLink, now_ms: Callable[[], int] = _monotonic_ms
    ) -> None:
        self.config = config
        self.link = link
        self.now_ms = now_ms
        self.bundles = (
            None
            if config.bundle_file is None
            else BundleSource(
                config.bundle_file, config.witness_url, log_verifier_key=config.log_verifier_key
            )
        )
        self.account_limiter = RateLimiter(config.account_limit)
        self.record_limiter = RateLimiter(config.record_attempt_limit)

    def authenticate(self, request: Request) -> bytes:
        """The account id of the request's bearer token, or :class:`UnauthorizedError`."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token or len(token) > 512:
            raise UnauthorizedError("a bearer token is required")
        # Looked up by SHA-256 of the token: timing can at most reveal bits of
        # that hash, which do not help anyone find a token (preimage resistance).
        account = self.config.accounts.get(token_digest(token))
        if account is None:
            raise UnauthorizedError("unknown bearer token")
        return account

    async def relay(self, request: Request) -> Response:
        """``POST /v1/request``; the answer names the bundle epoch now served."""
        response = await self._relay(request)
        if self.bundles is not None:
            # No valid bundle to announce: say nothing here; /v1/bundle says why.
            with contextlib.suppress(StorageError):
                response.headers[BUNDLE_EPOCH_HEADER] = str(self.bundles.current().epoch)
        return response

    async def bundle(self, request: Request) -> Response:
        """``GET /v1/bundle?since=<tree size>``: the bundle with a consistency proof."""
        if self.bundles is None:
            return _error(404, "NotConfigured", "this host serves no validation bundle")
        if set(request.query_params) - {"since"}:
            return _error(400, "CodecError", "the only query parameter is since")
        try:
            since = parse_since(request.query_params.get("since"))
        except CodecError as exc:
            return _error(400, exc)
        try:
            data, epoch = await self.bundles.for_client(since)
        except StorageError as exc:
            return _error(503, exc)
        return Response(data, media_type=OCTET_STREAM, headers={BUNDLE_EPOCH_HEADER: str(epoch)})

    async def _relay(self, request: Request) -> Response:
        # Token and account bucket before the body: an unauthenticated or limited
        # client gets its answer without the host reading (or waiting for) a byte.
        try:
            account = self.authenticate(request)
        except UnauthorizedError as exc:
            return _error(401, exc, headers={"www-authenticate": "Bearer"})
        now = self.now_ms()
        try:
            self.account_limiter.take(account, now)
        except RateLimitedError as exc:
            return self._limited(exc, self.account_limiter.retry_after_ms(account, now))
        body = await request.body()  # size and time bounded by the RequestGuard
        if len(body) > MAX_REQUEST_SIZE:  # the guard refused it already; never relay it
            return _error(413, "SizeLimitError", f"request exceeds {MAX_REQUEST_SIZE} bytes")
        try:
            outer = decode(HsmRequest, body)
        except CodecError as exc:
            return _error(400, exc)
        if outer.fleet_id != self.config.fleet_id:
            return _error(400, "WrongFleet", "the request names another fleet")
        if not hmac.compare_digest(outer.account_id, account):
            return _error(403, UnauthorizedError("the request names another account"))
        if outer.kind in ATTEMPT_KINDS:
            record = self.config.fleet_id.encode("utf-8") + b"\x00" + account
            try:
                self.record_limiter.take(record, now)
            except RateLimitedError as exc:
                return self._limited(exc, self.record_limiter.retry_after_ms(record, now))
        return await self._forward(body)

    async def _forward(self, body: bytes) -> Response:
        try:
            answer = await self.link.exchange(body)
        except FleetUnreachableError as exc:
            return _error(502, exc)
        if not 0 < len(answer) <= MAX_RESPONSE_SIZE:
            return _error(502, FleetUnreachableError("the HSM sent an oversized answer"))
        try:
            decode_any(answer, OUTER_RESPONSES)
        except CodecError:
            return _error(502, FleetUnreachableError("the HSM sent a malformed answer"))
        return Response(answer, media_type=OCTET_STREAM)

    @staticmethod
    def _limited(exc: RateLimitedError, retry_ms: int) -> JSONResponse:
        seconds = str(max(1, -(-retry_ms // 1000)))
        return _error(429, exc, headers={"retry-after": seconds})

    async def fleet_keys(self, request: Request) -> Response:
        """``GET /v1/fleet-keys``: the configured public-keys file, as is."""
        path = self.config.public_keys_file
        if path is None:
            return _error(404, "NotConfigured", "this host publishes no fleet keys")
        try:
            # Non-blocking, regular files only, bounded: a FIFO or a huge file planted
            # there must not stall the event loop or fill memory.
            data = read_small_file(path, MAX_PUBLIC_KEYS_SIZE)
        except (OSError, StorageError):
            return _error(503, "StorageError", "fleet keys are unavailable")
        return Response(data, media_type="application/json")


async def _healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def _body_limit(scope: Scope) -> int:
    if scope.get("method") == "POST" and scope.get("path") == "/v1/request":
        return MAX_REQUEST_SIZE
    return 0  # no other route takes a body


def create_app(
    config: HostConfig, link: HsmLink | None = None, log: Log | None = None
) -> Starlette:
    """The ASGI app; ``link`` defaults to :class:`HttpHsmLink` on ``config.hsm_url``.

    Refused requests (body too large or too slow) are reported to ``log``, one
    line each (default: stderr).
    """
    host = Host(
        config,
        link or HttpHsmLink(config.hsm_url, config.hsm_timeout_seconds, config.hsm_link_key),
    )

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_document())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await host.link.aclose()
        if host.bundles is not None:
            await host.bundles.aclose()

    routes = [
        Route("/v1/request", host.relay, methods=["POST"]),
        Route("/v1/bundle", host.bundle, methods=["GET"]),
        Route("/v1/fleet-keys", host.fleet_keys, methods=["GET"]),
        Route("/healthz", _healthz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    guard = Middleware(
        RequestGuard,
        timeouts=config.timeouts,
        body_limit=_body_limit,
        log=log or stderr_log("bkv host"),
    )
    app = Starlette(routes=routes, lifespan=lifespan, middleware=[guard])
    app.state.host = host
    return app


def _error_schema() -> dict[str, Any]:
    return {"$ref": "#/components/schemas/Error"}


def _error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": _error_schema()}},
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of the host API (served at ``/openapi.json``)."""
    binary = {"type": "string", "format": "binary"}
    bundle_epoch_header = {
        "description": (
            "Epoch of the bundle /v1/bundle serves now (only when one is configured). "
            "An over-the-air client that accepted an older epoch fetches /v1/bundle "
            "again before its next operation; it never accepts an older epoch."
        ),
        "schema": {"type": "integer", "minimum": 1},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "bkv host",
            "version": "1",
            "description": (
                "Front end of the Backup Key Vault. Relays HSM message API bytes "
                "(bkv.protocol.messages, wire codec) between clients and the fleet; "
                "holds no secret."
            ),
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {
                        "error": {
                            "type": "string",
                            "description": (
                                "a bkv.errors class name, or NotConfigured / WrongFleet / "
                                "RequestTimeout"
                            ),
                        },
                        "message": {"type": "string"},
                    },
                }
            },
        },
        "paths": {
            "/v1/request": {
                "post": {
                    "summary": "Relay one HsmRequest to the fleet",
                    "security": [{"bearer": []}],
                    "requestBody": {
                        "required": True,
                        "description": (
                            f"An encoded HsmRequest (tag 0x0101), at most {MAX_REQUEST_SIZE} "
                            "bytes; "
                            "its account_id must be the bearer token's account."
                        ),
                        "content": {OCTET_STREAM: {"schema": binary}},
                    },
                    "responses": {
                        "200": {
                            "description": "An encoded HsmResponse or HsmRejected",
                            "content": {OCTET_STREAM: {"schema": binary}},
                            "headers": {"bkv-bundle-epoch": bundle_epoch_header},
                        },
                        "400": _error_response("Malformed request or wrong fleet"),
                        "401": _error_response("Missing or unknown bearer token"),
                        "403": _error_response("The request names another account"),
                        "408": _error_response("The request body was not complete in time"),
                        "413": _error_response("Request too large"),
                        "429": {
                            **_error_response("Rate limited (per account or per record)"),
                            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                        },
                        "502": _error_response(
                            "The HSM is unreachable, too slow, or answered badly"
                        ),
                    },
                }
            },
            "/v1/bundle": {
                "get": {
                    "summary": "The fleet's validation bundle (over-the-air fleet keys)",
                    "description": (
                        "The ValidationBundle (bkv.protocol.bundle, wire tag 0x0301) that "
                        "`bkv operator publish` wrote, with an RFC 9162 consistency proof "
                        "from the client's last seen tree size `since` to the bundle "
                        "checkpoint's tree size attached (consistency_size = since). The "
                        "client validates everything; the host is not trusted."
                    ),
                    "parameters": [
                        {
                            "name": "since",
                            "in": "query",
                            "required": False,
                            "description": (
                                "Tree size of the last witness checkpoint the client "
                                "accepted (0 or absent: none, no proof attached)"
                            ),
                            "schema": {"type": "integer", "minimum": 0},
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "The encoded ValidationBundle",
                            "content": {OCTET_STREAM: {"schema": binary}},
                            "headers": {"bkv-bundle-epoch": bundle_epoch_header},
                        },
                        "400": _error_response("Malformed since"),
                        "404": _error_response("No bundle configured"),
                        "503": _error_response("The bundle file is missing or malformed"),
                    },
                }
            },
            "/v1/fleet-keys": {
                "get": {
                    "summary": "The fleet's public keys (JSON, as published by the HSM)",
                    "responses": {
                        "200": {
                            "description": "Public keys by role",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        "404": _error_response("Not configured"),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness",
                    "responses": {"200": {"description": "The host process is up"}},
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI 3.1"}},
                }
            },
        },
    }
