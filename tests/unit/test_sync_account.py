"""The sync.toml parser (postfach.client.sync.account)."""

from __future__ import annotations

import pytest

from postfach.client.sync.account import SyncConfigError, default_state_path, parse_config

GOOD = """
[account.home]
host = "imap.example.org"
user = "alice@example.org"
password_command = ["pass", "show", "mail"]
maildir = "~/Mail/alice"
fingerprint = "SHA256:{fp}"
""".replace("{fp}", ":".join(["AB"] * 32))


def test_config() -> None:
    cfg = parse_config(GOOD)
    a = cfg.account("home")
    assert (a.port, a.tls, a.fsync, a.timeout) == (993, "tls", True, 60.0)
    assert a.fingerprint == bytes([0xAB] * 32)
    assert a.password_command == ("pass", "show", "mail")
    assert a.server == "alice@example.org@imap.example.org:993"
    assert default_state_path("~/Mail/alice/") == "~/Mail/alice.postfach-sync.db"
    starttls = parse_config(GOOD.replace("host =", 'tls = "starttls"\nhost ='))
    assert starttls.accounts[0].port == 143


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.replace("maildir", "mbox"), "unknown setting"),
        (lambda t: t.replace('maildir = "~/Mail/alice"', ""), "maildir is missing"),
        (lambda t: t + 'password = "x"\n', "passwords do not belong"),
        (lambda t: t + 'password_file = "x"\n', "exactly one of password_command"),
        (lambda t: t.replace("SHA256:AB", "SHA256:ZZ"), "fingerprint"),
        (lambda t: t + 'tls = "ssl"\n', "tls must be one of"),
        (lambda t: t + "port = 0\n", "port must be"),
        (lambda t: t + "fsync = 1\n", "fsync must be"),
        (lambda t: t + 'timeout = "x"\n', "timeout must be"),
        (lambda t: t.replace("[account.home]", "[account.'bad name']"), "use letters"),
        (lambda t: "x = 1\n" + t, "unknown setting"),
        (lambda t: "", "no accounts"),
        (lambda t: t + "[", "sync.toml"),
    ],
)
def test_config_mistakes(change: object, message: str) -> None:
    assert callable(change)
    with pytest.raises(SyncConfigError, match=message):
        parse_config(change(GOOD))


def test_config_refuses_two_accounts_in_one_maildir() -> None:
    twice = GOOD + GOOD.replace("[account.home]", "[account.work]")
    with pytest.raises(SyncConfigError, match="share a maildir"):
        parse_config(twice)
    with pytest.raises(SyncConfigError, match="no account 'x'"):
        parse_config(GOOD).account("x")
