"""PKCS#11 backends of :class:`bkv.keystore.Signer` and :class:`bkv.keystore.Sealer`.

This is an adapter: it loads a PKCS#11 library (Debian's SoftHSM2 in tests and
development) through python-pkcs11 and runs ``softhsm2-util``. The keys are
generated *inside* the token with ``CKA_SENSITIVE`` true and ``CKA_EXTRACTABLE``
false, so their values never leave it: signing (CKM_EDDSA, Ed25519) and
sealing (a per-blob key derived with CKM_AES_ECB_ENCRYPT_DATA, then
CKM_AES_GCM; :mod:`bkv.keystore.sealed`) run in the token.

One SoftHSM2 configuration per process
--------------------------------------
SoftHSM2 reads the file named by ``SOFTHSM2_CONF`` once, in ``C_Initialize``,
and python-pkcs11 keeps one loaded library object per module path for the
whole process. This module therefore owns that choice: before the first use of
a :class:`Pkcs11Config` it sets ``SOFTHSM2_CONF`` and (re)initializes the
library. Switching to another configuration finalizes the library, which
invalidates every open session, so it is refused with
:class:`bkv.errors.KeystoreError` while any key from the previous configuration
is still open: close (or use ``with``) every backend before switching. Tests
that give each test its own token directory rely on exactly this.

Sessions: PKCS#11 login state is per application, not per session (PKCS#11
v2.40 section 5.6: a second ``C_Login`` fails, ``C_Logout`` logs out every
session). So all backends on one token share one logged-in read/write session,
reference-counted, and every call into the library holds one process-wide lock
(python-pkcs11 sessions are not safe for concurrent use).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.exceptions import MultipleObjectsReturned, NoSuchKey, NoSuchToken, PKCS11Error
from pkcs11.mechanisms import GCMParams
from pkcs11.util.ec import encode_named_curve_parameters

from bkv.crypto.rng import Rng, default_rng
from bkv.errors import (
    ConfigError,
    KeyExistsError,
    KeyNotFoundError,
    KeystoreError,
    NvCounterError,
    SealingError,
)
from bkv.keystore import sealed
from bkv.keystore.counter import CounterValue, check_advance, check_unchanged, initial_value
from bkv.keystore.files import PrivateDirectoryLock, hold_lock_file
from bkv.keystore.sealed import SealAlgorithm

DEFAULT_MODULE_PATH: Final = "/usr/lib/softhsm/libsofthsm2.so"
"""Debian's SoftHSM2 PKCS#11 module."""

SOFTHSM2_UTIL: Final = "softhsm2-util"

CONF_FILE_NAME: Final = "softhsm2.conf"
CONFIG_FILE_NAME: Final = "pkcs11.json"
"""Where the CLI records a token's :class:`Pkcs11Config` (without the PIN)."""

MAX_TOKEN_LABEL_SIZE: Final = 32
"""CK_TOKEN_INFO.label is 32 bytes (PKCS#11 v2.40 section 3.2)."""

MAX_KEY_LABEL_SIZE: Final = 64
MIN_PIN_SIZE: Final = 4
"""SoftHSM2 refuses PINs shorter than 4 or longer than 255 bytes."""
MAX_PIN_SIZE: Final = 255

ED25519_OID: Final = "1.3.101.112"
"""id-Ed25519 (RFC 8410 section 3); CKA_EC_PARAMS for CKK_EC_EDWARDS keys (PKCS#11 v3.0 2.3.5)."""

_EC_POINT_DER_PREFIX: Final = b"\x04\x20"
"""SoftHSM2 returns CKA_EC_POINT as a DER OCTET STRING of the 32 raw bytes."""

_UTIL_TIMEOUT_SECONDS: Final = 60


# --- configuration ------------------------------------------------------------


@dataclass(frozen=True)
class Pkcs11Config:
    """How to reach one token: module, SoftHSM2 configuration, token label and user PIN."""

    module_path: str
    conf_path: str
    token_label: str
    user_pin: str = field(repr=False)

    def save(self, path: Path) -> None:
        """Write the configuration as JSON, *without* the PIN (operators supply it at run time)."""
        data = {
            "module_path": self.module_path,
            "conf_path": self.conf_path,
            "token_label": self.token_label,
        }
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path, user_pin: str) -> Pkcs11Config:
        """Read a configuration written by :meth:`save`; the PIN comes from the caller."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read PKCS#11 config {path}: {type(exc).__name__}") from None
        if not isinstance(data, dict) or set(data) != {"module_path", "conf_path", "token_label"}:
            raise ConfigError(
                f"PKCS#11 config {path} must have exactly module_path, conf_path, token_label"
            )
        if not all(isinstance(value, str) and value for value in data.values()):
            raise ConfigError(f"PKCS#11 config {path}: every field must be a non-empty string")
        _check_pin(user_pin, "user PIN")
        return cls(data["module_path"], data["conf_path"], data["token_label"], user_pin)


def _check_pin(pin: str, what: str) -> None:
    if not isinstance(pin, str) or not MIN_PIN_SIZE <= len(pin.encode()) <= MAX_PIN_SIZE:
        raise ValueError(f"{what} must be {MIN_PIN_SIZE}..{MAX_PIN_SIZE} bytes")


def _check_label(label: str, limit: int, what: str) -> None:
    if not isinstance(label, str) or not 0 < len(label.encode()) <= limit:
        raise ValueError(f"{what} must be 1..{limit} bytes of UTF-8")


def init_token(
    token_dir: Path,
    label: str,
    so_pin: str,
    user_pin: str,
    module_path: str = DEFAULT_MODULE_PATH,
) -> Pkcs11Config:
    """Create a SoftHSM2 token in ``token_dir`` and return its configuration.

    Writes ``token_dir/softhsm2.conf`` (object store in ``token_dir/tokens``) and
    runs ``softhsm2-util --init-token --free``. The PINs pass on softhsm2-util's
    command line, visible to other processes of the same user while it runs;
    that is acceptable for a development token, not for a production HSM (whose
    vendor tooling initializes it).
    """
    _check_label(label, MAX_TOKEN_LABEL_SIZE, "token label")
    _check_pin(so_pin, "SO PIN")
    _check_pin(user_pin, "user PIN")
    token_dir = token_dir.resolve()
    objects_dir = token_dir / "tokens"
    objects_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    conf_path = token_dir / CONF_FILE_NAME
    conf_path.write_text(
        f"directories.tokendir = {objects_dir}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n"
        "slots.mechanisms = ALL\n"
        "library.reset_on_fork = false\n",
        encoding="utf-8",
    )
    command = [
        SOFTHSM2_UTIL, "--init-token", "--free", "--label", label,
        "--so-pin", so_pin, "--pin", user_pin,
    ]  # fmt: skip
    env = {**os.environ, "SOFTHSM2_CONF": str(conf_path)}
    try:
        result = subprocess.run(  # noqa: S603 - fixed program, arguments are not a shell string
            command, env=env, capture_output=True, text=True, timeout=_UTIL_TIMEOUT_SECONDS,
            check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KeystoreError(f"cannot run {SOFTHSM2_UTIL}: {type(exc).__name__}") from None
    if result.returncode != 0:
        # softhsm2-util's own messages name no PIN; pass the first line on.
        reason = (result.stderr or result.stdout).strip().splitlines()[:1]
        raise KeystoreError(f"{SOFTHSM2_UTIL} --init-token failed: {' '.join(reason)}")
    return Pkcs11Config(module_path, str(conf_path), label, user_pin)


# --- the process-wide library and shared sessions --------------------------


class _SharedSession:
    __slots__ = ("pin_digest", "references", "session")

    def __init__(self, session: Any, pin_digest: bytes) -> None:
        self.session = session
        self.pin_digest = pin_digest  # so a later open with another PIN cannot piggyback
        self.references = 1


def _pin_digest(pin: str) -> bytes:
    return hashlib.sha256(b"bkv.keystore.pkcs11.pin\x00" + pin.encode("utf-8")).digest()


class _Runtime:
    """The one PKCS#11 library of this process and its logged-in sessions (see module doc)."""

    lock: Final = threading.RLock()
    _active: tuple[str, str] | None = None  # (module_path, conf_path)
    _sessions: dict[tuple[str, str, str], _SharedSession] = {}  # noqa: RUF012 - class-level on purpose

    @classmethod
    def acquire(cls, config: Pkcs11Config) -> Any:
        """A logged-in R/W session on the config's token; pair with :meth:`release`."""
        key = (config.module_path, config.conf_path, config.token_label)
        with cls.lock:
            shared = cls._sessions.get(key)
            if shared is not None:
                if not hmac.compare_digest(shared.pin_digest, _pin_digest(config.user_pin)):
                    raise KeystoreError("the token is open in this process under another PIN")
                shared.references += 1
                return shared.session
            library = cls._library_for(config)
            try:
                token = library.get_token(token_label=config.token_label)
                session = token.open(user_pin=config.user_pin, rw=True)
            except NoSuchToken:
                raise KeystoreError(f"no token labelled {config.token_label!r}") from None
            except PKCS11Error as exc:
                raise KeystoreError(f"cannot open token: {type(exc).__name__}") from None
            cls._sessions[key] = _SharedSession(session, _pin_digest(config.user_pin))
            return session

    @classmethod
    def release(cls, config: Pkcs11Config) -> None:
        key = (config.module_path, config.conf_path, config.token_label)
        with cls.lock:
            shared = cls._sessions.get(key)
            if shared is None:
                return
            shared.references -= 1
            if shared.references == 0:
                del cls._sessions[key]
                try:
                    shared.session.close()
                except PKCS11Error as exc:
                    raise KeystoreError(f"cannot close session: {type(exc).__name__}") from None

    @classmethod
    def _library_for(cls, config: Pkcs11Config) -> Any:
        wanted = (config.module_path, config.conf_path)
        if cls._active == wanted:
            return pkcs11.lib(config.module_path)
        if cls._sessions:
            raise KeystoreError(
                "another PKCS#11 configuration has open keys in this process; close them first"
            )
        if not Path(config.conf_path).is_file():
            raise ConfigError(f"SoftHSM2 configuration {config.conf_path} does not exist")
        # SoftHSM2 reads SOFTHSM2_CONF in C_Initialize: set it, then (re)initialize so
        # that a library loaded earlier with another configuration picks it up.
        os.environ["SOFTHSM2_CONF"] = config.conf_path
        try:
            library = pkcs11.lib(config.module_path)
            library.reinitialize()
        except PKCS11Error as exc:
            raise KeystoreError(f"cannot load PKCS#11 module: {type(exc).__name__}") from None
        cls._active = wanted
        return library


def open_token_sessions() -> int:
    """How many logged-in token sessions this process holds open (0 once every key is closed).

    Lets an owner (and tests) check that every backend was closed: an open one
    blocks switching to another configuration (see the module docstring).
    """
    with _Runtime.lock:
        return len(_Runtime._sessions)


class _TokenKey:
    """Base of the backends: holds a shared session and releases it exactly once."""

    def __init__(self, config: Pkcs11Config, label: str) -> None:
        self._config = config
        self._label = label
        self._session: Any = _Runtime.acquire(config)
        self._closed = False

    @property
    def label(self) -> str:
        """The key's CKA_LABEL in the token."""
        return self._label

    def close(self) -> None:
        """Release this key's share of the session (the key stays in the token)."""
        if not self._closed:
            self._closed = True
            _Runtime.release(self._config)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("this PKCS#11 key handle is closed")

    def _find(self, object_class: ObjectClass, key_type: KeyType) -> Any:
        try:
            return self._session.get_key(
                object_class=object_class, key_type=key_type, label=self._label
            )
        except NoSuchKey:
            raise KeyNotFoundError(f"no {key_type.name} key labelled {self._label!r}") from None
        except MultipleObjectsReturned:
            raise KeystoreError(f"several keys are labelled {self._label!r}") from None


def _label_in_use(session: Any, label: str) -> bool:
    return any(True for _ in session.get_objects({Attribute.LABEL: label}))


# --- Ed25519 signing --------------------------------------------------------


class Pkcs11Signer(_TokenKey):
    """Ed25519 (CKM_EDDSA, PureEdDSA) with the private key inside the token."""

    def __init__(self, config: Pkcs11Config, label: str) -> None:
        _check_label(label, MAX_KEY_LABEL_SIZE, "key label")
        super().__init__(config, label)
        try:
            with _Runtime.lock:
                self._private = self._find(ObjectClass.PRIVATE_KEY, KeyType.EC_EDWARDS)
                public = self._find(ObjectClass.PUBLIC_KEY, KeyType.EC_EDWARDS)
                self._public = _raw_ed25519_point(public[Attribute.EC_POINT])
        except BaseException:
            self.close()
            raise

    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key (CKA_EC_POINT without its DER wrapper)."""
        return self._public

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature over exactly ``message``, made in the token."""
        if not isinstance(message, bytes):
            raise TypeError("message must be bytes")
        self._check_open()
        try:
            with _Runtime.lock:
                signature = self._private.sign(message, mechanism=Mechanism.EDDSA)
        except PKCS11Error as exc:
            raise KeystoreError(f"token refused to sign: {type(exc).__name__}") from None
        if not isinstance(signature, bytes) or len(signature) != 64:
            raise KeystoreError("token returned a malformed Ed25519 signature")
        return signature

    def __repr__(self) -> str:
        return f"Pkcs11Signer(label={self._label!r}, public_key={self._public.hex()})"


def _raw_ed25519_point(ec_point: bytes) -> bytes:
    if len(ec_point) == 34 and ec_point.startswith(_EC_POINT_DER_PREFIX):
        return ec_point[2:]
    if len(ec_point) == 32:  # some tokens return the raw point
        return ec_point
    raise KeystoreError("token returned a malformed Ed25519 public key")


def generate_signing_key(config: Pkcs11Config, label: str) -> Pkcs11Signer:
    """Generate an Ed25519 key pair in the token (private half sensitive, non-extractable)."""
    _generate_in_token(config, label, _make_ed25519_pair)
    return Pkcs11Signer(config, label)


def _make_ed25519_pair(session: Any, label: str) -> None:
    params = session.create_domain_parameters(
        KeyType.EC_EDWARDS,
        {Attribute.EC_PARAMS: encode_named_curve_parameters(ED25519_OID)},
        local=True,
    )
    params.generate_keypair(
        store=True,
        label=label,
        public_template={Attribute.TOKEN: True, Attribute.VERIFY: True},
        private_template={
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.SIGN: True,
        },
    )


def load_signing_key(config: Pkcs11Config, label: str) -> Pkcs11Signer:
    """Open an existing Ed25519 key pair by label (raises KeyNotFoundError)."""
    return Pkcs11Signer(config, label)


# --- AES-256-GCM sealing ----------------------------------------------------


class Pkcs11Sealer(_TokenKey):
    """AES-256-GCM under per-blob keys derived in the token from a sensitive AES-256 key.

    Blobs have the :mod:`bkv.keystore.sealed` format, byte-compatible with
    :class:`bkv.keystore.SoftwareSealer` under the same key. Each seal draws a
    fresh salt from ``rng`` on the host (:func:`bkv.keystore.sealed.new_salt`; it
    need not be secret), derives
    the blob key in the token (CKM_AES_ECB_ENCRYPT_DATA) as a sensitive,
    non-extractable session object, encrypts with it (CKM_AES_GCM) and destroys
    it. The sealing key therefore needs CKA_DERIVE; one made before per-blob
    keys (encrypt/decrypt only) is refused at load. Legacy blobs (alg 0x01)
    open only with a key that also has CKA_DECRYPT.
    """

    def __init__(self, config: Pkcs11Config, label: str, rng: Rng = default_rng) -> None:
        _check_label(label, MAX_KEY_LABEL_SIZE, "key label")
        super().__init__(config, label)
        self._rng = rng
        try:
            with _Runtime.lock:
                self._key = self._find(ObjectClass.SECRET_KEY, KeyType.AES)
                if self._key[Attribute.VALUE_LEN] != sealed.KEY_SIZE:
                    raise KeystoreError(f"key {label!r} is not an AES-256 key")
                if not self._key[Attribute.DERIVE]:
                    raise KeystoreError(
                        f"key {label!r} cannot derive per-blob keys (CKA_DERIVE is false);"
                        " generate a new sealing key"
                    )
        except PKCS11Error as exc:
            self.close()
            raise KeystoreError(f"cannot inspect key {label!r}: {type(exc).__name__}") from None
        except BaseException:
            self.close()
            raise

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """``alg || salt || AES-256-GCM(blob key, plaintext, ad = alg || aad)``, in the token."""
        sealed.check_seal_arguments(plaintext, aad)
        self._check_open()
        alg = sealed.SEAL_ALGORITHM
        salt = sealed.new_salt(self._rng)
        params = _gcm_params(sealed.BLOB_KEY_NONCE, sealed.associated_data(alg, aad))
        with _Runtime.lock:
            blob_key = self._derive(salt, Attribute.ENCRYPT)
            try:
                body = blob_key.encrypt(plaintext, mechanism=Mechanism.AES_GCM,
                                        mechanism_param=params)  # fmt: skip
            except PKCS11Error as exc:
                raise KeystoreError(f"token refused to seal: {type(exc).__name__}") from None
            finally:
                _destroy_session_key(blob_key)
        return sealed.encode(alg, salt, bytes(body))

    def open(self, ciphertext: bytes, aad: bytes) -> bytes:
        """The plaintext of a blob sealed under this key with ``aad``, decrypted in the token."""
        blob = sealed.decode(ciphertext, aad)
        self._check_open()
        params = _gcm_params(blob.nonce, sealed.associated_data(blob.alg, aad))
        with _Runtime.lock:
            if blob.alg is SealAlgorithm.AES_256_GCM_BLOB_KEY:
                blob_key = self._derive(blob.head, Attribute.DECRYPT)
                try:
                    return _gcm_open(blob_key, blob.body, params)
                finally:
                    _destroy_session_key(blob_key)
            if not isinstance(self._key, pkcs11.DecryptMixin):
                raise SealingError("this key has no CKA_DECRYPT: it opens no legacy (0x01) blob")
            return _gcm_open(self._key, blob.body, params)

    def _derive(self, salt: bytes, use: Attribute) -> Any:
        """The blob key for ``salt``: a sensitive session key allowed ``use`` and nothing else."""
        template = {
            Attribute.TOKEN: False,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.ENCRYPT: use is Attribute.ENCRYPT,
            Attribute.DECRYPT: use is Attribute.DECRYPT,
            Attribute.DERIVE: False,
            Attribute.WRAP: False,
            Attribute.UNWRAP: False,
            Attribute.SIGN: False,
            Attribute.VERIFY: False,
        }
        try:
            return self._key.derive_key(
                KeyType.AES,
                sealed.KEY_SIZE * 8,
                mechanism=Mechanism.AES_ECB_ENCRYPT_DATA,
                mechanism_param=salt,
                store=False,
                template=template,
            )
        except PKCS11Error as exc:
            raise KeystoreError(
                f"token refused to derive a blob key: {type(exc).__name__}"
            ) from None

    def __repr__(self) -> str:
        return f"Pkcs11Sealer(label={self._label!r})"


def _gcm_params(nonce: bytes, associated_data: bytes) -> GCMParams:
    return GCMParams(nonce, associated_data, sealed.TAG_SIZE * 8)


def _gcm_open(key: Any, body: bytes, params: GCMParams) -> bytes:
    try:
        return bytes(key.decrypt(body, mechanism=Mechanism.AES_GCM, mechanism_param=params))
    except PKCS11Error:
        # SoftHSM2 reports a bad GCM tag as CKR_GENERAL_ERROR (or
        # CKR_ENCRYPTED_DATA_INVALID); the token does not say which input was wrong.
        raise SealingError("sealed blob failed to authenticate") from None


def _destroy_session_key(key: Any) -> None:
    # A blob key is a session object: should destroying it fail, it still ends
    # with the session, and it is sensitive and non-extractable until then.
    with contextlib.suppress(PKCS11Error):
        key.destroy()


def generate_sealing_key(config: Pkcs11Config, label: str, rng: Rng = default_rng) -> Pkcs11Sealer:
    """Generate an AES-256 sealing key in the token: sensitive, non-extractable, derive only."""
    _generate_in_token(config, label, _make_aes_sealing_key)
    return Pkcs11Sealer(config, label, rng)


def _make_aes_sealing_key(session: Any, label: str) -> None:
    # The sealing key only derives blob keys (bkv.keystore.sealed): it never
    # encrypts, decrypts, wraps or signs anything itself.
    session.generate_key(
        KeyType.AES,
        sealed.KEY_SIZE * 8,
        label=label,
        store=True,
        template={
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.DERIVE: True,
            Attribute.ENCRYPT: False,
            Attribute.DECRYPT: False,
            Attribute.WRAP: False,
            Attribute.UNWRAP: False,
            Attribute.SIGN: False,
            Attribute.VERIFY: False,
        },
    )


def _generate_in_token(config: Pkcs11Config, label: str, make: Callable[[Any, str], None]) -> None:
    """The one key generator: refuse a label in use, then ``make(session, label)`` in the token.

    The label check and the generation run under the process-wide lock on one
    session, so this process cannot make two keys with one label.
    """
    _check_label(label, MAX_KEY_LABEL_SIZE, "key label")
    session = _Runtime.acquire(config)
    try:
        with _Runtime.lock:
            if _label_in_use(session, label):
                raise KeyExistsError(f"a key labelled {label!r} already exists")
            make(session, label)
    except PKCS11Error as exc:
        raise KeystoreError(f"token refused to generate the key: {type(exc).__name__}") from None
    finally:
        _Runtime.release(config)


def load_sealing_key(config: Pkcs11Config, label: str, rng: Rng = default_rng) -> Pkcs11Sealer:
    """Open an existing AES-256 sealing key by label (raises KeyNotFoundError)."""
    return Pkcs11Sealer(config, label, rng)


# --- the NV counter (token data objects) ----------------------------------------

COUNTER_APPLICATION: Final = "bkv.hsm.nv-counter"
"""CKA_APPLICATION of the counter's data objects."""

MAX_COUNTER_OBJECTS: Final = 2
"""At most the old and the new value exist at once (between create and destroy)."""


class Pkcs11Counter(_TokenKey):
    """The HSM's NV counter as private token data objects (CKO_DATA) labelled ``label``.

    SoftHSM2 refuses ``C_SetAttributeValue`` on a data object's ``CKA_VALUE``
    (``AttributeReadOnly``), so an advance *creates* an object holding the new
    value and then destroys the old one. A crash in between leaves both; the
    read takes the higher version, so the counter never goes back. The objects
    are ``CKA_PRIVATE`` (readable only after login) and ``CKA_TOKEN`` (kept in
    the token's non-volatile store, like the sealing key).

    PKCS#11 has no compare-and-swap on objects, and create-then-destroy is two
    calls, so an open counter holds an exclusive lock for as long as it is
    open (:func:`counter_lock`): no other process can open the same counter,
    and the compare and the swap of :meth:`advance` run under it (and under the
    process-wide library lock against this process's other threads).
    """

    def __init__(self, config: Pkcs11Config, label: str) -> None:
        _check_label(label, MAX_KEY_LABEL_SIZE, "counter label")
        self._lock = counter_lock(config, label)
        try:
            super().__init__(config, label)
        except BaseException:
            self._lock.release()
            raise
        try:
            self.read()  # must exist and be well formed
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the session share and the counter's lock (the counter stays in the token)."""
        try:
            super().close()
        finally:
            self._lock.release()

    def read(self) -> CounterValue:
        """The current value: the highest version among the counter's objects."""
        self._check_open()
        with _Runtime.lock:
            return _newest(self._objects())[0]

    def advance(self, expected: CounterValue, new: CounterValue) -> None:
        """Compare-and-swap from ``expected`` to ``new``: create its object, destroy the older."""
        check_advance(expected, new)
        self._check_open()
        with _Runtime.lock:
            found = self._objects()
            check_unchanged(_newest(found)[0], expected)
            _create_counter_object(self._session, self._label, new)
            try:
                for _value, old in found:
                    old.destroy()
            except PKCS11Error as exc:
                # The new value is in place and reads take the newest, so a stale
                # object left over is harmless; the next advance removes it.
                raise NvCounterError(
                    f"cannot remove the old counter value: {type(exc).__name__}"
                ) from None

    def _objects(self) -> list[tuple[CounterValue, Any]]:
        try:
            found = list(
                self._session.get_objects(
                    {Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: self._label}
                )
            )
            if len(found) > MAX_COUNTER_OBJECTS:
                raise NvCounterError(f"too many NV counter objects labelled {self._label!r}")
            return [(CounterValue.from_bytes(bytes(obj[Attribute.VALUE])), obj) for obj in found]
        except PKCS11Error as exc:
            raise NvCounterError(f"cannot read the NV counter: {type(exc).__name__}") from None

    def __repr__(self) -> str:
        return f"Pkcs11Counter(label={self._label!r})"


def _newest(found: list[tuple[CounterValue, Any]]) -> tuple[CounterValue, Any]:
    if not found:
        raise NvCounterError("no NV counter in the token")
    newest = max(found, key=lambda item: item[0].version)
    if any(v.version == newest[0].version and v != newest[0] for v, _ in found):
        raise NvCounterError("two different NV counter values with the same version")
    if any(v.counter_id != newest[0].counter_id for v, _ in found):
        raise NvCounterError("NV counter objects with the same label carry different ids")
    return newest


def _create_counter_object(session: Any, label: str, value: CounterValue) -> None:
    try:
        session.create_object(
            {
                Attribute.CLASS: ObjectClass.DATA,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.MODIFIABLE: False,
                Attribute.LABEL: label,
                Attribute.APPLICATION: COUNTER_APPLICATION,
                Attribute.VALUE: value.to_bytes(),
            }
        )
    except PKCS11Error as exc:
        raise NvCounterError(f"token refused to store the counter: {type(exc).__name__}") from None


def counter_lock(config: Pkcs11Config, label: str) -> PrivateDirectoryLock:
    """The exclusive lock of the counter ``label`` in the config's token, held until released.

    PKCS#11 has no lock an application can hold on an object, so the lock is a
    file next to the token's configuration (for SoftHSM2, the directory that
    holds the token: the emulated HSM's inside), one per token and label.
    Raises :class:`bkv.errors.DirectoryLockedError` if another process holds it.
    """
    name = hashlib.sha256(
        b"bkv.keystore.pkcs11.counter-lock\x00"
        + config.token_label.encode("utf-8")
        + b"\x00"
        + label.encode("utf-8")
    ).hexdigest()[:32]
    path = Path(config.conf_path).parent / f"bkv-counter-{name}.lock"
    return hold_lock_file(path, f"the NV counter {label!r} of token {config.token_label!r}")


def create_counter(config: Pkcs11Config, label: str, rng: Rng = default_rng) -> Pkcs11Counter:
    """Create the NV counter (version 0, fresh random id); refuse if the label is in use."""
    _check_label(label, MAX_KEY_LABEL_SIZE, "counter label")
    # Under the counter's lock: two processes creating at once could otherwise
    # both find the label free and make two counters with different ids.
    with counter_lock(config, label):
        session = _Runtime.acquire(config)
        try:
            with _Runtime.lock:
                if _label_in_use(session, label):
                    # Never reset a counter: re-initializing would make older states fresh again.
                    raise NvCounterError(
                        f"an object labelled {label!r} already exists in the token"
                    )
                _create_counter_object(session, label, initial_value(rng))
        finally:
            _Runtime.release(config)
    return Pkcs11Counter(config, label)


def token_has_counter(config: Pkcs11Config) -> bool:
    """Whether the token holds any bkv NV counter object (under any label).

    ``bkv hsm init`` uses it to refuse adopting a sealing key that a counter
    already guards: a second counter for the same key would start at version 0.
    """
    session = _Runtime.acquire(config)
    try:
        with _Runtime.lock:
            # Read the search to its end: an unfinished one is finalized later, on
            # a session that may be closed by then.
            found = list(
                session.get_objects(
                    {Attribute.CLASS: ObjectClass.DATA, Attribute.APPLICATION: COUNTER_APPLICATION}
                )
            )
            return bool(found)
    except PKCS11Error as exc:
        raise NvCounterError(f"cannot list the token's objects: {type(exc).__name__}") from None
    finally:
        _Runtime.release(config)


def load_counter(config: Pkcs11Config, label: str) -> Pkcs11Counter:
    """Open the existing NV counter by label (raises NvCounterError if there is none)."""
    return Pkcs11Counter(config, label)
