"""Submission-to-remote benchmark (issue 4, point 8): postfach and Postfix relaying the same load.

``.venv/bin/python benchmarks/submission.py`` (``--help`` for the knobs; root, for the private
Postfix and Dovecot instances). Everything is on 127.0.0.1 in a temporary directory removed at
the end (``--keep`` keeps it, with the servers' logs).

``--clients`` submission clients each open one connection to the server under test, EHLO,
STARTTLS, EHLO, AUTH PLAIN (RFC 6409 submission as a mail client does it), then submit their
share of ``--messages`` messages of ``--size`` bytes, one transaction each (MAIL, RCPT, DATA
pipelined where PIPELINING is offered), each to one recipient at ``remote.example``. The server
relays every message to one sink on a loopback port:

- postfach: ``[relay]`` smarthost = the sink (``tls = "none"``), its queue with the default
  ``per_domain = 4`` connections, DKIM signing off unless ``--dkim``;
- Postfix: a private instance with a submission service (``smtpd_tls_security_level =
  encrypt``, SASL through a private Dovecot's auth service, ``permit_sasl_authenticated``) and
  ``relayhost = [127.0.0.1]:<sink>``, its defaults otherwise (connection cache, up to 20
  connections per destination).

The sink (``--sink``) is either a private Postfix that accepts everything for remote.example and
discards it (``relay_transport = discard``; counted from its log, "status=sent") or
``benchmarks/sink.py``, a bare asyncio sink (counted with its ``XCOUNT`` command).

Figures: submission rate (first MAIL to the last 250 of the load), p50/p99 per transaction
(MAIL to the final 250: the client's wait, which includes the server's durable enqueue), and end
to end (first MAIL until the sink has received every message), with the CPU split as in
``run.py``. ``--profile DIR`` attaches py-spy to postfach during its measured run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import socket
import ssl
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import (  # noqa: E402
    DOMAIN,
    HOST,
    PASSWORD,
    SENDER,
    Child,
    CpuTimes,
    CpuUse,
    MessageFactory,
    free_port,
    wait_for_banner,
    wait_for_quiet,
)
from peers import Dovecot, Postfix, dovecot_version, postfix_version  # noqa: E402
from postfach_server import Postfach, add_workers_argument, postfach_version  # noqa: E402
from profiling import Profiler, summarize  # noqa: E402

from postfach.tls import ensure_self_signed  # noqa: E402

ACCOUNT = f"sub@{DOMAIN}"
REMOTE = "remote.example"
NOISY_CORES = 0.25


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


# ---- the sinks --------------------------------------------------------------------------------


class Sink(Protocol):
    port: int

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def count(self) -> int: ...


@dataclass
class AsyncioSink:
    root: Path
    port: int = field(default_factory=free_port)
    child: Child | None = None
    _sock: socket.socket | None = None
    _file: Any = None

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, str(HERE / "sink.py"), str(self.port)]
        self.child = Child("sink", argv, self.root / "sink.log")
        wait_for_banner(self.port, 20, self.child.proc, "sink")

    def count(self) -> int:
        if self._sock is None:
            self._sock = socket.create_connection((HOST, self.port), timeout=10)
            self._file = self._sock.makefile("rb")
            self._file.readline()  # greeting
        self._sock.sendall(b"XCOUNT\r\n")
        line = self._file.readline().split()
        return int(line[1])

    def stop(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._file.close()
                self._sock.close()
            self._sock = None
        if self.child is not None:
            self.child.stop()
            self.child = None


@dataclass
class PostfixSink(Postfix):
    """Postfix accepting mail for remote.example from loopback and discarding it."""

    _offset: int = 0
    _count: int = 0

    @property
    def port(self) -> int:
        return self.smtp_port

    @property
    def settings(self) -> dict[str, str]:
        return {
            "relay_domains": REMOTE,
            "relay_transport": "discard (queue file fsynced by cleanup, then dropped)",
            "mynetworks": "127.0.0.0/8",
            "smtpd TLS": "off (no STARTTLS offered)",
        }

    def main_cf(self) -> str:
        r = self.root
        return (
            self.main_cf_head("sink.bench.localdomain")
            + f"""\
mydestination =
mynetworks = 127.0.0.0/8
relay_domains = {REMOTE}
relay_transport = discard
local_recipient_maps =
alias_maps =
alias_database =
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
biff = no
maillog_file_prefixes = {r}
maillog_file = {r}/maillog
"""
        )

    def count(self) -> int:
        """Messages the discard agent has taken (``status=sent`` lines), read incrementally."""
        with contextlib.suppress(FileNotFoundError), open(self.root / "maillog", "rb") as f:
            f.seek(self._offset)
            data = f.read()
            end = data.rfind(b"\n") + 1
            self._count += data.count(b"status=sent", 0, end)
            self._offset += end
        return self._count


# ---- the servers under test -------------------------------------------------------------------


@dataclass
class DovecotAuth(Dovecot):
    """The benchmark's Dovecot with its auth service also on a TCP port, for Postfix's SASL."""

    auth_port: int = field(default_factory=free_port)

    def config(self) -> str:
        return (
            super().config()
            + f"""\
service auth {{
  inet_listener {{
    address = {HOST}
    port = {self.auth_port}
  }}
}}
"""
        )


@dataclass
class PostfixRelay(Postfix):
    """Postfix as a submission server (STARTTLS required, SASL via Dovecot) relaying to a sink."""

    sink_port: int = 0
    auth_port: int = 0

    @property
    def settings(self) -> dict[str, str]:
        return {
            "submission service": "smtpd -o smtpd_tls_security_level=encrypt "
            "-o smtpd_sasl_auth_enable=yes -o smtpd_tls_auth_only=yes "
            "-o smtpd_relay_restrictions=permit_sasl_authenticated,reject",
            "smtpd_sasl_type": "dovecot (inet, a private Dovecot's passwd-file, PLAIN)",
            "relayhost": "[127.0.0.1]:<sink port>",
            "smtp_tls_security_level": "none (the sink offers no STARTTLS)",
            "concurrency": "defaults (initial 5, up to 20 per destination, connection cache)",
            "queue durability": "default (cleanup fsyncs the queue file before 250)",
            "DKIM": "none",
        }

    def main_cf(self) -> str:
        r = self.root
        return (
            self.main_cf_head("relay.bench.localdomain")
            + f"""\
mydomain = bench.localdomain
myorigin = $myhostname
mydestination =
mynetworks = 127.0.0.0/8
relay_domains =
relayhost = [{HOST}]:{self.sink_port}
local_recipient_maps =
alias_maps =
alias_database =
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
smtpd_tls_cert_file = {self.tls_dir}/cert.pem
smtpd_tls_key_file = {self.tls_dir}/key.pem
smtpd_sasl_type = dovecot
smtpd_sasl_path = inet:{HOST}:{self.auth_port}
biff = no
maillog_file_prefixes = {r}
maillog_file = {r}/maillog
"""
        )

    def master_cf(self) -> str:
        lines = super().master_cf().splitlines()
        lines[0] += (
            "\n  -o syslog_name=postfix/submission\n  -o smtpd_tls_security_level=encrypt"
            "\n  -o smtpd_sasl_auth_enable=yes\n  -o smtpd_tls_auth_only=yes"
            "\n  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject"
        )
        lines.append("tlsmgr unix - - n 1000? 1 tlsmgr")  # TLS session cache and entropy
        return "\n".join(lines) + "\n"

    @property
    def tls_dir(self) -> Path:
        return self.root.with_name(self.root.name + "-tls")

    def start(self) -> None:
        self.tls_dir.mkdir(parents=True)
        self.tls_dir.chmod(0o755)
        ensure_self_signed(self.tls_dir / "cert.pem", self.tls_dir / "key.pem", "relay.bench")
        super().start()


@dataclass
class PostfachRelay(Postfach):
    submission_port: int = field(default_factory=free_port)
    sink_port: int = 0
    dkim: bool = False
    per_domain: int = 4

    def env(self) -> dict[str, str]:
        env = super().env()
        env["POSTFACH_SUBMISSION"] = f"{HOST}:{self.submission_port}"
        return env

    @property
    def settings(self) -> dict[str, str]:
        return {
            "[relay]": 'host = "127.0.0.1", port = <sink>, tls = "none"',
            "[queue] per_domain": f"{self.per_domain} (connections to the smarthost)",
            "[submission] dkim": "true" if self.dkim else "false",
            "durability": "queue.db: SQLite WAL, synchronous=FULL; 250 after COMMIT",
            "listeners": "submission (STARTTLS, AUTH required) plus SMTP and POP3 (idle)",
        }

    def config_text(self) -> str:
        # The [limits] of every benchmark instance, and the relay to the sink.
        return super().config_text() + (
            f'[relay]\nhost = "{HOST}"\nport = {self.sink_port}\ntls = "none"\n'
            f"[queue]\nper_domain = {self.per_domain}\n"
            f"[submission]\ndkim = {'true' if self.dkim else 'false'}\n"
        )

    def start(self) -> None:
        super().start()
        assert self.child is not None
        wait_for_banner(self.submission_port, 30, self.child.proc, "postfach submission")


# ---- the load ---------------------------------------------------------------------------------


class ProtocolError(RuntimeError):
    pass


async def _reply(reader: asyncio.StreamReader) -> tuple[int, list[bytes]]:
    lines: list[bytes] = []
    while True:
        line = await reader.readline()
        if len(line) < 4:
            raise ProtocolError(f"bad or no reply line {line!r}")
        lines.append(line[4:].strip())
        if line[3:4] != b"-":
            return int(line[:3]), lines


async def _expect(reader: asyncio.StreamReader, code: int, what: str) -> list[bytes]:
    got, lines = await _reply(reader)
    if got != code:
        raise ProtocolError(f"{what}: expected {code}, got {got} {lines[-1]!r}")
    return lines


class SubmitClient:
    def __init__(self, port: int) -> None:
        self.port = port
        self.pipelining = False
        self.size_ext = False
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        reader, writer = await asyncio.open_connection(HOST, self.port)
        self.reader, self.writer = reader, writer
        await _expect(reader, 220, "greeting")
        writer.write(b"EHLO loadgen.bench.example\r\n")
        caps = [c.upper() for c in await _expect(reader, 250, "EHLO")]
        if b"STARTTLS" not in caps:
            raise ProtocolError("no STARTTLS offered")
        writer.write(b"STARTTLS\r\n")
        await _expect(reader, 220, "STARTTLS")
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        await writer.start_tls(ctx)
        writer.write(b"EHLO loadgen.bench.example\r\n")
        caps = [c.upper() for c in await _expect(reader, 250, "EHLO after STARTTLS")]
        self.pipelining = b"PIPELINING" in caps
        self.size_ext = any(c == b"SIZE" or c.startswith(b"SIZE ") for c in caps)
        token = base64.b64encode(f"\0{ACCOUNT}\0{PASSWORD}".encode()).decode()
        writer.write(f"AUTH PLAIN {token}\r\n".encode())
        await _expect(reader, 235, "AUTH PLAIN")

    async def send(self, rcpt: str, message: bytes) -> None:
        reader, writer = self.reader, self.writer
        assert reader is not None and writer is not None
        size = f" SIZE={len(message)}" if self.size_ext else ""
        envelope = [
            f"MAIL FROM:<{ACCOUNT}>{size}\r\n".encode(),
            f"RCPT TO:<{rcpt}>\r\n".encode(),
            b"DATA\r\n",
        ]
        if self.pipelining:
            writer.write(b"".join(envelope))
            await _expect(reader, 250, "MAIL")
            await _expect(reader, 250, "RCPT")
            await _expect(reader, 354, "DATA")
        else:
            for cmd, code in zip(envelope, (250, 250, 354), strict=True):
                writer.write(cmd)
                await _expect(reader, code, cmd.split(b" ")[0].decode())
        writer.write(message + b".\r\n")  # no line of the test messages starts with "."
        await _expect(reader, 250, "end of data")

    async def quit(self) -> None:
        if self.writer is None:
            return
        with contextlib.suppress(OSError, ProtocolError, TimeoutError, ssl.SSLError):
            self.writer.write(b"QUIT\r\n")
            if self.reader is not None:
                async with asyncio.timeout(5):
                    await _reply(self.reader)
        self.writer.close()
        with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
            async with asyncio.timeout(5):
                await self.writer.wait_closed()


@dataclass(frozen=True, slots=True)
class LoadStats:
    messages: int
    seconds: float
    started: float  # perf_counter at the first MAIL
    latency_ms: tuple[float, float, float]  # p50, p90, p99


def _percentiles(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values) or [0.0]

    def pick(q: float) -> float:
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return (pick(0.50), pick(0.90), pick(0.99))


def make_message(factory: MessageFactory, serial: int, rcpt: str) -> bytes:
    return factory.make(serial, rcpt).replace(f"<{SENDER}>".encode(), f"<{ACCOUNT}>".encode(), 1)


async def submit_load(
    port: int, messages: int, clients: int, factory: MessageFactory, serial: int, timeout: float
) -> LoadStats:
    conns = [SubmitClient(port) for _ in range(clients)]
    try:
        async with asyncio.timeout(120):
            await asyncio.gather(*(c.connect() for c in conns))
        counter = iter(range(messages))
        latencies: list[float] = []
        bodies = {}
        for i in range(messages):
            rcpt = f"r{i % 100:02d}@{REMOTE}"
            bodies[i] = (rcpt, make_message(factory, serial + i, rcpt))

        async def worker(c: SubmitClient) -> None:
            for i in counter:
                rcpt, message = bodies[i]
                t = time.perf_counter()
                await c.send(rcpt, message)
                latencies.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(worker(c) for c in conns))
        seconds = time.perf_counter() - t0
    finally:
        await asyncio.gather(*(c.quit() for c in conns), return_exceptions=True)
    return LoadStats(len(latencies), seconds, t0, _percentiles(latencies))


def wait_count(count: Callable[[], int], target: int, timeout: float) -> float:
    """Poll until ``count() >= target``; the perf_counter time it was seen."""
    deadline = time.perf_counter() + timeout
    while True:
        n = count()
        now = time.perf_counter()
        if n >= target:
            return now
        if now > deadline:
            raise TimeoutError(f"the sink has {n} of {target} messages after {timeout}s")
        time.sleep(0.02)


# ---- measuring ---------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    key: str
    messages: int
    submit_seconds: float
    e2e_seconds: float
    latency_ms: tuple[float, float, float]
    cpu: CpuUse
    load_before: tuple[float, float, float]

    @property
    def submit_rate(self) -> float:
        return self.messages / self.submit_seconds

    @property
    def e2e_rate(self) -> float:
        return self.messages / self.e2e_seconds


@dataclass
class Run:
    args: argparse.Namespace
    sink: Sink
    factory: MessageFactory
    rows: list[Row] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    settings: dict[str, dict[str, str]] = field(default_factory=dict)
    profile: str = ""
    serial: int = 0

    def measure(self, name: str, key: str, port: int, profile_pid: int | None) -> None:
        a = self.args
        say(f"{name}: warm-up ({a.warmup} messages)")
        base = self.sink.count()
        self._load(port, a.warmup)
        wait_count(self.sink.count, base + a.warmup, a.timeout)
        if a.quiet_wait > 0:
            wait_for_quiet(NOISY_CORES, a.quiet_wait, say)
        base = self.sink.count()
        load = os.getloadavg()
        say(f"{name}: {a.messages} messages, {a.clients} clients (load average {load[0]:.2f})")
        prof = None
        if profile_pid is not None and a.profile:
            out = Path(a.profile).resolve() / "submission.txt"
            out.parent.mkdir(parents=True, exist_ok=True)
            prof = Profiler(profile_pid, out)
        cpu0 = CpuTimes.now()
        try:
            st = self._load(port, a.messages)
            done = wait_count(self.sink.count, base + a.messages, a.timeout)
        finally:
            if prof is not None:
                prof.stop()
                if prof.out.exists():
                    self.profile = summarize(prof.out)
                    prof.out.with_name("submission-top.txt").write_text(self.profile + "\n")
        e2e = done - st.started
        cpu = CpuUse.between(cpu0, CpuTimes.now(), e2e)
        row = Row(name, key, st.messages, st.seconds, e2e, st.latency_ms, cpu, load)
        self.rows.append(row)
        say(
            f"  submitted {row.submit_rate:.0f}/s (p50 {st.latency_ms[0]:.1f} ms, p99 "
            f"{st.latency_ms[2]:.1f} ms), at the sink {row.e2e_rate:.0f}/s"
        )

    def _load(self, port: int, n: int) -> LoadStats:
        a = self.args
        serial, self.serial = self.serial, self.serial + n
        return asyncio.run(submit_load(port, n, a.clients, self.factory, serial, a.timeout))

    def attempt(self, what: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:
            self.errors.append(f"{what}: {type(exc).__name__}: {exc}")
            say(f"FAILED {what}: {type(exc).__name__}: {exc}")
            if os.environ.get("BENCH_TRACEBACK"):
                traceback.print_exc()


def bench_postfach(run: Run, root: Path) -> None:
    a = run.args
    pf = PostfachRelay(root, [ACCOUNT], sink_port=run.sink.port, dkim=a.dkim, workers=a.workers)
    pf.per_domain = a.per_domain
    run.settings["postfach"] = pf.settings
    try:
        pf.setup()
        say("starting postfach")
        pf.start()
        assert pf.child is not None
        time.sleep(1)  # let a supervisor fork its workers before counting them
        run.settings["postfach"]["workers"] = pf.describe_workers()
        say(f"postfach workers: {pf.describe_workers()}")
        run.measure("postfach", "postfach", pf.submission_port, pf.child.pid)
    except Exception:
        say(f"postfach log:\n{pf.log_tail()}")
        raise
    finally:
        pf.stop()


def bench_postfix(run: Run, root: Path) -> None:
    dovecot = DovecotAuth(root / "dovecot", [ACCOUNT])
    postfix = PostfixRelay(root / "postfix", [], 0, sink_port=run.sink.port)
    try:
        say("starting Dovecot (SASL for Postfix)")
        dovecot.start()
        postfix.auth_port = dovecot.auth_port
        run.settings["Postfix"] = postfix.settings
        say("starting Postfix (submission, relayhost = the sink)")
        postfix.start()
        run.measure("Postfix", "postfix", postfix.smtp_port, None)
    except Exception:
        say(f"Postfix log:\n{postfix.log_tail()}\nDovecot log:\n{dovecot.log_tail()}")
        raise
    finally:
        postfix.stop()
        dovecot.stop()


# ---- reporting --------------------------------------------------------------------------------


HEADERS = [
    "server",
    "messages",
    "submitted msg/s",
    "p50/p90/p99 ms",
    "at sink msg/s",
    "all at sink s",
    "server ms CPU/msg",
    "CPU busy",
    "server CPU",
    "client CPU",
    "other CPU",
    "load avg before",
]


def table(rows: Sequence[Row], markdown: bool) -> str:
    cells = [
        [
            r.name,
            str(r.messages),
            f"{r.submit_rate:.0f}",
            "/".join(f"{x:.0f}" if x >= 10 else f"{x:.1f}" for x in r.latency_ms),
            f"{r.e2e_rate:.0f}",
            f"{r.e2e_seconds:.2f}",
            f"{1000 * r.cpu.server_cores * r.e2e_seconds / r.messages:.2f}",
            f"{r.cpu.machine_cores:.2f}",
            f"{r.cpu.server_cores:.2f}",
            f"{r.cpu.client_cores:.2f}",
            f"{r.cpu.other_cores:.2f}" + ("*" if r.cpu.other_cores > NOISY_CORES else ""),
            " ".join(f"{x:.2f}" for x in r.load_before),
        ]
        for r in rows
    ]
    if markdown:
        out = ["| " + " | ".join(HEADERS) + " |", "|---" + "|---:" * (len(HEADERS) - 1) + "|"]
        return "\n".join(out + ["| " + " | ".join(c) + " |" for c in cells])
    widths = [max([len(h), *(len(c[i]) for c in cells)]) for i, h in enumerate(HEADERS)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.ljust(w) if i == 0 else v.rjust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        )

    return "\n".join([line(HEADERS), *(line(c) for c in cells)])


def verdict(rows: Sequence[Row]) -> str:
    ours = next((r for r in rows if r.key == "postfach"), None)
    theirs = next((r for r in rows if r.key == "postfix"), None)
    if ours is None or theirs is None:
        return "postfach vs Postfix, messages/s to the sink: NOT MEASURED (one side missing)"
    ratio = ours.e2e_rate / theirs.e2e_rate
    return (
        f"postfach vs Postfix, messages/s through the queue to the sink: {ours.e2e_rate:.0f} vs "
        f"{theirs.e2e_rate:.0f} ({ratio:.2f}x); submission {ours.submit_rate:.0f} vs "
        f"{theirs.submit_rate:.0f}/s"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--messages", type=int, default=2000, help="measured messages per server")
    ap.add_argument("--warmup", type=int, default=100, help="unmeasured messages first")
    ap.add_argument("--clients", type=int, default=10, help="concurrent submission clients")
    ap.add_argument("--size", type=int, default=20 * 1024, help="message size in bytes")
    ap.add_argument("--sink", choices=["postfix", "asyncio"], default="postfix")
    ap.add_argument("--targets", nargs="+", choices=["postfach", "postfix"],
                    default=["postfach", "postfix"])  # fmt: skip
    ap.add_argument("--dkim", action="store_true", help="postfach signs with DKIM (RSA 2048)")
    ap.add_argument("--per-domain", type=int, default=4, help="postfach [queue] per_domain")
    ap.add_argument("--quiet-wait", type=float, default=20.0,
                    help="wait up to this long for other processes to go quiet")  # fmt: skip
    ap.add_argument("--timeout", type=float, default=600.0, help="limit per measurement (s)")
    ap.add_argument("--profile", metavar="DIR", help="py-spy on postfach (skews its figures)")
    ap.add_argument("--markdown", type=Path, default=HERE / "results" / "submission.md")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    add_workers_argument(ap)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="postfach-bench-submission-"))
    root.chmod(0o755)
    sink: Sink
    if args.sink == "postfix":
        sink = PostfixSink(root / "sink", [], 0)
    else:
        sink = AsyncioSink(root / "sink")
    run = Run(args, sink, MessageFactory(args.size))
    started = time.perf_counter()
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    try:
        say(f"starting the {args.sink} sink")
        sink.start()
        if args.sink == "postfix":
            run.settings["sink (Postfix)"] = sink.settings  # type: ignore[attr-defined]
        for target in args.targets:
            fn = bench_postfach if target == "postfach" else bench_postfix
            run.attempt(target, lambda fn=fn, t=target: fn(run, root / t))  # type: ignore[misc]
    finally:
        sink.stop()
        if args.keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    host = {
        "cores": str(os.cpu_count()),
        "python": sys.version.split()[0],
        "postfach": postfach_version(),
        "postfix": postfix_version(),
        "dovecot": dovecot_version(),
    }
    workers = run.settings.get("postfach", {}).get(
        "workers",
        "POSTFACH_WORKERS unset (server default)"
        if args.workers is None
        else f"POSTFACH_WORKERS={args.workers}",
    )
    print()
    print(f"postfach workers: {workers}")
    print(table(run.rows, False))
    print(verdict(run.rows))
    for e in run.errors:
        print(f"error: {e}")
    if run.profile:
        print(f"\npostfach profile:\n{run.profile}")
    cmd = "benchmarks/submission.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = [
        f"### Run of {date}",
        "",
        f"Command: `.venv/bin/python {cmd.strip()}`",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in host.items()),
        "",
        f"Parameters: {args.clients} clients, {args.messages} messages of {args.size} bytes per "
        f"server after {args.warmup} warm-up, sink {args.sink}, postfach per_domain "
        f"{args.per_domain}, DKIM {'on' if args.dkim else 'off'}, workers: {workers}.",
        "",
        table(run.rows, True),
        "",
        f"- {verdict(run.rows)}",
        *[f"- error: {e}" for e in run.errors],
    ]
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text("\n".join(md) + "\n")
    args.markdown.with_suffix(".json").write_text(
        json.dumps(
            {
                "date": date,
                "params": {k: str(v) for k, v in vars(args).items()},
                "machine": host,
                "settings": run.settings,
                "rows": [
                    {
                        "name": r.name,
                        "messages": r.messages,
                        "submit_rate": r.submit_rate,
                        "latency_ms": r.latency_ms,
                        "e2e_rate": r.e2e_rate,
                        "e2e_seconds": r.e2e_seconds,
                        "server_cpu": r.cpu.server_cores,
                        "client_cpu": r.cpu.client_cores,
                        "other_cpu": r.cpu.other_cores,
                        "load_before": r.load_before,
                    }
                    for r in run.rows
                ],
                "errors": run.errors,
                "profile": run.profile,
            },
            indent=2,
        )
    )
    print(f"\nMarkdown: {args.markdown}  ({time.perf_counter() - started:.0f}s in all)")
    return 1 if run.errors else 0


if __name__ == "__main__":
    sys.exit(main())
