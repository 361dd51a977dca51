"""Password hashing with argon2id and the account authenticator (services ring)."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from postfach.auth.throttle import LoginThrottle

log = logging.getLogger(__name__)

_hasher = PasswordHasher()  # argon2id, library defaults (RFC 9106 second recommendation)
# Verified against when the user does not exist, so unknown users cost the same time.
_DUMMY_HASH = _hasher.hash("postfach-no-such-user")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    """Constant work whether or not the account exists."""
    try:
        return _hasher.verify(stored or _DUMMY_HASH, password) and stored is not None
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
    """Checks a username/password pair, slowing repeated failures per user and per address."""

    def __init__(
        self,
        lookup: Callable[[str], str | None],
        throttle: LoginThrottle | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self.throttle = throttle or LoginThrottle()
        self._clock = clock

    async def authenticate(self, username: str, password: str, remote_ip: str) -> str | None:
        """The canonical account name, or None. Never logs the password."""
        user = username.strip().lower()
        wait = self.throttle.delay(user, remote_ip, self._clock())
        if wait:
            await asyncio.sleep(wait)
        stored = self._lookup(user)
        ok = await asyncio.to_thread(verify_password, stored, password)
        if ok:
            self.throttle.succeeded(user)
            return user
        self.throttle.failed(user, remote_ip, self._clock())
        log.info("event=auth_failed user=%s ip=%s", user[:64], remote_ip)
        return None
