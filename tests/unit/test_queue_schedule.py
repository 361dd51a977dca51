"""The queue's retry schedule and reply classification: pure, no loop, no clock."""

from __future__ import annotations

from random import Random

import pytest

from postfach.queue.schedule import (
    MAX_INTERVAL,
    Outcome,
    Reply,
    Schedule,
    delay_notice_due,
    expired,
    next_attempt,
    notify_set,
    parse_reply,
    retry_interval,
)

S = Schedule()


def test_first_retry_is_about_seven_and_a_half_minutes() -> None:
    for seed in range(50):
        assert 441 <= retry_interval(S, 1, Random(seed)) <= 459


def test_interval_doubles_and_is_capped() -> None:
    no_jitter = Schedule(jitter=0)
    got = [retry_interval(no_jitter, n, Random(0)) for n in range(1, 9)]
    assert got[:6] == [450, 900, 1800, 3600, 7200, 14400]
    assert got[6:] == [MAX_INTERVAL, MAX_INTERVAL]


def test_jitter_spreads_messages_queued_together() -> None:
    rand = Random(1)
    values = {round(next_attempt(S, 3, 1000.0, rand), 3) for _ in range(20)}
    assert len(values) > 10
    assert all(1000 + 1800 * 0.98 <= v <= 1000 + 1800 * 1.02 for v in values)


def test_schedule_is_configurable() -> None:
    fast = Schedule(first_retry=0.2, max_age=2.0, delay_notice=0.5, jitter=0)
    assert next_attempt(fast, 1, 10.0, Random()) == pytest.approx(10.2)
    assert next_attempt(fast, 3, 10.0, Random()) == pytest.approx(10.8)


def test_expiry_after_five_days() -> None:
    assert not expired(S, 0.0, 5 * 86400 - 1)
    assert expired(S, 0.0, 5 * 86400)


def test_delay_notice_after_four_hours_once() -> None:
    assert not delay_notice_due(S, 0.0, 4 * 3600 - 1, False)
    assert delay_notice_due(S, 0.0, 4 * 3600, False)
    assert not delay_notice_due(S, 0.0, 5 * 3600, True)
    assert not delay_notice_due(Schedule(delay_notice=0), 0.0, 10**9, False)


@pytest.mark.parametrize(
    ("code", "text", "enhanced", "status", "outcome"),
    [
        (250, "2.0.0 Ok: queued as X", "2.0.0", "2.0.0", Outcome.DELIVERED),
        (550, "5.1.1 <a@b>: unknown", "5.1.1", "5.1.1", Outcome.PERMANENT),
        (554, "rejected", "", "5.0.0", Outcome.PERMANENT),
        (451, "4.7.1 greylisted", "4.7.1", "4.7.1", Outcome.TEMPORARY),
        (421, "Service not available", "", "4.0.0", Outcome.TEMPORARY),
        (550, "4.2.2 mismatched class", "4.2.2", "5.0.0", Outcome.PERMANENT),
    ],
)
def test_parse_reply(code: int, text: str, enhanced: str, status: str, outcome: Outcome) -> None:
    r = parse_reply(code, text, "mx.example")
    assert (r.enhanced, r.status, r.outcome, r.remote_mta) == (
        enhanced,
        status,
        outcome,
        "mx.example",
    )


def test_reply_line_is_one_line() -> None:
    r = parse_reply(550, "5.1.1 first line\nsecond  line", "")
    assert r.line() == "550 5.1.1 first line second line"
    assert Reply(451, "", "x").line() == "451 x"


def test_notify_defaults() -> None:
    assert notify_set(None) == {"FAILURE", "DELAY"}
    assert notify_set("SUCCESS,FAILURE") == {"SUCCESS", "FAILURE"}
    assert notify_set("NEVER") == {"NEVER"}
