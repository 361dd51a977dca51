"""Connection, session and slow-client limits: the settings and the accounting (pure core).

No I/O and no clock: the adapters pass the time in (``loop.time()``). What is counted where:

* `ConnectionCounter`: one per listener. A connection is admitted at accept time or refused
  when the listener already holds ``max_connections`` or the client address holds
  ``max_connections_per_ip`` of them (IPv6 counted per /64, the block one subscriber usually
  gets; IPv4-mapped addresses as IPv4). The admitted connection holds a `Slot` until it is
  gone; releasing a slot twice is harmless.
* `SessionCounter`: one per server process, shared by IMAP and POP3: logged-in sessions per
  account.
* `CountTable`: with several worker processes (``[server] workers``) both counters keep their
  counts in a table the workers share (the adapter is `postfach.sharedcounts`), so that a limit
  holds for the server as a whole and not per process. Without one they count in this process.
* `input_deadline` / `output_stalled`: the slow-client rules. A started command (or SMTP DATA, or
  an IMAP literal) must be complete by ``start + floor + octets / min_rate``; a client that does
  not read must take at least ``min_rate`` octets per second off a full output buffer.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "ConnectionCounter",
    "CountTable",
    "Limits",
    "Refusal",
    "RefusalLog",
    "SessionCounter",
    "Slot",
    "client_key",
    "input_deadline",
    "output_stalled",
]


class CountTable(Protocol):
    """Counters shared by the worker processes of one server, keyed by name."""

    def acquire(self, keys: Sequence[tuple[str, int]]) -> int:
        """Add one to the count of every key, if each is below its limit (0: no limit), as one
        step; -1 when done, else the position in ``keys`` of the first key at its limit (then
        nothing was added)."""
        ...

    def release(self, keys: Sequence[str]) -> None:
        """Take back one count of every key that this process added."""
        ...

    def count(self, key: str) -> int:
        """The key's count over all processes."""
        ...


@dataclass(frozen=True, slots=True)
class Limits:
    """``[limits]`` of postfach.toml (besides ``max_message_size``); 0 turns a count off.

    Defaults follow what mail servers ship: Postfix allows 50 connections per client and
    service (``smtpd_client_connection_count_limit``), mox 30 per IP; Dovecot 10 logins per
    user *and* address (``mail_max_userip_connections``), counted here per account over all
    addresses, hence higher; Stalwart 8192 connections per server.
    """

    #: connections one listener holds at once (each listener counts its own)
    max_connections: int = 1000
    #: connections from one client address (IPv6: one /64) to one listener
    max_connections_per_ip: int = 50
    #: IMAP and POP3 sessions logged in to one account at once
    max_sessions_per_user: int = 20
    #: longest IMAP command line between literals (RFC 7162 §4 asks for at least 8192)
    max_line: int = 64 * 1024
    #: seconds a started command line may take (IMAP and POP3; SMTP: ``[timeouts] smtp``)
    command_timeout: float = 60.0
    #: octets per second a client must at least send (a literal, DATA) or read (a response)
    min_rate: float = 1024.0
    #: seconds a client may leave a full output buffer unread before it is dropped
    write_timeout: float = 60.0
    #: where the counts live when worker processes share them (set by the app, never configured)
    shared: CountTable | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_connections_per_ip", "max_sessions_per_user"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.max_line < 512:
            raise ValueError("max_line must be at least 512")
        for name in ("command_timeout", "min_rate", "write_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")


class Refusal(enum.Enum):
    TOTAL = "too many connections"
    PER_IP = "too many connections from your address"


class RefusalLog:
    """At most one log line per reason and second under a flood, with the count it stands for."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._last: dict[Refusal, float] = {}
        self._unlogged: dict[Refusal, int] = {}

    def note(self, refusal: Refusal, now: float) -> int:
        """Count a refusal; the number to log now (this one and those held back), or 0."""
        n = self._unlogged.get(refusal, 0) + 1
        if now - self._last.get(refusal, float("-inf")) < self.interval:
            self._unlogged[refusal] = n
            return 0
        self._last[refusal], self._unlogged[refusal] = now, 0
        return n


def client_key(ip: str) -> str:
    """What one client is counted as: the IPv4 address, or the /64 of an IPv6 address."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(addr) >> 64 << 64, 64)))
    return str(addr)


class Slot:
    """An admitted connection's place in its `ConnectionCounter`."""

    __slots__ = ("_counter", "key")

    def __init__(self, counter: ConnectionCounter, key: str) -> None:
        self._counter: ConnectionCounter | None = counter
        self.key = key

    def release(self) -> None:
        counter, self._counter = self._counter, None
        if counter is not None:
            counter._release(self.key)


class ConnectionCounter:
    """The connections of one listener, in total and per client."""

    def __init__(
        self, max_total: int = 0, max_per_ip: int = 0, shared: CountTable | None = None
    ) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        #: connections of this process (with ``shared``, the limits apply to all processes')
        self.total = 0
        self._per_key: dict[str, int] = {}
        self.refused = 0
        self.shared = shared

    @classmethod
    def for_limits(cls, limits: Limits) -> ConnectionCounter:
        return cls(limits.max_connections, limits.max_connections_per_ip, limits.shared)

    def admit(self, ip: str) -> Slot | Refusal:
        key = client_key(ip)
        held = self._per_key.get(key, 0)
        if self.shared is not None:
            full = self.shared.acquire((("total", self.max_total), ("ip " + key, self.max_per_ip)))
            if full >= 0:
                self.refused += 1
                return Refusal.TOTAL if full == 0 else Refusal.PER_IP
        else:
            if self.max_total and self.total >= self.max_total:
                self.refused += 1
                return Refusal.TOTAL
            if self.max_per_ip and held >= self.max_per_ip:
                self.refused += 1
                return Refusal.PER_IP
        self.total += 1
        self._per_key[key] = held + 1
        return Slot(self, key)

    def held_by(self, ip: str) -> int:
        return self._per_key.get(client_key(ip), 0)

    def _release(self, key: str) -> None:
        if self.shared is not None:
            self.shared.release(("total", "ip " + key))
        self.total -= 1
        left = self._per_key[key] - 1
        if left:
            self._per_key[key] = left
        else:
            del self._per_key[key]


class SessionCounter:
    """Logged-in sessions per account (IMAP and POP3 together)."""

    def __init__(self, max_per_account: int = 0, shared: CountTable | None = None) -> None:
        self.max_per_account = max_per_account
        self._held: dict[int, int] = {}
        self.shared = shared

    def acquire(self, account_id: int) -> bool:
        held = self._held.get(account_id, 0)
        if self.shared is not None:
            if self.shared.acquire(((f"account {account_id}", self.max_per_account),)) >= 0:
                return False
        elif self.max_per_account and held >= self.max_per_account:
            return False
        self._held[account_id] = held + 1
        return True

    def release(self, account_id: int) -> None:
        held = self._held.get(account_id, 0)
        if held and self.shared is not None:
            self.shared.release((f"account {account_id}",))
        if held > 1:
            self._held[account_id] = held - 1
        else:
            self._held.pop(account_id, None)

    def held(self, account_id: int) -> int:
        """Sessions of the account (in every worker process when the counts are shared)."""
        if self.shared is not None:
            return self.shared.count(f"account {account_id}")
        return self._held.get(account_id, 0)


def input_deadline(started: float, octets: int, floor: float, min_rate: float) -> float:
    """When a piece of input begun at ``started`` (of which ``octets`` have arrived) must be
    complete: a fixed allowance plus time for what was sent at the minimum rate. A client
    sending one byte a minute earns 1/min_rate seconds a minute and runs out of time."""
    return started + floor + octets / min_rate


def output_stalled(before: int, after: int, interval: float, min_rate: float) -> bool:
    """True when a full output buffer of ``before`` octets went down to ``after`` octets in
    ``interval`` seconds, less than the client must take at ``min_rate``."""
    return before - after < min(before, interval * min_rate)
