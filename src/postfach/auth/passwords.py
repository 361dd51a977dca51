"""Password hashing with argon2id and the account authenticator (services ring)."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from postfach.auth.throttle import LoginThrottle

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
    try:
        return _hasher.check_needs_rehash(stored)
    except InvalidHashError:
        return False


def same_text(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


class Authenticator:
    """Checks a username/password pair, slowing repeated failures per user and per address.

    argon2id is deliberately expensive (tens of milliseconds of CPU); mail programs log in again
    every few minutes, so a password that verified is remembered for ``cache_ttl`` seconds, as a
    keyed HMAC (the key lives only in this process), together with the stored hash it verified
    against: a password change, or any other password, goes through argon2 again.
    """

    def __init__(
        self,
        lookup: Callable[[str], str | None],
        throttle: LoginThrottle | None = None,
        clock: Callable[[], float] = time.monotonic,
        cache_ttl: float = 300.0,
        cache_max: int = 10_000,
    ) -> None:
        self._lookup = lookup
        self.throttle = throttle or LoginThrottle()
        self._clock = clock
        self._cache_ttl = cache_ttl
        self._cache_max = cache_max
        self._cache: dict[str, tuple[str, bytes, float]] = {}
        self._key = secrets.token_bytes(32)

    def _mac(self, user: str, password: str) -> bytes:
        return hmac.new(self._key, f"{user}\0{password}".encode(), hashlib.sha256).digest()

    def _cached(self, user: str, stored: str | None, password: str) -> bool:
        hit = self._cache.get(user)
        if hit is None or stored is None:
            return False
        cached_hash, mac, expires = hit
        if expires < self._clock() or cached_hash != stored:
            del self._cache[user]
            return False
        return hmac.compare_digest(mac, self._mac(user, password))

    def _remember(self, user: str, stored: str, password: str) -> None:
        if len(self._cache) >= self._cache_max:
            self._cache.clear()
        self._cache[user] = (stored, self._mac(user, password), self._clock() + self._cache_ttl)

    async def authenticate(self, username: str, password: str, remote_ip: str) -> str | None:
        """The canonical account name, or None. Never logs the password."""
        user = username.strip().lower()
        wait = self.throttle.delay(user, remote_ip, self._clock())
        if wait:
            await asyncio.sleep(wait)
        stored = self._lookup(user)
        if self._cached(user, stored, password):
            self.throttle.succeeded(user)
            return user
        ok = await asyncio.to_thread(verify_password, stored, password)
        if ok:
            assert stored is not None
            self._remember(user, stored, password)
            self.throttle.succeeded(user)
            return user
        self.throttle.failed(user, remote_ip, self._clock())
        log.info("event=auth_failed user=%s ip=%s", user[:64], remote_ip)
        return None
