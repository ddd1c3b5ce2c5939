"""OPAQUE-3DH (RFC 9807), suite ristretto255-SHA512, for bkv.

One module per protocol noun: :mod:`~.messages` (wire forms), :mod:`~.keys`
(key derivations, :class:`ServerSecrets`), :mod:`~.envelope` (Store/Recover),
:mod:`~.ake` (3DH preamble and key schedule), :mod:`~.registration`,
:mod:`~.client`, :mod:`~.server`, :mod:`~.config`.

The server functions are pure and take the server's secrets only as a
:class:`ServerSecrets`, so they can run inside the HSM application alone. Each
server step has a ``*_bytes`` form that takes and returns encodings and decodes
each received point in the multiplication that uses it (the hot path).
Randomness is injected (``rng``); nothing here does I/O.
"""

from __future__ import annotations

from bkv.crypto.ksf import Argon2id, Identity, Ksf
from bkv.crypto.opaque.client import ClientLoginState, client_login_finish, client_login_start
from bkv.crypto.opaque.config import Config
from bkv.crypto.opaque.keys import SERVER_SECRETS_SIZE, ServerSecrets
from bkv.crypto.opaque.messages import (
    KE1,
    KE1_SIZE,
    KE2,
    KE2_SIZE,
    KE3,
    KE3_SIZE,
    REGISTRATION_RECORD_SIZE,
    REGISTRATION_REQUEST_SIZE,
    REGISTRATION_RESPONSE_SIZE,
    RegistrationRecord,
    RegistrationRequest,
    RegistrationResponse,
)
from bkv.crypto.opaque.registration import (
    ClientRegistrationState,
    client_registration_finish,
    client_registration_start,
    server_registration_response,
    server_registration_response_bytes,
)
from bkv.crypto.opaque.server import (
    SERVER_LOGIN_STATE_SIZE,
    ServerLoginState,
    server_login_finish,
    server_login_finish_bytes,
    server_login_start,
    server_login_start_bytes,
)
from bkv.crypto.rng import Rng, default_rng

__all__ = [
    "KE1",
    "KE1_SIZE",
    "KE2",
    "KE2_SIZE",
    "KE3",
    "KE3_SIZE",
    "REGISTRATION_RECORD_SIZE",
    "REGISTRATION_REQUEST_SIZE",
    "REGISTRATION_RESPONSE_SIZE",
    "SERVER_LOGIN_STATE_SIZE",
    "SERVER_SECRETS_SIZE",
    "Argon2id",
    "ClientLoginState",
    "ClientRegistrationState",
    "Config",
    "Identity",
    "Ksf",
    "RegistrationRecord",
    "RegistrationRequest",
    "RegistrationResponse",
    "Rng",
    "ServerLoginState",
    "ServerSecrets",
    "client_login_finish",
    "client_login_start",
    "client_registration_finish",
    "client_registration_start",
    "default_rng",
    "server_login_finish",
    "server_login_finish_bytes",
    "server_login_start",
    "server_login_start_bytes",
    "server_registration_response",
    "server_registration_response_bytes",
]
