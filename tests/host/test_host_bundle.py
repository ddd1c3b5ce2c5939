"""The host's bundle endpoint: configuration, ``since``, and what it refuses to serve."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import http.server
import json
import socket
import threading
from pathlib import Path

import httpx
import pytest
from host_world import ACCOUNTS, running
from hypothesis import given
from hypothesis import strategies as st

from bkv.errors import CodecError, ConfigError
from bkv.host.bundle import MAX_PROOF_RESPONSE, BundleSource, parse_since
from bkv.host.config import HostConfig, token_digest
from bkv.keystore import SoftwareSigner
from bkv.keystore.link_key import create_link_key
from bkv.protocol.bundle import ValidationBundle, build_bundle, decode_bundle, encode_bundle
from bkv.protocol.plexi import sign_statement
from bkv.tlog.checkpoint import Checkpoint
from bkv.tlog.log import MemoryHashStore, MerkleLog
from bkv.tlog.merkle import MAX_TREE_SIZE, verify_consistency
from bkv.tlog.note import Ed25519Signer as NoteSigner


def _config(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "host.toml"
    account = ACCOUNTS[0]
    if not (tmp_path / "link.key").exists():
        create_link_key(tmp_path / "link.key")
    path.write_text(
        f'[host]\nfleet_id = "f1"\nlisten = "127.0.0.1:0"\nhsm_url = "{_dead_url()}"\n{extra}\n'
        'hsm_link_key_file = "link.key"\n'
        f'[[accounts]]\naccount_id = "{account.account_id.hex()}"\n'
        f'token_sha256 = "{token_digest(account.token).hex()}"\n',
        encoding="utf-8",
    )
    return path


def _dead_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/v1/message"


LOG_VKEY = NoteSigner("witness.test/log", SoftwareSigner(b"\x07" * 32)).verifier().verifier_key()


def test_bundle_config(tmp_path: Path) -> None:
    config = HostConfig.load(
        _config(
            tmp_path,
            'bundle_file = "b.bundle"\nwitness_url = "http://127.0.0.1:1/"\n'
            f'log_verifier_key = "{LOG_VKEY}"',
        )
    )
    assert config.bundle_file == tmp_path / "b.bundle"
    assert config.witness_url == "http://127.0.0.1:1"
    assert config.log_verifier_key == LOG_VKEY
    unset = HostConfig.load(_config(tmp_path, ""))
    assert (unset.bundle_file, unset.witness_url, unset.log_verifier_key) == (None, None, None)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        # a witness without a bundle is useless
        (f'witness_url = "http://127.0.0.1:1"\nlog_verifier_key = "{LOG_VKEY}"', "bundle_file"),
        (f'bundle_file = "b"\nwitness_url = "ftp://w"\nlog_verifier_key = "{LOG_VKEY}"', "http"),
        ('bundle_file = ""', "bundle_file"),
        ("bundle_file = 3", "bundle_file"),
        # old checkpoints from the witness are checked under the log's key: no key, no witness
        ('bundle_file = "b.bundle"\nwitness_url = "http://127.0.0.1:1"', "go together"),
        (f'bundle_file = "b.bundle"\nlog_verifier_key = "{LOG_VKEY}"', "go together"),
        (
            'bundle_file = "b"\nwitness_url = "http://127.0.0.1:1"\nlog_verifier_key = "x+1+2"',
            "not a note verifier key",
        ),
    ],
)
def test_bad_bundle_config(tmp_path: Path, extra: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        HostConfig.load(_config(tmp_path, extra))


def test_parse_since() -> None:
    assert parse_since(None) == 0
    assert parse_since("0") == 0
    assert parse_since("17") == 17
    assert parse_since(str(MAX_TREE_SIZE)) == MAX_TREE_SIZE
    for bad in ("", "-1", "+1", "01", "1.0", "x", " 1", "١", str(MAX_TREE_SIZE + 1), "9" * 20):
        with pytest.raises(CodecError):
            parse_since(bad)


def test_host_refuses_to_serve_what_is_not_a_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "current.bundle"
    bundle.write_bytes(b"\x03\x01 not a bundle")
    config = _config(tmp_path, f'bundle_file = "{bundle}"')
    with running("host", "serve", "--config", str(config)) as url:
        response = httpx.get(f"{url}/v1/bundle", timeout=10)
        assert response.status_code == 503 and response.json()["error"] == "StorageError"
        bundle.unlink()
        assert httpx.get(f"{url}/v1/bundle", timeout=10).status_code == 503
        extra = httpx.get(f"{url}/v1/bundle?since=1&x=2", timeout=10)
        assert extra.status_code == 400
        # No valid bundle: relayed answers announce no epoch.
        relayed = httpx.post(
            f"{url}/v1/request",
            content=b"\x00",
            headers={"authorization": f"Bearer {ACCOUNTS[0].token}"},
            timeout=10,
        )
        assert relayed.status_code == 400 and "bkv-bundle-epoch" not in relayed.headers


def test_host_without_bundle_answers_404(tmp_path: Path) -> None:
    with running("host", "serve", "--config", str(_config(tmp_path, ""))) as url:
        response = httpx.get(f"{url}/v1/bundle", timeout=10)
        assert response.status_code == 404 and response.json()["error"] == "NotConfigured"


@given(st.text(max_size=25))
def test_since_is_canonical_or_refused(text: str) -> None:
    try:
        value = parse_since(text)
    except CodecError:
        return
    assert str(value) == text


# --- consistency proofs: fetched capped, verified before they are cached or served --------

ORIGIN = "witness.test/log"
NEW_SIZE = 5


class _Witness:
    """A witness on a real loopback HTTP server whose answers the test sets (it may lie)."""

    def __init__(self) -> None:
        self.answers: dict[str, bytes] = {}
        self.requests: list[str] = []
        witness = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                witness.requests.append(self.path)
                body = witness.answers.get(self.path)
                self.send_response(404 if body is None else 200)
                self.send_header("content-length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _Witness:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@dataclasses.dataclass
class _Log:
    key: SoftwareSigner = dataclasses.field(default_factory=lambda: SoftwareSigner(b"\x07" * 32))
    log: MerkleLog = dataclasses.field(default_factory=lambda: MerkleLog(MemoryHashStore()))

    def __post_init__(self) -> None:
        for i in range(NEW_SIZE):
            self.log.append(b"entry %d" % i)

    def note(
        self, size: int, key: SoftwareSigner | None = None, root: bytes | None = None
    ) -> bytes:
        body = Checkpoint(ORIGIN, size, root or self.log.root(size))
        return body.sign([NoteSigner(ORIGIN, key or self.key)])

    def proof_json(self, old: int, new: int = NEW_SIZE) -> bytes:
        proof = self.log.consistency_proof(old, new)
        return json.dumps({"proof": [h.hex() for h in proof]}).encode()

    def bundle_file(self, path: Path) -> Path:
        artifact = b'{"not": "parsed by the host"}'
        statement = sign_statement(
            SoftwareSigner(b"\x08" * 32),
            "bkv.fleet_keys.v1",
            1,
            1,
            hashlib.sha256(artifact).digest(),
        )
        bundle = build_bundle(
            artifact=artifact,
            namespace="bkv.fleet_keys.v1",
            epoch=1,
            statement=statement,
            counter_signature=bytes(64),
            log_entry=b"entry 4",
            log_index=NEW_SIZE - 1,
            inclusion_proof=self.log.inclusion_proof(NEW_SIZE - 1, NEW_SIZE),
            checkpoint=self.note(NEW_SIZE),
        )
        path.write_bytes(encode_bundle(bundle))
        return path


def _serve(source: BundleSource, since: int) -> ValidationBundle:
    async def run() -> bytes:
        return (await source.for_client(since))[0]

    return decode_bundle(asyncio.run(run()))


def _source(path: Path, url: str, log: _Log | None = None) -> BundleSource:
    key = (log or _Log()).key
    return BundleSource(
        path, url, log_verifier_key=NoteSigner(ORIGIN, key).verifier().verifier_key()
    )


def _bad_signature(note: bytes) -> bytes:
    """``note`` with its signature bytes changed: same key name and key ID, no valid signature."""
    text, _, line = note.decode().rstrip("\n").rpartition("\n")
    prefix, _, signature = line.rpartition(" ")
    raw = bytearray(base64.b64decode(signature))
    raw[-1] ^= 0x01  # past the 4-byte key ID
    return f"{text}\n{prefix} {base64.b64encode(bytes(raw)).decode()}\n".encode()


def _consistency(old: int) -> str:
    return f"/log/consistency?old={old}&size={NEW_SIZE}"


def test_verified_proof_is_served_and_cached(tmp_path: Path) -> None:
    log = _Log()
    with _Witness() as witness:
        witness.answers = {"/checkpoints/2": log.note(2), _consistency(2): log.proof_json(2)}
        source = _source(log.bundle_file(tmp_path / "b.bundle"), witness.url)
        served = _serve(source, 2)
        assert served.consistency_size == 2
        verify_consistency(2, NEW_SIZE, served.consistency_proof, log.log.root(2), log.log.root())
        asked = len(witness.requests)
        assert _serve(source, 2).consistency_proof == served.consistency_proof
        assert len(witness.requests) == asked  # from the cache


def test_a_witness_needs_the_log_key(tmp_path: Path) -> None:
    log = _Log()
    with pytest.raises(ValueError, match="verifier key"):
        BundleSource(log.bundle_file(tmp_path / "b.bundle"), "http://127.0.0.1:1")


def test_wrong_proof_is_neither_served_nor_cached(tmp_path: Path) -> None:
    log = _Log()
    with _Witness() as witness:
        witness.answers = {"/checkpoints/2": log.note(2), _consistency(2): log.proof_json(3)}
        source = _source(log.bundle_file(tmp_path / "b.bundle"), witness.url)
        assert _serve(source, 2).consistency_size == 0
        # The witness answers correctly now: the bad answer was not cached.
        witness.answers[_consistency(2)] = log.proof_json(2)
        assert _serve(source, 2).consistency_size == 2


def test_proof_from_a_checkpoint_the_log_key_did_not_sign_is_refused(tmp_path: Path) -> None:
    log = _Log()
    impostor = SoftwareSigner(b"\x09" * 32)
    fork = _Log(log=MerkleLog(MemoryHashStore()))
    with _Witness() as witness:
        source = _source(log.bundle_file(tmp_path / "b.bundle"), witness.url)
        for note in (
            log.note(2, key=impostor),  # another key
            _bad_signature(log.note(2)),  # the log key's name and ID, not its signature
            log.note(3),  # another size than asked
            fork.note(2, root=b"\x01" * 32),  # a forked root: the proof cannot verify
        ):
            witness.answers = {"/checkpoints/2": note, _consistency(2): log.proof_json(2)}
            witness.requests.clear()
            assert _serve(source, 2).consistency_size == 0
            assert "/checkpoints/2" in witness.requests  # asked, and refused
        # The log key's own checkpoint is accepted: the refusals above were the notes'.
        witness.answers["/checkpoints/2"] = log.note(2)
        assert _serve(source, 2).consistency_size == 2


def test_host_process_checks_old_checkpoints_under_the_configured_log_key(
    tmp_path: Path,
) -> None:
    log = _Log()
    vkey = NoteSigner(ORIGIN, log.key).verifier().verifier_key()
    bundle = log.bundle_file(tmp_path / "b.bundle")
    with _Witness() as witness:
        witness.answers = {
            "/checkpoints/2": _bad_signature(log.note(2)),
            _consistency(2): log.proof_json(2),
        }
        extra = (
            f'bundle_file = "{bundle}"\nwitness_url = "{witness.url}"\nlog_verifier_key = "{vkey}"'
        )
        with running("host", "serve", "--config", str(_config(tmp_path, extra))) as url:
            forged = httpx.get(f"{url}/v1/bundle", params={"since": 2}, timeout=10)
            assert forged.status_code == 200
            assert decode_bundle(forged.content).consistency_size == 0
            assert "/checkpoints/2" in witness.requests
            witness.answers["/checkpoints/2"] = log.note(2)
            signed = httpx.get(f"{url}/v1/bundle", params={"since": 2}, timeout=10)
            assert decode_bundle(signed.content).consistency_size == 2


def test_oversized_witness_answer_is_dropped(tmp_path: Path) -> None:
    log = _Log()
    with _Witness() as witness:
        padded = log.proof_json(2)[:-1] + b" " * (MAX_PROOF_RESPONSE + 1) + b"}"
        nested = b"[" * MAX_PROOF_RESPONSE
        source = _source(log.bundle_file(tmp_path / "b.bundle"), witness.url)
        for answer in (padded, nested, b'{"proof": [], "proof": []}'):
            witness.answers = {"/checkpoints/2": log.note(2), _consistency(2): answer}
            witness.requests.clear()
            assert _serve(source, 2).consistency_size == 0
            assert _consistency(2) in witness.requests  # read, and dropped


def test_since_above_the_bundles_tree_is_not_asked_of_the_witness(tmp_path: Path) -> None:
    log = _Log()
    with _Witness() as witness:
        source = _source(log.bundle_file(tmp_path / "b.bundle"), witness.url)
        for since in (NEW_SIZE + 1, MAX_TREE_SIZE):
            assert _serve(source, since).consistency_size == 0
        assert _serve(source, NEW_SIZE).consistency_size == 0
        assert witness.requests == []
