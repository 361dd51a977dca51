"""The outbound queue's retry schedule (pure core: time and randomness are passed in).

After mox ``queue.go``: the first retry comes after about 7.5 minutes and every further one
waits twice as long, with a little jitter so that messages queued together do not all dial
again in the same second. A recipient that has not been delivered after ``max_age`` (5 days,
RFC 5321 §4.5.4.1 suggests "at least 4-5 days") is given up and bounced; once a message is
``delay_notice`` old (4 hours) the sender gets one delay DSN (RFC 3464 ``Action: delayed``).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from random import Random
from typing import Final

# Never wait longer than this between two attempts, however many there were.
MAX_INTERVAL: Final = 8 * 3600.0


@dataclass(frozen=True, slots=True)
class Schedule:
    first_retry: float = 450.0
    max_age: float = 5 * 86400.0
    delay_notice: float = 4 * 3600.0  # 0: never send a delay DSN
    jitter: float = 0.02  # +-2 % of the interval


def retry_interval(schedule: Schedule, attempts: int, rand: Random) -> float:
    """Seconds to wait after the ``attempts``-th attempt failed (``attempts`` >= 1)."""
    base = min(schedule.first_retry * 2.0 ** max(attempts - 1, 0), MAX_INTERVAL)
    return max(0.0, base * (1 + rand.uniform(-schedule.jitter, schedule.jitter)))


def next_attempt(schedule: Schedule, attempts: int, now: float, rand: Random) -> float:
    """When to dial next, written to the queue *before* dialling attempt number ``attempts``.

    If the attempt cannot finish (crash, kill), this is when the recipient is tried again.
    """
    return now + retry_interval(schedule, attempts, rand)


def expired(schedule: Schedule, queued_at: float, now: float) -> bool:
    return now - queued_at >= schedule.max_age


def delay_notice_due(schedule: Schedule, queued_at: float, now: float, notified: bool) -> bool:
    return bool(schedule.delay_notice) and not notified and now - queued_at >= schedule.delay_notice


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    TEMPORARY = "temporary"
    PERMANENT = "permanent"


_ENHANCED: Final = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})$")


@dataclass(frozen=True, slots=True)
class Reply:
    """What a remote server (or our own resolver) answered for one recipient."""

    code: int
    enhanced: str  # RFC 3463, "" when the server sent none
    text: str
    remote_mta: str = ""  # the host that answered ("" when we never reached one)

    @property
    def outcome(self) -> Outcome:
        if 200 <= self.code < 300:
            return Outcome.DELIVERED
        if 500 <= self.code < 600:
            return Outcome.PERMANENT
        return Outcome.TEMPORARY

    @property
    def status(self) -> str:
        """The RFC 3463 status for a DSN: the server's own, or one derived from the code."""
        m = _ENHANCED.match(self.enhanced)
        if m and m.group(1) == str(self.code)[0]:
            return self.enhanced
        return {Outcome.DELIVERED: "2.0.0", Outcome.PERMANENT: "5.0.0"}.get(self.outcome, "4.0.0")

    def line(self) -> str:
        """The reply as one line, as quoted in a DSN's Diagnostic-Code."""
        text = " ".join(self.text.split())
        enhanced = f"{self.enhanced} " if self.enhanced else ""
        return f"{self.code} {enhanced}{text}".strip()


def parse_reply(code: int, message: str, remote_mta: str = "") -> Reply:
    """Split a client library's (code, text) into code, enhanced status code and text."""
    text = " ".join(message.split())
    first, _, rest = text.partition(" ")
    if _ENHANCED.match(first):
        return Reply(code, first, rest, remote_mta)
    return Reply(code, "", text, remote_mta)


# RFC 3461 §4.1 NOTIFY values.
NOTIFY_NEVER: Final = "NEVER"
NOTIFY_SUCCESS: Final = "SUCCESS"
NOTIFY_FAILURE: Final = "FAILURE"
NOTIFY_DELAY: Final = "DELAY"


def notify_set(notify: str | None) -> frozenset[str]:
    """The NOTIFY keywords in force; absent means FAILURE and DELAY (RFC 3461 §4.1)."""
    if not notify:
        return frozenset({NOTIFY_FAILURE, NOTIFY_DELAY})
    return frozenset(p.strip().upper() for p in notify.split(",") if p.strip())
