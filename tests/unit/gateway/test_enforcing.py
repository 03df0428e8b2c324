"""The enforcement shell's one table: every way an attempt can fail is a retry failure of a known kind."""

from __future__ import annotations

from gateway.enforcing import _FAILURES, noted
from gateway.policy.retrying import RETRYABLE, Failure
from gateway.preamble import Status


def test_every_status_a_gateway_answers_is_a_known_failure() -> None:
    for status in Status:
        if status is not Status.OK:
            assert status.name.lower() in _FAILURES, status


def test_only_a_forbidden_answer_is_not_retried() -> None:
    not_retried = {what for what, failure in _FAILURES.items() if failure not in RETRYABLE}
    assert not_retried == {"forbidden"}
    assert _FAILURES["refused"] is Failure.REFUSED
    assert _FAILURES["gateway"] is Failure.GATEWAY


def test_a_note_is_kept_only_where_one_was_asked_for() -> None:
    note: list[str] = []
    noted(note, "refused")
    noted(None, "gateway")
    assert note == ["refused"]
