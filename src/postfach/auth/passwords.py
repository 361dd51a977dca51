"""Password hashing with argon2id and the account authenticator (services ring)."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from postfach.auth.throttle import LoginThrottle, Throttle
from postfach.errors import LoginLockedOut

log = logging.getLogger(__name__)

_hasher = PasswordHasher()  # argon2id, library defaults (RFC 9106 second recommendation)


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the user does not exist, so unknown users cost the same time.

    Made on first use, not at import (hashing costs a quarter of a second)."""
    return _hasher.hash("postfach-no-such-user")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    """Constant work whether or not the account exists."""
    try:
        return _hasher.verify(stored or _dummy_hash(), password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    """True when ``stored`` was made with other argon2 parameters (or variant) than today's.

    The parameters live in the hash itself (``$argon2id$v=19$m=...,t=...,p=...$salt$hash``),
    so an old hash keeps verifying; a successful login replaces it (`Authenticator`)."""
    try:
        return _hasher.check_needs_rehash(stored)
    except InvalidHashError:
        return False


def same_text(a: str, b: str) -> bool:
    """Constant-time equality of two strings (time depends on the length, not the contents)."""
    return hmac.compare_digest(a.encode(), b.encode())


def _field(value: str) -> str:
    """A log field value: as it is when plain, quoted when it has spaces or odd characters."""
    value = value[:64]
    if value and value.isascii() and value.isprintable() and " " not in value:
        return value
    return repr(value)


#: ``rehash(user, old_hash, new_hash)``: store new_hash only if the account's hash is still
#: old_hash (a concurrent password change wins); True if it was replaced.
Rehash = Callable[[str, str, str], Awaitable[bool]]


class Authenticator:
    """Checks a username/password pair, slowing repeated failures and locking out persistent
    ones per user and per address (`LoginThrottle`); one instance serves POP3, IMAP and
    submission, so failures on one protocol count on the others.

    argon2id is deliberately expensive (tens of milliseconds of CPU); mail programs log in again
    every few minutes, so a password that verified is remembered for ``cache_ttl`` seconds, as a
    keyed HMAC (the key lives only in this process), together with the stored hash it verified
    against: a password change, or any other password, goes through argon2 again.

    A hash made with older parameters is replaced after a successful login through ``rehash``
    (compare-and-set: only if the stored hash is still the one that verified).
    """

    def __init__(
        self,
        lookup: Callable[[str], str | None],
        throttle: Throttle | None = None,
        clock: Callable[[], float] = time.monotonic,
        cache_ttl: float = 300.0,
        cache_max: int = 10_000,
        rehash: Rehash | None = None,
    ) -> None:
        self._lookup = lookup
        self.throttle: Throttle = throttle or LoginThrottle()
        self._clock = clock
        self._cache_ttl = cache_ttl
        self._cache_max = cache_max
        self._cache: dict[str, tuple[str, bytes, float]] = {}
        self._key = secrets.token_bytes(32)
        self._rehash = rehash

    def _mac(self, user: str, password: str) -> bytes:
        return hmac.new(self._key, f"{user}\0{password}".encode(), hashlib.sha256).digest()

    def _cached(self, user: str, stored: str | None, password: str) -> bool:
        hit = self._cache.get(user)
        if hit is None or stored is None:
            return False
        cached_hash, mac, expires = hit
        if expires < self._clock() or not same_text(cached_hash, stored):
            del self._cache[user]
            return False
        return hmac.compare_digest(mac, self._mac(user, password))

    def _remember(self, user: str, stored: str, password: str) -> None:
        if len(self._cache) >= self._cache_max:
            self._cache.clear()
        self._cache[user] = (stored, self._mac(user, password), self._clock() + self._cache_ttl)

    async def _upgrade(self, user: str, stored: str, password: str) -> str:
        """Rehash with today's parameters if ``stored`` has others; the hash now stored."""
        if self._rehash is None or not needs_rehash(stored):
            return stored
        new = await asyncio.to_thread(hash_password, password)
        try:
            replaced = await self._rehash(user, stored, new)
        except Exception:
            log.exception("event=auth-rehash-failed user=%s", _field(user))
            return stored
        if not replaced:  # the password was changed meanwhile: leave the new one alone
            log.info("event=auth-rehash result=skipped user=%s", _field(user))
            return stored
        log.info("event=auth-rehash result=ok user=%s", _field(user))
        return new

    async def authenticate(self, username: str, password: str, remote_ip: str) -> str | None:
        """The canonical account name, or None; raises `LoginLockedOut` while this address is
        locked out (of everything, or of this account). Never logs the password."""
        user = username.strip().lower()
        now = self._clock()
        wait = self.throttle.delay(user, remote_ip, now)
        lockout = self.throttle.locked(user, remote_ip, now)
        if wait:
            await asyncio.sleep(wait)
        if lockout is not None:
            log.info(
                "event=auth-refused reason=lockout scope=%s ip=%s user=%s retry_after=%.0f",
                lockout.scope,
                _field(remote_ip),
                _field(user),
                lockout.until - now,
            )
            raise LoginLockedOut(lockout.until - now)
        stored = self._lookup(user)
        if self._cached(user, stored, password):
            self.throttle.succeeded(user)
            return user
        ok = await asyncio.to_thread(verify_password, stored, password)
        if ok:
            assert stored is not None
            stored = await self._upgrade(user, stored, password)
            self._remember(user, stored, password)
            self.throttle.succeeded(user)
            return user
        now = self._clock()
        started = self.throttle.failed(user, remote_ip, now)
        log.info("event=auth_failed user=%s ip=%s", _field(user), _field(remote_ip))
        for lock in started:
            log.warning(
                "event=auth-lockout scope=%s ip=%s user=%s failures=%d seconds=%.0f",
                lock.scope,
                _field(remote_ip),
                _field(user),
                lock.failures,
                lock.until - now,
            )
        return None
