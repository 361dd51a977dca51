"""The accounting behind connection, session and slow-client limits (pure core)."""

from __future__ import annotations

import pytest

from postfach.limits import (
    ConnectionCounter,
    Limits,
    Refusal,
    RefusalLog,
    SessionCounter,
    Slot,
    client_key,
    input_deadline,
    output_stalled,
)


def test_total_limit_refuses_the_next_connection_until_one_leaves() -> None:
    c = ConnectionCounter(max_total=2, max_per_ip=0)
    a, b = c.admit("192.0.2.1"), c.admit("192.0.2.2")
    assert isinstance(a, Slot) and isinstance(b, Slot)
    assert c.admit("192.0.2.3") is Refusal.TOTAL
    a.release()
    assert isinstance(c.admit("192.0.2.3"), Slot)
    assert c.refused == 1


def test_per_ip_limit_counts_each_address_on_its_own() -> None:
    c = ConnectionCounter(max_total=0, max_per_ip=2)
    slots = [c.admit("192.0.2.1"), c.admit("192.0.2.1")]
    assert c.admit("192.0.2.1") is Refusal.PER_IP
    assert isinstance(c.admit("192.0.2.9"), Slot)  # another client is not affected
    assert c.held_by("192.0.2.1") == 2
    for s in slots:
        assert isinstance(s, Slot)
        s.release()
    assert c.held_by("192.0.2.1") == 0 and c.total == 1


def test_releasing_a_slot_twice_counts_once() -> None:
    c = ConnectionCounter(max_total=1)
    s = c.admit("192.0.2.1")
    assert isinstance(s, Slot)
    s.release()
    s.release()
    assert c.total == 0
    assert isinstance(c.admit("192.0.2.1"), Slot)
    assert c.admit("192.0.2.1") is Refusal.TOTAL


def test_zero_means_no_limit() -> None:
    c = ConnectionCounter(0, 0)
    assert all(isinstance(c.admit("192.0.2.1"), Slot) for _ in range(10_000))


def test_ipv6_clients_are_counted_per_64_and_mapped_ipv4_as_ipv4() -> None:
    assert client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9")
    assert client_key("2001:db8:1:2::1") != client_key("2001:db8:1:3::1")
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key("fe80::1%eth0") == client_key("fe80::2")
    assert client_key("not an address") == "not an address"
    c = ConnectionCounter(max_per_ip=1)
    assert isinstance(c.admit("2001:db8::1"), Slot)
    assert c.admit("2001:db8::2") is Refusal.PER_IP  # the same /64


def test_sessions_per_account() -> None:
    s = SessionCounter(2)
    assert s.acquire(7) and s.acquire(7)
    assert not s.acquire(7)
    assert s.acquire(8)
    s.release(7)
    assert s.held(7) == 1 and s.acquire(7)
    s.release(9)  # releasing what was never held leaves nothing negative
    assert s.held(9) == 0
    assert all(SessionCounter(0).acquire(1) for _ in range(1000))


def test_a_slow_sender_runs_out_of_time_and_a_steady_one_does_not() -> None:
    # 60 s floor, 1 KiB/s minimum: one byte a second has earned almost nothing after a minute.
    assert input_deadline(100.0, 60, 60.0, 1024.0) == pytest.approx(160.06, abs=0.01)
    # A 50 MB message at 10 KB/s takes ~5000 s; by the time it has arrived it has earned more.
    size = 50 * 1024 * 1024
    assert input_deadline(0.0, size, 300.0, 1024.0) > size / 10_240


def test_output_stall_needs_the_minimum_rate_or_an_empty_buffer() -> None:
    assert output_stalled(300_000, 300_000, 60.0, 1024.0)  # nothing read
    assert output_stalled(300_000, 290_000, 60.0, 1024.0)  # 10 kB in a minute is too slow
    assert not output_stalled(300_000, 200_000, 60.0, 1024.0)
    assert not output_stalled(1_000, 0, 60.0, 1024.0)  # a small buffer read completely


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_connections": -1},
        {"max_line": 100},
        {"command_timeout": 0},
        {"min_rate": 0},
        {"write_timeout": -5},
    ],
)
def test_nonsense_limits_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Limits(**kwargs)  # type: ignore[arg-type]


def test_refusals_are_logged_once_a_second_per_reason_with_their_count() -> None:
    log = RefusalLog()
    assert log.note(Refusal.TOTAL, 10.0) == 1
    assert log.note(Refusal.PER_IP, 10.1) == 1  # another reason has its own second
    assert [log.note(Refusal.TOTAL, 10.0 + k / 10) for k in range(1, 9)] == [0] * 8
    assert log.note(Refusal.TOTAL, 11.0) == 9  # this one and the eight held back
