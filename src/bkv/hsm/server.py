"""The emulated HSM process (``bkv hsm serve``): HTTP front, persist protocol, NV counter, config.

One process = one emulated HSM: the :class:`~bkv.hsm.app.HsmApp` (secrets and
vault, sans-IO), its *device* (:class:`HsmDevice`: the sealing key and the
monotonic NV counter, which a real HSM keeps inside itself), the host-side
storage adapter for its sealed state (:mod:`bkv.hsm.store`) and this HTTP
front. Endpoints:

- ``POST /v1/message`` — body: one :class:`~bkv.protocol.messages.HsmRequest`
  (``application/octet-stream``, at most ``MAX_REQUEST_SIZE`` bytes, checked
  on ``Content-Length`` and again while streaming); answer:
  :class:`~bkv.protocol.messages.HsmResponse` (200) or
  :class:`~bkv.protocol.messages.HsmRejected` (400); 503 once the HSM has failed
  safe (below).
- ``GET /v1/public-keys`` — the fleet's public keys (canonical JSON), for
  pinning and for the fleet-key artifact.

Requests are handled one at a time (an HSM is a sequential machine); the lock
also keeps each persist-then-release step atomic with respect to others.

Persist protocol (:meth:`HsmNode.commit`), for every state change ``v``:
the host writes the sealed blob durably -> the HSM advances its NV counter to
``(v, SHA-256(blob))`` -> only then does the response that depends on ``v``
leave. On start, :func:`bkv.hsm.sealing.check_freshness` compares the loaded
state with the counter and refuses an older (rolled back) state with
:class:`~bkv.errors.StateRollbackError`.

Failing safe. If a persist fails (the store refuses or fails the write, the
counter cannot advance, housekeeping hits anything unexpected), the blob on
disk, the counter and the in-memory state may disagree. The HSM then stops
serving (HTTP 503, one log line naming the error class, no secrets) until it
is restarted; the restart re-runs the freshness check, which decides from the
counter what is committed. Serving on without housekeeping or with an
uncertain persist state would risk answering from a state that is not the
durable one; refusing service only costs availability, which the host can
take away anyway.

Configuration (TOML, read with :mod:`tomllib`; relative paths are relative to
the config file)::

    [hsm]
    fleet_id = "bkv-dev"
    listen = "127.0.0.1:7801"      # host:port; port 0 picks a free port
    state_dir = "hsm-state"        # host-owned: sealed state, public-keys.json
    key_dir = "hsm-private"        # HSM-private: sealing key, NV counter (default: this)
    max_guess_limit = 10          # used by `bkv hsm init` (1..100)

    [sealer]
    backend = "software"          # or "pkcs11"
    key_file = "sealing.key"      # software: a file name inside key_dir (bkv.keystore.files)
    # pkcs11_config = "token/pkcs11.json"   # Pkcs11Config.save() output
    # user_pin_env = "BKV_HSM_PIN"          # environment variable holding the user PIN
    # key_label = "bkv-hsm-seal"
    # counter_label = "bkv-hsm-nv-counter"  # the NV counter's token data object

    [testing]                     # fault injection for crash tests only; omit in production
    pause_at = "persisted"        # "request-received", "persisted" or "committed"

``key_dir`` stands in for the inside of the HSM: it must not be, contain, or
lie inside ``state_dir`` (the host's directory), ``bkv hsm init`` creates it
with mode 0700 and its files 0600, and ``serve`` refuses a key_dir that other
users can access. With the ``pkcs11`` backend the sealing key and the counter
live in the token instead, and key_dir holds nothing.

``pause_at`` makes the process stop at a point of the request path and write
``<state_dir>/paused-<point>``, so a test can SIGKILL it exactly there:
``request-received`` (nothing done), ``persisted`` (blob written, NV counter
not yet advanced), ``committed`` (counter advanced, response not yet sent).
It only delays; it cannot skip a step or release anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bkv.errors import (
    ConfigError,
    HsmFailedError,
    KeyNotFoundError,
    KeystoreError,
    NvCounterError,
    StorageError,
)
from bkv.hsm.app import HsmApp, Persist
from bkv.hsm.sealing import Freshness, blob_digest, check_freshness
from bkv.hsm.store import PUBLIC_KEYS_FILE, StateStore, write_atomically
from bkv.keystore import Sealer, SoftwareSealer
from bkv.keystore.counter import COUNTER_FILE_NAME, CounterValue, FileCounter, MonotonicCounter
from bkv.keystore.files import make_private_directory, read_key_file, write_key_file
from bkv.protocol.messages import MAX_GUESS_LIMIT, MAX_REQUEST_SIZE, ErrorCode, HsmRejected
from bkv.wire import encode, peek_tag, schema_of

PAUSE_POINTS: Final = ("request-received", "persisted", "committed")
PAUSE_SECONDS: Final = 60.0
TICK_INTERVAL_S: Final = 1.0
"""How often the housekeeping task runs :meth:`HsmApp.tick`."""
MAX_TICKS_PER_ROUND: Final = 64
DEFAULT_KEY_LABEL: Final = "bkv-hsm-seal"
DEFAULT_COUNTER_LABEL: Final = "bkv-hsm-nv-counter"
DEFAULT_KEY_DIR: Final = "hsm-private"
"""key_dir when the config names none: a sibling of the config file, never inside state_dir."""
DEFAULT_KEY_FILE: Final = "sealing.key"
_REJECTED_HEADER = (schema_of(HsmRejected).tag, schema_of(HsmRejected).version)


@dataclass(frozen=True)
class SealerConfig:
    """Which backend holds the state-sealing key and the NV counter."""

    backend: str
    key_file: Path | None = None
    pkcs11_config: Path | None = None
    user_pin_env: str = "BKV_HSM_PIN"
    key_label: str = DEFAULT_KEY_LABEL
    counter_label: str = DEFAULT_COUNTER_LABEL


@dataclass(frozen=True)
class HsmConfig:
    """The ``bkv hsm`` configuration file."""

    fleet_id: str
    host: str
    port: int
    state_dir: Path
    key_dir: Path
    max_guess_limit: int
    sealer: SealerConfig
    pause_at: str | None = None


def _table(data: dict[str, Any], name: str, *, required: bool = True) -> dict[str, Any]:
    value = data.get(name)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"config: missing [{name}] table")
    return value


def _string(table: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"config: [{where}] {key} must be a non-empty string")
    return value


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise ConfigError(f"config: [{where}] has unknown keys {sorted(unknown)}")


def _parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError("config: [hsm] listen must be host:port")
    return host, int(port_text)


def load_config(path: Path) -> HsmConfig:
    """Parse and check a config file; :class:`ConfigError` says what is wrong."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {type(exc).__name__}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
    _check_keys(data, {"hsm", "sealer", "testing"}, "top level")
    base = path.resolve().parent
    hsm = _table(data, "hsm")
    _check_keys(hsm, {"fleet_id", "listen", "state_dir", "key_dir", "max_guess_limit"}, "hsm")
    host, port = _parse_listen(_string(hsm, "listen", "hsm", "127.0.0.1:0"))
    limit = hsm.get("max_guess_limit", 10)
    if type(limit) is not int or not 1 <= limit <= MAX_GUESS_LIMIT:
        raise ConfigError(f"config: [hsm] max_guess_limit must be 1..{MAX_GUESS_LIMIT}")
    state_dir = (base / _string(hsm, "state_dir", "hsm")).resolve()
    key_dir = (base / _string(hsm, "key_dir", "hsm", DEFAULT_KEY_DIR)).resolve()
    _check_separate(state_dir, key_dir)
    sealer = _parse_sealer(_table(data, "sealer"), base, key_dir)
    testing = _table(data, "testing", required=False)
    _check_keys(testing, {"pause_at"}, "testing")
    pause_at = testing.get("pause_at")
    if pause_at is not None and pause_at not in PAUSE_POINTS:
        raise ConfigError(f"config: [testing] pause_at must be one of {PAUSE_POINTS}")
    return HsmConfig(
        fleet_id=_string(hsm, "fleet_id", "hsm"),
        host=host,
        port=port,
        state_dir=state_dir,
        key_dir=key_dir,
        max_guess_limit=limit,
        sealer=sealer,
        pause_at=pause_at,
    )


def _check_separate(state_dir: Path, key_dir: Path) -> None:
    # The host owns state_dir; key_dir stands in for the inside of the HSM. If
    # one held the other, the host could read the sealing key (and open every
    # sealed state) or rewrite the NV counter (and roll the state back).
    if key_dir == state_dir or key_dir.is_relative_to(state_dir):
        raise ConfigError("config: [hsm] key_dir must not be state_dir or inside it")
    if state_dir.is_relative_to(key_dir):
        raise ConfigError("config: [hsm] state_dir must not be inside key_dir")


def _parse_sealer(table: dict[str, Any], base: Path, key_dir: Path) -> SealerConfig:
    _check_keys(
        table,
        {"backend", "key_file", "pkcs11_config", "user_pin_env", "key_label", "counter_label"},
        "sealer",
    )
    backend = _string(table, "backend", "sealer", "software")
    if backend == "software":
        name = _string(table, "key_file", "sealer", DEFAULT_KEY_FILE)
        if Path(name).name != name or name in {".", ".."} or name == COUNTER_FILE_NAME:
            raise ConfigError("config: [sealer] key_file must be a plain file name inside key_dir")
        return SealerConfig(backend, key_file=key_dir / name)
    if backend == "pkcs11":
        key_label = _string(table, "key_label", "sealer", DEFAULT_KEY_LABEL)
        counter_label = _string(table, "counter_label", "sealer", DEFAULT_COUNTER_LABEL)
        if key_label == counter_label:
            raise ConfigError("config: [sealer] key_label and counter_label must differ")
        return SealerConfig(
            backend,
            pkcs11_config=base / _string(table, "pkcs11_config", "sealer"),
            user_pin_env=_string(table, "user_pin_env", "sealer", "BKV_HSM_PIN"),
            key_label=key_label,
            counter_label=counter_label,
        )
    raise ConfigError("config: [sealer] backend must be 'software' or 'pkcs11'")


# --- the device: sealing key and NV counter ----------------------------------------


class HsmDevice:
    """The HSM's own non-volatile parts: its sealing key and its monotonic NV counter.

    A real HSM keeps both inside the device. Here the software backend keeps
    them in the HSM process's private ``key_dir``, the PKCS#11 backend in the
    token. :meth:`close` releases PKCS#11 sessions (idempotent); use ``with``.
    """

    def __init__(
        self, sealer: Sealer, counter: MonotonicCounter, closers: tuple[Callable[[], None], ...]
    ) -> None:
        self.sealer = sealer
        self.counter = counter
        # Bound into the AAD of every state this device seals (bkv.hsm.sealing).
        try:
            self.counter_id = counter.read().counter_id
        except BaseException:
            _close_all(closers)
            raise
        self._closers = closers
        self._closed = False

    def close(self) -> None:
        """Release the backends (the keys and counter stay where they are)."""
        if self._closed:
            return
        self._closed = True
        _close_all(self._closers)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"HsmDevice(sealer={self.sealer!r}, counter={self.counter!r})"


def _close_all(closers: tuple[Callable[[], None], ...]) -> None:
    # Close every backend even if one fails; report the first failure.
    failure: BaseException | None = None
    for close in closers:
        try:
            close()
        except BaseException as exc:  # re-raised below, after the others closed
            failure = failure or exc
    if failure is not None:
        raise failure


def open_device(config: HsmConfig, *, create: bool) -> HsmDevice:
    """The configured sealing key and NV counter; ``create`` makes new ones (never overwrites)."""
    if config.sealer.backend == "software":
        return _software_device(config, create=create)
    return _pkcs11_device(config, create=create)


def _software_device(config: HsmConfig, *, create: bool) -> HsmDevice:
    key_file = config.sealer.key_file
    if key_file is None:
        raise ConfigError("config: [sealer] key_file is required for the software backend")
    counter_path = config.key_dir / COUNTER_FILE_NAME
    if create:
        make_private_directory(config.key_dir)
        if counter_path.exists():
            # The key here is already guarded by a counter: never give it a second one.
            raise NvCounterError(f"NV counter {counter_path} already exists; refusing to re-init")
        if key_file.exists():
            # Pre-provisioned with `bkv keystore gen-sealing-key --key-file` (same format).
            sealer = SoftwareSealer(read_key_file(key_file))
        else:
            sealer = SoftwareSealer.generate()
            write_key_file(key_file, sealer.key_bytes())
        # The counter last: it marks key_dir as in use, and init refuses to reset it.
        return HsmDevice(sealer, FileCounter.create(counter_path), ())
    _check_private_directory(config.key_dir)
    return HsmDevice(SoftwareSealer(read_key_file(key_file)), FileCounter(counter_path), ())


def _check_private_directory(directory: Path) -> None:
    try:
        info = os.stat(directory, follow_symlinks=False)
    except FileNotFoundError:
        raise KeystoreError(f"HSM key directory {directory} does not exist") from None
    except OSError as exc:
        raise KeystoreError(f"cannot stat HSM key directory: {type(exc).__name__}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise KeystoreError(f"HSM key directory {directory} is not a directory")
    if info.st_mode & 0o077:
        raise KeystoreError(f"HSM key directory {directory} is accessible to other users")
    if info.st_uid != os.getuid():
        # Its owner could change the mode back and forth, or replace the files.
        raise KeystoreError(f"HSM key directory {directory} is not owned by this user")


def _pkcs11_device(config: HsmConfig, *, create: bool) -> HsmDevice:
    # Imported here: loading the PKCS#11 machinery is only for this backend.
    from bkv.keystore import pkcs11  # noqa: PLC0415

    sealer_config = config.sealer
    if sealer_config.pkcs11_config is None:
        raise ConfigError("config: [sealer] pkcs11_config is required for the pkcs11 backend")
    pin = os.environ.get(sealer_config.user_pin_env)
    if not pin:
        raise ConfigError(f"the PKCS#11 user PIN must be in ${sealer_config.user_pin_env}")
    token = pkcs11.Pkcs11Config.load(sealer_config.pkcs11_config, pin)
    # The key first: a crash before the counter exists leaves a key that a
    # re-run of init adopts; the counter, once made, marks the token as in use.
    try:
        sealer = pkcs11.load_sealing_key(token, sealer_config.key_label)
    except KeyNotFoundError:
        if not create:
            raise
        # Not pre-provisioned with `bkv keystore gen-sealing-key --pkcs11-config`.
        sealer = pkcs11.generate_sealing_key(token, sealer_config.key_label)
    else:
        if create and pkcs11.token_has_counter(token):
            # Adopting a key that a counter already guards would give it a second
            # counter at version 0 (under another label). The counter id in the
            # state AAD already makes old blobs unusable with it; refuse anyway.
            sealer.close()
            raise NvCounterError("the token already holds an NV counter; refusing to adopt its key")
    try:
        if create:
            counter = pkcs11.create_counter(token, sealer_config.counter_label)
        else:
            counter = pkcs11.load_counter(token, sealer_config.counter_label)
    except BaseException:
        sealer.close()
        raise
    return HsmDevice(sealer, counter, (counter.close, sealer.close))


# --- one HSM: app + device + store -----------------------------------------------------


class HsmNode:
    """One emulated HSM: the app, its device, and the host's store for its sealed state.

    Owns the persist protocol (:meth:`commit`) and the fail-safe latch. Not
    thread-safe: the HTTP adapter serializes calls. Close it (or use ``with``)
    to release the device.
    """

    def __init__(self, app: HsmApp, device: HsmDevice, store: StateStore) -> None:
        self.app = app
        self.device = device
        self.store = store
        self._failure: str | None = None

    @property
    def failed(self) -> bool:
        """Whether the HSM stopped serving after a persistence failure."""
        return self._failure is not None

    def handle(self, body: bytes, now_ms: int, pause: Callable[[str], None]) -> bytes:
        """One request: decide, persist + commit if the state changes, return the response."""
        self._check_serving()
        pause("request-received")
        effects = self.app.handle(body, now_ms)
        if effects.persist is None:
            if effects.response is None:
                raise ValueError("HsmApp returned neither a response nor a persist effect")
            return effects.response
        response = self.commit(effects.persist, pause)
        if response is None:
            raise ValueError("a request's persist released no response")
        return response

    def commit(
        self, persist: Persist, pause: Callable[[str], None] = lambda _point: None
    ) -> bytes | None:
        """Write the blob, advance the NV counter to it, then release what depended on it.

        The order is the rollback defence: the counter covers every version whose
        response may have left, and it moves only after the blob is durable, so a
        crash in between leaves a blob exactly one step ahead of the counter
        (accepted on restart, see ``check_freshness``), never a released response
        the disk does not hold.
        """
        self._check_serving()
        try:
            self.store.write(persist.blob)
            pause("persisted")
            value = CounterValue(
                persist.version, blob_digest(persist.blob), counter_id=self.device.counter_id
            )
            self.device.counter.advance(value)
        except BaseException as exc:
            self.app.abandon(persist.version)
            self.fail(exc)
            raise
        pause("committed")
        return self.app.persisted(persist.version)

    def run_housekeeping(self, now_ms: Callable[[], int] | None = None) -> int:
        """Apply every pending housekeeping change now (bounded); return how many were made."""
        clock = now_ms or _now_ms
        self._check_serving()
        for made in range(MAX_TICKS_PER_ROUND):
            effects = self.app.tick(clock())
            if effects.persist is None:
                return made
            self.commit(effects.persist)
        return MAX_TICKS_PER_ROUND

    def fail(self, exc: BaseException) -> None:
        """Stop serving (latched until restart); log the error class only, never its text."""
        if self._failure is None:
            self._failure = type(exc).__name__
            print(
                f"bkv hsm: persistence failed ({self._failure}); refusing service until restarted",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        """Release the device."""
        self.device.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"HsmNode({self.app!r}, {self.store!r}, failed={self.failed})"

    def _check_serving(self) -> None:
        if self._failure is not None:
            raise HsmFailedError(f"the HSM stopped after a persistence failure ({self._failure})")


# --- init and load ------------------------------------------------------------------


def init_hsm(config: HsmConfig) -> HsmNode:
    """Generate fleet secrets, sealing key and NV counter; write the sealed state and public keys.

    The returned node holds the device open: close it (``with init_hsm(c) as node``).
    """
    store = StateStore(config.state_dir)
    if store.exists():
        raise StorageError(f"{store.path} exists; refusing to overwrite an HSM state")
    device = open_device(config, create=True)
    try:
        app = HsmApp.initialize(
            config.fleet_id,
            device.sealer,
            max_guess_limit=config.max_guess_limit,
            counter_id=device.counter_id,
        )
        node = HsmNode(app, device, store)
        # Version 1 is not staged (no response depends on it), but it goes through
        # the same two steps: on disk first, then the counter covers it.
        blob = app.sealed_state()
        store.write(blob)
        device.counter.advance(
            CounterValue(app.version, blob_digest(blob), counter_id=device.counter_id)
        )
        write_atomically(config.state_dir / PUBLIC_KEYS_FILE, app.public_keys_json())
    except BaseException:
        device.close()
        raise
    return node


def load_hsm(config: HsmConfig) -> HsmNode:
    """Open the sealed state, check it against the NV counter, and return the node.

    Tampering -> :class:`~bkv.errors.SealingError`; an older (rolled back) state
    -> :class:`~bkv.errors.StateRollbackError`. A state one step ahead of the
    counter (crash between write and counter advance) is committed here.
    """
    device = open_device(config, create=False)
    try:
        store = StateStore(config.state_dir)
        blob = store.read()
        app = HsmApp.load(
            blob, device.sealer, fleet_id=config.fleet_id, counter_id=device.counter_id
        )
        # app.version is the authenticated one (bound by the AAD, equal to the
        # snapshot's own); the clear header alone would be the host's word.
        digest = blob_digest(blob)
        trusted = device.counter.read()
        if check_freshness(app.version, digest, trusted.version, trusted.digest) is Freshness.NEXT:
            device.counter.advance(CounterValue(app.version, digest, counter_id=device.counter_id))
    except BaseException:
        device.close()
        raise
    return HsmNode(app, device, store)


# --- HTTP -------------------------------------------------------------------------


class _Pauser:
    """Test-only fault injection: block at a named point so a test can SIGKILL the process."""

    def __init__(self, point: str | None, state_dir: Path) -> None:
        self.point = point
        self.state_dir = state_dir

    def __call__(self, point: str) -> None:
        if point != self.point:
            return
        (self.state_dir / f"paused-{point}").write_text(str(os.getpid()), encoding="utf-8")
        time.sleep(PAUSE_SECONDS)  # blocks the whole HSM, like a stalled device


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def build_app(
    node: HsmNode,
    pause: _Pauser | None = None,
    tick_interval_s: float = TICK_INTERVAL_S,
) -> Starlette:
    """The Starlette application around ``node`` (with its housekeeping task)."""
    pauser = pause or _Pauser(None, node.store.directory)
    public_keys = node.app.public_keys_json()

    @contextlib.asynccontextmanager
    async def lifespan(_web: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(_housekeeping(node, tick_interval_s))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def message(request: Request) -> Response:
        if node.failed:
            return _unavailable()
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_REQUEST_SIZE):
            return _rejected_too_big()
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_REQUEST_SIZE:
                return _rejected_too_big()
        try:
            # Runs on the event loop thread without awaiting: requests are strictly sequential.
            return _octets(node.handle(bytes(body), _now_ms(), pauser))
        except HsmFailedError:
            return _unavailable()

    async def keys(_request: Request) -> Response:
        return Response(public_keys, media_type="application/json")

    return Starlette(
        lifespan=lifespan,
        routes=[
            Route("/v1/message", message, methods=["POST"]),
            Route("/v1/public-keys", keys, methods=["GET"]),
        ],
    )


async def _housekeeping(node: HsmNode, interval_s: float) -> None:
    # Runs until the server stops; each round is synchronous, so it never
    # interleaves with a request's handle -> persist -> release step. Any
    # failure latches the node (fail safe: see the module docstring) and ends
    # the loop; requests then get 503 until the HSM is restarted.
    while not node.failed:
        await asyncio.sleep(interval_s)
        try:
            node.run_housekeeping()
        except Exception as exc:  # every failure latches; none may end the loop silently
            node.fail(exc)


def _octets(body: bytes) -> Response:
    status = 400 if _is_rejection(body) else 200
    return Response(body, status_code=status, media_type="application/octet-stream")


def _is_rejection(body: bytes) -> bool:
    return peek_tag(body) == _REJECTED_HEADER


def _rejected_too_big() -> Response:
    return _octets(encode(HsmRejected(ErrorCode.MALFORMED)))


def _unavailable() -> Response:
    return Response(
        b"hsm unavailable: restart required\n", status_code=503, media_type="text/plain"
    )


@contextlib.contextmanager
def _bound_socket(host: str, port: int) -> Iterator[socket.socket]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        yield sock
    finally:
        sock.close()


def serve(config: HsmConfig) -> None:
    """Run the HSM until killed. Prints one line with the bound address when ready."""
    import uvicorn  # noqa: PLC0415 - only the serving path needs it

    with load_hsm(config) as node:
        try:
            node.run_housekeeping()  # records left at their limit by a crash go first
        except (OSError, ValueError) as exc:  # latched by commit(); refuse to start
            raise HsmFailedError(f"housekeeping at start failed ({type(exc).__name__})") from None
        web = build_app(node, _Pauser(config.pause_at, config.state_dir))
        with _bound_socket(config.host, config.port) as sock:
            host, port = sock.getsockname()[:2]
            server = uvicorn.Server(uvicorn.Config(web, log_level="warning", lifespan="on"))
            print(
                f"bkv hsm: fleet {config.fleet_id} version {node.app.version} "
                f"listening on http://{host}:{port}",
                flush=True,
            )
            sys.stdout.flush()
            server.run(sockets=[sock])
