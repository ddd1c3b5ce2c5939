"""The vault flows with no HTTP at all: bytes to a real in-process HsmApp and back.

The test plays the host: it carries each request to the HSM and its answer
back, and, where a test says so, loses an answer, holds a flow between two
steps, or forges an answer as a hostile host could.
"""

from __future__ import annotations

import secrets
from typing import TypeVar

import pytest
from vault_world import ACCOUNT, InProcessHsm, context_of, new_hsm

from bkv.client import flows
from bkv.client.flows import EXPOSE_TRIES, MAX_EXCHANGES, Done, FlowContext, VaultFlow
from bkv.client.vault import CLEAR_REJECTIONS, RecoveredKey, VaultStatus
from bkv.errors import (
    CodecError,
    DecryptionError,
    FleetUnreachableError,
    ProtocolStateError,
    RecordDestroyedError,
    RecordExistsError,
    UnauthenticatedRejectionError,
    UnauthorizedError,
    WrongPasswordError,
)
from bkv.protocol.messages import ErrorCode, HsmRejected, HsmRequest, RegisterExposeOk, RequestKind
from bkv.wire import decode, encode

PASSWORD = b"correct horse battery staple"
NEW_PASSWORD = b"a new password"
BACKUP_KEY = bytes(range(32))
OTHER_KEY = bytes(range(32, 64))

_R = TypeVar("_R")


def drive(flow: VaultFlow[_R], hsm: InProcessHsm) -> _R:
    """The whole transport: request bytes to the HSM, its answer back, until done."""
    for _ in range(MAX_EXCHANGES + 1):
        step = flow.next_request()
        if isinstance(step, Done):
            return step.result
        flow.receive(hsm(step))
    raise AssertionError(f"the flow did not finish within {MAX_EXCHANGES} requests")


def kind_of(request: bytes) -> RequestKind:
    return decode(HsmRequest, request).kind


def step_kinds(flow: VaultFlow[object], hsm: InProcessHsm, steps: int) -> list[RequestKind]:
    """Run ``steps`` exchanges of ``flow``; the kinds of the requests it sent."""
    kinds = []
    for _ in range(steps):
        request = flow.next_request()
        assert isinstance(request, bytes)
        kinds.append(kind_of(request))
        flow.receive(hsm(request))
    return kinds


def registered(hsm: InProcessHsm, password: bytes = PASSWORD, guess_limit: int = 10) -> VaultStatus:
    return drive(flows.register_flow(context_of(hsm), password, BACKUP_KEY, guess_limit), hsm)


def wrong_guesses(hsm: InProcessHsm, count: int) -> None:
    for n in range(count):
        with pytest.raises(WrongPasswordError):
            drive(flows.recover_flow(context_of(hsm), b"wrong guess %d" % n), hsm)


# --- the operations ---------------------------------------------------------------------


def test_each_operation_sends_its_steps_in_order() -> None:
    hsm = new_hsm()
    context = context_of(hsm)
    status = flows.status_flow(context)
    assert step_kinds(status, hsm, 1) == [RequestKind.STATUS]
    assert status.next_request() == Done(VaultStatus(False, 0, 0, 0, 0))

    register = flows.register_flow(context, PASSWORD, BACKUP_KEY, guess_limit=5)
    assert step_kinds(register, hsm, 4) == [
        RequestKind.STATUS,
        RequestKind.REGISTER_START,
        RequestKind.REGISTER_FINISH,
        RequestKind.REGISTER_EXPOSE,
    ]
    assert register.next_request() == Done(VaultStatus(True, 1, 5, 5, 0))

    recover = flows.recover_flow(context, PASSWORD)
    assert step_kinds(recover, hsm, 2) == [RequestKind.RECOVER_START, RequestKind.RECOVER_FINISH]
    done = recover.next_request()
    assert isinstance(done, Done) and done.result == RecoveredKey(BACKUP_KEY, 0, 1)
    assert done.result.backup_key == BACKUP_KEY

    change = flows.change_password_flow(context, PASSWORD, NEW_PASSWORD)
    assert step_kinds(change, hsm, 6) == [
        RequestKind.RECOVER_START,
        RequestKind.RECOVER_FINISH,
        RequestKind.STATUS,
        RequestKind.REGISTER_START,
        RequestKind.REGISTER_FINISH,
        RequestKind.REGISTER_EXPOSE,
    ]
    assert change.next_request() == Done(VaultStatus(True, 2, 5, 5, 0))

    delete = flows.delete_flow(context, NEW_PASSWORD)
    assert step_kinds(delete, hsm, 2) == [RequestKind.RECOVER_START, RequestKind.RECOVER_FINISH]
    assert delete.next_request() == Done(flows.DeletedRecord(2))
    assert drive(flows.status_flow(context), hsm) == VaultStatus(False, 0, 0, 0, 0)
    assert (delete.requests_sent, delete.retries) == (2, 0)


def test_a_finished_flow_keeps_answering_done() -> None:
    hsm = new_hsm()
    flow = flows.status_flow(context_of(hsm))
    first = drive(flow, hsm)
    assert flow.next_request() == Done(first)
    with pytest.raises(ValueError):
        flow.receive(b"anything")


def test_change_password_keeps_the_guess_limit_and_the_key() -> None:
    hsm = new_hsm()
    registered(hsm, guess_limit=3)
    changed = drive(flows.change_password_flow(context_of(hsm), PASSWORD, NEW_PASSWORD), hsm)
    assert (changed.guess_limit, changed.attempts_left) == (3, 3)
    with pytest.raises(WrongPasswordError):
        drive(flows.recover_flow(context_of(hsm), PASSWORD), hsm)
    recovered = drive(flows.recover_flow(context_of(hsm), NEW_PASSWORD), hsm)
    assert recovered.backup_key == BACKUP_KEY


def test_change_password_refuses_to_replace_a_record_registered_after_the_recovery() -> None:
    hsm = new_hsm()
    registered(hsm)
    change = flows.change_password_flow(context_of(hsm), PASSWORD, NEW_PASSWORD)
    step_kinds(change, hsm, 2)  # recovered with the old password; the host holds the flow here
    other = flows.register_flow(context_of(hsm), b"another install", OTHER_KEY)
    drive(other, hsm)
    with pytest.raises(ProtocolStateError, match="changed after it was recovered"):
        step_kinds(change, hsm, 1)
    # The other install's record (and key) is untouched.
    assert drive(flows.recover_flow(context_of(hsm), b"another install"), hsm).backup_key == (
        OTHER_KEY
    )


def test_change_password_over_a_record_deleted_after_the_recovery() -> None:
    hsm = new_hsm()
    registered(hsm)
    change = flows.change_password_flow(context_of(hsm), PASSWORD, NEW_PASSWORD)
    step_kinds(change, hsm, 2)
    drive(flows.delete_flow(context_of(hsm), PASSWORD), hsm)
    with pytest.raises(RecordDestroyedError):
        step_kinds(change, hsm, 1)


def test_a_wrong_password_aborts_and_reports_the_attempts_left() -> None:
    hsm = new_hsm()
    registered(hsm, guess_limit=3)
    flow = flows.recover_flow(context_of(hsm), b"wrong")
    with pytest.raises(WrongPasswordError) as raised:
        step_kinds(flow, hsm, 3)
    assert raised.value.attempts_left == 2
    assert [kind_of(r) for r in hsm.requests[-3:]] == [
        RequestKind.RECOVER_START,
        RequestKind.RECOVER_ABORT,
        RequestKind.STATUS,
    ]
    with pytest.raises(ValueError, match="ended with an error"):
        flow.next_request()


def test_the_last_wrong_password_destroys_the_record() -> None:
    hsm = new_hsm()
    registered(hsm, guess_limit=2)
    wrong_guesses(hsm, 1)
    with pytest.raises(RecordDestroyedError):
        drive(flows.recover_flow(context_of(hsm), b"wrong again"), hsm)
    with pytest.raises(RecordDestroyedError):
        drive(flows.recover_flow(context_of(hsm), PASSWORD), hsm)


def test_an_account_that_never_registered_answers_like_a_destroyed_one() -> None:
    hsm = new_hsm()
    with pytest.raises(RecordDestroyedError):
        drive(flows.recover_flow(context_of(hsm), PASSWORD), hsm)
    with pytest.raises(RecordDestroyedError):
        drive(flows.change_password_flow(context_of(hsm), PASSWORD, NEW_PASSWORD), hsm)


# --- guessing is reported to the owner --------------------------------------------------


def test_the_recovery_reports_the_failed_password_checks() -> None:
    hsm = new_hsm()
    registered(hsm)
    wrong_guesses(hsm, 2)
    assert drive(flows.status_flow(context_of(hsm)), hsm).failed_attempts == 2
    recovered = drive(flows.recover_flow(context_of(hsm), PASSWORD), hsm)
    assert (recovered.backup_key, recovered.failed_attempts) == (BACKUP_KEY, 2)
    assert drive(flows.status_flow(context_of(hsm)), hsm).failed_attempts == 0


def test_a_registration_reports_the_spent_attempts_it_carried_over() -> None:
    hsm = new_hsm()
    registered(hsm)
    wrong_guesses(hsm, 3)
    again = registered(hsm, password=NEW_PASSWORD)
    assert (again.attempts_left, again.failed_attempts) == (7, 3)


# --- lost answers and retries ------------------------------------------------------------


def lose_answers(flow: VaultFlow[_R], hsm: InProcessHsm, kind: RequestKind, times: int) -> _R:
    """Drive ``flow``, delivering every request but losing the answer to the first
    ``times`` requests of ``kind`` (the HSM acted; the client never heard)."""
    lost = 0
    for _ in range(MAX_EXCHANGES + 1):
        step = flow.next_request()
        if isinstance(step, Done):
            return step.result
        answer = hsm(step)
        if kind_of(step) is kind and lost < times:
            lost += 1
            flow.answer_lost(FleetUnreachableError("the host dropped the answer"))
        else:
            flow.receive(answer)
    raise AssertionError("the flow did not finish")


@pytest.mark.parametrize("lost", range(1, EXPOSE_TRIES))
def test_a_lost_expose_answer_is_retried_and_counted(lost: int) -> None:
    hsm = new_hsm()
    flow = flows.register_flow(context_of(hsm), PASSWORD, BACKUP_KEY)
    status = lose_answers(flow, hsm, RequestKind.REGISTER_EXPOSE, lost)
    assert status == VaultStatus(True, 1, 10, 10, 0)
    assert (flow.retries, flow.requests_sent) == (lost, 4 + lost)


def test_the_expose_is_tried_a_bounded_number_of_times() -> None:
    hsm = new_hsm()
    registered(hsm)
    flow = flows.change_password_flow(context_of(hsm), PASSWORD, NEW_PASSWORD)
    with pytest.raises(FleetUnreachableError):
        lose_answers(flow, hsm, RequestKind.REGISTER_EXPOSE, EXPOSE_TRIES)
    assert flow.retries == EXPOSE_TRIES - 1
    assert flow.requests_sent == 5 + EXPOSE_TRIES == MAX_EXCHANGES
    # The first expose went through: the new password is live, no attempt was burned.
    assert drive(flows.status_flow(context_of(hsm)), hsm) == VaultStatus(True, 2, 10, 10, 0)
    assert drive(flows.recover_flow(context_of(hsm), NEW_PASSWORD), hsm).backup_key == BACKUP_KEY


@pytest.mark.parametrize(
    "kind", [RequestKind.STATUS, RequestKind.REGISTER_START, RequestKind.REGISTER_FINISH]
)
def test_a_lost_answer_to_any_other_registration_step_ends_the_flow(kind: RequestKind) -> None:
    hsm = new_hsm()
    flow = flows.register_flow(context_of(hsm), PASSWORD, BACKUP_KEY)
    with pytest.raises(FleetUnreachableError):
        lose_answers(flow, hsm, kind, 1)
    assert flow.retries == 0
    with pytest.raises(ValueError):
        flow.next_request()
    # No record with a fresh counter went live behind the caller's back.
    assert not drive(flows.status_flow(context_of(hsm)), hsm).exists


def test_a_lost_ke1_answer_is_not_retried() -> None:
    """Every KE1 costs an attempt: sending it again would spend a second one."""
    hsm = new_hsm()
    registered(hsm)
    flow = flows.recover_flow(context_of(hsm), PASSWORD)
    with pytest.raises(FleetUnreachableError):
        lose_answers(flow, hsm, RequestKind.RECOVER_START, 1)
    assert flow.requests_sent == 1
    assert [kind_of(r) for r in hsm.requests].count(RequestKind.RECOVER_START) == 1


# --- what a hostile host can send ---------------------------------------------------------


@pytest.mark.parametrize(
    "code", [c for c in ErrorCode if c not in CLEAR_REJECTIONS], ids=lambda c: c.name
)
def test_a_clear_rejection_the_hsm_only_seals_is_refused_as_forged(code: ErrorCode) -> None:
    hsm = new_hsm()
    flow = flows.register_flow(context_of(hsm), PASSWORD, BACKUP_KEY)
    flow.next_request()
    with pytest.raises(UnauthenticatedRejectionError, match=code.name):
        flow.receive(encode(HsmRejected(code)))


def test_the_same_code_sealed_by_the_hsm_is_the_vaults_word() -> None:
    hsm = new_hsm()
    registered(hsm)
    wrong_guesses(hsm, 3)
    with pytest.raises(RecordExistsError):  # 3 spent attempts reach a new limit of 3
        registered(hsm, guess_limit=3)


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (ErrorCode.MALFORMED, CodecError),
        (ErrorCode.UNDECRYPTABLE, DecryptionError),
    ],
)
def test_the_clear_rejections_keep_their_errors(code: ErrorCode, error: type[Exception]) -> None:
    hsm = new_hsm()
    flow = flows.status_flow(context_of(hsm))
    flow.next_request()
    with pytest.raises(error) as raised:
        flow.receive(encode(HsmRejected(code)))
    assert not isinstance(raised.value, UnauthenticatedRejectionError)


def test_a_request_sealed_to_another_hsm_is_rejected_in_the_clear() -> None:
    hsm = new_hsm()
    flow = flows.status_flow(context_of(new_hsm()))  # same fleet id, another HSM's keys
    with pytest.raises(DecryptionError):
        drive(flow, hsm)


def test_an_answer_to_another_request_does_not_open() -> None:
    hsm = new_hsm()
    earlier = flows.status_flow(context_of(hsm)).next_request()
    assert isinstance(earlier, bytes)
    stale = hsm(earlier)
    flow = flows.status_flow(context_of(hsm))
    flow.next_request()
    with pytest.raises(DecryptionError):
        flow.receive(stale)


def test_a_tampered_answer_ends_the_flow() -> None:
    hsm = new_hsm()
    flow = flows.status_flow(context_of(hsm))
    request = flow.next_request()
    assert isinstance(request, bytes)
    answer = bytearray(hsm(request))
    answer[-1] ^= 1
    with pytest.raises(DecryptionError):
        flow.receive(bytes(answer))
    with pytest.raises(ValueError):
        flow.next_request()


# --- the core is sans-IO and refuses misuse ---------------------------------------------------


def test_randomness_comes_from_the_injected_rng() -> None:
    hsm = new_hsm()
    template = context_of(hsm)
    drawn: list[int] = []

    def recording(size: int) -> bytes:
        drawn.append(size)
        return secrets.token_bytes(size)

    context = FlowContext(template.fleet, ACCOUNT, template.config, recording)
    flow = flows.recover_flow(context, PASSWORD)
    at_start = len(drawn)
    assert at_start > 0  # the KE1's blind and nonces
    flow.next_request()
    assert len(drawn) > at_start  # the request's response secret

    def short(size: int) -> bytes:
        return bytes(size - 1)

    with pytest.raises(ValueError, match="rng returned"):
        flows.recover_flow(FlowContext(template.fleet, ACCOUNT, template.config, short), PASSWORD)


def test_misuse_is_refused() -> None:
    hsm = new_hsm()
    context = context_of(hsm)
    flow = flows.status_flow(context)
    with pytest.raises(ValueError, match="no request is in flight"):
        flow.receive(b"\x00")
    with pytest.raises(ValueError, match="no request is in flight"):
        flow.answer_lost(FleetUnreachableError("lost"))
    flow.next_request()
    with pytest.raises(ValueError, match="still due"):
        flow.next_request()
    with pytest.raises(TypeError):
        flow.answer_lost(UnauthorizedError("not a lost answer"))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        flows.register_flow(context, PASSWORD, BACKUP_KEY[:31])
    for limit in (0, 101):
        with pytest.raises(ValueError):
            flows.register_flow(context, PASSWORD, BACKUP_KEY, guess_limit=limit)
    with pytest.raises(TypeError):
        flows.register_flow(context, PASSWORD, BACKUP_KEY, guess_limit=True)
    with pytest.raises(ValueError):
        flows.recover_flow(context, b"")
    for account in (b"", b"x" * 65):
        with pytest.raises(ValueError):
            FlowContext(context.fleet, account, context.config)
    with pytest.raises(TypeError):
        FlowContext(context.fleet.artifact, ACCOUNT, context.config)  # type: ignore[arg-type]


def _collect_reprs(flow: VaultFlow[_R], hsm: InProcessHsm, texts: list[str]) -> _R:
    """Drive ``flow``, adding its and its current step's repr before each request, and the
    result's, to ``texts`` (also when the flow ends with an error)."""
    for _ in range(MAX_EXCHANGES + 1):
        texts.append(repr(flow) + repr(flow._state))  # the steps hold the secrets
        step = flow.next_request()
        if isinstance(step, Done):
            texts.append(repr(step))
            return step.result
        flow.receive(hsm(step))
    raise AssertionError("the flow did not finish")


def test_secrets_stay_out_of_the_flows_repr() -> None:
    """No step shows any bytes at all: the password, the backup key, the session and
    export keys, KE1/KE3, session and registration ids all stay out of reprs."""
    hsm = new_hsm()
    context = context_of(hsm)
    texts: list[str] = []
    _collect_reprs(flows.register_flow(context, PASSWORD, BACKUP_KEY), hsm, texts)
    _collect_reprs(flows.recover_flow(context, PASSWORD), hsm, texts)
    _collect_reprs(flows.change_password_flow(context, PASSWORD, NEW_PASSWORD), hsm, texts)
    with pytest.raises(WrongPasswordError):  # KE1, abort, status
        _collect_reprs(flows.recover_flow(context, b"wrong"), hsm, texts)
    _collect_reprs(flows.delete_flow(context, NEW_PASSWORD), hsm, texts)
    # Every step of the five flows (a repr before each request, then the result's).
    assert len(texts) == (4 + 2) + (2 + 2) + (6 + 2) + 3 + (2 + 2)
    for text in texts:
        assert "b'" not in text and 'b"' not in text, text
        assert PASSWORD.decode() not in text and BACKUP_KEY.hex() not in text


def test_an_expose_answer_with_more_attempts_than_its_limit_is_refused() -> None:
    """The HSM's own answer is checked too: attempts left never exceed the guess limit."""
    context = context_of(new_hsm())
    expose = flows._Expose(bytes(32), tries=1)  # the step, fed the answer directly
    assert expose.advance(context, RegisterExposeOk(1, 3, 3), b"") == flows._Finished(
        VaultStatus(True, 1, 3, 3, 0)
    )
    with pytest.raises(ProtocolStateError):
        expose.advance(context, RegisterExposeOk(1, 3, 4), b"")
