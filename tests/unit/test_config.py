"""Configuration: defaults, postfach.toml, environment, and one clear line per mistake."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from postfach.config import MAX_AUTO_WORKERS, ConfigError, load_config, parse_address


def test_embedded_defaults(tmp_path: Path) -> None:
    cfg = load_config(tmp_path, env={})
    ls = cfg.listeners
    assert ls.smtp == ("127.0.0.1", 2525)
    assert (ls.pop3, ls.pop3s) == (("127.0.0.1", 2110), ("127.0.0.1", 2995))
    assert (ls.imap, ls.imaps, ls.http) == (
        ("127.0.0.1", 2143), ("127.0.0.1", 2993), ("127.0.0.1", 8025),
    )  # fmt: skip
    assert ls.lmtp is None
    assert cfg.quota_temporary is False and cfg.allow_plaintext_on_loopback is True
    assert cfg.cert_path == tmp_path / "tls" / "cert.pem"


def test_environment_overrides_listeners(tmp_path: Path) -> None:
    env = {"POSTFACH_SMTP": "0.0.0.0:25", "POSTFACH_POP3": "off", "POSTFACH_IMAPS": "[::1]:993"}
    cfg = load_config(tmp_path, env=env)
    assert cfg.listeners.smtp == ("0.0.0.0", 25)
    assert cfg.listeners.pop3 is None
    assert cfg.listeners.imaps == ("::1", 993)


def test_data_dir_from_environment(tmp_path: Path) -> None:
    cfg = load_config(None, env={"POSTFACH_DATA": str(tmp_path / "x")})
    assert cfg.data_dir == tmp_path / "x"
    cfg = load_config(None, env={"XDG_DATA_HOME": str(tmp_path)})
    assert cfg.data_dir == tmp_path / "postfach"


def test_toml_file(tmp_path: Path) -> None:
    (tmp_path / "postfach.toml").write_text(
        'hostname = "mx.example.org"\n'
        '[listen]\nsmtp = "127.0.0.1:2526"\nlmtp = "127.0.0.1:2424"\n'
        '[limits]\nmax_message_size = "10M"\n'
        '[quota]\nfull_reply = "temporary"\n'
        "[timeouts]\npop3_autologout = 30\nimap_autologout = 1800\nimap_login = 20\n"
    )
    cfg = load_config(tmp_path, env={"POSTFACH_SMTP": "127.0.0.1:2527"})
    assert cfg.hostname == "mx.example.org"
    assert cfg.listeners.smtp == ("127.0.0.1", 2527)  # environment wins over the file
    assert cfg.listeners.lmtp == ("127.0.0.1", 2424)
    assert cfg.max_message_size == 10 * 1024 * 1024
    assert cfg.quota_temporary is True
    assert cfg.pop3_autologout == 30
    assert (cfg.imap_autologout, cfg.imap_login_timeout) == (1800, 20)


def test_limits_defaults_and_file(tmp_path: Path) -> None:
    cfg = load_config(tmp_path, env={})
    assert cfg.limits.max_connections == 1000 and cfg.limits.max_connections_per_ip == 50
    assert cfg.limits.max_sessions_per_user == 20 and cfg.limits.max_line == 64 * 1024
    (tmp_path / "postfach.toml").write_text(
        "[limits]\nmax_connections = 3000\nmax_connections_per_ip = 0\n"
        'max_sessions_per_user = 3\nmax_line = "16K"\nmin_rate = "4K"\n'
        'command_timeout = 5\nwrite_timeout = 2.5\nmax_message_size = "1M"\n'
    )
    cfg = load_config(tmp_path, env={})
    lim = cfg.limits
    assert (lim.max_connections, lim.max_connections_per_ip, lim.max_sessions_per_user) == (
        3000,
        0,
        3,
    )
    assert (lim.max_line, lim.min_rate) == (16 * 1024, 4096.0)
    assert (lim.command_timeout, lim.write_timeout) == (5.0, 2.5)
    assert cfg.max_message_size == 1024 * 1024


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[limits]\nmax_connections = -1\n", "[limits] max_connections: expected a count"),
        ('[limits]\nmax_connections_per_ip = "lots"\n', "max_connections_per_ip: expected"),
        ("[limits]\nmax_sessions = 3\n", "[limits] has no key 'max_sessions'"),
        ("[limits]\ncommand_timeout = 0\n", "command_timeout: must be positive"),
        ("[limits]\nmax_line = 100\n", "max_line: must be at least 512"),
        ('[limits]\nmin_rate = "0"\n', "min_rate: must be positive"),
    ],
)
def test_limits_mistakes_are_one_line(tmp_path: Path, toml: str, message: str) -> None:
    (tmp_path / "postfach.toml").write_text(toml)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")) as e:
        load_config(tmp_path, env={})
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ('[listen]\nsmtp = "127.0.0.1:99999"\n', {}, "bad port"),
        ('[listen]\nbogus = "1"\n', {}, "no listener 'bogus'"),
        ("[nonsense]\n", {}, "unknown section"),
        ('[limits]\nmax_message_size = "12X"\n', {}, "not a size"),
        ('[quota]\nfull_reply = "maybe"\n', {}, "permanent"),
        ("this is not toml", {}, "postfach.toml"),
        ("", {"POSTFACH_POP3": "localhost:abc"}, "POSTFACH_POP3: bad port"),
        ("[timeouts]\npop3_autologout = -1\n", {}, "must be positive"),
        ('[server]\ngroup = "mail"\n', {}, "[server] has no key 'group'"),
    ],
)
def test_mistakes_are_one_line(
    tmp_path: Path, toml: str, env: dict[str, str], message: str
) -> None:
    (tmp_path / "postfach.toml").write_text(toml)
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path, env=env)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_server_user_from_file_and_environment(tmp_path: Path) -> None:
    assert load_config(tmp_path, env={}).user is None
    (tmp_path / "postfach.toml").write_text('[server]\nuser = "postfach"\n')
    assert load_config(tmp_path, env={}).user == "postfach"
    assert load_config(tmp_path, env={"POSTFACH_USER": "mail"}).user == "mail"


def test_server_workers_from_file_and_environment(tmp_path: Path) -> None:
    cores = max(1, min(len(os.sched_getaffinity(0)), MAX_AUTO_WORKERS))
    assert load_config(tmp_path, env={}).workers == cores  # "auto"
    (tmp_path / "postfach.toml").write_text("[server]\nworkers = 3\n")
    assert load_config(tmp_path, env={}).workers == 3
    assert load_config(tmp_path, env={"POSTFACH_WORKERS": "1"}).workers == 1
    assert load_config(tmp_path, env={"POSTFACH_WORKERS": "auto"}).workers == cores
    for bad in ("0", "many", "-2", "65"):
        with pytest.raises(ConfigError, match=r"\[server\] workers: expected 'auto'"):
            load_config(tmp_path, env={"POSTFACH_WORKERS": bad})
    (tmp_path / "postfach.toml").write_text("[server]\nworkers = true\n")
    with pytest.raises(ConfigError, match="workers"):
        load_config(tmp_path, env={})


def test_auto_workers_count_the_cpus_the_server_may_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container or cpuset that gives the server 2 of 16 cores: 2 workers, not 8."""
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {4, 5})
    assert load_config(tmp_path, env={}).workers == 2


def test_cpu_affinity_is_auto_unless_switched_off(tmp_path: Path) -> None:
    assert load_config(tmp_path, env={}).cpu_affinity is True
    (tmp_path / "postfach.toml").write_text('[server]\ncpu_affinity = "off"\n')
    assert load_config(tmp_path, env={}).cpu_affinity is False
    assert load_config(tmp_path, env={"POSTFACH_CPU_AFFINITY": "Auto"}).cpu_affinity is True
    (tmp_path / "postfach.toml").write_text("[server]\ncpu_affinity = false\n")
    assert load_config(tmp_path, env={}).cpu_affinity is False
    (tmp_path / "postfach.toml").write_text("[server]\ncpu_affinity = true\n")
    assert load_config(tmp_path, env={}).cpu_affinity is True
    (tmp_path / "postfach.toml").write_text("[server]\ncpu_affinity = 0\n")
    with pytest.raises(ConfigError, match="cpu_affinity"):
        load_config(tmp_path, env={})
    for bad in ("0-3", "yes please"):
        with pytest.raises(ConfigError, match=r"\[server\] cpu_affinity: expected 'auto' or 'off'"):
            load_config(tmp_path, env={"POSTFACH_CPU_AFFINITY": bad})


def test_parse_address_forms() -> None:
    assert parse_address("2525", "x") == ("127.0.0.1", 2525)
    assert parse_address("[::1]:2525", "x") == ("::1", 2525)
    assert parse_address("OFF", "x") is None
    with pytest.raises(ConfigError):
        parse_address("[::1]2525", "x")
