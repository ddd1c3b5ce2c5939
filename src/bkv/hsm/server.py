"""HTTP adapter of the emulated HSM (``bkv hsm serve``), its configuration, and ``bkv hsm init``.

One process = one emulated HSM: the :class:`~bkv.hsm.app.HsmApp` (secrets and
vault, sans-IO), the host-side storage adapter for its sealed state
(:mod:`bkv.hsm.store`) and this HTTP front. Endpoints:

- ``POST /v1/message`` — body: one :class:`~bkv.hsm.messages.HsmRequest`
  (``application/octet-stream``, at most ``MAX_REQUEST_SIZE`` bytes); answer:
  :class:`~bkv.hsm.messages.HsmResponse` (200) or
  :class:`~bkv.hsm.messages.HsmRejected` (400). A state-changing request is
  answered only after its sealed state is on disk (fsync + rename).
- ``GET /v1/public-keys`` — the fleet's public keys (canonical JSON), for
  pinning and for the fleet-key artifact.

Requests are handled one at a time (an HSM is a sequential machine); the lock
also keeps each persist-then-release step atomic with respect to others.

Configuration (TOML, read with :mod:`tomllib`; relative paths are relative to
the config file)::

    [hsm]
    fleet_id = "bkv-dev"
    listen = "127.0.0.1:7801"      # host:port; port 0 picks a free port
    state_dir = "hsm-state"
    max_guess_limit = 10          # used by `bkv hsm init` (1..100)

    [sealer]
    backend = "software"          # or "pkcs11"
    key_file = "sealing.key"      # software: 32 raw bytes, created by init, mode 0600
    # pkcs11_config = "token/pkcs11.json"   # Pkcs11Config.save() output
    # user_pin_env = "BKV_HSM_PIN"          # environment variable holding the user PIN
    # key_label = "bkv-hsm-seal"

    [testing]                     # fault injection for crash tests only; omit in production
    pause_at = "persisted"        # or "request-received": block there (up to 60 s)

``pause_at`` makes the process stop at a point of the request path and write
``<state_dir>/paused-<point>``, so a test can SIGKILL it exactly there. It only
delays; it cannot skip a step or release anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bkv.errors import BkvError, ConfigError, StorageError
from bkv.hsm.app import HsmApp
from bkv.hsm.messages import MAX_GUESS_LIMIT, MAX_REQUEST_SIZE, ErrorCode, HsmRejected
from bkv.hsm.store import PUBLIC_KEYS_FILE, StateStore, write_atomically
from bkv.keystore import Sealer, SoftwareSealer
from bkv.wire import encode, peek_tag, schema_of

PAUSE_POINTS = ("request-received", "persisted")
PAUSE_SECONDS = 60.0
TICK_INTERVAL_S = 1.0
"""How often the housekeeping task runs :meth:`HsmApp.tick`."""
MAX_TICKS_PER_ROUND = 64
DEFAULT_KEY_LABEL = "bkv-hsm-seal"
_SEALING_KEY_SIZE = 32
_REJECTED_HEADER = (schema_of(HsmRejected).tag, schema_of(HsmRejected).version)


@dataclass(frozen=True)
class SealerConfig:
    """Which Sealer backend holds the state-sealing key."""

    backend: str
    key_file: Path | None = None
    pkcs11_config: Path | None = None
    user_pin_env: str = "BKV_HSM_PIN"
    key_label: str = DEFAULT_KEY_LABEL


@dataclass(frozen=True)
class HsmConfig:
    """The ``bkv hsm`` configuration file."""

    fleet_id: str
    host: str
    port: int
    state_dir: Path
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
    _check_keys(hsm, {"fleet_id", "listen", "state_dir", "max_guess_limit"}, "hsm")
    host, port = _parse_listen(_string(hsm, "listen", "hsm", "127.0.0.1:0"))
    limit = hsm.get("max_guess_limit", 10)
    if type(limit) is not int or not 1 <= limit <= MAX_GUESS_LIMIT:
        raise ConfigError(f"config: [hsm] max_guess_limit must be 1..{MAX_GUESS_LIMIT}")
    state_dir = base / _string(hsm, "state_dir", "hsm")
    sealer = _parse_sealer(_table(data, "sealer"), base, state_dir)
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
        max_guess_limit=limit,
        sealer=sealer,
        pause_at=pause_at,
    )


def _parse_sealer(table: dict[str, Any], base: Path, state_dir: Path) -> SealerConfig:
    _check_keys(
        table, {"backend", "key_file", "pkcs11_config", "user_pin_env", "key_label"}, "sealer"
    )
    backend = _string(table, "backend", "sealer", "software")
    if backend == "software":
        return SealerConfig(
            backend, key_file=state_dir / _string(table, "key_file", "sealer", "sealing.key")
        )
    if backend == "pkcs11":
        return SealerConfig(
            backend,
            pkcs11_config=base / _string(table, "pkcs11_config", "sealer"),
            user_pin_env=_string(table, "user_pin_env", "sealer", "BKV_HSM_PIN"),
            key_label=_string(table, "key_label", "sealer", DEFAULT_KEY_LABEL),
        )
    raise ConfigError("config: [sealer] backend must be 'software' or 'pkcs11'")


# --- sealers -----------------------------------------------------------------------


def open_sealer(config: SealerConfig, *, create: bool) -> Sealer:
    """The configured Sealer; with ``create`` a new key is made (refusing to overwrite one)."""
    if config.backend == "software":
        return _software_sealer(config, create=create)
    return _pkcs11_sealer(config, create=create)


def _software_sealer(config: SealerConfig, *, create: bool) -> Sealer:
    if config.key_file is None:
        raise ConfigError("config: [sealer] key_file is required for the software backend")
    if create:
        if config.key_file.exists():
            raise StorageError(f"sealing key {config.key_file} already exists")
        sealer = SoftwareSealer.generate()
        write_atomically(config.key_file, sealer.key_bytes())
        return sealer
    try:
        key = config.key_file.read_bytes()
    except OSError as exc:
        raise StorageError(f"cannot read sealing key: {type(exc).__name__}") from None
    if len(key) != _SEALING_KEY_SIZE:
        raise StorageError("sealing key file does not hold a 32-byte key")
    return SoftwareSealer(key)


def _pkcs11_sealer(config: SealerConfig, *, create: bool) -> Sealer:
    # Imported here: loading the PKCS#11 machinery is only for this backend.
    from bkv.keystore import pkcs11  # noqa: PLC0415

    if config.pkcs11_config is None:
        raise ConfigError("config: [sealer] pkcs11_config is required for the pkcs11 backend")
    pin = os.environ.get(config.user_pin_env)
    if not pin:
        raise ConfigError(f"the PKCS#11 user PIN must be in ${config.user_pin_env}")
    token = pkcs11.Pkcs11Config.load(config.pkcs11_config, pin)
    if create:
        return pkcs11.generate_sealing_key(token, config.key_label)
    return pkcs11.load_sealing_key(token, config.key_label)


# --- init -------------------------------------------------------------------------


def init_hsm(config: HsmConfig) -> HsmApp:
    """Generate fleet secrets, write the sealed state and the public-key file."""
    store = StateStore(config.state_dir)
    if store.exists():
        raise StorageError(f"{store.path} exists; refusing to overwrite an HSM state")
    sealer = open_sealer(config.sealer, create=True)
    app = HsmApp.initialize(config.fleet_id, sealer, max_guess_limit=config.max_guess_limit)
    store.write(app.sealed_state())
    write_atomically(config.state_dir / PUBLIC_KEYS_FILE, app.public_keys_json())
    return app


def load_hsm(config: HsmConfig) -> HsmApp:
    """Open the newest sealed state with the configured sealer (tampering -> SealingError)."""
    sealer = open_sealer(config.sealer, create=False)
    return HsmApp.load(StateStore(config.state_dir).read(), sealer, fleet_id=config.fleet_id)


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
    app: HsmApp,
    store: StateStore,
    pause: _Pauser | None = None,
    tick_interval_s: float = TICK_INTERVAL_S,
) -> Starlette:
    """The Starlette application around ``app`` (with its housekeeping task)."""
    pauser = pause or _Pauser(None, store.directory)
    public_keys = app.public_keys_json()

    @contextlib.asynccontextmanager
    async def lifespan(_web: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(_housekeeping(app, store, tick_interval_s))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def message(request: Request) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_REQUEST_SIZE):
            return _rejected_too_big()
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_REQUEST_SIZE:
                return _rejected_too_big()
        return _octets(_handle(app, store, pauser, bytes(body)))

    async def keys(_request: Request) -> Response:
        return Response(public_keys, media_type="application/json")

    return Starlette(
        lifespan=lifespan,
        routes=[
            Route("/v1/message", message, methods=["POST"]),
            Route("/v1/public-keys", keys, methods=["GET"]),
        ],
    )


def _handle(app: HsmApp, store: StateStore, pause: _Pauser, body: bytes) -> bytes:
    # Runs on the event loop thread without awaiting: requests are strictly sequential.
    pause("request-received")
    effects = app.handle(body, _now_ms())
    if effects.persist is None:
        if effects.response is None:
            raise ValueError("HsmApp returned neither a response nor a persist effect")
        return effects.response
    try:
        store.write(effects.persist.blob)
    except BaseException:
        app.abandon(effects.persist.version)
        raise
    pause("persisted")
    response = app.persisted(effects.persist.version)
    if response is None:
        raise ValueError("a request's persist released no response")
    return response


def run_housekeeping(app: HsmApp, store: StateStore) -> int:
    """Apply every pending housekeeping change now (bounded); return how many were made."""
    for made in range(MAX_TICKS_PER_ROUND):
        effects = app.tick(_now_ms())
        if effects.persist is None:
            return made
        try:
            store.write(effects.persist.blob)
        except BaseException:
            app.abandon(effects.persist.version)
            raise
        app.persisted(effects.persist.version)
    return MAX_TICKS_PER_ROUND


async def _housekeeping(app: HsmApp, store: StateStore, interval_s: float) -> None:
    # Runs until the server stops; each round is synchronous, so it never
    # interleaves with a request's handle -> persist -> release step.
    while True:
        await asyncio.sleep(interval_s)
        try:
            run_housekeeping(app, store)
        except (OSError, BkvError) as exc:
            print(f"bkv hsm: housekeeping failed: {type(exc).__name__}", file=sys.stderr)


def _octets(body: bytes) -> Response:
    status = 400 if _is_rejection(body) else 200
    return Response(body, status_code=status, media_type="application/octet-stream")


def _is_rejection(body: bytes) -> bool:
    return peek_tag(body) == _REJECTED_HEADER


def _rejected_too_big() -> Response:
    return _octets(encode(HsmRejected(ErrorCode.MALFORMED)))


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

    app = load_hsm(config)
    store = StateStore(config.state_dir)
    run_housekeeping(app, store)  # records left at their limit by a crash go first
    web = build_app(app, store, _Pauser(config.pause_at, config.state_dir))
    with _bound_socket(config.host, config.port) as sock:
        host, port = sock.getsockname()[:2]
        server = uvicorn.Server(uvicorn.Config(web, log_level="warning", lifespan="on"))
        print(
            f"bkv hsm: fleet {config.fleet_id} version {app.version} "
            f"listening on http://{host}:{port}",
            flush=True,
        )
        sys.stdout.flush()
        server.run(sockets=[sock])
