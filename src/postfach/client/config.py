"""``fetch.toml``: the accounts ``postfach fetch`` collects mail from (pure core).

Example (``~/.config/postfach/fetch.toml``)::

    # state_dir = "~/.local/state/postfach/fetch"     # UIDL state, one file per account

    [account.home]                     # the home PC: download and delete
    host = "pop.example.org"
    user = "alice@example.org"
    password_command = "pass show mail/alice"          # or password_file = "~/.alice.pw"
    policy = "delete"
    maildir = "~/Mail/INBOX"

    [account.phone]                    # leave mail on the server for the home PC
    host = "pop.example.org"
    port = 2110
    tls = "starttls"                   # "tls" (default, port 995), "starttls" or "none"
    fingerprint = "SHA256:AB:CD:..."   # pin a self-signed certificate instead of a CA
    user = "alice@example.org"
    password_file = "~/.config/postfach/alice.pw"
    policy = "keep"                    # or "keep-days" with keep_days = 14,
                                       # or "delete-when-deleted-locally" (Maildir only)
    mbox = "~/mbox"                    # or postfach = "alice@localhost" (with --data)
    warn_after_runs = 5                # warn if the server mailbox grew on each of 5 runs
    server_quota = "1G"                # warn at 80% of it, if you know it

Passwords never go in this file or on the command line. Paths are returned as written; the
caller expands ``~``.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from postfach.client.credentials import format_fingerprint, parse_fingerprint, secrets_and_pin
from postfach.client.errors import FetchConfigError
from postfach.client.policy import Policy
from postfach.quota import parse_size

__all__ = [
    "AccountConfig",
    "FetchConfig",
    "format_fingerprint",
    "parse_config",
    "parse_fingerprint",
    "secrets_and_pin",
]

TLS_MODES: Final = ("tls", "starttls", "none")
TARGETS: Final = ("maildir", "mbox", "postfach")
_ACCOUNT_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_KNOWN_KEYS: Final = frozenset(
    {
        "host", "port", "user", "tls", "fingerprint", "ca_file", "password_command",
        "password_file", "policy", "keep_days", "warn_after_runs", "server_quota", "timeout",
        *TARGETS,
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class AccountConfig:
    name: str
    host: str
    user: str
    policy: Policy
    target_kind: str  # "maildir" | "mbox" | "postfach"
    target: str  # a path, or a postfach account address
    port: int = 995
    tls: str = "tls"
    fingerprint: bytes | None = None  # SHA-256 of the server certificate (DER)
    ca_file: str | None = None
    password_command: str | tuple[str, ...] | None = None
    password_file: str | None = None
    keep_days: int = 0
    warn_after_runs: int = 5
    server_quota: int = 0
    timeout: float = 60.0

    @property
    def server(self) -> str:
        """Whose UIDLs the state holds."""
        return f"{self.user}@{self.host}"


@dataclass(frozen=True, slots=True)
class FetchConfig:
    accounts: tuple[AccountConfig, ...]
    state_dir: str | None = None

    def account(self, name: str) -> AccountConfig:
        for a in self.accounts:
            if a.name == name:
                return a
        known = ", ".join(a.name for a in self.accounts) or "none"
        raise FetchConfigError(f"no account {name!r} in the config (accounts: {known})")


# ---- the file -------------------------------------------------------------------------------


def parse_config(text: str, source: str = "fetch.toml") -> FetchConfig:
    """Parse and validate; the first mistake raises FetchConfigError naming file, account, key."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FetchConfigError(f"{source}: {exc}") from None
    unknown = sorted(set(raw) - {"account", "state_dir"})
    if unknown:
        raise FetchConfigError(f"{source}: unknown setting {unknown[0]!r}")
    state_dir = raw.get("state_dir")
    if state_dir is not None and not isinstance(state_dir, str):
        raise FetchConfigError(f"{source}: state_dir must be a string")
    table = raw.get("account", {})
    if not isinstance(table, dict) or not table:
        raise FetchConfigError(f"{source}: no accounts (add an [account.NAME] table)")
    accounts = []
    for name, values in table.items():
        where = f"{source}: account {name!r}"
        if not _ACCOUNT_NAME.match(name):
            raise FetchConfigError(f"{where}: use letters, digits, '.', '_' and '-' in the name")
        if not isinstance(values, dict):
            raise FetchConfigError(f"{where}: must be a table ([account.{name}])")
        accounts.append(_account(name, values, where))
    return FetchConfig(tuple(accounts), state_dir)


def _account(name: str, v: Mapping[str, Any], where: str) -> AccountConfig:
    if "password" in v or "pass" in v:
        raise FetchConfigError(
            f"{where}: passwords do not belong in the config file;"
            " use password_command or password_file"
        )
    unknown = sorted(set(v) - _KNOWN_KEYS)
    if unknown:
        raise FetchConfigError(f"{where}: unknown setting {unknown[0]!r}")

    def string(key: str, required: bool = False) -> str | None:
        value = v.get(key)
        if value is None:
            if required:
                raise FetchConfigError(f"{where}: {key} is missing")
            return None
        if not isinstance(value, str) or not value.strip():
            raise FetchConfigError(f"{where}: {key} must be a non-empty string")
        return value

    def integer(key: str, default: int, low: int, high: int) -> int:
        value = v.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise FetchConfigError(f"{where}: {key} must be a whole number from {low} to {high}")
        return value

    host = string("host", required=True)
    user = string("user", required=True)
    assert host is not None and user is not None
    tls = v.get("tls", "tls")
    if tls not in TLS_MODES:
        raise FetchConfigError(f"{where}: tls must be one of {', '.join(TLS_MODES)}")
    port = integer("port", 995 if tls == "tls" else 110, 1, 65535)

    policy_text = string("policy", required=True)
    try:
        policy = Policy(policy_text)
    except ValueError:
        choices = ", ".join(p.value for p in Policy)
        raise FetchConfigError(f"{where}: policy must be one of {choices}") from None
    if policy is Policy.KEEP_DAYS:
        if "keep_days" not in v:
            raise FetchConfigError(f'{where}: policy "keep-days" needs keep_days = N')
        keep_days = integer("keep_days", 0, 0, 36500)
    elif "keep_days" in v:
        raise FetchConfigError(f'{where}: keep_days only goes with policy = "keep-days"')
    else:
        keep_days = 0

    targets = [t for t in TARGETS if t in v]
    if len(targets) != 1:
        raise FetchConfigError(f"{where}: set exactly one of maildir, mbox or postfach")
    kind = targets[0]
    target = string(kind, required=True)
    assert target is not None
    if policy is Policy.DELETE_WHEN_DELETED_LOCALLY and kind != "maildir":
        raise FetchConfigError(
            f'{where}: policy "delete-when-deleted-locally" needs a maildir target'
        )

    command, password_file, fingerprint = secrets_and_pin(v, string, where, tls)

    quota_value = v.get("server_quota", 0)
    try:
        quota = parse_size(str(quota_value)) if quota_value else 0
    except ValueError as exc:
        raise FetchConfigError(f"{where}: server_quota: {exc}") from None

    timeout = v.get("timeout", 60)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 1:
        raise FetchConfigError(f"{where}: timeout must be a number of seconds, at least 1")

    return AccountConfig(
        name=name, host=host, user=user, policy=policy, target_kind=kind, target=target,
        port=port, tls=tls, fingerprint=fingerprint, ca_file=string("ca_file"),
        password_command=command, password_file=password_file, keep_days=keep_days,
        warn_after_runs=integer("warn_after_runs", 5, 0, 1000), server_quota=quota,
        timeout=float(timeout),
    )  # fmt: skip
