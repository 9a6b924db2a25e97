"""The release pass's gates: a step is due when its inputs changed, its deadline came, or it failed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from capo_operator.decisions.schedule import Gate

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_new_gate_is_due_then_only_when_its_inputs_change() -> None:
    gate = Gate()
    assert gate.due((1, 2), NOW)
    gate.ran((1, 2), ok=True)
    assert not gate.due((1, 2), NOW + timedelta(days=1))
    assert gate.due((1, 3), NOW)


def test_a_deadline_makes_it_due_from_that_moment_on() -> None:
    gate = Gate()
    gate.ran("same", ok=True, deadline=NOW + timedelta(seconds=30))
    assert not gate.due("same", NOW + timedelta(seconds=29, microseconds=999_999))
    assert gate.due("same", NOW + timedelta(seconds=30))
    assert gate.due("same", NOW + timedelta(hours=1))


def test_a_failed_run_is_due_again_whatever_its_inputs() -> None:
    gate = Gate()
    gate.ran("same", ok=False)
    assert gate.due("same", NOW)
    gate.ran("same", ok=True)
    assert not gate.due("same", NOW)


def test_reset_makes_it_due() -> None:
    gate = Gate()
    gate.ran(None, ok=True)
    assert not gate.due(None, NOW)
    gate.reset()
    assert gate.due(None, NOW)
