"""Lockout, rehash on login and constant-time comparisons of the authenticator (issue 6, auth)."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from postfach.auth import passwords
from postfach.auth.passwords import Authenticator, hash_password, needs_rehash, same_text
from postfach.auth.throttle import LoginThrottle
from postfach.config import AuthConfig, ConfigError, load_config
from postfach.errors import LoginLockedOut

WEAK = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---- the throttle (pure) ------------------------------------------------------------------------


def test_address_locked_out_after_limit_within_window_then_released() -> None:
    t = LoginThrottle(base=0, window=60, ip_limit=3, account_limit=0, lockout=100)
    assert t.failed("a", "192.0.2.1", 0) == []
    assert t.failed("b", "192.0.2.1", 10) == []
    started = t.failed("c", "192.0.2.1", 20)
    assert [(s.scope, s.until, s.failures) for s in started] == [("ip", 120, 3)]
    for user in ("a", "anyone", "c"):  # every account, known or not
        lock = t.locked(user, "192.0.2.1", 21)
        assert lock is not None and lock.scope == "ip"
    assert t.locked("a", "198.51.100.7", 21) is None  # other addresses are not affected
    assert t.locked("a", "192.0.2.1", 121) is None  # temporary


def test_failures_spread_wider_than_the_window_do_not_lock() -> None:
    t = LoginThrottle(base=0, window=60, ip_limit=3, account_limit=0, lockout=100)
    for now in (0, 50, 100, 150, 200):  # never 3 within 60 s
        assert t.failed("a", "192.0.2.1", now) == []
    assert t.locked("a", "192.0.2.1", 201) is None


def test_account_lockout_applies_only_to_the_addresses_that_failed_on_it() -> None:
    t = LoginThrottle(base=0, window=600, ip_limit=0, account_limit=4, lockout=300)
    attackers = [f"203.0.113.{i}" for i in range(1, 5)]
    started = []
    for i, ip in enumerate(attackers):
        started += t.failed("alice@example.org", ip, i)
    assert [s.scope for s in started] == ["account"]
    for ip in attackers:
        lock = t.locked("Alice@Example.org", ip, 10)
        assert lock is not None and lock.scope == "account"
    # The owner's own address never sent a wrong password: it keeps logging in.
    assert t.locked("alice@example.org", "192.0.2.50", 10) is None
    # An attacking address may still try other accounts (only the address limit covers those).
    assert t.locked("bob@example.org", attackers[0], 10) is None
    # A fresh address gets one guess, then joins the locked ones while the lockout lasts.
    assert t.failed("alice@example.org", "198.51.100.9", 11) == []
    assert t.locked("alice@example.org", "198.51.100.9", 12) is not None
    assert t.locked("alice@example.org", attackers[0], 304) is None  # over after 300 s


def test_unknown_and_existing_names_are_treated_alike() -> None:
    """The throttle never learns whether an account exists: same inputs, same decisions."""
    runs = []
    for name in ("alice@example.org", "nosuchuser@example.org"):
        t = LoginThrottle(base=0.5, window=600, ip_limit=5, account_limit=3, lockout=60)
        trace: list[tuple[float, str | None, list[str]]] = []
        for i in range(6):
            lock = t.locked(name, "192.0.2.1", i)
            started = [] if lock else [s.scope for s in t.failed(name, "192.0.2.1", i)]
            trace.append((t.delay(name, "192.0.2.1", i), lock and lock.scope, started))
        runs.append(trace)
    assert runs[0] == runs[1]
    assert [scope for _, scope, _ in runs[0]] == [None, None, None, "account", "account", "account"]


def test_zero_limits_disable_lockout_and_zero_base_disables_delay() -> None:
    t = LoginThrottle(base=0, window=600, ip_limit=0, account_limit=0, lockout=60)
    for i in range(50):
        assert t.failed("alice", "192.0.2.1", i) == []
    assert t.locked("alice", "192.0.2.1", 51) is None
    assert t.delay("alice", "192.0.2.1", 51) == 0


def test_memory_stays_bounded_under_a_flood_of_names_and_keeps_live_lockouts() -> None:
    t = LoginThrottle(base=0, window=10, ip_limit=2, account_limit=0, lockout=1000, max_entries=50)
    t.failed("x", "192.0.2.1", 0)
    t.failed("y", "192.0.2.1", 0)
    assert t.locked("z", "192.0.2.1", 1) is not None
    for i in range(500):
        t.failed(f"user{i}", f"198.51.{i // 250}.{i % 250}", 20 + i * 0.001)
    assert len(t._ips) <= 50 and len(t._accounts) <= 50 and len(t._by_key) <= 50
    assert t.locked("z", "192.0.2.1", 21) is not None  # the running lockout survived


# ---- the authenticator --------------------------------------------------------------------------


def _run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_lockout_refuses_without_checking_the_password_and_logs_one_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    hashes = {"alice@example.org": hash_password("secret")}
    checked: list[str] = []
    real = passwords.verify_password

    def counting(stored: str | None, password: str) -> bool:
        checked.append(password)
        return real(stored, password)

    monkeypatch.setattr(passwords, "verify_password", counting)
    clock = Clock()
    throttle = LoginThrottle(base=0, window=600, ip_limit=3, account_limit=0, lockout=60)
    auth = Authenticator(hashes.get, throttle, clock=clock)
    caplog.set_level(logging.INFO, logger="postfach.auth.passwords")
    for pw in ("guess-1", "guess-2", "guess-3"):
        assert _run(auth.authenticate("alice@example.org", pw, "192.0.2.1")) is None
    lockouts = [r.getMessage() for r in caplog.records if "event=auth-lockout" in r.getMessage()]
    assert lockouts == [
        "event=auth-lockout scope=ip ip=192.0.2.1 user=alice@example.org failures=3 seconds=60"
    ]
    with pytest.raises(LoginLockedOut):  # even the right password is not looked at
        _run(auth.authenticate("alice@example.org", "secret", "192.0.2.1"))
    with pytest.raises(LoginLockedOut):
        _run(auth.authenticate("nosuchuser@example.org", "x", "192.0.2.1"))
    assert checked == ["guess-1", "guess-2", "guess-3"]
    assert not any("guess" in r.getMessage() or "secret" in r.getMessage() for r in caplog.records)
    assert _run(auth.authenticate("alice@example.org", "secret", "198.51.100.1")) == (
        "alice@example.org"
    )
    clock.now += 61
    assert _run(auth.authenticate("alice@example.org", "secret", "192.0.2.1")) == (
        "alice@example.org"
    )


def test_odd_user_names_are_quoted_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    auth = Authenticator({}.get, LoginThrottle(base=0))
    caplog.set_level(logging.INFO, logger="postfach.auth.passwords")
    _run(auth.authenticate("evil\nevent=auth-ok x", "pw", "192.0.2.1"))
    (line,) = [r.getMessage() for r in caplog.records]
    assert "\n" not in line and "user='evil\\nevent=auth-ok x'" in line


class Db:
    """The account table's password column with the store's compare-and-set."""

    def __init__(self, **hashes: str) -> None:
        self.hashes = hashes
        self.before_write: Callable[[], None] = lambda: None

    def lookup(self, name: str) -> str | None:
        return self.hashes.get(name)

    async def replace(self, name: str, old: str, new: str) -> bool:
        self.before_write()
        if self.hashes.get(name) != old:
            return False
        self.hashes[name] = new
        return True


def test_weak_hash_is_replaced_after_a_successful_login_only() -> None:
    weak = WEAK.hash("secret")
    db = Db(alice=weak)
    auth = Authenticator(db.lookup, LoginThrottle(base=0), rehash=db.replace)
    assert needs_rehash(weak)
    assert _run(auth.authenticate("alice", "wrong", "192.0.2.1")) is None
    assert db.hashes["alice"] == weak  # a failed login changes nothing
    assert _run(auth.authenticate("alice", "secret", "192.0.2.1")) == "alice"
    new = db.hashes["alice"]
    assert new != weak and not needs_rehash(new) and new.startswith("$argon2id$")
    assert PasswordHasher().verify(new, "secret")
    assert _run(auth.authenticate("alice", "secret", "192.0.2.1")) == "alice"
    assert db.hashes["alice"] == new  # current parameters: left alone


def test_rehash_never_overwrites_a_password_changed_meanwhile() -> None:
    weak = WEAK.hash("old-secret")
    db = Db(alice=weak)
    changed = hash_password("new-secret")

    def admin_changes_password() -> None:  # `postfach user passwd` between verify and write
        db.hashes["alice"] = changed

    db.before_write = admin_changes_password
    auth = Authenticator(db.lookup, LoginThrottle(base=0), rehash=db.replace)
    assert _run(auth.authenticate("alice", "old-secret", "192.0.2.1")) == "alice"
    assert db.hashes["alice"] == changed
    assert _run(auth.authenticate("alice", "old-secret", "192.0.2.1")) is None
    assert _run(auth.authenticate("alice", "new-secret", "192.0.2.1")) == "alice"


# ---- constant-time comparisons ------------------------------------------------------------------


def test_same_text_compares_whole_strings() -> None:
    assert same_text("", "")
    assert same_text("pässwörd", "pässwörd")
    assert not same_text("secret", "secreT")
    assert not same_text("secret", "secret ")
    assert not same_text("a" * 64, "a" * 63 + "b")


def test_cache_compares_hash_and_mac_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        assert isinstance(a, bytes) and isinstance(b, bytes)
        calls.append((a, b))
        return real(a, b)

    hashes = {"alice": hash_password("secret")}
    auth = Authenticator(hashes.get, LoginThrottle(base=0))
    assert _run(auth.authenticate("alice", "secret", "192.0.2.1")) == "alice"
    monkeypatch.setattr(passwords.hmac, "compare_digest", spy)
    assert _run(auth.authenticate("alice", "secret", "192.0.2.1")) == "alice"  # from the cache
    stored = hashes["alice"].encode()
    assert (stored, stored) in calls  # the cached hash against the stored one
    assert sum(len(a) == 32 for a, _ in calls) == 1  # the HMAC of user and password
    calls.clear()
    assert _run(auth.authenticate("alice", "wrong", "192.0.2.1")) is None
    assert len(calls) == 2  # a wrong password is compared the same way before argon2 runs


# ---- configuration ------------------------------------------------------------------------------


def test_auth_section_sets_throttle_and_rejects_mistakes(tmp_path: Path) -> None:
    data = tmp_path
    (data / "postfach.toml").write_text(
        "[auth]\nallow_plaintext_on_loopback = false\nfailure_delay = 0\n"
        "lockout_ip = 20\nlockout_account = 0\nlockout_window = 60\nlockout_duration = 30\n"
    )
    cfg = load_config(data, env={})
    assert cfg.auth == AuthConfig(
        failure_delay=0.0, lockout_ip=20, lockout_account=0, lockout_window=60, lockout_duration=30
    )
    assert cfg.allow_plaintext_on_loopback is False
    assert load_config(tmp_path / "none", env={}).auth == AuthConfig()
    for bad, message in (
        ("lockout_ip = -1", "lockout_ip"),
        ("lockout_ip = 'many'", "lockout_ip"),
        ("lockout_duration = 0", "must be positive"),
        ("lockuot_ip = 3", "no key 'lockuot_ip'"),
    ):
        (data / "postfach.toml").write_text(f"[auth]\n{bad}\n")
        with pytest.raises(ConfigError, match=message):
            load_config(data, env={})
