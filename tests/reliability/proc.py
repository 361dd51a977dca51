"""A real ``postfach serve`` in a child process: what the crash, signal and syscall tests need.

The server threads of ``tests/support.py`` cannot be SIGKILLed or traced on their own; these can.
Every listener is on an ephemeral loopback port; the ports are read back from what ``serve``
prints once it is listening.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

LISTENERS = ("smtp", "lmtp", "submission", "submissions", "pop3", "pop3s", "imap", "imaps")
_LINE = re.compile(rb"^\s+(\w+)\s+\[?([0-9a-fA-F.:]+?)\]?:(\d+)\s*$")


def children(pid: int) -> list[int]:
    """The pids of a process's children (none once it is gone)."""
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return found


def alive(pid: int) -> bool:
    """Some thread of the process has not finished exiting. A killed process's main thread
    can be a zombie while its other threads still exit, holding the files (and locks) that the
    threads share; all of them are released only when the last thread is gone."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        if stat[stat.rindex(b")") + 2 :][:1] not in (b"Z", b"X"):
            return True
    return False


def thread_nice_values(pid: int) -> list[int]:
    """The nice value of every thread of process ``pid``, lowest first (the 19th field of
    ``/proc/<pid>/task/<tid>/stat``: what the scheduler goes by, per thread)."""
    tasks = Path(f"/proc/{pid}/task")
    return sorted(
        int((tasks / t / "stat").read_text().rpartition(")")[2].split()[16])
        for t in os.listdir(tasks)
    )


def server_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({f"POSTFACH_{name.upper()}": "127.0.0.1:0" for name in LISTENERS})
    env["POSTFACH_HTTP"] = "off"
    env["POSTFACH_HOSTNAME"] = "mx.example.org"
    env["COLUMNS"] = "200"  # rich must not wrap the address lines
    env.pop("POSTFACH_DATA", None)
    if extra:
        env.update(extra)
    return env


@dataclass
class ServerProcess:
    data: Path
    proc: subprocess.Popen[bytes]
    log: Path
    addresses: dict[str, tuple[str, int]] = field(default_factory=dict)
    output: bytearray = field(default_factory=bytearray)

    def port(self, name: str) -> int:
        return self.addresses[name][1]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tree(self) -> list[int]:
        """The server's pid, then those of its worker processes (``[server] workers`` > 1)."""
        return [self.pid, *children(self.pid)]

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed that was not already written. With
        worker processes, SIGKILL to the supervisor only: the kernel kills the workers
        (``PR_SET_PDEATHSIG``); this returns once they are gone too, as after a single
        process's death (their locks and ports are free)."""
        workers = children(self.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(alive(p) for p in workers):
            if time.monotonic() > deadline:
                raise AssertionError(f"worker processes outlived the server: {workers}")
            time.sleep(0.01)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def log_text(self) -> str:
        """What the server has written to stderr (its log) so far, every start appended."""
        return self.log.read_text(errors="replace")


def spawn(
    data: Path,
    *,
    env: Mapping[str, str] | None = None,
    prefix: Sequence[str] = (),
    startup_timeout: float = 30.0,
    workers: int | None = None,
) -> ServerProcess:
    """Start ``postfach --data DATA serve`` (after ``prefix``, e.g. an strace command line) and
    wait until it prints every listening address. The log goes to ``DATA.log`` (a file, so a
    chatty server never blocks on a full pipe). ``workers``: ``POSTFACH_WORKERS`` (None: the
    server's default, unless ``env`` sets it)."""
    cmd = [*prefix, sys.executable, "-m", "postfach", "--data", str(data), "serve"]
    log = data.with_name(data.name + ".log")
    full_env = server_env(env)
    if workers is not None:
        full_env["POSTFACH_WORKERS"] = str(workers)
    with log.open("ab") as log_file:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log_file, env=full_env)
    server = ServerProcess(data, proc, log)
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + startup_timeout
    pending = b""
    try:
        while len(server.addresses) < len(LISTENERS):
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                server.kill()
                raise RuntimeError(
                    f"server did not start: {bytes(server.output)!r} {server.log_text()[-2000:]}"
                )
            if not sel.select(timeout=min(left, 0.5)):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                continue
            server.output += chunk
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                m = _LINE.match(line)
                if m and m.group(1).decode() in LISTENERS:
                    server.addresses[m.group(1).decode()] = (m.group(2).decode(), int(m.group(3)))
    finally:
        sel.close()
    return server
