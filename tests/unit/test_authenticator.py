"""The authenticator: argon2id, the verified-password cache, and the failure slow-down."""

from __future__ import annotations

import asyncio

import pytest

from postfach.auth import passwords
from postfach.auth.passwords import Authenticator, hash_password
from postfach.auth.throttle import LoginThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cache_skips_argon2_only_for_the_same_password_and_hash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hashes = {"alice@example.org": hash_password("secret")}
    calls: list[str] = []
    real = passwords.verify_password

    def counting(stored: str | None, password: str) -> bool:
        calls.append(password)
        return real(stored, password)

    monkeypatch.setattr(passwords, "verify_password", counting)
    clock = Clock()
    auth = Authenticator(hashes.get, LoginThrottle(base=0), clock=clock, cache_ttl=60)

    def login(user: str, pw: str) -> str | None:
        return asyncio.run(auth.authenticate(user, pw, "192.0.2.1"))

    assert login("Alice@example.org", "secret") == "alice@example.org"
    assert login("alice@example.org", "secret") == "alice@example.org"
    assert calls == ["secret"]  # the second login came from the cache
    assert login("alice@example.org", "wrong") is None
    assert calls == ["secret", "wrong"]  # a wrong password always goes through argon2
    hashes["alice@example.org"] = hash_password("changed")
    assert login("alice@example.org", "secret") is None  # a password change drops the entry
    assert login("alice@example.org", "changed") == "alice@example.org"
    clock.now += 61
    assert login("alice@example.org", "changed") == "alice@example.org"
    assert calls == ["secret", "wrong", "secret", "changed", "changed"]  # expired: argon2 again
    assert login("nobody@example.org", "x") is None
