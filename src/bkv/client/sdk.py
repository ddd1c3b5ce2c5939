"""The client SDK (adapter): talk to the vault through the host over HTTP.

Two ways to know the fleet's keys (docs/protocol.md, "The SDK in the two trust
modes"), one :class:`~bkv.client.trust.FleetKeys` type:

::

    # pinned: the artifact is compiled into the app
    fleet = PinnedFleetKeys(ARTIFACT_BYTES, ARTIFACT_DIGEST).fleet_keys(now_ms)
    vault = VaultClient("https://vault.example", token, account_id, fleet)

    # over the air: pin only the witness and operator keys (TrustRoots)
    vault = VaultClient.over_the_air("https://vault.example", token, account_id,
                                     roots, JsonFileStateStore("trust-state.json"))

    with vault:
        vault.register(password, backup_key)          # -> VaultStatus
        recovered = vault.recover(password)             # WrongPasswordError(attempts_left)
        recovered.backup_key, recovered.failed_attempts # someone guessing? tell the owner
        vault.change_password(old, new)                 # -> VaultStatus (same guess limit)
        vault.status()                                  # -> VaultStatus
        vault.delete(password)

Over the air, :meth:`VaultClient.over_the_air` fetches ``GET /v1/bundle?since=<the
tree size of the last checkpoint this client saw>`` from the host, validates it
with :func:`bkv.client.validation.validate_bundle` against the pinned roots and the
persisted :class:`~bkv.client.state.ClientState`, saves the new state, and only then
uses the keys, by role. A bundle failing any check raises that check's typed error
and no key is used (and the state is not touched). Every ``/v1/request`` answer
carries the host's current bundle epoch in the ``bkv-bundle-epoch`` header; when it
is newer than the accepted epoch the client fetches and validates the bundle again
before its next operation (never in the middle of one), and :meth:`VaultClient.refresh`
does so on demand. A lower or equal epoch in the header changes nothing: the client
never goes back (a rolled-back bundle fails with ``EpochRollbackError``).

Typed errors (all :class:`bkv.errors.BkvError`):

- :class:`WrongPasswordError` — ``attempts_left`` tries remain;
- :class:`RecordDestroyedError` — no record: destroyed at the guess limit,
  deleted, or never registered (the vault cannot tell them apart, on purpose);
- :class:`FleetUnreachableError` — the host or the HSM did not answer;
- :class:`RetryAfterError` (a :class:`RateLimitedError` with ``retry_after_seconds``),
  :class:`UnauthorizedError`;
- :class:`RecordExistsError`, :class:`ProtocolStateError`, :class:`ServerAuthenticationError`
  (KE2 from something that is not the fleet), codec and decryption errors;
- :class:`UnauthenticatedRejectionError` — the host answered in the clear with a
  refusal the vault only sends sealed (so the host made it up).

The operations are sans-IO flows (:mod:`bkv.client.flows`, on
:mod:`bkv.client.vault`): they decide what to send, what an answer means and
when to retry; this module only moves their bytes over HTTP (and an app with its
own HTTP stack can run the same flows). Fleet keys come from the caller: a
validated bundle or pinned keys.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from bkv.client import flows, vault
from bkv.client.flows import EXPOSE_TRIES, Done, FlowContext, VaultFlow
from bkv.client.state import ClientStateStore
from bkv.client.trust import FleetKeys, TrustRoots
from bkv.client.validation import validate_bundle
from bkv.client.vault import RecoveredKey, VaultStatus
from bkv.crypto.ksf import Ksf
from bkv.crypto.rng import Rng, default_rng
from bkv.errors import (
    CodecError,
    FleetUnreachableError,
    RetryAfterError,
    UnauthorizedError,
    VaultError,
)
from bkv.protocol.bundle import MAX_BUNDLE_SIZE
from bkv.protocol.messages import DEFAULT_GUESS_LIMIT
from bkv.wire.strict_json import parse_json_object, quote_untrusted

REQUEST_PATH = "/v1/request"
BUNDLE_PATH = "/v1/bundle"
BUNDLE_EPOCH_HEADER = "bkv-bundle-epoch"
OCTET_STREAM = "application/octet-stream"
IDENTITY = "identity"
MAX_ANSWER_SIZE = 4096
"""The largest answer to /v1/request the SDK reads (the HSM's answers are far smaller)."""
MAX_ERROR_MESSAGE = 200
"""How much of a host's error message the SDK keeps."""
#: A uint64 in decimal has at most 20 digits.
_MAX_EPOCH_DIGITS = 20

__all__ = [
    "BUNDLE_EPOCH_HEADER",
    "BUNDLE_PATH",
    "EXPOSE_TRIES",
    "MAX_ANSWER_SIZE",
    "MAX_ERROR_MESSAGE",
    "OCTET_STREAM",
    "REQUEST_PATH",
    "RecoveredKey",
    "VaultClient",
    "VaultStatus",
    "wall_clock_ms",
]

_R = TypeVar("_R")


def wall_clock_ms() -> int:
    """Milliseconds since the Unix epoch: the clock bundle validation is checked against."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class _OverTheAir:
    """What over-the-air mode needs to (re)validate bundles: roots, state store, clock."""

    roots: TrustRoots
    state_store: ClientStateStore
    clock: Callable[[], int]

    def update(self, http: httpx.Client) -> FleetKeys:
        """Fetch, validate and persist; the keys only if every check passed."""
        state = self.state_store.load()
        data = _fetch_bundle(http, state.checkpoint_size)
        keys, new_state = validate_bundle(data, self.roots, state, self.clock())
        self.state_store.save(new_state)
        return keys


def _ascii_decimal(text: str, max_digits: int) -> int | None:
    """A header's value as a number, or None: only ASCII digits count.

    ``str.isdigit`` alone accepts characters such as "²" that ``int`` refuses,
    and a hostile host must not be able to crash the SDK with a header.
    """
    if not 0 < len(text) <= max_digits or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def _http_client(
    base_url: str, token: str, timeout_seconds: float, transport: httpx.BaseTransport | None
) -> httpx.Client:
    return httpx.Client(
        base_url=base_url,
        timeout=timeout_seconds,
        headers={"authorization": f"Bearer {token}"},
        transport=transport,
    )


def _fetch_bundle(http: httpx.Client, since: int) -> bytes:
    """``GET /v1/bundle?since=<tree size>``: the bundle bytes (not yet validated)."""
    response, body = _send(
        http, "GET", BUNDLE_PATH, MAX_BUNDLE_SIZE, "the bundle", params={"since": str(since)}
    )
    if response.status_code != 200 or response.headers.get("content-type") != OCTET_STREAM:
        raise _http_error(response, body)
    if not body:
        raise CodecError("the bundle is empty")
    return body


def _send(
    http: httpx.Client, method: str, path: str, limit: int, what: str, **kwargs: Any
) -> tuple[httpx.Response, bytes]:
    """One HTTP exchange whose body is read only up to ``limit`` bytes.

    The host is untrusted: it must not be able to make the phone buffer an
    unbounded answer, so the body is streamed and refused past the limit. The
    limit counts the bytes *on the wire* (``iter_raw``): the request asks for
    ``Accept-Encoding: identity`` and an answer with any other
    ``Content-Encoding`` is refused unread (:class:`CodecError`), so no
    decompressor ever runs (a gzip answer of a few hundred KiB can inflate to
    hundreds of MB).
    """
    headers = dict(kwargs.pop("headers", None) or {})
    headers["accept-encoding"] = IDENTITY
    try:
        with http.stream(method, path, headers=headers, **kwargs) as response:
            encoding = response.headers.get("content-encoding", IDENTITY).strip().lower()
            if encoding != IDENTITY:
                raise CodecError(f"{what} has a content encoding other than identity")
            chunks: list[bytes] = []
            size = 0
            for chunk in _raw_chunks(response):
                size += len(chunk)
                if size > limit:
                    raise CodecError(f"{what} is over {limit} bytes")
                chunks.append(chunk)
    except httpx.TimeoutException:
        raise FleetUnreachableError(f"{what} did not arrive in time") from None
    except httpx.HTTPError as exc:
        raise FleetUnreachableError(
            f"cannot reach the host for {what}: {type(exc).__name__}"
        ) from None
    return response, b"".join(chunks)


def _raw_chunks(response: httpx.Response) -> Iterator[bytes]:
    """The body as it came (no decoding); identity-encoded, so raw is the body itself."""
    if response.is_stream_consumed:
        # An in-process transport (tests, embedding) handed over a body that is
        # already in memory; nothing more can be allocated by reading it.
        yield response.content
        return
    yield from response.iter_raw()


class VaultClient:
    """One account's view of the vault, through the host at ``base_url``.

    ``fleet`` are keys the caller already trusts (pinned mode). For over-the-air
    mode use :meth:`over_the_air`.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        account_id: bytes,
        fleet: FleetKeys,
        *,
        timeout_seconds: float = 30.0,
        ksf: Ksf = vault.DEFAULT_KSF,
        rng: Rng = default_rng,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not isinstance(fleet, FleetKeys):
            raise TypeError("fleet must be FleetKeys (pinned or from a validated bundle)")
        self._setup(_http_client(base_url, token, timeout_seconds, transport), account_id, fleet)
        self._config = vault.opaque_config(ksf)
        self._rng = rng

    def _setup(self, http: httpx.Client, account_id: bytes, fleet: FleetKeys) -> None:
        self._http = http
        self.account_id = account_id
        self.fleet = fleet
        self._ota: _OverTheAir | None = None
        self._newer_epoch_seen = False

    @classmethod
    def over_the_air(
        cls,
        base_url: str,
        token: str,
        account_id: bytes,
        roots: TrustRoots,
        state_store: ClientStateStore,
        *,
        clock: Callable[[], int] = wall_clock_ms,
        timeout_seconds: float = 30.0,
        ksf: Ksf = vault.DEFAULT_KSF,
        rng: Rng = default_rng,
        transport: httpx.BaseTransport | None = None,
    ) -> VaultClient:
        """A client whose fleet keys come from the host's validation bundle.

        Raises the typed error of the first failed check (``CounterSignatureError``,
        ``EpochRollbackError``, ``ConsistencyProofError``, ...) or
        ``FleetUnreachableError``; then no key was used and the state is unchanged.
        """
        ota = _OverTheAir(roots, state_store, clock)
        http = _http_client(base_url, token, timeout_seconds, transport)
        try:
            fleet = ota.update(http)
        except BaseException:
            http.close()
            raise
        # The same connection pool (and caller's transport) serves the vault requests.
        client = cls.__new__(cls)
        client._setup(http, account_id, fleet)
        client._config = vault.opaque_config(ksf)
        client._rng = rng
        client._ota = ota
        return client

    def __repr__(self) -> str:
        mode = "pinned" if self._ota is None else f"over_the_air, epoch {self.fleet.epoch}"
        return (
            f"VaultClient(fleet_id={self.fleet.fleet_id!r}, account_id={self.account_id.hex()}, "
            f"{mode})"
        )

    @property
    def refresh_pending(self) -> bool:
        """Whether the host announced a newer bundle epoch than the accepted one."""
        return self._newer_epoch_seen

    def refresh(self) -> FleetKeys:
        """Over the air: fetch and validate the host's bundle now; the keys in use after.

        On any failed check the typed error is raised and the keys in use stay as they were.
        """
        if self._ota is None:
            raise ValueError("a client with pinned fleet keys has no bundle to refresh")
        self.fleet = self._ota.update(self._http)
        self._newer_epoch_seen = False
        return self.fleet

    def _refresh_if_announced(self) -> None:
        if self._ota is not None and self._newer_epoch_seen:
            self.refresh()

    def _note_bundle_epoch(self, response: httpx.Response) -> None:
        """Remember a newer epoch announced by the host (``bkv-bundle-epoch``)."""
        epoch = _ascii_decimal(response.headers.get(BUNDLE_EPOCH_HEADER, ""), _MAX_EPOCH_DIGITS)
        if self._ota is not None and epoch is not None and epoch > (self.fleet.epoch or 0):
            self._newer_epoch_seen = True

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- transport ---------------------------------------------------------------

    def _post(self, request: bytes) -> bytes:
        response, body = _send(
            self._http,
            "POST",
            REQUEST_PATH,
            MAX_ANSWER_SIZE,
            "the vault's answer",
            content=request,
            headers={"content-type": OCTET_STREAM},
        )
        self._note_bundle_epoch(response)
        if response.status_code == 200 and response.headers.get("content-type") == OCTET_STREAM:
            return body
        raise _http_error(response, body)

    def _run(self, flow: VaultFlow[_R]) -> _R:
        """Move the flow's bytes until it is done; the flow decides everything else.

        A lost answer (:class:`FleetUnreachableError`) goes back to the flow, which
        retries the step or raises; any other error ends the operation.
        """
        for _ in range(flows.MAX_EXCHANGES + 1):
            step = flow.next_request()
            if isinstance(step, Done):
                return step.result
            try:
                answer = self._post(step)
            except FleetUnreachableError as lost:
                flow.answer_lost(lost)
            else:
                flow.receive(answer)
        raise AssertionError("unreachable: every flow ends within MAX_EXCHANGES requests")

    def _flow_context(self) -> FlowContext:
        """The flows' view of this client, with the keys in use now (never changed mid-flow)."""
        self._refresh_if_announced()
        return FlowContext(self.fleet, self.account_id, self._config, self._rng)

    # --- operations --------------------------------------------------------------

    def status(self) -> VaultStatus:
        """Whether a record exists, its counter, and the password checks that failed."""
        return self._run(flows.status_flow(self._flow_context()))

    def register(
        self, password: bytes, backup_key: bytes, guess_limit: int = DEFAULT_GUESS_LIMIT
    ) -> VaultStatus:
        """Store ``backup_key`` under ``password``. A live record's counter carries over.

        Steps (:mod:`bkv.client.flows`; docs, "Re-registration rule"): Status
        (which live record, if any, this replaces) -> RegisterStart naming that
        record's generation -> RegisterFinish, which stores the new record as
        *pending* (not guessable) -> RegisterExpose, sent only after
        RegisterFinishOk came back, which makes it live and carries over the
        attempts the replaced record spent. The expose is idempotent and is
        retried up to :data:`EXPOSE_TRIES` times when its answer is lost.

        What a caller does on each error:

        - :class:`FleetUnreachableError`: the outcome is unknown, but no record
          with a fresh counter can have gone live behind your back. Call
          ``register`` again later (a new registration replaces a pending one;
          an exposed one is replaced in turn, its counter carried over).
        - :class:`ProtocolStateError`: the account's live record changed while
          registering (destroyed at its guess limit, deleted, or replaced by
          another registration), or the pending record expired. Call
          :meth:`status`: if it shows no record and your app had one, tell the
          user their backup under the vault is gone, then register afresh only
          if they choose to.
        - :class:`RecordExistsError`: the live record's spent attempts reach the
          new guess limit; recover it first (a right password forgives the attempts
          started before it).
        - :class:`RetryAfterError` / :class:`UnauthorizedError`: the host's
          rate limit / the account token; nothing changed.
        - :class:`UnauthenticatedRejectionError`: the host, not the vault,
          refused; nothing it says is to be shown to the user as the vault's word.
        """
        # The caller's mistakes are refused before anything goes on the wire.
        flows.check_registration_args(backup_key, guess_limit)
        context = self._flow_context()
        return self._run(flows.register_flow(context, password, backup_key, guess_limit))

    def recover(self, password: bytes) -> RecoveredKey:
        """The backup key, and how many password checks failed since the last recovery.

        Costs one attempt, forgiven by the vault if the password is right. Tell
        the user when :attr:`RecoveredKey.failed_attempts` is more than the wrong
        passwords they typed themselves: someone else was guessing.

        :class:`FleetUnreachableError` after the KE3 went out means the outcome
        is unknown: the vault may have released the key (and forgiven the
        attempts before this login) without the answer reaching you; the next
        recovery reports only what failed after this one's KE1.
        """
        return self._run(flows.recover_flow(self._flow_context(), password))

    def delete(self, password: bytes) -> None:
        """Delete the record; proving the password is the authorization."""
        self._run(flows.delete_flow(self._flow_context(), password))

    def change_password(self, old_password: bytes, new_password: bytes) -> VaultStatus:
        """Recover with the old password, then register the same backup key under the new one.

        The new record replaces exactly the recovered one and keeps its guess limit.

        What a caller does on each error:

        - :class:`WrongPasswordError` / :class:`RecordDestroyedError` (from the
          recover step, or no record left to replace): as for :meth:`recover`.
        - :class:`FleetUnreachableError` after the recover step: unknown whether
          the new password went live (the expose was sent and every answer was
          lost). Call :meth:`status`; if its generation is not the one your app
          last saw, the new password is live: recover with it. Otherwise call
          ``change_password`` again. Any wrong guess costs an attempt.
        - :class:`ProtocolStateError`: as for :meth:`register`, or another
          registration replaced the record after it was recovered (call
          :meth:`status` and recover again).
        - :class:`RecordExistsError`: as for :meth:`register`.
        """
        context = self._flow_context()
        return self._run(flows.change_password_flow(context, old_password, new_password))


def _error_message(body: bytes) -> str:
    """The ``message`` of a host's JSON error body, cut short; "" if there is none.

    The body comes from the untrusted host, so it goes through the one bounded
    parser (:func:`bkv.wire.strict_json.parse_json_object`): a body nested
    thousands deep or holding a huge integer is a ``CodecError`` there, never an
    untyped ``RecursionError`` or ``ValueError`` out of the SDK.
    """
    try:
        data = parse_json_object(body, MAX_ANSWER_SIZE)
    except CodecError:
        return ""
    return quote_untrusted(data.get("message"), MAX_ERROR_MESSAGE)


def _http_error(response: httpx.Response, body: bytes) -> VaultError | CodecError:
    status = response.status_code
    message = _error_message(body)
    if status in (401, 403):
        return UnauthorizedError(message or f"HTTP {status}")
    if status == 429:
        retry = response.headers.get("retry-after", "")
        return RetryAfterError(message or "rate limited", _ascii_decimal(retry, 6))
    if status in (400, 413):
        return CodecError(message or f"the host refused the request: HTTP {status}")
    return FleetUnreachableError(message or f"the vault answered HTTP {status}")
