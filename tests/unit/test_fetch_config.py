"""fetch.toml: every mistake is one clear line naming the account and the key."""

from __future__ import annotations

import pytest

from postfach.client.config import format_fingerprint, parse_config, parse_fingerprint
from postfach.client.errors import FetchConfigError
from postfach.client.policy import Policy

FP = ":".join(["AB"] * 32)
GOOD = f"""
state_dir = "~/state"
[account.home]
host = "pop.example.org"
user = "alice@example.org"
password_command = "pass show mail"
policy = "delete"
maildir = "~/Mail"

[account.phone]
host = "pop.example.org"
port = 2110
tls = "starttls"
fingerprint = "SHA256:{FP}"
user = "alice@example.org"
password_file = "~/.pw"
policy = "keep-days"
keep_days = 14
mbox = "~/mbox"
server_quota = "1G"
warn_after_runs = 3
"""


def test_good_config() -> None:
    cfg = parse_config(GOOD)
    assert cfg.state_dir == "~/state"
    home, phone = cfg.accounts
    assert (home.name, home.port, home.tls, home.policy) == ("home", 995, "tls", Policy.DELETE)
    assert home.target_kind == "maildir" and home.password_command == "pass show mail"
    assert phone.port == 2110 and phone.fingerprint == b"\xab" * 32
    assert phone.policy is Policy.KEEP_DAYS and phone.keep_days == 14
    assert phone.server_quota == 1 << 30 and phone.warn_after_runs == 3
    assert cfg.account("phone") is phone
    with pytest.raises(FetchConfigError, match="no account 'nope'"):
        cfg.account("nope")


BASE = {
    "host": '"h"',
    "user": '"u"',
    "password_file": '"/pw"',
    "policy": '"keep"',
    "maildir": '"/m"',
}


def config(**changes: str | None) -> str:
    values = {**BASE, **changes}
    lines = [f"{k} = {v}" for k, v in values.items() if v is not None]
    return "[account.a]\n" + "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"password": '"secret"'}, "passwords do not belong"),
        ({"polcy": '"keep"'}, "unknown setting 'polcy'"),
        ({"policy": '"sometimes"'}, "policy must be one of"),
        ({"policy": '"keep-days"'}, "needs keep_days"),
        ({"keep_days": "3"}, "keep_days only goes with"),
        ({"mbox": '"/x"'}, "exactly one of maildir, mbox or postfach"),
        ({"maildir": None}, "exactly one of maildir, mbox or postfach"),
        ({"maildir": None, "mbox": '"/x"', "policy": '"delete-when-deleted-locally"'},
         "needs a maildir target"),
        ({"password_file": None}, "exactly one of password_command or password_file"),
        ({"password_command": '"x"'}, "exactly one of password_command or password_file"),
        ({"tls": '"ssl"'}, "tls must be one of"),
        ({"port": "70000"}, "port must be"),
        ({"host": None}, "host is missing"),
        ({"fingerprint": '"SHA256:xyz"'}, "not a SHA-256 fingerprint"),
        ({"tls": '"none"', "fingerprint": '"%s"' % ("00" * 32)}, "need tls"),
        ({"server_quota": '"lots"'}, "server_quota"),
        ({"timeout": "0"}, "timeout"),
    ],
)  # fmt: skip
def test_mistakes(changes: dict[str, str | None], message: str) -> None:
    with pytest.raises(FetchConfigError, match=message) as exc:
        parse_config(config(**changes), "f.toml")
    assert str(exc.value).startswith("f.toml: account 'a': ")
    assert "\n" not in str(exc.value)


def test_file_level_mistakes() -> None:
    for text, message in [
        ("", "no accounts"),
        ("x = 1\n[account.a]\n", "unknown setting 'x'"),
        ("[account]\n", "no accounts"),
        ("[account.'a b']\nhost='h'\n", "use letters"),
        ("[account.a\n", "f.toml"),
    ]:
        with pytest.raises(FetchConfigError, match=message):
            parse_config(text, "f.toml")


def test_fingerprints() -> None:
    digest = bytes(range(32))
    shown = format_fingerprint(digest)
    assert shown.startswith("SHA256:00:01:02")
    assert parse_fingerprint(shown) == digest
    assert parse_fingerprint(shown[7:].replace(":", "").lower()) == digest
    import base64

    assert parse_fingerprint("SHA256:" + base64.b64encode(digest).decode().rstrip("=")) == digest
    with pytest.raises(FetchConfigError):
        parse_fingerprint("SHA1:00")
