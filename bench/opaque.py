"""OPAQUE server steps: bkv against opaque-ke and against the libsodium floor, in one run.

What is timed (bytes in, bytes out, as a server sees them; nothing here runs a KSF):

- registration response: RegistrationRequest bytes -> RegistrationResponse bytes;
- login start: KE1 bytes + stored record bytes -> KE2 bytes + serialized server state;
- login finish: server state + KE3 bytes -> session key (the KE3 MAC check).

"bkv" is the server's ``*_bytes`` functions (``server_registration_response_bytes``,
``server_login_start_bytes``, ``server_login_finish_bytes``), which take and return encodings
and let libsodium's multiplication decode each received point. Variants timed alongside and
shown in the details: ``bkv[objects]``, the same step through message objects (``from_bytes``,
which decodes every point once more, the object function, ``to_bytes``), and for login finish
``bkv[state object kept]``, what the HSM application runs (it keeps the state object between
KE2 and KE3). Target: each step <= ``TARGET_RATIO`` x its floor (login finish, which has none:
x opaque-ke).

Baselines, measured in the same run on the same inputs and the same keys (our
``ServerSecrets`` are injected into opaque-ke's ``ServerSetup``; the record is byte-for-byte
a valid opaque-ke password file):

- opaque-ke (Meta's Rust crate) through both Python wrappers, ``opaque-ke-py`` (0.1.0, opaque-ke
  4.0.1) and ``opaque-snake`` (0.1.1, opaque-ke 4.1.0-pre.1). opaque-snake's server state is
  single-use, so its login finish is not timed.
- the floor: the ristretto255 scalar multiplications the step needs, done with libsodium
  (pysodium) directly. RFC 9807 / RFC 9497 count, server side:
  registration response = 1 variable-base (BlindEvaluate, RFC 9497 section 3.3.1);
  login start = 1 variable-base (BlindEvaluate) + 1 fixed-base (server keyshare,
  DeriveDiffieHellmanKeyPair, RFC 9807 section 6.4.2) + 3 variable-base (3DH: eskS*epkU,
  skS*epkU, eskS*pkU, RFC 9807 section 6.4.4); login finish = none (a constant-time compare
  with the client MAC expected since KE2), so it has no scalar-multiplication floor.
  Each libsodium call also decodes its input point and encodes its output, as the protocol must.

Noise (2 vCPUs shared with other jobs): every round takes one sample of each implementation,
in an order rotated each round, so a burst of load hits all of them alike. A sample times a batch
of back-to-back calls lasting about ``SAMPLE_TARGET_S`` (the ~1 µs login finish runs a few
hundred calls per sample). Reported: the median per-call time of each implementation, and bkv's
ratios as the median over rounds of bkv's time divided by the other's time *in the same round*
(paired ratios cancel slow drifts in machine speed). The garbage collector is paused while
timing; each step stops after ``ROUNDS`` rounds or ``STEP_BUDGET_S`` seconds, whichever comes
first (so the whole run stays under about 20 s). "opaque-ke" in the summary is whichever wrapper
had the lower median in that run; the details line lists both.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import opaque_ke_py
import opaque_snake
import pysodium

from bkv.crypto.opaque import (
    KE1,
    KE2,
    KE3,
    Argon2id,
    Config,
    RegistrationRecord,
    RegistrationRequest,
    ServerLoginState,
    ServerSecrets,
    client_login_finish,
    client_login_start,
    client_registration_finish,
    client_registration_start,
    server_login_finish,
    server_login_finish_bytes,
    server_login_start,
    server_login_start_bytes,
    server_registration_response,
    server_registration_response_bytes,
)

ROUNDS = 2000
"""Rounds per step; each round takes one sample of every implementation."""
WARMUP_ROUNDS = 30
STEP_BUDGET_S = 5.0
"""Wall-clock cap per step (the round loop stops early when it is reached)."""
SAMPLE_TARGET_S = 300e-6
"""Each sample times a batch of calls lasting about this long, so that timer overhead and
clock granularity vanish even for the ~1 µs login finish."""
TARGET_RATIO = 1.15
"""docs/operations.md §8: each server step <= 1.15x its libsodium floor (login finish, which has
no floor: <= 1.15x opaque-ke)."""
VARIANT_PREFIX = "bkv["
"""Ops named so are other ways of running a bkv step: timed alongside, shown in the details."""
OBJECTS_VARIANT = VARIANT_PREFIX + "objects]"
"""The step through message objects: ``from_bytes`` (which decodes every point) and
``to_bytes`` around the object form of the server function."""

CREDENTIAL_ID = b"bench@example.org"
PASSWORD = b"correct horse battery staple"
# opaque-ke's KSF as both wrappers configure it (docs/audit.md, interop). Only the client runs it,
# once, to make the record; no timed step runs a KSF.
CONFIG = Config(
    context=b"", ksf=Argon2id(memory_kib=19 * 1024, iterations=2, lanes=1, salt=bytes(16))
)

Op = Callable[[], object]


@dataclass(frozen=True)
class StepResult:
    """Per-call medians (µs) of every implementation, and bkv's paired ratios to each."""

    medians_us: dict[str, float]
    quiet_us: dict[str, float]
    """10th percentile per call: the samples least disturbed by other load."""
    ratios: dict[str, float]
    """Median over rounds of bkv's time / the other's time in the same round."""
    rounds: int


def batch_size(op: Op, target_s: float = SAMPLE_TARGET_S) -> int:
    """How many calls of ``op`` make one sample of about ``target_s`` (at least 1)."""
    single = min(_time_batch(op, 1) for _ in range(5))
    return max(1, min(10_000, round(target_s / max(single, 1e-9))))


def _time_batch(op: Op, calls: int) -> float:
    """Seconds per call over ``calls`` back-to-back calls."""
    started = time.perf_counter_ns()
    for _ in range(calls):
        op()
    return (time.perf_counter_ns() - started) / calls / 1e9


def measure(
    ops: dict[str, Op], rounds: int, warmup: int, budget_s: float = STEP_BUDGET_S
) -> StepResult:
    """Sample every op once per round, round-robin, rotating the order each round.

    Noise on a shared machine comes in bursts; interleaving puts each burst on all
    implementations alike, and the paired per-round ratio cancels slow drifts. The loop is
    bounded by ``rounds`` and by ``budget_s`` (after at least a third of the rounds).
    """
    names = list(ops)
    batches = {name: batch_size(op) for name, op in ops.items()}
    samples: dict[str, list[float]] = {name: [] for name in names}
    paired: dict[str, list[float]] = {
        name: [] for name in names if name != "bkv" and not name.startswith(VARIANT_PREFIX)
    }
    deadline = time.perf_counter() + budget_s
    gc.collect()
    gc.disable()
    try:
        for round_index in range(warmup + rounds):
            shift = round_index % len(names)
            this_round = {
                name: _time_batch(ops[name], batches[name])
                for name in names[shift:] + names[:shift]
            }
            if round_index < warmup:
                continue
            for name, seconds in this_round.items():
                samples[name].append(seconds * 1e6)
            for name, ratios in paired.items():
                ratios.append(this_round["bkv"] / this_round[name])
            if time.perf_counter() > deadline and round_index >= warmup + rounds // 3:
                break
    finally:
        gc.enable()
    return StepResult(
        {name: statistics.median(values) for name, values in samples.items()},
        {name: statistics.quantiles(values, n=10)[0] for name, values in samples.items()},
        {name: statistics.median(values) for name, values in paired.items()},
        len(samples["bkv"]),
    )


class Inputs:
    """One registration and one login transcript's worth of server inputs, made once."""

    def __init__(self) -> None:
        self.secrets = ServerSecrets.generate()
        dummy_pk = pysodium.crypto_scalarmult_ristretto255_base(
            pysodium.crypto_core_ristretto255_scalar_random()
        )
        # opaque-ke 4.x ServerSetup: oprf_seed || server_private_key || dummy_pk.
        setup = self.secrets.oprf_seed + self.secrets.server_private_key + dummy_pk
        self.ke_py_setup = opaque_ke_py.ServerSetupData.from_bytes(setup)
        self.snake_server = opaque_snake.OpaqueServer(setup)

        registration_state, request = client_registration_start(PASSWORD)
        self.registration_request = request.to_bytes()
        response = server_registration_response(self.secrets, request, CREDENTIAL_ID)
        record, _ = client_registration_finish(registration_state, CONFIG, response)
        self.record = record.to_bytes()

        # Our server's login: a KE1, and the (state, KE3) pair that finishes it.
        client_state, ke1 = client_login_start(PASSWORD)
        self.ke1 = ke1.to_bytes()
        ke2, server_state = server_login_start(self.secrets, CONFIG, record, CREDENTIAL_ID, ke1)
        ke3, self.session_key, _ = client_login_finish(client_state, CONFIG, ke2)
        self.client_state = client_state
        self.our_state = server_state.to_bytes()
        self.our_ke3 = ke3.to_bytes()

        # opaque-ke's login on a KE1 of its own (a client state is used once), finished by our
        # client.
        their_client_state, their_ke1 = client_login_start(PASSWORD)
        their = opaque_ke_py.server_login_start(
            self.ke_py_setup, self.record, their_ke1.to_bytes(), CREDENTIAL_ID
        )
        their_ke3, self.their_session_key, _ = client_login_finish(
            their_client_state, CONFIG, KE2.from_bytes(their.get_message())
        )
        self.ke_py_state = their.get_state()
        self.ke_py_ke3 = their_ke3.to_bytes()

        # Floor operands: the points and scalars the steps multiply, taken from the transcript.
        self.blinded = self.ke1[:32]
        self.client_keyshare = self.ke1[64:96]
        self.client_public_key = self.record[:32]
        self.scalar = pysodium.crypto_core_ristretto255_scalar_random()


def registration_ops(x: Inputs) -> dict[str, Op]:
    credential_str = CREDENTIAL_ID.decode()

    def bkv() -> object:
        return server_registration_response_bytes(x.secrets, x.registration_request, CREDENTIAL_ID)

    def bkv_objects() -> object:
        request = RegistrationRequest.from_bytes(x.registration_request)
        return server_registration_response(x.secrets, request, CREDENTIAL_ID).to_bytes()

    def ke_py() -> object:
        return opaque_ke_py.server_registration_start(
            x.ke_py_setup, x.registration_request, CREDENTIAL_ID
        ).get_message()

    def snake() -> object:
        request = opaque_snake.RegistrationRequest.from_bytes(x.registration_request)
        return x.snake_server.create_registration_response(request, credential_str).to_bytes()

    def floor() -> object:
        return pysodium.crypto_scalarmult_ristretto255(x.scalar, x.blinded)

    return {
        "bkv": bkv,
        OBJECTS_VARIANT: bkv_objects,
        "opaque-ke-py": ke_py,
        "opaque-snake": snake,
        "floor": floor,
    }


def login_start_ops(x: Inputs) -> dict[str, Op]:
    credential_str = CREDENTIAL_ID.decode()

    def bkv() -> object:
        ke2, state = server_login_start_bytes(x.secrets, CONFIG, x.record, CREDENTIAL_ID, x.ke1)
        return ke2, state.to_bytes()

    def bkv_objects() -> object:
        record = RegistrationRecord.from_bytes(x.record)
        ke1 = KE1.from_bytes(x.ke1)
        ke2, state = server_login_start(x.secrets, CONFIG, record, CREDENTIAL_ID, ke1)
        return ke2.to_bytes(), state.to_bytes()

    def ke_py() -> object:
        out = opaque_ke_py.server_login_start(x.ke_py_setup, x.record, x.ke1, CREDENTIAL_ID)
        return out.get_message(), out.get_state()

    def snake() -> object:
        response, state = x.snake_server.create_credential_response(
            opaque_snake.CredentialRequest.from_bytes(x.ke1),
            credential_str,
            opaque_snake.PasswordFile.from_bytes(x.record),
        )
        return response.to_bytes(), state

    def floor() -> object:
        k = x.scalar
        return (
            pysodium.crypto_scalarmult_ristretto255(k, x.blinded),  # BlindEvaluate
            pysodium.crypto_scalarmult_ristretto255_base(k),  # server keyshare
            pysodium.crypto_scalarmult_ristretto255(k, x.client_keyshare),  # eskS * epkU
            pysodium.crypto_scalarmult_ristretto255(k, x.client_keyshare),  # skS * epkU
            pysodium.crypto_scalarmult_ristretto255(k, x.client_public_key),  # eskS * pkU
        )

    return {
        "bkv": bkv,
        OBJECTS_VARIANT: bkv_objects,
        "opaque-ke-py": ke_py,
        "opaque-snake": snake,
        "floor": floor,
    }


def login_finish_ops(x: Inputs) -> dict[str, Op]:
    # Like for like with opaque-ke-py, whose API takes the server state as bytes: bkv checks its
    # serialized ServerLoginState too. bkv's HSM application keeps the state object between KE2
    # and KE3 (bkv.hsm.app), so the last variant is what it actually runs; variants are reported
    # in the details only.
    kept_state = ServerLoginState.from_bytes(x.our_state)

    def bkv() -> object:
        return server_login_finish_bytes(x.our_state, x.our_ke3)

    def bkv_objects() -> object:
        state = ServerLoginState.from_bytes(x.our_state)
        return server_login_finish(state, KE3.from_bytes(x.our_ke3))

    def bkv_state_kept() -> object:
        return server_login_finish(kept_state, KE3.from_bytes(x.our_ke3))

    def ke_py() -> object:
        return opaque_ke_py.server_login_finish(x.ke_py_state, x.ke_py_ke3).get_session_key()

    return {
        "bkv": bkv,
        OBJECTS_VARIANT: bkv_objects,
        VARIANT_PREFIX + "state object kept]": bkv_state_kept,
        "opaque-ke-py": ke_py,
    }


STEPS = (
    ("registration response", registration_ops, "1 var-base mul"),
    ("login start (KE1->KE2)", login_start_ops, "4 var-base + 1 fixed-base mul"),
    ("login finish (KE3 check)", login_finish_ops, None),
)

_ROW = "{:<26} {:>9} {:>14} {:>9} {:>14} {:>10}  {}"


def _fastest_theirs(result: StepResult) -> str:
    theirs = {n: v for n, v in result.medians_us.items() if n.startswith("opaque-")}
    return min(theirs, key=theirs.__getitem__)


def _reference(result: StepResult) -> str:
    """What the target is measured against: the floor, or opaque-ke where there is none."""
    return "floor" if "floor" in result.medians_us else _fastest_theirs(result)


def report_line(step: str, result: StepResult) -> str:
    """One line: bkv, the faster opaque-ke wrapper, the floor, and bkv's ratios to both."""
    fastest = _fastest_theirs(result)
    theirs = result.medians_us
    ratio = result.ratios[fastest]
    floor = result.medians_us.get("floor")
    reference = _reference(result)
    against = result.ratios[reference]
    verdict = "ok" if against <= TARGET_RATIO else "MISSES"
    target = "floor" if reference == "floor" else "opaque-ke"
    return _ROW.format(
        step,
        f"{result.medians_us['bkv']:.1f}",
        f"{theirs[fastest]:.1f}",
        "-" if floor is None else f"{floor:.1f}",
        f"{ratio:.2f}x",
        "-" if floor is None else f"{result.ratios['floor']:.2f}x",
        f"{verdict} ({against:.3f}x; <= {TARGET_RATIO}x {target})",
    )


def detail_line(step: str, result: StepResult, floor_ops: str | None) -> str:
    """Every implementation's median, the paired ratios and what the floor counts."""
    parts = [f"{name} {median:.1f}" for name, median in result.medians_us.items()]
    ratios = [f"bkv/{name} {ratio:.2f}x" for name, ratio in result.ratios.items()]
    quiet = result.quiet_us
    quiet_ratios = [f"bkv/{name} {quiet['bkv'] / quiet[name]:.2f}x" for name in result.ratios]
    reference = _reference(result)
    reference_median = result.medians_us[reference]
    ratios += [
        f"{name}/{reference} {median / reference_median:.2f}x (of medians)"
        for name, median in result.medians_us.items()
        if name.startswith(VARIANT_PREFIX)
    ]
    floor = f"; floor = {floor_ops}" if floor_ops else "; no scalar multiplication"
    return (
        f"  {step}: medians {', '.join(parts)} µs; paired ratios {', '.join(ratios)}; "
        f"10th percentiles {', '.join(quiet_ratios)}; {result.rounds} rounds{floor}"
    )


def check_outputs(x: Inputs) -> None:
    """Refuse to time code that does not work: the deterministic registration responses must be
    byte-identical across implementations, KE2s must open at our client (opaque-ke's: done in
    ``Inputs``), and both finishes must return the client's session key."""
    responses = {name: op() for name, op in registration_ops(x).items() if name != "floor"}
    if len(set(responses.values())) != 1:
        raise RuntimeError(f"registration responses differ: {sorted(responses)}")
    for name, op in login_start_ops(x).items():
        if name == "floor":
            continue
        out = op()  # must not raise
        if name.startswith("bkv"):
            ke2 = out[0] if isinstance(out, tuple) else None
            if not isinstance(ke2, bytes):
                raise RuntimeError(f"{name} returned no KE2 bytes")
            client_login_finish(x.client_state, CONFIG, KE2.from_bytes(ke2))  # must open
    finish = login_finish_ops(x)
    ours = [op() for name, op in finish.items() if name.startswith("bkv")]
    if any(key != x.session_key for key in ours) or finish["opaque-ke-py"]() != x.their_session_key:
        raise RuntimeError("a login finish returned the wrong session key")


def run(rounds: int = ROUNDS, warmup: int = WARMUP_ROUNDS) -> list[str]:
    """Measure and return the report lines (see the module docstring)."""
    x = Inputs()
    check_outputs(x)
    results = [
        (step, measure(make_ops(x), rounds, warmup), floor_ops)
        for step, make_ops, floor_ops in STEPS
    ]
    lines = [
        "OPAQUE server steps, ristretto255-SHA512, medians in µs per call; ratios are medians "
        "of per-round paired ratios; opaque-ke = the faster wrapper",
        _ROW.format("step", "bkv", "opaque-ke", "floor", "bkv/opaque-ke", "bkv/floor", "target"),
    ]
    lines += [report_line(step, result) for step, result, _ in results]
    lines.append("details:")
    lines += [detail_line(step, result, floor_ops) for step, result, floor_ops in results]
    return lines


if __name__ == "__main__":
    print("\n".join(run()))
