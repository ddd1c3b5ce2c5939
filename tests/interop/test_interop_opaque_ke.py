"""Interop: bkv's OPAQUE against Meta's opaque-ke, through two independent Python wrappers.

Both wrappers (PyPI ``opaque-snake`` 0.1.1 over opaque-ke 4.1.0-pre.1, and ``opaque-ke-py``
0.1.0 over opaque-ke 4.0.1) hard-code the same cipher suite (docs/audit.md, interop):
OPRF ristretto255-SHA512, 3DH over ristretto255 with SHA-512, KSF = ``argon2::Argon2::default()``
= Argon2id v0x13, m = 19456 KiB, t = 2, p = 1, salt = 16 zero bytes, 64-byte output; empty
context; identities default to the public keys (RFC 9807 section 4.1.2). The KSF cannot be
changed, so every flow in which *their* client runs uses our Argon2id with those parameters.
Their server never runs the KSF, so our client may also use Identity against it.

Their ``ServerSetup`` serializes as ``oprf_seed (64) || server_private_key (32) || dummy_pk (32)``
and both wrappers accept such bytes, so their server runs with *our* ``ServerSecrets``. That makes
the two servers interchangeable: a record made on one logs in on the other, and the
(deterministic) registration responses are byte-identical.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import opaque_ke_py
import opaque_snake
import pysodium
import pytest
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id as CryptographyArgon2id

from bkv.crypto.opaque import (
    KE1,
    KE2,
    KE3,
    Argon2id,
    Config,
    Identity,
    Ksf,
    RegistrationRecord,
    RegistrationRequest,
    RegistrationResponse,
    ServerSecrets,
    client_login_finish,
    client_login_start,
    client_registration_finish,
    client_registration_start,
    server_login_finish,
    server_login_start,
    server_registration_response,
)
from bkv.errors import (
    ClientAuthenticationError,
    EnvelopeRecoveryError,
    ServerAuthenticationError,
)

# RFC 9807 Appendix C, the same file tests/crypto replays; only section C.1.1 is used here.
VECTOR_FILE = Path(__file__).resolve().parent.parent / "vectors" / "rfc9807-appendix-c.txt"
VECTOR_SECTION = "C.1.1."  # OPAQUE-3DH Real Test Vector 1: ristretto255-SHA512, KSF Identity

# opaque-ke's `Ksf for argon2::Argon2` with `Argon2::default()` (argon2 crate 0.5.3:
# Params::DEFAULT_M_COST = 19 * 1024, DEFAULT_T_COST = 2, DEFAULT_P_COST = 1, Argon2id, v0x13),
# salt = [0; RECOMMENDED_SALT_LEN = 16] (opaque-ke src/ksf.rs), output length Nh = 64.
OPAQUE_KE_ARGON2 = Argon2id(memory_kib=19 * 1024, iterations=2, lanes=1, salt=bytes(16))
OPAQUE_KE_CONFIG = Config(context=b"", ksf=OPAQUE_KE_ARGON2)

CREDENTIAL_ID = b"alice@example.org"  # opaque-snake takes a str: keep it UTF-8
PASSWORD = b"correct horse battery staple"
WRONG_PASSWORD = b"correct horse battery stapler"

# KE2 layout (RFC 9807 section 6.1, ristretto255-SHA512): evaluated_message 0:32,
# masking_nonce 32:64, masked_response 64:192 (server_public_key 64:96, envelope nonce 96:128,
# envelope auth_tag 128:192), server_nonce 192:224, server_public_keyshare 224:256,
# server_mac 256:320.
KE2_ENVELOPE_AUTH_TAG_BYTE = 150
KE2_SERVER_MAC_BYTE = 300

Identities = tuple[bytes | None, bytes | None]  # (client_identity, server_identity)
Stretch = Callable[[bytes], bytes]  # a KSF re-derived outside bkv


def flip(data: bytes, index: int) -> bytes:
    """``data`` with one bit flipped at byte ``index``."""
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def vector_section_text(number: str) -> str:
    """The text of one top-level vector of the appendix: from its header line (column 0,
    "C.1.1.  OPAQUE-3DH ...") up to the next vector's header. Subsection headers ("C.1.1.2.")
    stay inside."""
    text = VECTOR_FILE.read_text(encoding="ascii")
    headers = list(re.finditer(r"^C\.\d+\.\d+\.  ", text, re.MULTILINE))
    for index, header in enumerate(headers):
        if header.group(0).rstrip() == number:
            end = headers[index + 1].start() if index + 1 < len(headers) else len(text)
            return text[header.start() : end]
    raise KeyError(f"no vector {number} in {VECTOR_FILE.name}")


def load_vector(number: str = VECTOR_SECTION) -> dict[str, bytes]:
    """The hex fields of one ristretto255 vector, by default C.1.1 (values wrap over indented
    lines)."""
    section = vector_section_text(number)
    if not re.search(r"^   Group: ristretto255$", section, re.MULTILINE):
        raise ValueError(f"{number} is not a ristretto255 vector")
    fields = re.finditer(r"^   (\w+): ([0-9a-f]+(?:\n   [0-9a-f]+$)*)$", section, re.MULTILINE)
    return {m.group(1): bytes.fromhex(re.sub(r"\s", "", m.group(2))) for m in fields}


def test_vector_loader_reads_exactly_one_section_of_the_appendix() -> None:
    v = load_vector()
    assert v["oprf_seed"].hex().endswith("c5d5c1989ef")  # wrapped over three lines
    assert len(v["registration_response"]) == 64 and len(v["KE2"]) == 320
    other = load_vector("C.1.2.")  # same oprf_seed, other identities: other KE2
    assert other["oprf_seed"] == v["oprf_seed"] and other["KE2"] != v["KE2"]
    assert "client_identity" in other and "client_identity" not in v
    with pytest.raises(ValueError, match="not a ristretto255 vector"):
        load_vector("C.1.3.")  # curve25519 AKE group
    with pytest.raises(KeyError):
        load_vector("C.9.9.")


def their_setup(secrets: ServerSecrets) -> bytes:
    """opaque-ke 4.x ``ServerSetup`` bytes carrying our OPRF seed and AKE key pair.

    The trailing ``dummy_pk`` is only used by opaque-ke for its own fake records, which the
    wrappers never request (they always pass ``Some(password_file)``); any valid point works.
    """
    dummy_pk = pysodium.crypto_scalarmult_ristretto255_base(
        pysodium.crypto_core_ristretto255_scalar_random()
    )
    return secrets.oprf_seed + secrets.server_private_key + bytes(dummy_pk)


# --- the two wrappers behind one byte-oriented interface ------------------------------------


class TheirServer(ABC):
    """opaque-ke's server, bytes in and bytes out."""

    rejects: tuple[type[Exception], ...]

    @abstractmethod
    def registration_response(self, request: bytes, credential_id: bytes) -> bytes: ...

    @abstractmethod
    def finish_registration(self, upload: bytes) -> bytes: ...

    @abstractmethod
    def login_start(
        self, password_file: bytes, ke1: bytes, credential_id: bytes
    ) -> tuple[bytes, Any]: ...

    @abstractmethod
    def login_finish(self, state: Any, ke3: bytes) -> bytes: ...


class TheirClient(ABC):
    """opaque-ke's client, bytes in and bytes out."""

    rejects: tuple[type[Exception], ...]

    @abstractmethod
    def registration_start(self, password: bytes) -> tuple[bytes, Any]: ...

    @abstractmethod
    def registration_finish(
        self, password: bytes, state: Any, response: bytes
    ) -> tuple[bytes, bytes]:
        """-> (upload, export_key)"""

    @abstractmethod
    def login_start(self, password: bytes) -> tuple[bytes, Any]: ...

    @abstractmethod
    def login_finish(self, password: bytes, state: Any, ke2: bytes) -> tuple[bytes, bytes, bytes]:
        """-> (ke3, session_key, export_key)"""


class SnakeServer(TheirServer):
    rejects = (opaque_snake.OpaqueError,)

    def __init__(self, setup: bytes) -> None:
        self._server = opaque_snake.OpaqueServer(setup)

    def registration_response(self, request: bytes, credential_id: bytes) -> bytes:
        req = opaque_snake.RegistrationRequest.from_bytes(request)
        return self._server.create_registration_response(req, credential_id.decode()).to_bytes()

    def finish_registration(self, upload: bytes) -> bytes:
        up = opaque_snake.RegistrationUpload.from_bytes(upload)
        return self._server.finish_registration(up).to_bytes()

    def login_start(
        self, password_file: bytes, ke1: bytes, credential_id: bytes
    ) -> tuple[bytes, Any]:
        response, state = self._server.create_credential_response(
            opaque_snake.CredentialRequest.from_bytes(ke1),
            credential_id.decode(),
            opaque_snake.PasswordFile.from_bytes(password_file),
        )
        return response.to_bytes(), state

    def login_finish(self, state: Any, ke3: bytes) -> bytes:
        fin = opaque_snake.CredentialFinalization.from_bytes(ke3)
        return self._server.finish_login(fin, state).session_key


class SnakeClient(TheirClient):
    rejects = (opaque_snake.OpaqueError,)

    def __init__(self) -> None:
        self._client = opaque_snake.OpaqueClient()

    def registration_start(self, password: bytes) -> tuple[bytes, Any]:
        request, state = self._client.start_registration(password.decode())
        return request.to_bytes(), state

    def registration_finish(
        self, password: bytes, state: Any, response: bytes
    ) -> tuple[bytes, bytes]:
        resp = opaque_snake.RegistrationResponse.from_bytes(response)
        result = self._client.finish_registration(resp, state, password.decode())
        return result.upload.to_bytes(), result.export_key

    def login_start(self, password: bytes) -> tuple[bytes, Any]:
        request, state = self._client.start_login(password.decode())
        return request.to_bytes(), state

    def login_finish(self, password: bytes, state: Any, ke2: bytes) -> tuple[bytes, bytes, bytes]:
        resp = opaque_snake.CredentialResponse.from_bytes(ke2)
        result = self._client.finish_login(resp, state, password.decode())
        export_key = result.session_keys.export_key
        assert export_key is not None
        return result.finalization.to_bytes(), result.session_keys.session_key, export_key


class KePyServer(TheirServer):
    rejects = (ValueError,)

    def __init__(self, setup: bytes) -> None:
        self._setup = opaque_ke_py.ServerSetupData.from_bytes(setup)

    def registration_response(self, request: bytes, credential_id: bytes) -> bytes:
        return opaque_ke_py.server_registration_start(
            self._setup, request, credential_id
        ).get_message()

    def finish_registration(self, upload: bytes) -> bytes:
        return opaque_ke_py.server_registration_finish(upload).get_password_file()

    def login_start(
        self, password_file: bytes, ke1: bytes, credential_id: bytes
    ) -> tuple[bytes, Any]:
        out = opaque_ke_py.server_login_start(self._setup, password_file, ke1, credential_id)
        return out.get_message(), out.get_state()

    def login_finish(self, state: Any, ke3: bytes) -> bytes:
        return opaque_ke_py.server_login_finish(state, ke3).get_session_key()


class KePyClient(TheirClient):
    rejects = (ValueError,)

    def registration_start(self, password: bytes) -> tuple[bytes, Any]:
        out = opaque_ke_py.client_registration_start(password)
        return out.get_message(), out.get_state()

    def registration_finish(
        self, password: bytes, state: Any, response: bytes
    ) -> tuple[bytes, bytes]:
        out = opaque_ke_py.client_registration_finish(password, state, response)
        return out.get_message(), out.get_export_key()

    def login_start(self, password: bytes) -> tuple[bytes, Any]:
        out = opaque_ke_py.client_login_start(password)
        return out.get_message(), out.get_state()

    def login_finish(self, password: bytes, state: Any, ke2: bytes) -> tuple[bytes, bytes, bytes]:
        out = opaque_ke_py.client_login_finish(password, state, ke2)
        return out.get_message(), out.get_session_key(), out.get_export_key()


WRAPPERS: dict[str, tuple[Callable[[bytes], TheirServer], Callable[[], TheirClient]]] = {
    "opaque-snake": (SnakeServer, SnakeClient),
    "opaque-ke-py": (KePyServer, KePyClient),
}


@pytest.fixture(params=sorted(WRAPPERS))
def wrapper(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def secrets() -> ServerSecrets:
    return ServerSecrets.generate()


@pytest.fixture
def their_server(wrapper: str, secrets: ServerSecrets) -> TheirServer:
    return WRAPPERS[wrapper][0](their_setup(secrets))


@pytest.fixture
def their_client(wrapper: str) -> TheirClient:
    return WRAPPERS[wrapper][1]()


# --- flows, each side driven through its public API -------------------------------------------


def register_ours_on_theirs(
    server: TheirServer,
    config: Config,
    password: bytes = PASSWORD,
    identities: Identities = (None, None),
) -> tuple[bytes, bytes]:
    """Our client registers on their server. -> (password_file, export_key)"""
    state, request = client_registration_start(password)
    response = RegistrationResponse.from_bytes(
        server.registration_response(request.to_bytes(), CREDENTIAL_ID)
    )
    record, export_key = client_registration_finish(
        state, config, response, client_identity=identities[0], server_identity=identities[1]
    )
    password_file = server.finish_registration(record.to_bytes())
    return password_file, export_key


def register_theirs_on_ours(
    client: TheirClient, secrets: ServerSecrets, password: bytes = PASSWORD
) -> tuple[RegistrationRecord, bytes]:
    """Their client registers on our server. -> (record, export_key)"""
    request, state = client.registration_start(password)
    response = server_registration_response(
        secrets, RegistrationRequest.from_bytes(request), CREDENTIAL_ID
    )
    upload, export_key = client.registration_finish(password, state, response.to_bytes())
    return RegistrationRecord.from_bytes(upload), export_key


def register_ours_on_ours(
    secrets: ServerSecrets, config: Config
) -> tuple[RegistrationRecord, bytes]:
    state, request = client_registration_start(PASSWORD)
    response = server_registration_response(secrets, request, CREDENTIAL_ID)
    return client_registration_finish(state, config, response)


def register_theirs_on_theirs(server: TheirServer, client: TheirClient) -> tuple[bytes, bytes]:
    request, state = client.registration_start(PASSWORD)
    response = server.registration_response(request, CREDENTIAL_ID)
    upload, export_key = client.registration_finish(PASSWORD, state, response)
    return server.finish_registration(upload), export_key


def login_ours_on_theirs(
    server: TheirServer, password_file: bytes, config: Config, password: bytes = PASSWORD
) -> tuple[bytes, bytes, bytes]:
    """Our client logs in on their server. -> (our session key, their session key, export key)"""
    state, ke1 = client_login_start(password)
    ke2, server_state = server.login_start(password_file, ke1.to_bytes(), CREDENTIAL_ID)
    ke3, session_key, export_key = client_login_finish(state, config, KE2.from_bytes(ke2))
    their_session_key = server.login_finish(server_state, ke3.to_bytes())
    return session_key, their_session_key, export_key


def login_theirs_on_ours(
    client: TheirClient,
    secrets: ServerSecrets,
    record: RegistrationRecord,
    config: Config = OPAQUE_KE_CONFIG,
    password: bytes = PASSWORD,
) -> tuple[bytes, bytes, bytes]:
    """Their client logs in on our server. -> (their session key, our session key, export key)"""
    ke1, state = client.login_start(password)
    ke2, server_state = server_login_start(
        secrets, config, record, CREDENTIAL_ID, KE1.from_bytes(ke1)
    )
    ke3, session_key, export_key = client.login_finish(password, state, ke2.to_bytes())
    our_session_key = server_login_finish(server_state, KE3.from_bytes(ke3))
    return session_key, our_session_key, export_key


# --- their configuration, pinned without our code ---------------------------------------------


@pytest.mark.parametrize(
    "server_cls", [SnakeServer, KePyServer], ids=["opaque-snake", "opaque-ke-py"]
)
def test_their_setup_layout_and_oprf_key_derivation_match_rfc9807_vector_1(
    server_cls: Callable[[bytes], TheirServer],
) -> None:
    """oprf_seed || server_private_key || dummy_pk, and RFC 9807 section 3.2.1 OPRF key derivation:
    their response to the vector's registration_request is the vector's registration_response."""
    v = load_vector()
    server = server_cls(v["oprf_seed"] + v["server_private_key"] + v["server_public_key"])
    response = server.registration_response(v["registration_request"], v["credential_identifier"])
    assert response == v["registration_response"]
    other = server.registration_response(
        v["registration_request"], v["credential_identifier"] + b"5"
    )
    assert other[:32] != v["registration_response"][:32]  # the credential identifier keys the OPRF
    assert other[32:] == v["server_public_key"]


def _their_masking_key(password: bytes, stretch: Stretch) -> tuple[bytes, bytes]:
    """Register with opaque-ke-py's client, whose state exposes the OPRF blind, and re-derive the
    record's masking_key independently (RFC 9497 Finalize, RFC 9807 sections 4.3 and 5.2.1).
    -> (masking key from their record, masking key re-derived with ``stretch``)"""
    server = KePyServer(their_setup(ServerSecrets.generate()))
    start = opaque_ke_py.client_registration_start(password)
    state = start.get_state()  # blind (32) || blinded element (32), opaque-ke ClientRegistration
    blind = state[:32]
    response = server.registration_response(start.get_message(), CREDENTIAL_ID)
    upload = opaque_ke_py.client_registration_finish(password, state, response).get_message()
    unblinded = pysodium.crypto_scalarmult_ristretto255(
        pysodium.crypto_core_ristretto255_scalar_invert(blind), response[:32]
    )
    oprf_output = hashlib.sha512(
        len(password).to_bytes(2, "big")
        + password
        + len(unblinded).to_bytes(2, "big")
        + unblinded
        + b"Finalize"
    ).digest()
    randomized_password = hmac.digest(bytes(64), oprf_output + stretch(oprf_output), "sha512")
    masking_key = hmac.digest(randomized_password, b"MaskingKey\x01", "sha512")
    return upload[32:96], masking_key  # record: client_public_key || masking_key || envelope


def _argon2id(memory_kib: int, iterations: int, lanes: int, salt: bytes = bytes(16)) -> Stretch:
    def stretch(msg: bytes) -> bytes:
        kdf = CryptographyArgon2id(
            salt=salt, length=64, iterations=iterations, lanes=lanes, memory_cost=memory_kib
        )
        return kdf.derive(msg)

    return stretch


def test_their_ksf_is_argon2id_19456kib_2_passes_1_lane_zero_salt() -> None:
    theirs, ours = _their_masking_key(PASSWORD, _argon2id(19 * 1024, 2, 1))
    assert theirs == ours


@pytest.mark.parametrize(
    "stretch",
    [
        lambda m: m,
        _argon2id(16 * 1024, 2, 1),
        _argon2id(19 * 1024, 1, 1),
        _argon2id(19 * 1024, 2, 2),
        _argon2id(19 * 1024, 2, 1, salt=bytes(8)),
    ],
    ids=["identity", "other-memory", "other-passes", "other-lanes", "other-salt"],
)
def test_their_ksf_is_not_another_configuration(stretch: Stretch) -> None:
    """Each Argon2id parameter is pinned (RFC 9106's 2 GiB first option is left out: too big
    for a test; the 'ksf-argon2id-default' case below covers our RFC 9106 second option)."""
    theirs, ours = _their_masking_key(PASSWORD, stretch)
    assert theirs != ours


def test_their_message_sizes_are_rfc9807_ristretto255_sha512(
    their_server: TheirServer, their_client: TheirClient
) -> None:
    request, state = their_client.registration_start(PASSWORD)
    response = their_server.registration_response(request, CREDENTIAL_ID)
    upload, export_key = their_client.registration_finish(PASSWORD, state, response)
    password_file = their_server.finish_registration(upload)
    ke1, cstate = their_client.login_start(PASSWORD)
    ke2, sstate = their_server.login_start(password_file, ke1, CREDENTIAL_ID)
    ke3, session_key, _ = their_client.login_finish(PASSWORD, cstate, ke2)
    sizes = [
        len(m)
        for m in (request, response, upload, password_file, ke1, ke2, ke3, export_key, session_key)
    ]
    assert sizes == [32, 64, 192, 192, 96, 320, 64, 64, 64]
    assert password_file == upload  # opaque-ke's ServerRegistration is the RegistrationUpload
    assert their_server.login_finish(sstate, ke3) == session_key


# --- registration responses agree byte for byte ----------------------------------------------


def test_registration_response_is_byte_identical(
    their_server: TheirServer, secrets: ServerSecrets
) -> None:
    _, request = client_registration_start(PASSWORD)
    ours = server_registration_response(secrets, request, CREDENTIAL_ID).to_bytes()
    assert their_server.registration_response(request.to_bytes(), CREDENTIAL_ID) == ours


def test_registration_response_differs_under_another_oprf_seed(
    wrapper: str, secrets: ServerSecrets
) -> None:
    other = WRAPPERS[wrapper][0](their_setup(ServerSecrets.generate()))
    _, request = client_registration_start(PASSWORD)
    ours = server_registration_response(secrets, request, CREDENTIAL_ID).to_bytes()
    assert other.registration_response(request.to_bytes(), CREDENTIAL_ID)[:32] != ours[:32]


# --- our client against their server ----------------------------------------------------------


@pytest.mark.parametrize(
    "ksf", [OPAQUE_KE_ARGON2, Identity()], ids=["argon2id-opaque-ke", "identity"]
)
def test_our_client_registers_and_logs_in_on_their_server(
    their_server: TheirServer, ksf: Ksf
) -> None:
    """Their server never runs the KSF, so any KSF our client uses consistently works."""
    config = Config(context=b"", ksf=ksf)
    password_file, registration_export_key = register_ours_on_theirs(their_server, config)
    assert len(password_file) == 192
    session_key, their_session_key, export_key = login_ours_on_theirs(
        their_server, password_file, config
    )
    assert hmac.compare_digest(session_key, their_session_key)
    assert export_key == registration_export_key


def test_opaque_ke_py_server_state_holds_our_session_key_and_client_mac(
    secrets: ServerSecrets,
) -> None:
    """opaque-ke's Ke2State serializes as session_key (64) || expected_mac (64): both must be
    exactly what our client derives (RFC 9807 section 6.4.4), not merely agree after the fact."""
    server = KePyServer(their_setup(secrets))
    password_file, _ = register_ours_on_theirs(server, OPAQUE_KE_CONFIG)
    state, ke1 = client_login_start(PASSWORD)
    ke2, server_state = server.login_start(password_file, ke1.to_bytes(), CREDENTIAL_ID)
    ke3, session_key, _ = client_login_finish(state, OPAQUE_KE_CONFIG, KE2.from_bytes(ke2))
    assert len(server_state) == 128
    assert server_state[:64] == session_key
    assert server_state[64:] == ke3.to_bytes()


def test_our_client_rejects_wrong_password_on_their_server(their_server: TheirServer) -> None:
    password_file, _ = register_ours_on_theirs(their_server, OPAQUE_KE_CONFIG)
    with pytest.raises(EnvelopeRecoveryError):
        login_ours_on_theirs(their_server, password_file, OPAQUE_KE_CONFIG, WRONG_PASSWORD)


def test_their_server_rejects_a_tampered_ke3_from_our_client(their_server: TheirServer) -> None:
    password_file, _ = register_ours_on_theirs(their_server, OPAQUE_KE_CONFIG)
    state, ke1 = client_login_start(PASSWORD)
    ke2, server_state = their_server.login_start(password_file, ke1.to_bytes(), CREDENTIAL_ID)
    ke3, _, _ = client_login_finish(state, OPAQUE_KE_CONFIG, KE2.from_bytes(ke2))
    with pytest.raises(their_server.rejects):
        their_server.login_finish(server_state, flip(ke3.to_bytes(), 0))


@pytest.mark.parametrize(
    ("index", "error"),
    [
        (KE2_ENVELOPE_AUTH_TAG_BYTE, EnvelopeRecoveryError),
        (KE2_SERVER_MAC_BYTE, ServerAuthenticationError),
    ],
    ids=["envelope", "server-mac"],
)
def test_our_client_rejects_a_tampered_ke2_from_their_server(
    their_server: TheirServer, index: int, error: type[Exception]
) -> None:
    password_file, _ = register_ours_on_theirs(their_server, OPAQUE_KE_CONFIG)
    state, ke1 = client_login_start(PASSWORD)
    ke2, _ = their_server.login_start(password_file, ke1.to_bytes(), CREDENTIAL_ID)
    with pytest.raises(error):
        client_login_finish(state, OPAQUE_KE_CONFIG, KE2.from_bytes(flip(ke2, index)))


@pytest.mark.parametrize(
    ("config", "error"),
    [
        (Config(context=b"bkv", ksf=OPAQUE_KE_ARGON2), ServerAuthenticationError),
        (Config(context=b"", ksf=Identity()), EnvelopeRecoveryError),
        (Config(context=b"", ksf=Argon2id()), EnvelopeRecoveryError),
    ],
    ids=["context", "ksf-identity", "ksf-argon2id-default"],
)
def test_our_client_with_another_context_or_ksf_is_rejected(
    their_server: TheirServer, their_client: TheirClient, config: Config, error: type[Exception]
) -> None:
    """What the wrappers fix (empty context, their Argon2id) really matters: on a record *their*
    client registered, only our client with their exact KSF opens the envelope."""
    password_file, _ = register_theirs_on_theirs(their_server, their_client)
    state, ke1 = client_login_start(PASSWORD)
    ke2, _ = their_server.login_start(password_file, ke1.to_bytes(), CREDENTIAL_ID)
    with pytest.raises(error):
        client_login_finish(state, config, KE2.from_bytes(ke2))


@pytest.mark.parametrize(
    "identities",
    [(None, b"vault.example"), (CREDENTIAL_ID, None)],
    ids=["server-identity", "client-identity"],
)
def test_our_client_with_identities_their_server_does_not_use_is_rejected(
    their_server: TheirServer, identities: Identities
) -> None:
    """The wrappers use the default identities (the public keys, RFC 9807 section 4.1.2). With
    explicit identities at registration and login our envelope opens, but the 3DH preambles
    differ, so the server MAC fails (RFC 9807 section 6.4.2)."""
    password_file, _ = register_ours_on_theirs(
        their_server, OPAQUE_KE_CONFIG, identities=identities
    )
    state, ke1 = client_login_start(PASSWORD)
    ke2, _ = their_server.login_start(password_file, ke1.to_bytes(), CREDENTIAL_ID)
    with pytest.raises(ServerAuthenticationError):
        client_login_finish(
            state,
            OPAQUE_KE_CONFIG,
            KE2.from_bytes(ke2),
            client_identity=identities[0],
            server_identity=identities[1],
        )


# --- their client against our server ----------------------------------------------------------


def test_their_client_registers_and_logs_in_on_our_server(
    their_client: TheirClient, secrets: ServerSecrets
) -> None:
    record, registration_export_key = register_theirs_on_ours(their_client, secrets)
    their_session_key, our_session_key, export_key = login_theirs_on_ours(
        their_client, secrets, record
    )
    assert hmac.compare_digest(their_session_key, our_session_key)
    assert export_key == registration_export_key


def test_their_client_rejects_wrong_password_on_our_server(
    their_client: TheirClient, secrets: ServerSecrets
) -> None:
    record, _ = register_theirs_on_ours(their_client, secrets)
    with pytest.raises(their_client.rejects):
        login_theirs_on_ours(their_client, secrets, record, password=WRONG_PASSWORD)


def test_our_server_rejects_a_tampered_ke3_from_their_client(
    their_client: TheirClient, secrets: ServerSecrets
) -> None:
    record, _ = register_theirs_on_ours(their_client, secrets)
    ke1, state = their_client.login_start(PASSWORD)
    ke2, server_state = server_login_start(
        secrets, OPAQUE_KE_CONFIG, record, CREDENTIAL_ID, KE1.from_bytes(ke1)
    )
    ke3, _, _ = their_client.login_finish(PASSWORD, state, ke2.to_bytes())
    with pytest.raises(ClientAuthenticationError):
        server_login_finish(server_state, KE3.from_bytes(flip(ke3, 63)))


@pytest.mark.parametrize(
    ("config", "identities"),
    [
        (Config(context=b"bkv", ksf=OPAQUE_KE_ARGON2), (None, None)),
        (OPAQUE_KE_CONFIG, (None, b"vault.example")),
        (OPAQUE_KE_CONFIG, (CREDENTIAL_ID, None)),
    ],
    ids=["context", "server-identity", "client-identity"],
)
def test_their_client_rejects_our_server_with_a_mismatched_configuration(
    their_client: TheirClient, secrets: ServerSecrets, config: Config, identities: Identities
) -> None:
    record, _ = register_theirs_on_ours(their_client, secrets)
    ke1, state = their_client.login_start(PASSWORD)
    ke2, _ = server_login_start(
        secrets,
        config,
        record,
        CREDENTIAL_ID,
        KE1.from_bytes(ke1),
        client_identity=identities[0],
        server_identity=identities[1],
    )
    with pytest.raises(their_client.rejects):
        their_client.login_finish(PASSWORD, state, ke2.to_bytes())


# --- records move between the two clients (this is what pins the KSF) -------------------------


def test_our_client_logs_in_on_a_record_their_client_registered(
    their_server: TheirServer, their_client: TheirClient, secrets: ServerSecrets
) -> None:
    """Same password, same OPRF key, same KSF => same randomized password, so our client opens
    their envelope and derives the export key their client got at registration."""
    password_file, their_export_key = register_theirs_on_theirs(their_server, their_client)
    session_key, their_session_key, export_key = login_ours_on_theirs(
        their_server, password_file, OPAQUE_KE_CONFIG
    )
    assert hmac.compare_digest(session_key, their_session_key)
    assert export_key == their_export_key


def test_their_client_logs_in_on_a_record_our_client_registered(
    their_client: TheirClient, secrets: ServerSecrets
) -> None:
    record, our_export_key = register_ours_on_ours(secrets, OPAQUE_KE_CONFIG)
    their_session_key, our_session_key, export_key = login_theirs_on_ours(
        their_client, secrets, record
    )
    assert hmac.compare_digest(their_session_key, our_session_key)
    assert export_key == our_export_key


def test_their_client_rejects_a_record_our_client_registered_with_another_ksf(
    their_client: TheirClient, secrets: ServerSecrets
) -> None:
    record, _ = register_ours_on_ours(secrets, Config(context=b"", ksf=Identity()))
    with pytest.raises(their_client.rejects):
        login_theirs_on_ours(their_client, secrets, record)


# --- records move between the two servers -----------------------------------------------------


def test_record_made_on_their_server_logs_in_on_ours(
    their_server: TheirServer, their_client: TheirClient, secrets: ServerSecrets
) -> None:
    password_file, registration_export_key = register_theirs_on_theirs(their_server, their_client)
    record = RegistrationRecord.from_bytes(password_file)
    their_session_key, our_session_key, export_key = login_theirs_on_ours(
        their_client, secrets, record
    )
    assert hmac.compare_digest(their_session_key, our_session_key)
    assert export_key == registration_export_key


def test_record_made_on_our_server_logs_in_on_theirs(
    their_server: TheirServer, secrets: ServerSecrets
) -> None:
    record, registration_export_key = register_ours_on_ours(secrets, OPAQUE_KE_CONFIG)
    session_key, their_session_key, export_key = login_ours_on_theirs(
        their_server, record.to_bytes(), OPAQUE_KE_CONFIG
    )
    assert hmac.compare_digest(session_key, their_session_key)
    assert export_key == registration_export_key


def test_record_does_not_log_in_under_other_server_secrets(
    wrapper: str, secrets: ServerSecrets
) -> None:
    """The portability above comes from the injected secrets, not from a lax check."""
    record, _ = register_ours_on_ours(secrets, OPAQUE_KE_CONFIG)
    stranger = WRAPPERS[wrapper][0](their_setup(ServerSecrets.generate()))
    with pytest.raises(EnvelopeRecoveryError):
        login_ours_on_theirs(stranger, record.to_bytes(), OPAQUE_KE_CONFIG)
