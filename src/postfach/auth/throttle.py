"""Failed-login slow-down and temporary lockout, per user and per remote address (pure core:
time is passed in).

Two mechanisms, both keyed by the name as typed and the address, never by whether the account
exists (an unknown name is slowed down and locked out exactly like a real one):

* **Delay.** Every failure doubles the delay the next attempt for that user or address must
  wait, from ``base`` up to ``ceiling`` seconds; a success for the user clears its record, and
  records older than ``window`` seconds are forgotten (Dovecot's auth penalty works this way:
  2 s doubling to 15 s per address). The delay is applied to failures and successes alike, so
  timing does not tell an attacker whether a password was right before the delay ran out.
* **Lockout.** ``ip_limit`` failures from one address within ``window`` seconds lock that
  address out of every account for ``lockout`` seconds. ``account_limit`` failures on one
  account name within ``window`` seconds, from any addresses, lock the account for ``lockout``
  seconds — but only for the addresses that failed on it (during the window or the lockout).
  An address that never sent a wrong password for the account (the owner's own mail programs)
  keeps logging in, so an attacker cannot lock a user out everywhere; a distributed attack
  gets one guess per fresh address while the lockout lasts. While locked, no password is
  checked at all: the answer cannot depend on whether it was right.

Memory is bounded: expired records are dropped first, then the oldest ones.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal, Protocol

Scope = Literal["ip", "account"]


@dataclass(slots=True)
class _Record:
    failures: int
    last: float


@dataclass(slots=True)
class _Recent:
    """The times of the latest failures (at most ``limit`` of them) and any lockout."""

    times: deque[float]
    locked_until: float = 0.0
    # account records only: addresses locked out of this account while it is locked
    addresses: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Lockout:
    scope: Scope
    until: float
    failures: int


class Throttle(Protocol):
    """What the authenticator asks: `LoginThrottle`, or the one worker processes share
    (`postfach.sharedthrottle`)."""

    def delay(self, user: str, ip: str, now: float) -> float: ...

    def locked(self, user: str, ip: str, now: float) -> Lockout | None: ...

    def failed(self, user: str, ip: str, now: float) -> list[Lockout]: ...

    def succeeded(self, user: str) -> None: ...


@dataclass(slots=True)
class LoginThrottle:
    base: float = 0.5
    ceiling: float = 15.0
    window: float = 900.0
    ip_limit: int = 10  # 0: never lock an address out
    account_limit: int = 10  # 0: never lock an account
    lockout: float = 900.0
    max_entries: int = 100_000
    _by_key: dict[str, _Record] = field(default_factory=dict)
    _ips: dict[str, _Recent] = field(default_factory=dict)
    _accounts: dict[str, _Recent] = field(default_factory=dict)

    # ---- delay --------------------------------------------------------------------------------

    def _delay_for(self, key: str, now: float) -> float:
        rec = self._by_key.get(key)
        if rec is None:
            return 0.0
        if now - rec.last > self.window:
            del self._by_key[key]
            return 0.0
        if self.base <= 0:
            return 0.0
        return float(min(self.ceiling, self.base * 2 ** (rec.failures - 1)))

    def delay(self, user: str, ip: str, now: float) -> float:
        """Seconds to wait before checking this attempt."""
        return max(self._delay_for("u:" + user.lower(), now), self._delay_for("i:" + ip, now))

    # ---- lockout ------------------------------------------------------------------------------

    def locked(self, user: str, ip: str, now: float) -> Lockout | None:
        """The lockout that refuses this attempt without checking the password, if any."""
        rec = self._ips.get(ip)
        if rec is not None and rec.locked_until > now:
            return Lockout("ip", rec.locked_until, self.ip_limit)
        acc = self._accounts.get(user.lower())
        if acc is not None and acc.locked_until > now and ip in acc.addresses:
            return Lockout("account", acc.locked_until, self.account_limit)
        return None

    def _count(self, table: dict[str, _Recent], key: str, limit: int, now: float) -> _Recent:
        rec = table.get(key)
        if rec is None:
            self._make_room(table, now)
            rec = table[key] = _Recent(deque(maxlen=max(limit, 1)))
        rec.times.append(now)
        return rec

    def _full(self, rec: _Recent, limit: int, now: float) -> bool:
        times = rec.times
        return limit > 0 and len(times) >= limit and now - times[0] <= self.window

    def failed(self, user: str, ip: str, now: float) -> list[Lockout]:
        """Record a failed attempt; the lockouts it starts (for the log)."""
        name = user.lower()
        self._make_room(self._by_key, now)
        for key in ("u:" + name, "i:" + ip):
            rec = self._by_key.get(key)
            if rec is None or now - rec.last > self.window:
                self._by_key[key] = _Record(1, now)
            else:
                rec.failures += 1
                rec.last = now
        started: list[Lockout] = []
        ip_rec = self._count(self._ips, ip, self.ip_limit, now)
        if ip_rec.locked_until <= now and self._full(ip_rec, self.ip_limit, now):
            ip_rec.locked_until = now + self.lockout
            ip_rec.times.clear()
            started.append(Lockout("ip", ip_rec.locked_until, self.ip_limit))
        acc = self._count(self._accounts, name, self.account_limit, now)
        if acc.locked_until > now:
            acc.addresses[ip] = now  # a fresh address that failed joins the locked ones
        else:
            acc.addresses = {a: t for a, t in acc.addresses.items() if now - t <= self.window}
            acc.addresses[ip] = now
            if self._full(acc, self.account_limit, now):
                acc.locked_until = now + self.lockout
                acc.times.clear()
                started.append(Lockout("account", acc.locked_until, self.account_limit))
            elif len(acc.addresses) > 4 * max(self.account_limit, 1):
                oldest = sorted(acc.addresses, key=acc.addresses.__getitem__)
                for a in oldest[: len(oldest) // 2]:
                    del acc.addresses[a]
        return started

    def succeeded(self, user: str) -> None:
        self._by_key.pop("u:" + user.lower(), None)

    def clears(self, user: str) -> bool:
        """Whether `succeeded` for this user would change anything."""
        return "u:" + user.lower() in self._by_key

    # ---- bounded memory -----------------------------------------------------------------------

    def _expired(self, value: _Record | _Recent, now: float) -> bool:
        if isinstance(value, _Record):
            return now - value.last > self.window
        last = value.times[-1] if value.times else 0.0
        return value.locked_until <= now and now - last > self.window

    def _make_room(self, table: dict[str, _Record] | dict[str, _Recent], now: float) -> None:
        if len(table) < self.max_entries:
            return
        for key in [k for k, v in table.items() if self._expired(v, now)]:
            del table[key]
        if len(table) < self.max_entries:
            return
        # A flood of fresh names or addresses: forget the oldest half, running lockouts last.
        unlocked = [k for k, v in table.items() if not self._locked_now(v, now)]
        locked = [k for k, v in table.items() if self._locked_now(v, now)]
        keys = unlocked + locked
        for key in keys[: len(table) // 2]:
            del table[key]

    @staticmethod
    def _locked_now(value: _Record | _Recent, now: float) -> bool:
        return isinstance(value, _Recent) and value.locked_until > now
