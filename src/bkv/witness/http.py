"""The witness HTTP API (Starlette on uvicorn): Plexi auditor shape, tlog-tiles, tlog-witness.

Routes (JSON shapes in :mod:`bkv.witness.api`, docs in docs/protocol.md):

====== ============================================= ===========================================
GET    ``/info``                                     witness keys (``not_before``), log keys
GET    ``/namespaces``                               every namespace (Plexi ``NamespaceInfo``)
GET    ``/namespaces/{ns}``                          one namespace
GET    ``/namespaces/{ns}/audits?start=&limit=``     a page of ``SignatureResponse`` (audits_uri)
GET    ``/namespaces/{ns}/reports?start=&limit=``    a page of ``LastVerifiedEpoch`` (reports_uri)
GET    ``/namespaces/{ns}/audits/{epoch}``           Plexi ``SignatureResponse`` + log proof
GET    ``/namespaces/{ns}/audits/{epoch}/artifact``  the artifact's exact bytes
GET    ``/namespaces/{ns}/audits/{epoch}/evidence``  the deployment evidence's exact bytes
GET    ``/namespaces/{ns}/last-verified-epoch``      Plexi ``LastVerifiedEpoch``
POST   ``/namespaces/{ns}/submissions``              operator submission -> 201 + receipt
POST   ``/namespaces/{ns}/audits/{epoch}/countersignature``  operator counter-signature
GET    ``/checkpoint``                               C2SP signed checkpoint of the audit log
GET    ``/checkpoints/<size>``                       the checkpoint signed at that tree size
GET    ``/tile/<L>/<N>[.p/<W>]``                     C2SP tlog-tiles hash tiles
GET    ``/tile/entries/<N>[.p/<W>]``                 C2SP tlog-tiles entry bundles
GET    ``/log/inclusion?index=I&size=S``             inclusion proof (JSON, hex hashes)
GET    ``/log/consistency?old=M&size=N``             consistency proof (JSON, hex hashes)
POST   ``/add-checkpoint``                           C2SP tlog-witness: cosign another log
====== ============================================= ===========================================

Every refusal is JSON ``{"error": <class>, "message": <what failed>}`` with a 4xx status
(except add-checkpoint, whose statuses and bodies follow tlog-witness), and changes no
state. Every request body is capped (:data:`BODY_LIMITS`; over the cap -> 413) and must
arrive in time (408), by :class:`bkv.serving.guard.RequestGuard`; :func:`serve` runs the
app the way every bkv server runs (:mod:`bkv.serving`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Scope

from bkv.errors import (
    AddCheckpointError,
    ArtifactError,
    AttestationError,
    BkvError,
    CheckpointSizeConflictError,
    CodecError,
    CountersignatureExistsError,
    DigestMismatchError,
    DigestReusedError,
    EpochConflictError,
    NamespaceExistsError,
    SignatureError,
    StorageError,
    TimestampError,
    UnknownEpochError,
    UnknownNamespaceError,
)
from bkv.protocol import witness_api
from bkv.protocol.submission import AuditEntry
from bkv.serving.guard import Log, RequestGuard, stderr_log
from bkv.serving.listen import ListenAddress
from bkv.serving.timeouts import Timeouts
from bkv.tlog import tiles, witness_protocol
from bkv.tlog.checkpoint import parse_decimal
from bkv.tlog.log import MerkleLog
from bkv.witness import api, core
from bkv.witness.service import WitnessService

#: Request body limits: submissions carry hex artifacts and evidence; add-checkpoint
#: is bounded by tlog-witness; nothing else takes a body.
BODY_LIMITS = {
    "submission": witness_api.MAX_SUBMISSION_BODY,
    "add-checkpoint": witness_protocol.MAX_REQUEST_SIZE,
    "countersignature": witness_api.MAX_COUNTERSIGNATURE_BODY,
    "other": 0,
}

FULL_TILE_CACHE = "public, max-age=31536000, immutable"
PARTIAL_TILE_CACHE = "public, max-age=60"
CHECKPOINT_CACHE = "no-cache"

_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (UnknownNamespaceError, 404),
    (UnknownEpochError, 404),
    (CountersignatureExistsError, 409),
    (EpochConflictError, 409),
    (DigestReusedError, 409),
    (NamespaceExistsError, 409),
    (SignatureError, 403),
    (DigestMismatchError, 422),
    (TimestampError, 422),
    (AttestationError, 422),
    (ArtifactError, 422),
    (StorageError, 503),  # e.g. a failed COMMIT: nothing was stored, retry later
    (CodecError, 400),
)


def status_for(error: BaseException) -> int:
    for cls, status in _STATUS:
        if isinstance(error, cls):
            return status
    return 400


LOG_NAME = "bkv witness"


def _limit_for(scope: Scope) -> int:
    path = str(scope.get("path", ""))
    if scope.get("method") == "POST" and path.endswith("/submissions"):
        return BODY_LIMITS["submission"]
    if scope.get("method") == "POST" and path.endswith("/countersignature"):
        return BODY_LIMITS["countersignature"]
    if scope.get("method") == "POST" and path == "/add-checkpoint":
        return BODY_LIMITS["add-checkpoint"]
    return BODY_LIMITS["other"]


def _error(error: BaseException, status: int | None = None) -> JSONResponse:
    return JSONResponse(witness_api.error_body(error), status_code=status or status_for(error))


async def _store_unavailable(request: Request, error: Exception) -> Response:
    """503 ``StorageError`` for a read the store refused (closed after a failed rollback).

    Write routes catch it themselves; on every read route it would otherwise be an
    untyped 500, and a refusal is always ``{"error", "message"}`` (module docstring).
    """
    return _error(error, 503)


def _not_found(what: str) -> JSONResponse:
    return JSONResponse({"error": "NotFound", "message": what}, status_code=404)


def _parse_int(text: str, what: str) -> int:
    """Canonical decimal (no sign, no leading zeros) below 2**63, as in checkpoints."""
    return parse_decimal(text, what, CodecError)


class _Handlers:
    """Route handlers over one service. They run on the event loop, one at a time."""

    def __init__(self, service: WitnessService) -> None:
        self.service = service
        self.store = service.store

    def witnessed(self, ns: str, epoch_text: str) -> core.SignedEpoch | JSONResponse:
        if self.store.namespace(ns) is None:
            return _error(UnknownNamespaceError(f"namespace {ns} is not registered"))
        try:
            epoch = witness_api.parse_epoch(epoch_text)
        except CodecError as exc:
            return _error(exc)
        signed = self.store.signed_epoch(ns, epoch)
        if signed is None:
            return _not_found(f"epoch {epoch} of {ns} was never signed")
        return signed

    async def info(self, request: Request) -> Response:
        extra = {
            "origin": self.service.origin,
            "log_public_key": self.service.log_verifier_key,
            "cosigner_public_key": self.service.cosigner_verifier_key,
            "checkpoint_uri": "/checkpoint",
        }
        names = [r.name for r in self.store.namespaces()]
        return JSONResponse(witness_api.info_response(self.store.witness_keys(), names, extra))

    def _namespace_json(self, ns: str) -> dict[str, Any] | None:
        record = self.store.namespace(ns)
        if record is None:
            return None
        first = self.store.signed_entries(ns, 1, 1)
        return api.namespace_info(record, first[0] if first else None, self.store.last_entry(ns))

    async def namespaces(self, request: Request) -> Response:
        listed = [self._namespace_json(r.name) for r in self.store.namespaces()]
        return JSONResponse({"namespaces": [n for n in listed if n is not None]})

    async def namespace(self, request: Request) -> Response:
        ns = request.path_params["ns"]
        body = self._namespace_json(ns)
        if body is None:
            return _error(UnknownNamespaceError(f"namespace {ns} is not registered"))
        return JSONResponse(body)

    async def audit(self, request: Request) -> Response:
        ns, epoch_text = request.path_params["ns"], request.path_params["epoch"]
        signed = self.witnessed(ns, epoch_text)
        if isinstance(signed, JSONResponse):
            return signed
        try:
            size, note = self._latest()
        except StorageError as exc:
            return _error(exc, 503)
        with self.store.reading_log() as log:
            entry = log.entries(signed.log_index, signed.log_index + 1)[0]
            proof = log.inclusion_proof(signed.log_index, size)
        body = api.signature_response(signed.entry) | witness_api.proof_fields(
            signed.log_index, entry, size, proof, note
        )
        epoch = signed.entry.epoch
        base = f"/namespaces/{ns}/audits/{epoch}"
        counter_signature = self.store.countersignature(ns, epoch)
        body |= {
            "counter_signature": None if counter_signature is None else counter_signature.hex(),
            "artifact": signed.artifact.hex(),
            "artifact_uri": f"{base}/artifact",
            "evidence_uri": None if signed.evidence is None else f"{base}/evidence",
        }
        return JSONResponse(body)

    async def artifact(self, request: Request) -> Response:
        signed = self.witnessed(request.path_params["ns"], request.path_params["epoch"])
        if isinstance(signed, JSONResponse):
            return signed
        return Response(signed.artifact, media_type="application/octet-stream")

    async def evidence(self, request: Request) -> Response:
        signed = self.witnessed(request.path_params["ns"], request.path_params["epoch"])
        if isinstance(signed, JSONResponse):
            return signed
        if signed.evidence is None:
            return _not_found("no deployment evidence was submitted for this epoch")
        return Response(signed.evidence, media_type="application/octet-stream")

    async def last_verified(self, request: Request) -> Response:
        ns = request.path_params["ns"]
        if self.store.namespace(ns) is None:
            return _error(UnknownNamespaceError(f"namespace {ns} is not registered"))
        last = self.store.last_entry(ns)
        if last is None:
            return _not_found(f"no epoch of {ns} was signed yet")
        return JSONResponse(api.last_verified_epoch(last, self._entry_before(ns, last.epoch)))

    def _entry_before(self, ns: str, epoch: int) -> AuditEntry | None:
        """The log entry of the epoch before ``epoch`` (None before epoch 1)."""
        if epoch <= 1:
            return None
        previous = self.store.signed_entries(ns, epoch - 1, 1)
        return previous[0] if previous and previous[0].epoch == epoch - 1 else None

    def _page(
        self, request: Request
    ) -> tuple[str, int, int, list[AuditEntry], bool] | JSONResponse:
        """(ns, start, limit, the page's entries, whether more follow) of a listing request.

        A page reads log entries only (:meth:`WitnessStore.signed_entries`): never the
        artifacts or evidence, which a page of up to 100 epochs does not serve.
        """
        ns = request.path_params["ns"]
        if self.store.namespace(ns) is None:
            return _error(UnknownNamespaceError(f"namespace {ns} is not registered"))
        query = request.query_params
        try:
            if len(query.multi_items()) != len(query):
                # Parsers disagree on which of two values counts: neither does.
                raise CodecError("a query parameter is repeated")
            start, limit = witness_api.listing_query(query)
        except CodecError as exc:
            return _error(exc)
        entries = self.store.signed_entries(ns, start, limit + 1)  # one more: is there a next?
        return ns, start, limit, entries[:limit], len(entries) > limit

    async def audits(self, request: Request) -> Response:
        """``GET /namespaces/{ns}/audits``: the signed epochs, a bounded page at a time."""
        page = self._page(request)
        if isinstance(page, JSONResponse):
            return page
        ns, _, limit, entries, more = page
        return JSONResponse(api.audits_page(ns, entries, more=more, limit=limit))

    async def reports(self, request: Request) -> Response:
        """``GET /namespaces/{ns}/reports``: one ``LastVerifiedEpoch`` per signed epoch."""
        page = self._page(request)
        if isinstance(page, JSONResponse):
            return page
        ns, start, limit, entries, more = page
        before = self._entry_before(ns, start) if entries else None
        return JSONResponse(api.reports_page(ns, before, entries, more=more, limit=limit))

    async def submit(self, request: Request) -> Response:
        ns = request.path_params["ns"]
        body = await request.body()
        try:
            submission = witness_api.submission_from_json(ns, body)
            receipt = self.service.submit(submission)
        except BkvError as exc:
            return _error(exc)
        return JSONResponse(api.receipt_response(receipt), status_code=201)

    async def countersignature(self, request: Request) -> Response:
        ns, epoch_text = request.path_params["ns"], request.path_params["epoch"]
        body = await request.body()
        try:
            epoch = witness_api.parse_epoch(epoch_text)
            counter_signature = witness_api.countersignature_from_json(body)
            created = self.service.add_countersignature(ns, epoch, counter_signature)
        except BkvError as exc:
            return _error(exc)
        return JSONResponse(
            witness_api.countersignature_to_json(counter_signature),
            status_code=201 if created else 200,
        )

    def _latest(self) -> tuple[int, bytes]:
        latest = self.store.latest_checkpoint()
        if latest is None:  # the service writes one when it starts
            raise StorageError("the witness has no signed checkpoint")
        return latest

    async def checkpoint(self, request: Request) -> Response:
        try:
            _, note = self._latest()
        except StorageError as exc:
            return _error(exc, 503)
        return Response(
            note,
            media_type="text/plain; charset=utf-8",
            headers={"Cache-Control": CHECKPOINT_CACHE},
        )

    async def historical_checkpoint(self, request: Request) -> Response:
        """``GET /checkpoints/<size>``: the checkpoint signed at that size (immutable)."""
        try:
            size = _parse_int(request.path_params["size"], "size")
        except CodecError as exc:
            return _error(exc)
        note = self.store.checkpoint_at(size)
        if note is None:
            return _not_found(f"no checkpoint was signed at size {size}")
        return Response(
            note,
            media_type="text/plain; charset=utf-8",
            headers={"Cache-Control": FULL_TILE_CACHE},
        )

    async def tile(self, request: Request) -> Response:
        path = "tile/" + request.path_params["rest"]
        try:
            parsed = tiles.parse_tile_path(path)
        except CodecError as exc:
            return _error(exc)
        try:
            size, _ = self._latest()
        except StorageError as exc:
            return _error(exc, 503)
        try:
            with self.store.reading_log() as log:
                if parsed.level == tiles.ENTRIES_LEVEL:
                    data = tiles.read_entry_bundle(log, parsed)
                else:
                    data = tiles.read_tile(log, parsed)
        except ValueError:
            return _not_found(f"{path} is not in the tree of size {size}")
        cache = PARTIAL_TILE_CACHE if parsed.is_partial else FULL_TILE_CACHE
        return Response(
            data, media_type="application/octet-stream", headers={"Cache-Control": cache}
        )

    def _query_ints(self, request: Request, names: tuple[str, str]) -> tuple[int, int]:
        if set(request.query_params) != set(names):
            raise CodecError(f"query must be exactly {', '.join(names)}")
        a, b = (_parse_int(request.query_params[n], n) for n in names)
        return a, b

    async def inclusion(self, request: Request) -> Response:
        """``GET /log/inclusion?index=I&size=N``."""
        return self._proof(request, ("index", "size"), lambda log, i, n: log.inclusion_proof(i, n))

    async def consistency(self, request: Request) -> Response:
        """``GET /log/consistency?old=M&size=N``."""
        return self._proof(request, ("old", "size"), lambda log, m, n: log.consistency_proof(m, n))

    def _proof(
        self,
        request: Request,
        names: tuple[str, str],
        make: Callable[[MerkleLog, int, int], list[bytes]],
    ) -> Response:
        try:
            first, size = self._query_ints(request, names)
            with self.store.reading_log() as log:
                proof = make(log, first, size)
        except CodecError as exc:
            return _error(exc)
        except ValueError as exc:
            return _error(CodecError(str(exc)))
        return JSONResponse({names[0]: first, "size": size, "proof": [h.hex() for h in proof]})

    async def add_checkpoint(self, request: Request) -> Response:
        body = await request.body()
        try:
            lines = self.service.add_checkpoint(body)
        except CheckpointSizeConflictError as exc:
            return PlainTextResponse(
                f"{exc.current_size}\n",
                status_code=exc.http_status,
                media_type=witness_protocol.SIZE_CONTENT_TYPE,
            )
        except AddCheckpointError as exc:
            return PlainTextResponse(f"{exc}\n", status_code=exc.http_status)
        return Response(lines, media_type="text/plain; charset=utf-8")


def create_app(
    service: WitnessService, timeouts: Timeouts | None = None, log: Log | None = None
) -> Starlette:
    """The ASGI app serving ``service``; refused requests go to ``log`` (default: stderr)."""
    h = _Handlers(service)
    routes = [
        Route("/info", h.info, methods=["GET"]),
        Route("/namespaces", h.namespaces, methods=["GET"]),
        Route("/namespaces/{ns}", h.namespace, methods=["GET"]),
        Route("/namespaces/{ns}/audits", h.audits, methods=["GET"]),
        Route("/namespaces/{ns}/reports", h.reports, methods=["GET"]),
        Route("/namespaces/{ns}/audits/{epoch}", h.audit, methods=["GET"]),
        Route("/namespaces/{ns}/audits/{epoch}/artifact", h.artifact, methods=["GET"]),
        Route("/namespaces/{ns}/audits/{epoch}/evidence", h.evidence, methods=["GET"]),
        Route(
            "/namespaces/{ns}/audits/{epoch}/countersignature",
            h.countersignature,
            methods=["POST"],
        ),
        Route("/namespaces/{ns}/last-verified-epoch", h.last_verified, methods=["GET"]),
        Route("/namespaces/{ns}/submissions", h.submit, methods=["POST"]),
        Route("/checkpoint", h.checkpoint, methods=["GET"]),
        Route("/checkpoints/{size}", h.historical_checkpoint, methods=["GET"]),
        Route("/tile/{rest:path}", h.tile, methods=["GET"]),
        Route("/log/inclusion", h.inclusion, methods=["GET"]),
        Route("/log/consistency", h.consistency, methods=["GET"]),
        Route("/add-checkpoint", h.add_checkpoint, methods=["POST"]),
    ]
    guard = Middleware(
        RequestGuard,
        timeouts=timeouts or Timeouts(),
        body_limit=_limit_for,
        log=log or stderr_log(LOG_NAME),
    )
    return Starlette(
        routes=routes,
        middleware=[guard],
        exception_handlers={StorageError: _store_unavailable},
    )


def serve(service: WitnessService, address: ListenAddress, timeouts: Timeouts) -> None:
    """Run the witness until SIGINT/SIGTERM (uvicorn, one process, one event loop).

    Prints ``listening on http://HOST:PORT`` on stdout once connections are
    accepted (port 0 picks a free port).
    """
    from bkv.serving.server import serve as serve_app  # noqa: PLC0415 - uvicorn only here

    log = stderr_log(LOG_NAME)
    serve_app(
        create_app(service, timeouts, log),
        address,
        timeouts=timeouts,
        ready_line=lambda url: f"listening on {url}",
        log=log,
    )
