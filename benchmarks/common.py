"""Shared pieces of the benchmarks: test messages, ports, child processes, CPU accounting.

Everything here talks to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import random
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import proctree

HOST = "127.0.0.1"
DOMAIN = "bench.example"
PASSWORD = "bench-password"
SENDER = "load@sender.example"

_LINE = 72
_SYLLABLES = (
    "ka",
    "ro",
    "mi",
    "te",
    "sul",
    "an",
    "ber",
    "do",
    "li",
    "ven",
    "is",
    "tor",
    "pa",
    "ne",
    "gi",
    "mun",
    "se",
    "al",
    "ko",
    "er",
    "ti",
    "vo",
    "ham",
    "de",
    "ru",
    "in",
)


def _vocabulary(rng: random.Random, size: int = 3000) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))))
    return sorted(words)


def delivery_accounts(n: int) -> list[str]:
    return [f"d{i:02d}@{DOMAIN}" for i in range(1, n + 1)]


def pop3_accounts(n: int) -> list[str]:
    return [f"p{i:02d}@{DOMAIN}" for i in range(1, n + 1)]


class MessageFactory:
    """Plain-text messages of an exact size (CRLF, no line starting with a dot).

    The body is word-like text (a fixed vocabulary of 3,000 made-up words, drawn with Zipf
    frequencies as in natural language, so a full-text index sees realistic repetition), shared
    by all messages; the headers are unique per message (Message-ID, Subject), so no two messages
    are byte-identical: a content-addressed store cannot deduplicate them.
    """

    def __init__(self, size: int, seed: int = 20) -> None:
        self.size = size
        rng = random.Random(seed)
        vocabulary = _vocabulary(rng)
        weights = [1 / rank for rank in range(1, len(vocabulary) + 1)]
        lines: list[bytes] = []
        total = 0
        while total < size + _LINE:
            line = ""
            while len(line) < _LINE - 12:
                line += rng.choices(vocabulary, weights)[0] + " "
            text = line.strip().capitalize() + "."
            lines.append(text.encode() + b"\r\n")
            total += len(lines[-1])
        self._body = b"".join(lines)

    def make(self, serial: int, rcpt: str) -> bytes:
        header = (
            f"From: Load Generator <{SENDER}>\r\n"
            f"To: <{rcpt}>\r\n"
            f"Subject: benchmark message {serial}\r\n"
            "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
            f"Message-ID: <bench.{serial}.{os.getpid()}@sender.example>\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=us-ascii\r\n"
            "\r\n"
        ).encode()
        need = self.size - len(header)
        if need < 2:
            return header
        body = self._body[: need - 2]
        # Cut at a line end so the message stays CRLF-clean, then pad the last line to size.
        cut = body.rfind(b"\r\n") + 2
        pad = need - 2 - cut
        return header + body[:cut] + b"x" * pad + b"\r\n"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_banner(
    port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None, what: str = ""
) -> None:
    """Wait until something on ``port`` greets (a line starting with 220 or +OK)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what or 'server'} exited with status {proc.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=2) as s:
                s.settimeout(2)
                banner = s.recv(512)
                if banner.startswith((b"220", b"+OK")):
                    return
                last = banner[:80].decode("ascii", "replace")
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise TimeoutError(f"{what or 'server'} on port {port} not ready after {timeout}s ({last})")


class Child:
    """A child process in its own process group, with stdout/stderr in a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        *,
        server: bool = True,
    ) -> None:
        self.name = name
        self.log = log
        self._log_file = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc: subprocess.Popen[bytes] = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        if server:
            _SERVER_ROOTS.add(self.proc.pid)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGTERM) -> None:
        """Ask politely, then kill this child's own process group (nothing else)."""
        try:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(sig)
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.kill_group()
                    self.proc.wait(timeout=5)
        finally:
            self._log_file.close()
            _SERVER_ROOTS.discard(self.proc.pid)

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            text = self.log.read_text(errors="replace").splitlines()
            return "\n".join(text[-lines:])
        return ""


# The servers we started (each is its own session leader): CPU figures are about their process
# trees (proctree.py). Helpers such as a profiler are started with ``server=False``.
_SERVER_ROOTS: set[int] = set()


def server_roots() -> set[int]:
    return set(_SERVER_ROOTS)


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """Machine-wide busy/total ticks, the servers' ticks, this process's CPU seconds."""

    busy: int
    total: int
    server: int
    own: float

    @staticmethod
    def now(servers: Collection[int] | None = None) -> CpuTimes:
        """``servers``: the roots whose trees count as "server" (default: every server the
        benchmark started and has not stopped)."""
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        total = sum(fields[:8])
        roots = _SERVER_ROOTS if servers is None else servers
        return CpuTimes(total - idle, total, proctree.cpu_ticks(roots), time.process_time())


@dataclass(frozen=True, slots=True)
class CpuUse:
    machine_cores: float  # busy cores on average (2.0 = both cores busy all the time)
    client_cores: float  # of which the load generator (this process)
    other_cores: float  # of which processes that are not part of the benchmark (noise)
    server_cores: float  # of which the servers under test (their process trees, user + system)

    @staticmethod
    def between(a: CpuTimes, b: CpuTimes, wall: float) -> CpuUse:
        ncpu = os.cpu_count() or 1
        per_core = max(1, b.total - a.total) / ncpu  # ticks one core had in the interval
        machine = (b.busy - a.busy) / per_core
        server = (b.server - a.server) / per_core
        client = (b.own - a.own) / wall if wall > 0 else 0.0
        return CpuUse(machine, client, max(0.0, machine - server - client), server)


def maildir_count(root: Path, accounts: Sequence[str]) -> int:
    """Messages in new/ and cur/ of each account's Maildir under ``root``."""
    n = 0
    for acc in accounts:
        for sub in ("new", "cur"):
            with contextlib.suppress(FileNotFoundError):
                n += len(os.listdir(root / acc / sub))
    return n


def load_sample(seconds: float = 2.0) -> CpuUse:
    """Who keeps the CPUs busy, averaged over ``seconds`` (the load generator is idle then)."""
    a = CpuTimes.now()
    time.sleep(seconds)
    return CpuUse.between(a, CpuTimes.now(), seconds)


def wait_for_idle_server(limit: float, max_wait: float, say: Callable[[str], None]) -> float:
    """Wait (at most ``max_wait`` s) until the servers under test have finished background work
    (a queue draining, indexing): two samples in a row below ``limit`` cores. Returns the wait."""
    t0 = time.monotonic()
    quiet = 0
    while quiet < 2 and time.monotonic() - t0 < max_wait:
        load = load_sample()
        if load.server_cores < limit:
            quiet += 1
            continue
        quiet = 0
        say(f"servers under test still busy ({load.server_cores:.2f} cores), waiting")
    return time.monotonic() - t0


def wait_for_quiet(limit: float, max_wait: float, say: Callable[[str], None]) -> CpuUse:
    """Wait (at most ``max_wait`` s) until other processes use < ``limit`` cores; returns the
    last sample."""
    deadline = time.monotonic() + max_wait
    load = load_sample()
    while load.other_cores >= limit and time.monotonic() < deadline:
        say(f"other processes use {load.other_cores:.2f} cores, waiting for a quieter machine")
        time.sleep(3)
        load = load_sample()
    return load


def raise_nofile(want: int) -> int:
    """Raise this process's RLIMIT_NOFILE (inherited by the servers it starts) to at least
    ``want`` where the hard limit allows (root may raise that too); returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, want)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(hard, target)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(target, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
