"""``make demo``: a local deployment and a full backup/restore story, narrated.

Starts, on 127.0.0.1 and as real ``bkv`` processes: an independent witness, an
emulated HSM, and the operator's host; publishes the fleet keys through the
witness; then plays a phone that validates the fleet keys over the air, backs
up a backup key under a password, survives a thief's guesses, restores on a new
phone, and watches another record get destroyed at its guess limit. Last, an
auditor re-verifies everything the witness ever signed.

Run: ``python -m bkv.demo [--workdir DIR]`` (default ``var/demo``, made afresh).
"""

from __future__ import annotations

import argparse
import dataclasses
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from bkv import devnet
from bkv.client.sdk import VaultClient
from bkv.client.state import ClientState
from bkv.client.store_json import JsonFileStateStore
from bkv.client.validation import validate_bundle
from bkv.client.vault import DEFAULT_KSF
from bkv.errors import BkvError, RecordDestroyedError, VerificationError, WrongPasswordError
from bkv.protocol.artifact import ROLE_CHANNEL, PublicKey, parse_artifact
from bkv.protocol.bundle import decode_bundle, encode_bundle
from bkv.protocol.plexi import key_id_for

FLEET_ID = "bkv-demo"
GUESS_LIMIT = 10
PASSWORD = b"correct horse battery staple"
ALICE = devnet.Account(b"alice", "token-alice-" + secrets.token_hex(16))
BOB = devnet.Account(b"bob", "token-bob-" + secrets.token_hex(16))


class DemoFailedError(Exception):
    """The story did not go as the vault promises."""


class ByteCounter(httpx.HTTPTransport):
    """The phone's view of the wire: every byte sent to and received from the host."""

    def __init__(self) -> None:
        super().__init__()
        self.transcript: list[bytes] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.transcript.append(request.read())
        response = super().handle_request(request)
        self.transcript.append(response.read())
        return response

    def total(self) -> int:
        """Bytes exchanged so far."""
        return sum(len(chunk) for chunk in self.transcript)

    def contains(self, needle: bytes) -> bool:
        return any(needle in chunk for chunk in self.transcript)


class Narrator:
    """Numbered steps with timings; one line per fact."""

    def __init__(self) -> None:
        self.step = 0

    @contextmanager
    def section(self, title: str) -> Iterator[None]:
        self.step += 1
        print(f"\n[{self.step}] {title}", flush=True)
        started = time.perf_counter()
        yield
        print(f"    ({(time.perf_counter() - started) * 1000:.0f} ms)", flush=True)

    @staticmethod
    def say(line: str) -> None:
        print(f"    {line}", flush=True)


def short(data: bytes | str, n: int = 8) -> str:
    text = data.hex() if isinstance(data, bytes) else data
    return f"{text[:n]}…"


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return (time.perf_counter() - started) * 1000


@dataclasses.dataclass(frozen=True)
class Deployment:
    """What the operator started, and what an app pins."""

    workdir: Path
    host_url: str
    witness: devnet.Witness
    operator_public_key: bytes
    bundle: Path

    def phone(
        self, account: devnet.Account, name: str, transport: httpx.HTTPTransport
    ) -> VaultClient:
        """A phone in over-the-air mode: it pins only the witness's and operator's keys."""
        return VaultClient.over_the_air(
            self.host_url,
            account.token,
            account.account_id,
            self.witness.roots(self.operator_public_key),
            JsonFileStateStore(self.workdir / "phones" / f"{name}.json"),
            transport=transport,
        )


def deploy(n: Narrator, processes: devnet.Processes, workdir: Path) -> Deployment:
    """Operator key, witness, HSM, published fleet keys, host."""
    with n.section("Operator: make the operator's signing key (bkv operator keygen)"):
        operator_key = workdir / "operator" / "operator.key"
        operator_key.parent.mkdir(parents=True)
        operator_public = devnet.operator_keygen(operator_key)
        n.say(f"operator Ed25519 public key {short(operator_public, 16)} (apps pin it)")

    with n.section("Witness: an independent party with its own keys and log"):
        witness = devnet.start_witness(
            processes, workdir / "witness", "bkv-demo-witness", operator_public
        )
        n.say(f"bkv witness serve at {witness.url}")
        n.say(f"log origin {witness.origin!r}; namespace {devnet.NAMESPACE} registered")
        for key in witness.statement_keys:
            key_id = key_id_for(key.public_key)
            n.say(f"statement key {short(key.public_key, 16)} (Plexi key id {key_id})")

    with n.section("HSM: generate and seal the fleet secrets (bkv hsm init / serve)"):
        hsm_config = devnet.init_hsm(workdir / "hsm", FLEET_ID, GUESS_LIMIT)
        hsm_url = processes.serve("hsm", "serve", "--config", str(hsm_config))
        n.say(f"emulated HSM at {hsm_url}; OPRF seed, AKE key and channel key stay inside")
        n.say(f"public keys for the artifact: {devnet.hsm_public_keys(hsm_config)}")

    with n.section("Publish the fleet keys: witness signs and logs, operator counter-signs"):
        bundle = workdir / "operator" / "epoch-1.bundle"
        public_keys = devnet.hsm_public_keys(hsm_config)
        out = devnet.publish(
            witness, public_keys, operator_key, bundle, fleet_id=FLEET_ID, guess_limit=GUESS_LIMIT
        )
        n.say(out.stdout.strip())

    with n.section("Host: the operator's untrusted front end (bkv host serve)"):
        host_config = devnet.write_host_config(
            workdir / "host.toml",
            fleet_id=FLEET_ID,
            hsm_url=hsm_url,
            hsm_link_key_file=devnet.hsm_link_key(hsm_config),
            bundle_file=bundle,
            witness_url=witness.url,
            log_verifier_key=witness.log_verifier_key,
            accounts=[ALICE, BOB],
            # Room for the story's guesses; production keeps the defaults
            # (5 attempt-costing requests per record at once, then 10 an hour).
            record_attempt_burst=GUESS_LIMIT + 2,
            account_burst=100,
        )
        host_url = processes.serve("host", "serve", "--config", str(host_config))
        n.say(f"host at {host_url}: bearer tokens (stored hashed), rate limits, no secret")
    (workdir / "phones").mkdir()
    return Deployment(workdir, host_url, witness, operator_public, bundle)


def impostor(n: Narrator, deployment: Deployment) -> None:
    """A host that swaps in its own fleet keys is refused before any key is used."""
    with n.section("An impostor: the host swaps its own keys into the bundle"):
        honest = decode_bundle(deployment.bundle.read_bytes())
        artifact = parse_artifact(honest.artifact)
        rogue_channel = PublicKey(ROLE_CHANNEL, "x25519", secrets.token_bytes(32))
        others = tuple(k for k in artifact.keys if k.role != ROLE_CHANNEL)
        forged_artifact = dataclasses.replace(artifact, keys=(rogue_channel, *others)).to_bytes()
        forged = encode_bundle(dataclasses.replace(honest, artifact=forged_artifact))
        roots = deployment.witness.roots(deployment.operator_public_key)
        try:
            validate_bundle(forged, roots, ClientState(), time.time_ns() // 1_000_000)
        except VerificationError as exc:
            n.say(f"the phone refuses it: {type(exc).__name__}: {exc}")
        else:
            raise DemoFailedError("a forged bundle was accepted")


def backup(n: Narrator, deployment: Deployment) -> bytes:
    """Alice's phone validates the fleet keys, then backs up a fresh backup key."""
    wire = ByteCounter()
    with n.section("Phone: fetch and validate the fleet keys over the air"):
        alice = deployment.phone(ALICE, "alice-old-phone", wire)
        fleet = alice.fleet
        n.say("pinned: witness statement key, operator key, log key and origin")
        n.say("checked: digest, witness signature, operator counter-signature, the operator's")
        n.say("         logged submission signature, namespace, epoch, timestamp, signed")
        n.say("         checkpoint, log inclusion: all passed")
        n.say(f"fleet {fleet.fleet_id!r}, epoch {fleet.epoch}: roles {sorted(fleet.keys_by_role)}")

    backup_key = secrets.token_bytes(32)
    with n.section("Backup: register a fresh 256-bit backup key under a password"):
        n.say(f"KSF on the phone: {DEFAULT_KSF!r}".replace(repr(bytes(16)), "zeros(16)"))
        wire.transcript.clear()  # count the registration only, not the (public) bundle
        ms = timed(lambda: alice.register(PASSWORD, backup_key, guess_limit=GUESS_LIMIT))
        n.say(f"registered in {ms:.0f} ms; {alice.status()}")
        n.say(f"the host relayed {wire.total()} bytes, all HPKE-sealed to the fleet")
        if wire.contains(backup_key) or wire.contains(PASSWORD):
            raise DemoFailedError("a secret crossed the host in the clear")
        n.say("the backup key and the password are not in those bytes")

    with n.section("A thief with the account's token tries 3 passwords"):
        for guess in (b"123456", b"password1", b"letmein"):
            try:
                alice.recover(guess)
            except WrongPasswordError as exc:
                n.say(f"{guess.decode()!r}: WrongPasswordError, {exc.attempts_left} attempts left")
    return backup_key


def restore(n: Narrator, deployment: Deployment, backup_key: bytes) -> None:
    """A new phone recovers the key with the right password."""
    with n.section("Restore on a new phone with the right password"):
        new_phone = deployment.phone(ALICE, "alice-new-phone", httpx.HTTPTransport())
        restored = new_phone.recover(PASSWORD)
        if not secrets.compare_digest(restored.backup_key, backup_key):
            raise DemoFailedError("the restored key differs")
        n.say("backup key restored: identical to the one backed up")
        n.say(
            f"the vault tells Alice: {restored.failed_attempts} failed password checks "
            "since her last recovery (the thief's)"
        )
        n.say(f"a correct login forgives the attempts started before it: {new_phone.status()}")


def guess_limit(n: Narrator, deployment: Deployment) -> None:
    """Bob's record is destroyed after GUESS_LIMIT wrong guesses."""
    with n.section(f"Guess limit: {GUESS_LIMIT} wrong passwords destroy a record for good"):
        bob = deployment.phone(BOB, "bob", httpx.HTTPTransport())
        real_password = b"bob's real password"
        bob.register(real_password, secrets.token_bytes(32), guess_limit=GUESS_LIMIT)
        outcomes = []
        for attempt in range(GUESS_LIMIT):
            try:
                bob.recover(f"guess {attempt}".encode())
            except WrongPasswordError as exc:
                outcomes.append(str(exc.attempts_left))
            except RecordDestroyedError:
                outcomes.append("destroyed")
        n.say("after each wrong guess: " + ", ".join(outcomes))
        try:
            bob.recover(real_password)
        except RecordDestroyedError:
            n.say("the right password now: RecordDestroyedError (no one gets more tries)")
        else:
            raise DemoFailedError("a destroyed record answered the right password")


def audit(n: Narrator, deployment: Deployment) -> None:
    """Anyone re-verifies the witness's record."""
    witness = deployment.witness
    with n.section("Auditor: re-verify everything the witness ever signed (bkv audit log)"):
        result = devnet.run(
            "audit", "log", "--witness", witness.url, "--namespace", devnet.NAMESPACE,
            *witness.pin_arguments(), "--operator-key", deployment.operator_public_key.hex(),
            "--require-countersignatures",
        )  # fmt: skip
        for line in result.stdout.strip().splitlines():
            n.say(line)


def story(workdir: Path) -> None:
    n = Narrator()
    with devnet.Processes() as processes:
        deployment = deploy(n, processes, workdir)
        impostor(n, deployment)
        backup_key = backup(n, deployment)
        restore(n, deployment, backup_key)
        guess_limit(n, deployment)
        audit(n, deployment)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bkv.demo", description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path("var/demo"))
    args = parser.parse_args(argv)
    # Absolute: configs resolve relative paths against their own directory.
    workdir: Path = args.workdir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    print("bkv demo: a local deployment on 127.0.0.1 and a backup/restore story")
    print(f"working directory: {workdir}")
    try:
        story(workdir)
    except (BkvError, RuntimeError, DemoFailedError) as exc:
        print(f"\ndemo failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print("\nDone: every process has been stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
