"""``sync.toml``: the IMAP accounts ``postfach sync`` keeps in step with Maildirs (pure core).

Example (``~/.config/postfach/sync.toml``), laid out like ``fetch.toml``::

    [account.home]
    host = "imap.example.org"
    port = 993                          # default: 993 with tls = "tls", else 143
    tls = "tls"                         # "tls" (default), "starttls" or "none"
    fingerprint = "SHA256:AB:CD:..."    # pin a self-signed certificate instead of a CA
    # ca_file = "~/my-ca.pem"
    user = "alice@example.org"
    password_command = "pass show mail/alice"   # or password_file = "~/.config/postfach/alice.pw"
    maildir = "~/Mail/alice"            # Maildir++: INBOX here, other folders as .Name
    # state = "~/Mail/alice.postfach-sync.db"   # default: beside the Maildir
    # timeout = 60
    # fsync = true                      # fsync every message before recording it

Passwords never go in this file. Paths are returned as written; the caller expands ``~``.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from postfach.client.credentials import secrets_and_pin
from postfach.client.errors import FetchConfigError

__all__ = ["SyncAccount", "SyncConfig", "SyncConfigError", "default_state_path", "parse_config"]

TLS_MODES: Final = ("tls", "starttls", "none")
_ACCOUNT_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_KNOWN_KEYS: Final = frozenset(
    {"host", "port", "user", "tls", "fingerprint", "ca_file", "password_command",
     "password_file", "maildir", "state", "timeout", "fsync"}
)  # fmt: skip


class SyncConfigError(Exception):
    """``sync.toml`` (or an option) is wrong; the text names the file, account and key."""


@dataclass(frozen=True, slots=True)
class SyncAccount:
    name: str
    host: str
    user: str
    maildir: str
    port: int = 993
    tls: str = "tls"
    fingerprint: bytes | None = None
    ca_file: str | None = None
    password_command: str | tuple[str, ...] | None = None
    password_file: str | None = None
    state: str | None = None
    timeout: float = 60.0
    fsync: bool = True

    @property
    def server(self) -> str:
        """Whose mail the state holds: ``user@host:port``."""
        return f"{self.user}@{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class SyncConfig:
    accounts: tuple[SyncAccount, ...]

    def account(self, name: str) -> SyncAccount:
        for a in self.accounts:
            if a.name == name:
                return a
        known = ", ".join(a.name for a in self.accounts) or "none"
        raise SyncConfigError(f"no account {name!r} in the config (accounts: {known})")


def default_state_path(maildir: str) -> str:
    """The state file beside the Maildir: ``~/Mail/alice`` → ``~/Mail/alice.postfach-sync.db``."""
    return maildir.rstrip("/") + ".postfach-sync.db"


def parse_config(text: str, source: str = "sync.toml") -> SyncConfig:
    """Parse and validate; the first mistake raises SyncConfigError naming file, account, key."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SyncConfigError(f"{source}: {exc}") from None
    unknown = sorted(set(raw) - {"account"})
    if unknown:
        raise SyncConfigError(f"{source}: unknown setting {unknown[0]!r}")
    table = raw.get("account", {})
    if not isinstance(table, dict) or not table:
        raise SyncConfigError(f"{source}: no accounts (add an [account.NAME] table)")
    accounts = []
    for name, values in table.items():
        where = f"{source}: account {name!r}"
        if not _ACCOUNT_NAME.match(name):
            raise SyncConfigError(f"{where}: use letters, digits, '.', '_' and '-' in the name")
        if not isinstance(values, dict):
            raise SyncConfigError(f"{where}: must be a table ([account.{name}])")
        accounts.append(_account(name, values, where))
    maildirs = [a.maildir.rstrip("/") for a in accounts]
    if len(set(maildirs)) != len(maildirs):
        raise SyncConfigError(f"{source}: two accounts share a maildir")
    return SyncConfig(tuple(accounts))


def _account(name: str, v: Mapping[str, Any], where: str) -> SyncAccount:
    if "password" in v or "pass" in v:
        raise SyncConfigError(
            f"{where}: passwords do not belong in the config file;"
            " use password_command or password_file"
        )
    unknown = sorted(set(v) - _KNOWN_KEYS)
    if unknown:
        raise SyncConfigError(f"{where}: unknown setting {unknown[0]!r}")

    def string(key: str, required: bool = False) -> str | None:
        value = v.get(key)
        if value is None:
            if required:
                raise SyncConfigError(f"{where}: {key} is missing")
            return None
        if not isinstance(value, str) or not value.strip():
            raise SyncConfigError(f"{where}: {key} must be a non-empty string")
        return value

    host = string("host", required=True)
    user = string("user", required=True)
    maildir = string("maildir", required=True)
    assert host is not None and user is not None and maildir is not None
    tls = v.get("tls", "tls")
    if tls not in TLS_MODES:
        raise SyncConfigError(f"{where}: tls must be one of {', '.join(TLS_MODES)}")
    port = v.get("port", 993 if tls == "tls" else 143)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise SyncConfigError(f"{where}: port must be a whole number from 1 to 65535")

    try:
        command, password_file, fingerprint = secrets_and_pin(v, string, where, tls)
    except FetchConfigError as exc:
        raise SyncConfigError(str(exc)) from None

    timeout = v.get("timeout", 60)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 1:
        raise SyncConfigError(f"{where}: timeout must be a number of seconds, at least 1")
    fsync = v.get("fsync", True)
    if not isinstance(fsync, bool):
        raise SyncConfigError(f"{where}: fsync must be true or false")

    return SyncAccount(
        name=name, host=host, user=user, maildir=maildir, port=port, tls=tls,
        fingerprint=fingerprint, ca_file=string("ca_file"), password_command=command,
        password_file=password_file, state=string("state"), timeout=float(timeout), fsync=fsync,
    )  # fmt: skip
