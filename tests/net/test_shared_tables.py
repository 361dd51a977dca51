"""The tables worker processes share (``[server] workers``): connection and session counts
(`postfach.sharedcounts`), the failed-login throttle (`postfach.sharedthrottle`) and the IMAP
\\Recent claims (`postfach.sharedrecent`), exercised across real forked processes."""

from __future__ import annotations

import os
from collections.abc import Callable

from postfach.auth.throttle import LoginThrottle
from postfach.limits import ConnectionCounter, Refusal, SessionCounter
from postfach.sharedcounts import SharedCounts
from postfach.sharedrecent import SharedRecentClaims
from postfach.sharedthrottle import SharedThrottle


def in_child(fn: Callable[[], bool]) -> None:
    """Run ``fn`` in a forked process; it must return True there."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        ok = False
        try:
            ok = fn()
        finally:
            os._exit(0 if ok else 1)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def test_connection_limits_count_the_connections_of_every_process() -> None:
    table = SharedCounts(2)
    mine = ConnectionCounter(max_total=5, max_per_ip=3, shared=table.scoped("imap"))
    other_listener = ConnectionCounter(max_total=5, max_per_ip=3, shared=table.scoped("pop3"))
    held = [mine.admit("127.0.0.1") for _ in range(2)]
    assert not any(isinstance(h, Refusal) for h in held)

    def child() -> bool:
        table.column = 1
        theirs = ConnectionCounter(max_total=5, max_per_ip=3, shared=table.scoped("imap"))
        # One more from 127.0.0.1 fits (3 per IP over both processes), the next does not.
        first, second = theirs.admit("127.0.0.1"), theirs.admit("::ffff:127.0.0.1")
        other = [theirs.admit("127.0.0.2") for _ in range(3)]
        return (
            not isinstance(first, Refusal)
            and second is Refusal.PER_IP
            and not any(isinstance(o, Refusal) for o in other[:2])
            and other[2] is Refusal.TOTAL  # 2 here + 1 + 2 there = 5 in all
        )

    in_child(child)
    # The child exited holding 3 connections: until the supervisor clears its column they count.
    assert mine.admit("127.0.0.2") is Refusal.TOTAL
    assert not isinstance(other_listener.admit("127.0.0.1"), Refusal)  # its own counts
    assert table.clear_column(1) == 2 * 3  # total and per-IP key of each of the three
    slot = mine.admit("127.0.0.1")
    assert not isinstance(slot, Refusal)
    assert mine.admit("127.0.0.1") is Refusal.PER_IP
    slot.release()
    slot.release()  # twice is harmless
    assert table.count("imap total") == 2


def test_session_limit_spans_processes() -> None:
    table = SharedCounts(2)
    sessions = SessionCounter(2, shared=table.scoped("sessions"))
    assert sessions.acquire(7)

    def child() -> bool:
        table.column = 1
        theirs = SessionCounter(2, shared=table.scoped("sessions"))
        return theirs.acquire(7) and not theirs.acquire(7) and theirs.held(7) == 2

    in_child(child)
    assert not sessions.acquire(7) and sessions.held(7) == 2
    sessions.release(7)
    sessions.release(7)  # not held here any more: nothing happens
    assert sessions.held(7) == 1  # the child's, until its column is cleared
    table.clear_column(1)
    assert sessions.held(7) == 0 and sessions.acquire(7)


def test_a_small_table_reuses_the_slots_of_keys_that_are_gone() -> None:
    table = SharedCounts(1, slots=64)
    for i in range(5000):  # far more keys than slots, a few live at a time
        assert table.acquire([(f"ip {i}", 1), ("total", 0)]) == -1
        if i >= 10:
            table.release([f"ip {i - 10}", "total"])
    assert table.count("total") == 10
    assert [table.count(f"ip {i}") for i in range(4988, 5000)] == [0, 0] + [1] * 10
    # Full of live keys: a new one is refused rather than counted nowhere.
    for i in range(100):
        table.acquire([(f"live {i}", 0)])
    assert table.acquire([("one too many", 0)]) == 0
    assert table.count("total") == 10


def test_failed_logins_in_one_process_lock_the_address_out_in_another() -> None:
    shared = SharedThrottle(LoginThrottle(base=0.5, ip_limit=3, account_limit=0, lockout=60))
    now = 1000.0

    def child() -> bool:
        started = [shared.failed("alice@example.org", "192.0.2.1", now + i) for i in range(3)]
        return started[:2] == [[], []] and [lock.scope for lock in started[2]] == ["ip"]

    in_child(child)
    lock = shared.locked("bob@example.org", "192.0.2.1", now + 10)
    assert lock is not None and lock.scope == "ip" and lock.until == now + 2 + 60
    assert shared.locked("bob@example.org", "192.0.2.2", now + 10) is None
    assert shared.delay("alice@example.org", "192.0.2.9", now + 10) == 0.5 * 2**2  # per user
    shared.succeeded("ALICE@example.org")
    assert shared.delay("alice@example.org", "192.0.2.9", now + 10) == 0.0

    def restarted() -> bool:  # a worker started later replays what the ring holds
        fresh = SharedThrottle.__new__(SharedThrottle)
        fresh.__dict__.update(shared.__dict__)
        fresh.local = LoginThrottle(base=0.5, ip_limit=3, account_limit=0, lockout=60)
        fresh._applied = 0
        return (
            fresh.locked("x", "192.0.2.1", now + 10) is not None
            and fresh.delay("alice@example.org", "192.0.2.9", now + 10) == 0.0
        )

    in_child(restarted)
    long_name = "x" * 2000 + "@example.org"  # stored as a digest, the same for everyone
    assert shared.failed(long_name, "192.0.2.3", now) == []
    assert shared.delay(long_name, "192.0.2.4", now + 1) == 0.5


def test_a_message_is_recent_in_one_session_of_all_the_workers() -> None:
    """RFC 3501 §2.3.2 across processes: imaptest's stress mode saw a message with \\Recent in
    two sessions when they ran in different workers, each with its own claims."""
    claims = SharedRecentClaims()
    box = (7, 1234)
    assert claims.claim(box, 5)

    def child() -> bool:
        return (
            claims.claimed(box) == 5
            and not claims.claim(box, 5)  # the parent's session has it
            and claims.claim(box, 6)
            and claims.claimed((7, 1235)) == 0  # another UIDVALIDITY: another mailbox
        )

    in_child(child)
    assert not claims.claim(box, 6) and claims.claimed(box) == 6
    # SELECT: what was claimed before, and everything up to its last UID claimed, in one step.
    assert claims.claim_upto(box, 9) == 6 and claims.claim_upto(box, 9) == 9
    assert claims.claim_upto(box, 4) == 9 and claims.claimed(box) == 9
    claims.forget(box)  # the mailbox was deleted
    assert claims.claimed(box) == 0 and claims.claim(box, 1)
    claims.close()


def test_a_full_recent_table_starts_over() -> None:
    """At three quarters full the claims are forgotten: messages are recent again for the next
    session, as after a restart; the table never fills up."""
    claims = SharedRecentClaims(slots=16)
    for ident in range(1, 13):
        assert claims.claim((ident, 1), 10)
    assert all(claims.claimed((ident, 1)) == 10 for ident in range(1, 13))
    assert claims.claim((13, 1), 10)  # the 13th mailbox: over three quarters, start over
    assert claims.claimed((1, 1)) == 0 and claims.claimed((13, 1)) == 10
    for ident in range(1, 200):
        claims.claim((ident, 1), 3)
    assert claims.claimed((199, 1)) == 3
    claims.close()
