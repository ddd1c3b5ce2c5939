"""The HSM's device: its sealing key and monotonic NV counter, held by one process only.

A real HSM keeps both inside itself. Here the software backend keeps them in
the HSM process's private ``key_dir`` (mode 0700, files 0600), the PKCS#11
backend in the token. Either way, :func:`open_device` first takes the
exclusive lock on ``key_dir`` (:func:`bkv.keystore.files.lock_private_directory`)
and the device holds it until it is closed, which for ``bkv hsm serve`` is the
end of the process: two HSM processes on one device would each trust the same
NV counter and each release a response for the same state version, multiplying
every record's guess limit (docs/threat-model.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from bkv.errors import ConfigError, KeyNotFoundError, NvCounterError
from bkv.hsm.config import HsmConfig
from bkv.keystore import Sealer, SoftwareSealer
from bkv.keystore.counter import COUNTER_FILE_NAME, FileCounter, MonotonicCounter
from bkv.keystore.files import (
    PrivateDirectoryLock,
    check_private,
    lock_private_directory,
    make_private_directory,
    read_key_file,
    write_key_file,
)

Closer = Callable[[], None]


class HsmDevice:
    """The HSM's own non-volatile parts: its sealing key and its monotonic NV counter.

    :meth:`close` releases PKCS#11 sessions and the ``key_dir`` lock
    (idempotent); use ``with``.
    """

    def __init__(
        self, sealer: Sealer, counter: MonotonicCounter, closers: tuple[Closer, ...]
    ) -> None:
        self.sealer = sealer
        self.counter = counter
        # Bound into the AAD of every state this device seals (bkv.hsm.sealing).
        try:
            self.committed = counter.read()
        except BaseException:
            _close_all(closers)
            raise
        self.counter_id = self.committed.counter_id
        self._closers = closers
        self._closed = False

    def advance_counter(self, version: int, digest: bytes) -> None:
        """Move the NV counter on from the value this device last read or wrote.

        A compare-and-swap (bkv.keystore.counter): if anything else moved the
        counter meanwhile, it raises NvCounterConflictError and writes nothing.
        """
        new = self.committed.next(version, digest)
        self.counter.advance(self.committed, new)
        self.committed = new

    def close(self) -> None:
        """Release the backends and the lock (the keys and counter stay where they are)."""
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


def _close_all(closers: tuple[Closer, ...]) -> None:
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
    """Lock ``key_dir``, then open the configured sealing key and NV counter.

    ``create`` makes ``key_dir`` (0700) and new keys (never overwriting).
    :class:`~bkv.errors.DirectoryLockedError` if another process holds the device.
    """
    if create:
        make_private_directory(config.key_dir)
    else:
        check_private_directory(config.key_dir)
    lock = lock_private_directory(config.key_dir)
    try:
        if config.sealer.backend == "software":
            return _software_device(config, lock, create=create)
        return _pkcs11_device(config, lock, create=create)
    except BaseException:
        lock.release()
        raise


def _software_device(config: HsmConfig, lock: PrivateDirectoryLock, *, create: bool) -> HsmDevice:
    key_file = config.sealer.key_file
    if key_file is None:
        raise ConfigError("config: [sealer] key_file is required for the software backend")
    counter_path = config.key_dir / COUNTER_FILE_NAME
    if not create:
        sealer = SoftwareSealer(read_key_file(key_file))
        return HsmDevice(sealer, FileCounter(counter_path), (lock.release,))
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
    return HsmDevice(sealer, FileCounter.create(counter_path), (lock.release,))


def check_private_directory(directory: Path) -> None:
    """Refuse (:class:`KeystoreError`) a key_dir that is missing or open to other users."""
    check_private(directory, "HSM key directory", directory=True)


def _pkcs11_device(config: HsmConfig, lock: PrivateDirectoryLock, *, create: bool) -> HsmDevice:
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
    return HsmDevice(sealer, counter, (counter.close, sealer.close, lock.release))
