"""Failed-login slow-down, per user and per remote address (pure core: time is passed in).

Every failure doubles the delay the next attempt for that user or address must wait, from
``base`` up to ``ceiling`` seconds; a success for the user clears its record, and records older
than ``window`` seconds are forgotten. The delay is applied to failures and successes alike, so
timing does not tell an attacker whether a password was right before the delay ran out.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class _Record:
    failures: int
    last: float


@dataclass(slots=True)
class LoginThrottle:
    base: float = 0.5
    ceiling: float = 15.0
    window: float = 900.0
    max_entries: int = 100_000
    _by_key: dict[str, _Record] = field(default_factory=dict)

    def _delay_for(self, key: str, now: float) -> float:
        rec = self._by_key.get(key)
        if rec is None:
            return 0.0
        if now - rec.last > self.window:
            del self._by_key[key]
            return 0.0
        return float(min(self.ceiling, self.base * 2 ** (rec.failures - 1)))

    def delay(self, user: str, ip: str, now: float) -> float:
        """Seconds to wait before checking this attempt."""
        return max(self._delay_for("u:" + user.lower(), now), self._delay_for("i:" + ip, now))

    def failed(self, user: str, ip: str, now: float) -> None:
        if len(self._by_key) >= self.max_entries:
            self._by_key.clear()  # bounded memory under a flood of distinct names
        for key in ("u:" + user.lower(), "i:" + ip):
            rec = self._by_key.get(key)
            if rec is None or now - rec.last > self.window:
                self._by_key[key] = _Record(1, now)
            else:
                rec.failures += 1
                rec.last = now

    def succeeded(self, user: str) -> None:
        self._by_key.pop("u:" + user.lower(), None)
