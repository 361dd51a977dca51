"""postfach as a subprocess (``postfach serve``) on loopback ports, accounts made with its CLI."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import proctree
from common import DOMAIN, HOST, PASSWORD, Child, free_port, wait_for_banner

REPO = Path(__file__).resolve().parents[1]


def postfach_bin() -> Path:
    """The ``postfach`` script next to the interpreter running the benchmarks (the venv's)."""
    candidate = Path(sys.executable).parent / "postfach"
    if candidate.exists():
        return candidate
    return REPO / ".venv" / "bin" / "postfach"


def postfach_version() -> str:
    try:
        out = subprocess.run(
            [str(postfach_bin()), "--version"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    text = (out.stdout or out.stderr).strip()
    if not text:
        return f"exit status {out.returncode}"
    return text.splitlines()[-1].rpartition("version ")[2]  # "postfach, version 0.1.0"


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a number of processes >= 1, got {text}")
    return n


def add_workers_argument(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--workers",
        type=_positive,
        default=None,
        metavar="N",
        help="worker processes of the postfach under test (sets POSTFACH_WORKERS, i.e. "
        "[server] workers); default: unset, so the server's own default applies",
    )


@dataclass
class Postfach:
    root: Path
    accounts: Sequence[str]
    smtp_port: int = field(default_factory=free_port)
    pop3_port: int = field(default_factory=free_port)
    child: Child | None = None
    # POSTFACH_WORKERS for ``serve`` ([server] workers: a supervisor forking N worker processes);
    # None leaves it unset, so the server's own default applies.
    workers: int | None = None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("POSTFACH_")}
        env.update(
            POSTFACH_DATA=str(self.data_dir),
            POSTFACH_SMTP=f"{HOST}:{self.smtp_port}",
            POSTFACH_POP3=f"{HOST}:{self.pop3_port}",
            POSTFACH_POP3S="off",
            POSTFACH_SUBMISSION="off",
            POSTFACH_SUBMISSIONS="off",
            POSTFACH_IMAP="off",
            POSTFACH_IMAPS="off",
            POSTFACH_HTTP="off",
            POSTFACH_LMTP="off",
        )
        if self.workers is not None:
            env["POSTFACH_WORKERS"] = str(self.workers)
        return env

    def _cli(self, *args: str, stdin: str | None = None) -> None:
        out = subprocess.run(
            [str(postfach_bin()), "--data", str(self.data_dir), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            env=self.env(),
            check=False,
        )
        if out.returncode != 0:
            detail = (out.stderr or out.stdout).strip().splitlines()
            raise RuntimeError(
                f"postfach {' '.join(args)} failed ({out.returncode}): "
                + (detail[-1] if detail else "no output")
            )

    def config_text(self) -> str:
        """postfach.toml of the instance (subclasses add their sections to this)."""
        # Benchmarks open thousands of connections from 127.0.0.1 to a few accounts (Dovecot
        # gets mail_max_userip_connections = 100000 for the same reason): no counts.
        return (
            "[limits]\nmax_connections = 0\nmax_connections_per_ip = 0\nmax_sessions_per_user = 0\n"
        )

    def setup(self) -> None:
        """Create the data directory, the benchmark domain and accounts (unlimited quota)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "postfach.toml").write_text(self.config_text())
        self._cli("domain", "add", DOMAIN)
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = [
                pool.submit(self._cli, "user", "add", a, "--password-stdin", stdin=PASSWORD + "\n")
                for a in self.accounts
            ]
            for f in futures:
                f.result()

    def start(self) -> None:
        argv = [str(postfach_bin()), "serve"]
        self.child = Child("postfach", argv, self.root / "postfach.log", env=self.env())
        try:
            wait_for_banner(self.smtp_port, 60, self.child.proc, "postfach smtp")
            wait_for_banner(self.pop3_port, 30, self.child.proc, "postfach pop3")
        except BaseException as exc:
            tail = self.child.tail() if self.child else ""
            self.stop()
            raise RuntimeError(f"{exc}\n{tail}") from None

    def processes(self) -> int:
        """Processes of the running server (supervisor and workers; 1 for a single process)."""
        return proctree.count([self.child.pid]) if self.child is not None else 0

    def describe_workers(self) -> str:
        """For report headers: what was asked for and how many processes the server runs."""
        asked = (
            "POSTFACH_WORKERS unset (server default)"
            if self.workers is None
            else f"POSTFACH_WORKERS={self.workers}"
        )
        if self.child is None:
            return asked
        return f"{asked}, {self.processes()} process(es) running"

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(timeout=30, sig=signal.SIGTERM)
            self.child = None

    def log_tail(self) -> str:
        return self.child.tail() if self.child else ""
