"""OPAQUE client login (RFC 9807 sections 6.3.1, 6.3.2.1, 6.4.3, 6.4.5).

``client_login_start`` makes KE1; ``client_login_finish`` unmasks and opens the
envelope (EnvelopeRecoveryError on a wrong password), checks the server's MAC
(ServerAuthenticationError) and returns KE3, the session key and the export key.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from bkv.crypto import oprf, ristretto
from bkv.crypto.opaque import ake
from bkv.crypto.opaque.config import NN, NPK, NSEED, Config
from bkv.crypto.opaque.envelope import (
    RecoveredEnvelope,
    derive_masking_key,
    mask_response,
    recover,
)
from bkv.crypto.opaque.keys import derive_diffie_hellman_key_pair, diffie_hellman
from bkv.crypto.opaque.messages import (
    KE1,
    KE2,
    KE3,
    AuthRequest,
    CredentialRequest,
    CredentialResponse,
    Envelope,
)
from bkv.crypto.opaque.registration import check_password, randomized_password
from bkv.crypto.ristretto import Scalar
from bkv.crypto.rng import Rng, default_rng, draw
from bkv.errors import ServerAuthenticationError


@dataclass(frozen=True)
class ClientLoginState:
    """What the client keeps between KE1 and KE2. Secret: fields are kept out of the repr."""

    password: bytes = field(repr=False)
    blind: Scalar = field(repr=False)
    client_keyshare_secret: Scalar = field(repr=False)
    ke1: KE1


def client_login_start_with(
    password: bytes, *, blind: Scalar, client_nonce: bytes, client_keyshare_seed: bytes
) -> tuple[ClientLoginState, KE1]:
    """GenerateKE1 (section 6.3.1 with AuthClientStart, section 6.4.3), explicit randomness."""
    check_password(password)
    if len(client_nonce) != NN or len(client_keyshare_seed) != NSEED:
        raise ValueError("client nonce and keyshare seed must be 32 bytes")
    blind, blinded_element = oprf.blind(password, blind_scalar=blind)
    keyshare_secret, keyshare = derive_diffie_hellman_key_pair(client_keyshare_seed)
    ke1 = KE1(CredentialRequest(blinded_element), AuthRequest(client_nonce, keyshare))
    return ClientLoginState(password, blind, keyshare_secret, ke1), ke1


def client_login_start(password: bytes, rng: Rng = default_rng) -> tuple[ClientLoginState, KE1]:
    """GenerateKE1 (RFC 9807 section 6.3.1)."""
    check_password(password)
    return client_login_start_with(
        password,
        blind=ristretto.random_scalar(rng),
        client_nonce=draw(rng, NN),
        client_keyshare_seed=draw(rng, NSEED),
    )


@dataclass(frozen=True)
class ClientLoginTrace:
    """Intermediate values of the client's login, for vector checks."""

    randomized_password: bytes = field(repr=False)
    recovered: RecoveredEnvelope
    keys: ake.AkeKeys


def _recover_credentials(
    state: ClientLoginState,
    config: Config,
    response: CredentialResponse,
    server_identity: bytes | None,
    client_identity: bytes | None,
) -> tuple[bytes, bytes, RecoveredEnvelope]:
    """RecoverCredentials (section 6.3.2.1): (randomized_password, server_public_key, envelope)."""
    evaluated = ristretto.decode_element(response.evaluated_message)
    oprf_output = oprf.finalize(state.password, state.blind, evaluated)
    rwd = randomized_password(oprf_output, config.ksf)
    masking_key = derive_masking_key(rwd)
    unmasked = mask_response(masking_key, response.masking_nonce, response.masked_response)
    server_public_key = unmasked[:NPK]
    envelope = Envelope.from_bytes(unmasked[NPK:])
    # A wrong password unmasks garbage; the envelope tag below catches it. The
    # server key is only decoded after the tag check authenticated it.
    recovered = recover(rwd, server_public_key, envelope, server_identity, client_identity)
    return rwd, server_public_key, recovered


def client_login_finish_traced(
    state: ClientLoginState,
    config: Config,
    ke2: KE2,
    *,
    client_identity: bytes | None = None,
    server_identity: bytes | None = None,
) -> tuple[KE3, bytes, bytes, ClientLoginTrace]:
    """GenerateKE3 (section 6.3.2.1 and AuthClientFinalize, section 6.4.5), with a trace."""
    rwd, server_public_key, recovered = _recover_credentials(
        state, config, ke2.credential_response, server_identity, client_identity
    )
    credentials = recovered.cleartext_credentials
    auth = ke2.auth_response
    server_keyshare = ristretto.decode_element(auth.server_public_keyshare)
    server_key = ristretto.decode_element(server_public_key)
    ikm = (
        diffie_hellman(state.client_keyshare_secret, server_keyshare)
        + diffie_hellman(state.client_keyshare_secret, server_key)
        + diffie_hellman(recovered.client_private_key, server_keyshare)
    )
    preamble = ake.preamble(
        config.context,
        credentials.client_identity,
        state.ke1,
        credentials.server_identity,
        ke2.credential_response,
        server_nonce=auth.server_nonce,
        server_public_keyshare=auth.server_public_keyshare,
    )
    keys = ake.derive_keys(ikm, preamble)
    expected_server_mac = ake.server_mac(keys, preamble)
    if not hmac.compare_digest(auth.server_mac, expected_server_mac):
        raise ServerAuthenticationError("server MAC in KE2 did not verify")
    ke3 = KE3(ake.client_mac(keys, preamble, expected_server_mac))
    trace = ClientLoginTrace(rwd, recovered, keys)
    return ke3, keys.session_key, recovered.export_key, trace


def client_login_finish(
    state: ClientLoginState,
    config: Config,
    ke2: KE2,
    *,
    client_identity: bytes | None = None,
    server_identity: bytes | None = None,
) -> tuple[KE3, bytes, bytes]:
    """GenerateKE3 (RFC 9807 section 6.3.2.1): returns (ke3, session_key, export_key)."""
    ke3, session_key, export_key, _ = client_login_finish_traced(
        state, config, ke2, client_identity=client_identity, server_identity=server_identity
    )
    return ke3, session_key, export_key
