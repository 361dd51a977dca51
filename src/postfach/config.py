"""Configuration: embedded defaults, ``postfach.toml``, ``POSTFACH_*`` environment variables.

Everything ends up in frozen dataclasses, validated once at start; every mistake is reported as
one clear line (`ConfigError`).
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from postfach.quota import parse_size

CONFIG_NAME = "postfach.toml"


class ConfigError(ValueError):
    """A configuration mistake; the message is one line for the user."""


Address = tuple[str, int]

# Listener name -> default address. All on loopback, non-privileged ports (DESIGN.md "Runtime").
DEFAULT_LISTENERS: dict[str, Address | None] = {
    "smtp": ("127.0.0.1", 2525),
    "submission": ("127.0.0.1", 2587),
    "submissions": ("127.0.0.1", 2465),
    "pop3": ("127.0.0.1", 2110),
    "pop3s": ("127.0.0.1", 2995),
    "imap": ("127.0.0.1", 2143),
    "imaps": ("127.0.0.1", 2993),
    "http": ("127.0.0.1", 8025),
    "lmtp": None,
}


@dataclass(frozen=True, slots=True)
class Listeners:
    smtp: Address | None
    submission: Address | None
    submissions: Address | None
    pop3: Address | None
    pop3s: Address | None
    imap: Address | None
    imaps: Address | None
    http: Address | None
    lmtp: Address | None


@dataclass(frozen=True, slots=True)
class Config:
    data_dir: Path
    hostname: str
    listeners: Listeners
    max_message_size: int = 50 * 1024 * 1024
    default_quota: int = 0
    quota_temporary: bool = False
    allow_plaintext: bool = False
    allow_plaintext_on_loopback: bool = True
    pop3_autologout: float = 600.0
    imap_autologout: float = 30 * 60.0  # RFC 9051 §5.4: at least 30 minutes once logged in
    imap_login_timeout: float = 60.0  # before login
    smtp_timeout: float = 300.0
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def cert_path(self) -> Path:
        return self.tls_cert or self.data_dir / "tls" / "cert.pem"

    @property
    def key_path(self) -> Path:
        return self.tls_key or self.data_dir / "tls" / "key.pem"


def parse_address(text: str, name: str) -> Address | None:
    """``HOST:PORT``, ``[v6]:PORT``, ``PORT`` (loopback) or ``off``."""
    t = text.strip()
    if t.lower() in {"off", "none", "no", ""}:
        return None
    host, port_s = "127.0.0.1", t
    if t.startswith("["):
        end = t.find("]")
        if end < 0 or t[end + 1 : end + 2] != ":":
            raise ConfigError(f"{name}: bad address {text!r} (use [::1]:PORT)")
        host, port_s = t[1:end], t[end + 2 :]
    elif ":" in t:
        host, _, port_s = t.rpartition(":")
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ConfigError(f"{name}: bad port in {text!r} (use HOST:PORT or off)")
    return host or "127.0.0.1", int(port_s)


def default_data_dir(env: Mapping[str, str]) -> Path:
    if env.get("POSTFACH_DATA"):
        return Path(env["POSTFACH_DATA"]).expanduser()
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "postfach"


def _bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"1", "true", "yes", "on"}:
        return True
    if isinstance(value, str) and value.lower() in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name}: expected true or false, got {value!r}")


def _size(value: Any, name: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return parse_size(str(value))
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _number(value: Any, name: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected a number of seconds, got {value!r}") from None
    if out <= 0:
        raise ConfigError(f"{name}: must be positive")
    return out


def load_config(
    data_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> Config:
    env = os.environ if env is None else env
    data = (data_dir or default_data_dir(env)).expanduser()
    path = config_file or data / CONFIG_NAME
    raw: dict[str, Any] = {}
    if config_file is not None and not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    if path.exists():
        try:
            raw = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
    known = {"hostname", "listen", "limits", "quota", "auth", "tls", "timeouts"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{path}: unknown section or key {sorted(unknown)[0]!r}")

    listen_raw = raw.get("listen", {})
    listeners: dict[str, Address | None] = dict(DEFAULT_LISTENERS)
    for key, value in listen_raw.items():
        if key not in listeners:
            raise ConfigError(f"{path}: [listen] has no listener {key!r}")
        listeners[key] = parse_address(str(value), f"[listen] {key}")
    for key in listeners:
        value = env.get(f"POSTFACH_{key.upper()}")
        if value is not None:
            listeners[key] = parse_address(value, f"POSTFACH_{key.upper()}")

    cfg = Config(
        data_dir=data,
        hostname=str(raw.get("hostname") or env.get("POSTFACH_HOSTNAME") or _hostname()),
        listeners=Listeners(**listeners),
    )
    limits = raw.get("limits", {})
    quota = raw.get("quota", {})
    auth = raw.get("auth", {})
    tls = raw.get("tls", {})
    timeouts = raw.get("timeouts", {})
    updates: dict[str, Any] = {}
    if "max_message_size" in limits:
        updates["max_message_size"] = _size(limits["max_message_size"], "max_message_size")
    if "default" in quota:
        updates["default_quota"] = _size(quota["default"], "[quota] default")
    if "full_reply" in quota:
        choice = str(quota["full_reply"])
        if choice not in {"permanent", "temporary"}:
            raise ConfigError("[quota] full_reply: use 'permanent' (552 5.2.2) or 'temporary'")
        updates["quota_temporary"] = choice == "temporary"
    if "allow_plaintext" in auth:
        updates["allow_plaintext"] = _bool(auth["allow_plaintext"], "allow_plaintext")
    if "allow_plaintext_on_loopback" in auth:
        updates["allow_plaintext_on_loopback"] = _bool(
            auth["allow_plaintext_on_loopback"], "allow_plaintext_on_loopback"
        )
    if "pop3_autologout" in timeouts:
        updates["pop3_autologout"] = _number(timeouts["pop3_autologout"], "pop3_autologout")
    if "imap_autologout" in timeouts:
        updates["imap_autologout"] = _number(timeouts["imap_autologout"], "imap_autologout")
    if "imap_login" in timeouts:
        updates["imap_login_timeout"] = _number(timeouts["imap_login"], "[timeouts] imap_login")
    if "smtp" in timeouts:
        updates["smtp_timeout"] = _number(timeouts["smtp"], "[timeouts] smtp")
    if "cert" in tls:
        updates["tls_cert"] = Path(str(tls["cert"])).expanduser()
    if "key" in tls:
        updates["tls_key"] = Path(str(tls["key"])).expanduser()
    if "POSTFACH_POP3_AUTOLOGOUT" in env:
        updates["pop3_autologout"] = _number(env["POSTFACH_POP3_AUTOLOGOUT"], "autologout")
    return replace(cfg, **updates)


def _hostname() -> str:
    name = socket.gethostname()
    return name if "." in name else f"{name}.localdomain"


def listener_items(listeners: Listeners) -> list[tuple[str, Address]]:
    return [
        (f.name, addr)
        for f in fields(listeners)
        if (addr := getattr(listeners, f.name)) is not None
    ]
