"""Configuration: embedded defaults, ``postfach.toml``, ``POSTFACH_*`` environment variables.

Everything ends up in frozen dataclasses, validated once at start; every mistake is reported as
one clear line (`ConfigError`).
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from postfach.limits import Limits
from postfach.quota import parse_size

CONFIG_NAME = "postfach.toml"

#: ``[server] workers`` when not configured: one per CPU core the server may use (its CPU
#: affinity: a cpuset, ``taskset``, a container's ``--cpuset-cpus``), at most `MAX_AUTO_WORKERS`
DEFAULT_WORKERS = "auto"
MAX_AUTO_WORKERS = 8
MAX_WORKERS = 64


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
class RelayConfig:
    """``[relay]``: send remote mail through a smarthost instead of looking up MX records."""

    host: str
    port: int = 587
    username: str | None = None
    password_file: Path | None = None
    tls: str = "starttls"  # starttls | tls | none
    verify: bool = True  # check the smarthost's certificate
    ca_file: Path | None = None
    domains: tuple[str, ...] | None = None  # None: every remote domain

    def routes(self, domain: str) -> bool:
        return self.domains is None or domain.lower() in self.domains


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """``[queue]``: the outbound queue's retry schedule (seconds)."""

    first_retry: float = 450.0  # doubles with every attempt (DESIGN.md, mox)
    max_age: float = 5 * 86400.0  # give up and bounce after this long
    delay_notice: float = 4 * 3600.0  # a delay DSN once a message is this old; 0 = never
    per_domain: int = 4  # concurrent connections per destination domain
    poll: float = 30.0  # how often the runner looks for due work without being woken


@dataclass(frozen=True, slots=True)
class SubmissionConfig:
    """``[submission]``: the RFC 6409 message submission agent."""

    refuse_full_mailbox: bool = False  # refuse a full local mailbox at RCPT instead of a DSN
    sent_copy: str = "off"  # default for every account: auto | off
    sent_copy_accounts: tuple[str, ...] = ()  # accounts with sent_copy = auto
    sent_copy_window: float = 60.0  # wait this long for the client's own APPEND to Sent
    dkim: bool = True  # sign with the sender domain's key (made on first use)
    dkim_selector: str = "postfach"

    def wants_sent_copy(self, account: str) -> bool:
        return self.sent_copy == "auto" or account.lower() in self.sent_copy_accounts


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """``[auth]``: the failed-login delay and the temporary lockout (`LoginThrottle`)."""

    failure_delay: float = 0.5  # first delay after a failure; doubles per failure; 0 = none
    max_failure_delay: float = 15.0
    lockout_window: float = 900.0  # failures are counted over this many seconds
    lockout_ip: int = 10  # failures from one address that lock it out; 0 = never
    lockout_account: int = 10  # failures on one account that lock out the failing addresses
    lockout_duration: float = 900.0


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
    relay: RelayConfig | None = None
    queue: QueueConfig = QueueConfig()
    submission: SubmissionConfig = SubmissionConfig()
    user: str | None = None  # [server] user: whom a server started as root becomes
    workers: int = 1  # [server] workers: server processes (postfach.supervisor); 1 = no supervisor
    # [server] cpu_affinity: "auto" binds each worker to a CPU of its own when there is one worker
    # per usable CPU (postfach.supervisor.worker_cpu); "off" leaves them to the scheduler
    cpu_affinity: bool = True
    auth: AuthConfig = AuthConfig()
    limits: Limits = field(default_factory=Limits)

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
    known |= {"relay", "queue", "submission", "server"}
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
    if limits:
        updates["limits"] = _limits(limits)
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
    if auth:
        updates["auth"] = _auth(auth)
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
    if "relay" in raw:
        updates["relay"] = _relay(raw["relay"])
    if "queue" in raw:
        updates["queue"] = _queue(raw["queue"])
    if "submission" in raw:
        updates["submission"] = _submission(raw["submission"])
    if "server" in raw:
        server = _table(raw["server"], "server", {"user", "workers", "cpu_affinity"})
        if "user" in server:
            updates["user"] = str(server["user"]).strip() or None
        if "cpu_affinity" in server:
            updates["cpu_affinity"] = _affinity(server["cpu_affinity"])
    if env.get("POSTFACH_CPU_AFFINITY"):
        updates["cpu_affinity"] = _affinity(env["POSTFACH_CPU_AFFINITY"])
    workers: Any = raw.get("server", {}).get("workers", DEFAULT_WORKERS)
    if env.get("POSTFACH_WORKERS"):
        workers = env["POSTFACH_WORKERS"].strip()
    updates["workers"] = _workers(workers)
    if env.get("POSTFACH_USER"):
        updates["user"] = env["POSTFACH_USER"].strip()
    if "POSTFACH_POP3_AUTOLOGOUT" in env:
        updates["pop3_autologout"] = _number(env["POSTFACH_POP3_AUTOLOGOUT"], "autologout")
    return replace(cfg, **updates)


def _workers(value: Any) -> int:
    """``auto`` (one per usable CPU core, at most `MAX_AUTO_WORKERS`) or a count of processes."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return max(1, min(len(os.sched_getaffinity(0)), MAX_AUTO_WORKERS))
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_WORKERS:
        raise ConfigError(
            f"[server] workers: expected 'auto' or a number of processes from 1 to {MAX_WORKERS},"
            f" got {value!r}"
        )
    return value


def _affinity(value: Any) -> bool:
    """``auto`` (True) or ``off`` (False); TOML's ``true`` and ``false`` mean the same."""
    text = value.strip().lower() if isinstance(value, str) else value
    if text == "auto" or text is True:
        return True
    if text == "off" or text is False:
        return False
    raise ConfigError(f"[server] cpu_affinity: expected 'auto' or 'off', got {value!r}")


def _table(value: Any, name: str, keys: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    unknown = set(value) - keys
    if unknown:
        raise ConfigError(f"[{name}] has no key {sorted(unknown)[0]!r}")
    return value


def _relay(value: Any) -> RelayConfig:
    keys = {"host", "port", "username", "password_file", "tls", "verify", "ca_file", "domains"}
    t = _table(value, "relay", keys)
    host = str(t.get("host") or "").strip()
    if not host:
        raise ConfigError("[relay] host: the smarthost's name or address is required")
    tls = str(t.get("tls", "starttls")).lower()
    if tls not in {"starttls", "tls", "none"}:
        raise ConfigError("[relay] tls: use 'starttls', 'tls' or 'none'")
    port = t.get("port", 465 if tls == "tls" else 587)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port <= 65535:
        raise ConfigError(f"[relay] port: expected a port number, got {port!r}")
    domains = t.get("domains")
    if domains is not None and (
        not isinstance(domains, list) or not all(isinstance(d, str) for d in domains)
    ):
        raise ConfigError('[relay] domains: expected a list of domains, e.g. ["example.com"]')
    username = t.get("username")
    password_file = t.get("password_file")
    if username and not password_file:
        raise ConfigError("[relay] password_file: required with username")
    return RelayConfig(
        host=host,
        port=port,
        username=str(username) if username else None,
        password_file=Path(str(password_file)).expanduser() if password_file else None,
        tls=tls,
        verify=_bool(t.get("verify", True), "[relay] verify"),
        ca_file=Path(str(t["ca_file"])).expanduser() if t.get("ca_file") else None,
        domains=None if domains is None else tuple(d.lower().rstrip(".") for d in domains),
    )


def _queue(value: Any) -> QueueConfig:
    t = _table(value, "queue", {"first_retry", "max_age", "delay_notice", "per_domain", "poll"})
    out = QueueConfig()
    if "first_retry" in t:
        out = replace(out, first_retry=_number(t["first_retry"], "[queue] first_retry"))
    if "max_age" in t:
        out = replace(out, max_age=_number(t["max_age"], "[queue] max_age"))
    if "poll" in t:
        out = replace(out, poll=_number(t["poll"], "[queue] poll"))
    if "delay_notice" in t:
        notice = 0.0 if t["delay_notice"] in (0, "0", "off") else None
        out = replace(
            out,
            delay_notice=notice
            if notice is not None
            else _number(t["delay_notice"], "[queue] delay_notice"),
        )
    if "per_domain" in t:
        n = t["per_domain"]
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigError(f"[queue] per_domain: expected a positive integer, got {n!r}")
        out = replace(out, per_domain=n)
    return out


def _auth(value: Any) -> AuthConfig:
    numbers = {"failure_delay", "max_failure_delay", "lockout_window", "lockout_duration"}
    counts = {"lockout_ip", "lockout_account"}
    keys = numbers | counts | {"allow_plaintext", "allow_plaintext_on_loopback"}
    t = _table(value, "auth", keys)
    found: dict[str, Any] = {}
    for key in sorted(numbers & set(t)):
        v = t[key]
        if v in (0, 0.0) and key == "failure_delay":
            found[key] = 0.0
        else:
            found[key] = _number(v, f"[auth] {key}")
    for key in sorted(counts & set(t)):
        n = t[key]
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ConfigError(f"[auth] {key}: expected a number of failures (0 = off), got {n!r}")
        found[key] = n
    return AuthConfig(**found)


def _submission(value: Any) -> SubmissionConfig:
    keys = {"full_mailbox", "sent_copy", "sent_copy_window", "dkim", "dkim_selector"}
    t = _table(value, "submission", keys)
    out = SubmissionConfig()
    if "full_mailbox" in t:
        choice = str(t["full_mailbox"])
        if choice not in {"bounce", "refuse"}:
            raise ConfigError("[submission] full_mailbox: use 'bounce' (a DSN) or 'refuse'")
        out = replace(out, refuse_full_mailbox=choice == "refuse")
    if "sent_copy" in t:
        v = t["sent_copy"]
        if isinstance(v, list) and all(isinstance(a, str) for a in v):
            out = replace(out, sent_copy_accounts=tuple(a.lower() for a in v))
        elif v in ("auto", "off"):
            out = replace(out, sent_copy=str(v))
        else:
            raise ConfigError("[submission] sent_copy: use 'auto', 'off' or a list of accounts")
    if "sent_copy_window" in t:
        w = t["sent_copy_window"]
        if w in (0, 0.0):
            out = replace(out, sent_copy_window=0.0)
        else:
            out = replace(out, sent_copy_window=_number(w, "[submission] sent_copy_window"))
    if "dkim" in t:
        out = replace(out, dkim=_bool(t["dkim"], "[submission] dkim"))
    if "dkim_selector" in t:
        sel = str(t["dkim_selector"])
        if not sel or not all(c.isalnum() or c in "-_." for c in sel):
            raise ConfigError(f"[submission] dkim_selector: not a DNS label: {sel!r}")
        out = replace(out, dkim_selector=sel)
    return out


_COUNTS = ("max_connections", "max_connections_per_ip", "max_sessions_per_user")
_SECONDS = ("command_timeout", "write_timeout")


def _limits(value: Any) -> Limits:
    t = _table(value, "limits", {"max_message_size", "max_line", "min_rate", *_COUNTS, *_SECONDS})
    out: dict[str, Any] = {}
    for key in _COUNTS:
        if key in t:
            n = t[key]
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise ConfigError(f"[limits] {key}: expected a count (0: no limit), got {n!r}")
            out[key] = n
    for key in _SECONDS:
        if key in t:
            out[key] = _number(t[key], f"[limits] {key}")
    if "min_rate" in t:
        out["min_rate"] = float(_size(t["min_rate"], "[limits] min_rate"))
        if out["min_rate"] <= 0:
            raise ConfigError("[limits] min_rate: must be positive (octets per second)")
    if "max_line" in t:
        out["max_line"] = _size(t["max_line"], "[limits] max_line")
        if out["max_line"] < 512:
            raise ConfigError("[limits] max_line: must be at least 512 octets")
    return Limits(**out)


def _hostname() -> str:
    name = socket.gethostname()
    return name if "." in name else f"{name}.localdomain"


def listener_items(listeners: Listeners) -> list[tuple[str, Address]]:
    return [
        (f.name, addr)
        for f in fields(listeners)
        if (addr := getattr(listeners, f.name)) is not None
    ]
