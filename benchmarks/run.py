"""Delivery and POP3 benchmarks: postfach side by side with Postfix and Dovecot, in one run.

``make bench`` runs ``.venv/bin/python benchmarks/run.py``; ``--help`` lists the knobs. Every
server is a private instance on 127.0.0.1 in a temporary directory that is removed at the end
(``--keep`` keeps it, with the servers' logs). Figures and settings are in docs/benchmarks.md.

1. Inbound delivery: ``--clients`` concurrent SMTP/LMTP clients, ``--messages`` messages of
   ``--size`` bytes, message i to account i mod ``--accounts``; against
   (a) postfach's SMTP listener (250 only after the group commit's fsync),
   (b) Postfix on a loopback port relaying into Dovecot over LMTP: both when Postfix answered 250
       (queued) and end to end (every message in the Dovecot Maildirs),
   (c) Dovecot's LMTP directly (250 after the Maildir file is fsynced, ``mail_fsync = always``).
2. POP3 RETR: one mailbox per client with ``--pop3-messages`` messages of ``--size`` bytes, each
   client logs in and RETRieves all of them; postfach and Dovecot over the same content. Once
   with one RETR at a time per client (the figure the target is about) and once with RETRs
   pipelined (``--pop3-depths``), which costs the Python client less CPU per MB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from common import (
    CpuTimes,
    CpuUse,
    MessageFactory,
    delivery_accounts,
    maildir_count,
    pop3_accounts,
    wait_for_idle_server,
    wait_for_quiet,
)
from delivery import DeliveryStats, run_delivery, wait_until
from peers import Dovecot, Postfix, dovecot_version, postfix_version
from pop3 import Pop3Stats, combine, message_counts, run_pop3
from postfach_server import Postfach, add_workers_argument, postfach_version
from profiling import Profiler, summarize

T = TypeVar("T")

HERE = Path(__file__).resolve().parent
TARGET_DELIVERIES_PER_S = 1000.0
ALL_TARGETS = ("postfach", "postfix", "dovecot")


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def arun(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@dataclass
class DeliveryRow:
    name: str
    key: str  # "postfach", "postfix-accept", "postfix-e2e", "dovecot-lmtp"
    messages: int
    seconds: float
    cpu: CpuUse
    latency_ms: tuple[float, float, float] | None = None

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Pop3Row:
    name: str
    key: str  # "postfach", "dovecot"
    depth: int  # RETRs in flight per connection
    stats: Pop3Stats
    rounds: list[Pop3Stats]


@dataclass
class Report:
    params: dict[str, Any]
    settings: dict[str, dict[str, str]] = field(default_factory=dict)
    delivery: list[DeliveryRow] = field(default_factory=list)
    pop3: list[Pop3Row] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    profiles: dict[str, str] = field(default_factory=dict)
    # Seconds the servers needed to become idle before each measurement (background work).
    idle_waits: dict[str, float] = field(default_factory=dict)

    def attempt(self, what: str, fn: Callable[[], T]) -> T | None:
        """Run one measurement; a failure is recorded and the other measurements go on."""
        try:
            return fn()
        except Exception as exc:
            self.errors.append(f"{what}: {type(exc).__name__}: {exc}")
            say(f"FAILED {what}: {type(exc).__name__}: {exc}")
            if os.environ.get("BENCH_TRACEBACK"):
                traceback.print_exc()
            return None

    def delivery_rate(self, key: str) -> float | None:
        return next((r.rate for r in self.delivery if r.key == key), None)

    def pop3_rate(self, key: str, depth: int) -> float | None:
        return next(
            (r.stats.mb_per_s for r in self.pop3 if r.key == key and r.depth == depth), None
        )


class Serials:
    """Message serial numbers, unique over the whole run (unique Message-IDs)."""

    def __init__(self) -> None:
        self._next = 0

    def take(self, n: int) -> int:
        base = self._next
        self._next += n
        return base


# ---- measurements -----------------------------------------------------------------------------


@dataclass
class Ctx:
    args: argparse.Namespace
    report: Report
    factory: MessageFactory
    serials: Serials
    d_accounts: list[str]
    p_accounts: list[str]
    profile_pid: int | None = None  # postfach's, while it runs and --profile was given

    def settle(self, phase: str) -> None:
        """Before a measurement: wait (bounded) until the server under test has finished its
        background work (queue, indexing) and other processes leave the CPUs alone."""
        a = self.args
        if a.idle_wait > 0:
            waited = wait_for_idle_server(IDLE_SERVER_CORES, a.idle_wait, say)
            self.report.idle_waits[phase] = waited
        if a.quiet_wait > 0:
            load = wait_for_quiet(NOISY_CORES, a.quiet_wait, say)
            if load.other_cores >= NOISY_CORES:
                say(f"measuring anyway: other processes use {load.other_cores:.2f} cores")

    def deliver(
        self, port: int, *, lmtp: bool, recipients: Sequence[str], messages: int
    ) -> DeliveryStats:
        a = self.args
        return arun(
            run_delivery(
                port,
                lmtp=lmtp,
                recipients=recipients,
                messages=messages,
                clients=a.clients,
                factory=self.factory,
                serial_base=self.serials.take(messages),
                timeout=a.timeout,
                chunking=a.chunking,
            )
        )


def measure_postfix(ctx: Ctx, postfix: Postfix, dovecot: Dovecot) -> None:
    a = ctx.args
    d = ctx.d_accounts

    def count() -> int:
        return maildir_count(dovecot.mail_dir, d)

    say(f"Postfix: warm-up ({a.warmup} messages)")
    base = count()
    ctx.deliver(postfix.smtp_port, lmtp=False, recipients=d, messages=a.warmup)
    arun(wait_until(count, base + a.warmup, since=time.perf_counter(), timeout=120))
    ctx.settle("Postfix delivery")
    base = count()
    say(f"Postfix -> Dovecot LMTP: {a.messages} messages")
    cpu0, w0 = CpuTimes.now(), time.perf_counter()
    st = ctx.deliver(postfix.smtp_port, lmtp=False, recipients=d, messages=a.messages)
    e2e = arun(wait_until(count, base + a.messages, since=st.started, timeout=a.timeout))
    cpu = CpuUse.between(cpu0, CpuTimes.now(), time.perf_counter() - w0)
    ctx.report.delivery.append(
        DeliveryRow(
            "Postfix, SMTP 250 (queued)",
            "postfix-accept",
            st.messages,
            st.seconds,
            st.cpu,
            st.latency_ms,
        )
    )
    ctx.report.delivery.append(
        DeliveryRow(
            "Postfix -> Dovecot LMTP, end to end (in Maildir)", "postfix-e2e", st.messages, e2e, cpu
        )
    )
    say(f"  accepted {st.rate:.0f}/s, end to end {st.messages / e2e:.0f}/s")


def measure_dovecot_lmtp(ctx: Ctx, dovecot: Dovecot) -> None:
    a = ctx.args
    d = ctx.d_accounts

    def count() -> int:
        return maildir_count(dovecot.mail_dir, d)

    say(f"Dovecot LMTP: warm-up ({a.warmup} messages)")
    ctx.deliver(dovecot.lmtp_port, lmtp=True, recipients=d, messages=a.warmup)
    ctx.settle("Dovecot LMTP delivery")
    base = count()
    say(f"Dovecot LMTP: {a.messages} messages")
    st = ctx.deliver(dovecot.lmtp_port, lmtp=True, recipients=d, messages=a.messages)
    arun(wait_until(count, base + a.messages, since=st.started, timeout=30))
    ctx.report.delivery.append(
        DeliveryRow(
            "Dovecot LMTP direct (250 after fsync)",
            "dovecot-lmtp",
            st.messages,
            st.seconds,
            st.cpu,
            st.latency_ms,
        )
    )
    say(f"  {st.rate:.0f}/s")


def measure_pop3(ctx: Ctx, name: str, key: str, port: int, profile: Path | None) -> None:
    """Every depth of --pop3-depths in turn; the warm-up rounds run before the first only.

    The profile (with --profile) covers the first depth only.
    """
    a = ctx.args
    for n, depth in enumerate(a.pop3_depths):
        warmup = a.pop3_warmup if n == 0 else 0
        label = f"{name}, depth {depth}"
        ctx.settle(label)
        say(f"{label}: {a.pop3_rounds} measured rounds (+{warmup} warm-up)")
        prof = start_profile(ctx, profile) if n == 0 else None
        try:
            rounds = arun(
                run_pop3(
                    port,
                    ctx.p_accounts,
                    expect=a.pop3_messages,
                    rounds=a.pop3_rounds,
                    warmup=warmup,
                    depth=depth,
                )
            )
        finally:
            # Logins (argon2id password checks) are not part of the RETR figure: left out.
            finish_profile(ctx, prof, "pop3", exclude=("verify_password",))
        total = combine(rounds)
        ctx.report.pop3.append(Pop3Row(label, key, depth, total, rounds))
        each = ", ".join(f"{r.mb_per_s:.0f}" for r in rounds)
        say(f"  {total.mb_per_s:.1f} MB/s (rounds: {each})")


def populate(ctx: Ctx, port: int, *, lmtp: bool, what: str) -> None:
    n = ctx.args.pop3_messages * len(ctx.p_accounts)
    say(f"{what}: filling {len(ctx.p_accounts)} mailboxes with {ctx.args.pop3_messages} each")
    st = ctx.deliver(port, lmtp=lmtp, recipients=ctx.p_accounts, messages=n)
    say(f"  stored {st.messages} in {st.seconds:.1f}s")


def start_profile(ctx: Ctx, out: Path | None) -> Profiler | None:
    """py-spy on postfach during one phase, only with --profile."""
    if out is None or ctx.profile_pid is None:
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    return Profiler(ctx.profile_pid, out)


def finish_profile(
    ctx: Ctx, prof: Profiler | None, phase: str, exclude: tuple[str, ...] = ()
) -> None:
    if prof is None:
        return
    prof.stop()
    if prof.out.exists():
        text = summarize(prof.out, exclude=exclude)
        prof.out.with_name(f"{phase}-top.txt").write_text(text + "\n")
        ctx.report.profiles[phase] = text
        say(f"profile of postfach during {phase}: {prof.out}")


def bench_peers(ctx: Ctx, root: Path) -> None:
    a = ctx.args
    targets = set(a.targets)
    dovecot = Dovecot(root / "dovecot", [*ctx.d_accounts, *ctx.p_accounts], a.dovecot_fsync)
    postfix = Postfix(root / "postfix", ctx.d_accounts, lmtp_port=dovecot.lmtp_port)
    ctx.report.settings["Dovecot"] = dovecot.settings
    try:
        say("starting Dovecot")
        dovecot.start()
        if "postfix" in targets:
            ctx.report.settings["Postfix"] = postfix.settings
            say("starting Postfix")

            def start_postfix() -> bool:
                postfix.start()
                return True

            if ctx.report.attempt("starting Postfix", start_postfix):
                ctx.report.attempt(
                    "Postfix delivery", lambda: measure_postfix(ctx, postfix, dovecot)
                )
            postfix.stop()
        if "dovecot" in targets:
            ctx.report.attempt("Dovecot LMTP delivery", lambda: measure_dovecot_lmtp(ctx, dovecot))

            def pop3() -> None:
                populate(ctx, dovecot.lmtp_port, lmtp=True, what="Dovecot")
                measure_pop3(ctx, "Dovecot POP3", "dovecot", dovecot.pop3_port, None)

            if a.pop3_messages > 0:
                ctx.report.attempt("Dovecot POP3", pop3)
    except Exception:
        ctx.report.errors.append(f"Dovecot: {dovecot.log_tail()}")
        raise
    finally:
        postfix.stop()
        dovecot.stop()


def bench_postfach(ctx: Ctx, root: Path) -> None:
    a = ctx.args
    pf = Postfach(root, [*ctx.d_accounts, *ctx.p_accounts], workers=a.workers)
    ctx.report.settings["postfach"] = {
        "durability": "SQLite WAL, synchronous=FULL, group commit; 250 after COMMIT",
        "listeners": "SMTP and POP3 on loopback, everything else off",
        "accounts": "made with `postfach user add` (unlimited quota)",
    }
    profile_dir: Path | None = Path(a.profile).resolve() if a.profile else None
    try:
        say(f"postfach: creating {len(pf.accounts)} accounts")
        pf.setup()
        say("starting postfach")
        pf.start()
        assert pf.child is not None
        ctx.profile_pid = pf.child.pid
        time.sleep(1)  # let a supervisor fork its workers before counting them
        ctx.report.settings["postfach"]["workers"] = pf.describe_workers()
        say(f"postfach workers: {pf.describe_workers()}")

        def delivery() -> None:
            d = ctx.d_accounts
            say(f"postfach SMTP: warm-up ({a.warmup} messages)")
            ctx.deliver(pf.smtp_port, lmtp=False, recipients=d, messages=a.warmup)
            ctx.settle("postfach delivery")
            say(f"postfach SMTP: {a.messages} messages")
            prof = start_profile(ctx, profile_dir / "delivery.txt" if profile_dir else None)
            try:
                st = ctx.deliver(pf.smtp_port, lmtp=False, recipients=d, messages=a.messages)
            finally:
                finish_profile(ctx, prof, "delivery")
            ctx.report.delivery.insert(
                0,
                DeliveryRow(
                    "postfach, SMTP 250 (after fsync)",
                    "postfach",
                    st.messages,
                    st.seconds,
                    st.cpu,
                    st.latency_ms,
                ),
            )
            say(f"  {st.rate:.0f}/s")
            counts = arun(message_counts(pf.pop3_port, d))
            if sum(counts) != a.warmup + a.messages:
                raise RuntimeError(
                    f"postfach holds {sum(counts)} messages, {a.warmup + a.messages} were accepted"
                )

        ctx.report.attempt("postfach delivery", delivery)

        def pop3() -> None:
            populate(ctx, pf.smtp_port, lmtp=False, what="postfach")
            measure_pop3(
                ctx,
                "postfach POP3",
                "postfach",
                pf.pop3_port,
                profile_dir / "pop3.txt" if profile_dir else None,
            )

        if a.pop3_messages > 0:  # --pop3-messages 0: delivery only
            ctx.report.attempt("postfach POP3", pop3)
    except Exception:
        tail = pf.log_tail()
        if tail:
            say(f"postfach log:\n{tail}")
        raise
    finally:
        ctx.profile_pid = None
        pf.stop()


# ---- reporting --------------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(headers) + " |"]
        lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|")
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    fmt = [f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths)]
    out = ["  ".join(f.format(h) for f, h in zip(fmt, headers, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(f.format(c) for f, c in zip(fmt, r, strict=True)) for r in rows]
    return "\n".join(out)


NOISY_CORES = 0.25  # other processes using more than this during a measurement: flagged
IDLE_SERVER_CORES = 0.1  # a server using less than this between measurements is idle
CPU_HEADERS = ["CPU busy", "server CPU", "client CPU", "other CPU"]
NOISE_NOTE = (
    "CPU columns are average busy cores of the 2: the whole machine; the processes of the "
    "server(s) under test; the load generator; processes outside the benchmark (other, "
    f"including kernel I/O threads). * marks a row with other > {NOISY_CORES}: its rate is "
    "depressed by other work; the server's CPU time per message or MB is much less affected."
)


def _cpu_cells(cpu: CpuUse) -> list[str]:
    flag = "*" if cpu.other_cores > NOISY_CORES else ""
    return [
        f"{cpu.machine_cores:.2f}",
        f"{cpu.server_cores:.2f}",
        f"{cpu.client_cores:.2f}",
        f"{cpu.other_cores:.2f}{flag}",
    ]


def _ratio(ours: float | None, theirs: float) -> str:
    if ours is None or theirs <= 0:
        return "n/a"
    return f"{ours / theirs:.2f}"


def delivery_table(report: Report, markdown: bool) -> str:
    ours = report.delivery_rate("postfach")
    headers = [
        "delivery target",
        "messages",
        "seconds",
        "msg/s",
        "postfach/this",
        "p50/p99 ms",
        "server ms CPU/msg",
        *CPU_HEADERS,
    ]
    rows = []
    for r in report.delivery:
        lat = f"{r.latency_ms[0]:.1f}/{r.latency_ms[2]:.1f}" if r.latency_ms else "-"
        rows.append(
            [
                r.name,
                str(r.messages),
                f"{r.seconds:.2f}",
                f"{r.rate:.0f}",
                "-" if r.key == "postfach" else _ratio(ours, r.rate),
                lat,
                f"{1000 * r.cpu.server_cores * r.seconds / r.messages:.1f}" if r.messages else "-",
                *_cpu_cells(r.cpu),
            ]
        )
    return _table(headers, rows, markdown)


def pop3_table(report: Report, markdown: bool) -> str:
    headers = [
        "POP3 server",
        "RETRs",
        "MB",
        "seconds",
        "MB/s",
        "RETR/s",
        "postfach/this",
        "login s",
        "server ms CPU/MB",
        *CPU_HEADERS,
    ]
    rows = []
    for r in report.pop3:
        s = r.stats
        rows.append(
            [
                r.name,
                str(s.messages),
                f"{s.bytes / 1e6:.0f}",
                f"{s.seconds:.2f}",
                f"{s.mb_per_s:.1f}",
                f"{s.retr_per_s:.0f}",
                "-"
                if r.key == "postfach"
                else _ratio(report.pop3_rate("postfach", r.depth), s.mb_per_s),
                f"{s.login_seconds:.2f}",
                f"{1000 * s.cpu.server_cores * s.seconds / (s.bytes / 1e6):.1f}"
                if s.bytes
                else "-",
                *_cpu_cells(s.cpu),
            ]
        )
    return _table(headers, rows, markdown)


def verdicts(report: Report) -> list[str]:
    out = []
    ours = report.delivery_rate("postfach")
    if ours is None:
        out.append("Deliveries >= 1,000/s durable end to end: NOT MEASURED (postfach did not run)")
    else:
        met = "MET" if ours >= TARGET_DELIVERIES_PER_S else "NOT MET"
        out.append(f"Deliveries >= 1,000/s durable end to end: {met} ({ours:.0f}/s)")
    depths = sorted({r.depth for r in report.pop3}) or [1]
    for depth in depths:
        what = f"POP3 RETR >= Dovecot's MB/s, {depth} RETR(s) in flight per client"
        ours_mb, dove = report.pop3_rate("postfach", depth), report.pop3_rate("dovecot", depth)
        if ours_mb is None or dove is None:
            out.append(f"{what}: NOT MEASURED")
        else:
            met = "MET" if ours_mb >= dove else "NOT MET"
            out.append(f"{what}: {met} ({ours_mb:.1f} vs {dove:.1f} MB/s)")
    return out


def machine() -> dict[str, str]:
    info: dict[str, str] = {"cores": str(os.cpu_count())}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.partition(":")[2].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory"] = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    info["kernel"] = platform.release()
    info["python"] = platform.python_version()
    info["postfach"] = postfach_version()
    info["dovecot"] = dovecot_version()
    info["postfix"] = postfix_version()
    return info


def markdown(report: Report, host: dict[str, str]) -> str:
    p = report.params
    lines = [
        f"### Run of {p['date']}",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in host.items()),
        "",
        f"Parameters: {p['clients']} clients, messages of {p['size']} bytes; delivery "
        f"with {'BDAT where offered' if p.get('chunking') else 'DATA'}, "
        f"{p['messages']} messages per target (after {p['warmup']} warm-up) to "
        f"{p['accounts']} accounts; POP3 {p['pop3_messages']} messages per mailbox, "
        f"{p['pop3_rounds']} measured rounds after {p['pop3_warmup']} warm-up, for each of "
        f"{' and '.join(str(d) for d in p['pop3_depths'])} RETR(s) in flight per client; "
        f"Dovecot mail_fsync = {p['dovecot_fsync']}; postfach workers: "
        f"{report.settings.get('postfach', {}).get('workers', _workers_asked(p))}.",
        "",
        delivery_table(report, True),
        "",
        pop3_table(report, True),
        "",
        *[
            f"POP3 MB/s per measured round, {r.name}: "
            + ", ".join(f"{x.mb_per_s:.1f}" for x in r.rounds)
            + "."
            for r in report.pop3
        ],
        "",
        "Seconds the servers under test needed to become idle before each measurement "
        "(background work such as postfach's full-text indexing): "
        + (", ".join(f"{k} {v:.0f}" for k, v in report.idle_waits.items()) or "not measured")
        + ".",
        "",
        NOISE_NOTE,
        "",
        *[f"- {v}" for v in verdicts(report)],
    ]
    if report.errors:
        lines += ["", "Errors:", *[f"- {e}" for e in report.errors]]
    return "\n".join(lines) + "\n"


def _workers_asked(params: dict[str, Any]) -> str:
    w = params.get("workers")
    return "POSTFACH_WORKERS unset (server default)" if w is None else f"POSTFACH_WORKERS={w}"


def report_json(report: Report, host: dict[str, str]) -> dict[str, Any]:
    return {
        "params": report.params,
        "machine": host,
        "settings": report.settings,
        "delivery": [
            {
                "name": r.name,
                "key": r.key,
                "messages": r.messages,
                "seconds": r.seconds,
                "rate": r.rate,
                "latency_ms": r.latency_ms,
                "cpu_busy": r.cpu.machine_cores,
                "client_cpu": r.cpu.client_cores,
                "other_cpu": r.cpu.other_cores,
                "server_cpu": r.cpu.server_cores,
            }
            for r in report.delivery
        ],
        "pop3": [
            {
                "name": r.name,
                "key": r.key,
                "depth": r.depth,
                "messages": r.stats.messages,
                "bytes": r.stats.bytes,
                "seconds": r.stats.seconds,
                "mb_per_s": r.stats.mb_per_s,
                "rounds_mb_per_s": [x.mb_per_s for x in r.rounds],
                "cpu_busy": r.stats.cpu.machine_cores,
                "client_cpu": r.stats.cpu.client_cores,
                "other_cpu": r.stats.cpu.other_cores,
                "server_cpu": r.stats.cpu.server_cores,
            }
            for r in report.pop3
        ],
        "idle_waits": report.idle_waits,
        "verdicts": verdicts(report),
        "errors": report.errors,
        "profiles": report.profiles,
    }


# ---- main -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--clients", type=int, default=10, help="concurrent clients (default 10)")
    ap.add_argument("--size", type=int, default=20 * 1024, help="message size in bytes")
    ap.add_argument("--messages", type=int, default=2000, help="deliveries per target")
    ap.add_argument("--warmup", type=int, default=100, help="unmeasured deliveries first")
    ap.add_argument("--accounts", type=int, default=10, help="delivery accounts (N)")
    ap.add_argument(
        "--pop3-messages",
        type=int,
        default=500,
        help="messages per POP3 mailbox (0: no POP3 measurement)",
    )
    ap.add_argument("--pop3-rounds", type=int, default=3, help="measured POP3 rounds")
    ap.add_argument(
        "--pop3-depths",
        type=int,
        nargs="+",
        default=[1, 8],
        help="RETRs in flight per client: 1 = one at a time (the target's figure), more = "
        "pipelined (less client CPU per MB); one set of rounds for each (default 1 8)",
    )
    ap.add_argument("--pop3-warmup", type=int, default=1, help="unmeasured POP3 rounds first")
    ap.add_argument(
        "--chunking",
        action="store_true",
        help="deliver with BDAT (RFC 3030) where the server offers CHUNKING, one round trip per "
        "message; default DATA, two",
    )
    ap.add_argument("--dovecot-fsync", default="always", choices=["always", "optimized", "never"])
    ap.add_argument(
        "--targets",
        nargs="+",
        default=list(ALL_TARGETS),
        choices=ALL_TARGETS,
        help="which servers to measure (default: all)",
    )
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="before each measurement wait up to this long for other processes to go quiet",
    )
    ap.add_argument(
        "--idle-wait",
        type=float,
        default=240.0,
        help="before each measurement wait up to this long for the server under test to finish "
        "background work (postfach's full-text indexer, Postfix's queue)",
    )
    ap.add_argument("--timeout", type=float, default=300.0, help="limit per measurement (s)")
    ap.add_argument(
        "--markdown",
        type=Path,
        default=HERE / "results" / "last-run.md",
        help="where to write the Markdown fragment (and .json beside it)",
    )
    ap.add_argument(
        "--profile",
        metavar="DIR",
        help="attach py-spy to postfach while it is measured (skews the figures)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    add_workers_argument(ap)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0 and {"postfix", "dovecot"} & set(args.targets):
        say("note: private Postfix/Dovecot instances need root here (queue and mail owners)")
    params: dict[str, Any] = {
        k: v for k, v in vars(args).items() if k not in ("markdown", "profile", "keep")
    }
    params["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    report = Report(params)
    ctx = Ctx(
        args,
        report,
        MessageFactory(args.size),
        Serials(),
        delivery_accounts(args.accounts),
        pop3_accounts(args.clients),
    )
    root = Path(tempfile.mkdtemp(prefix="postfach-bench-"))
    root.chmod(0o755)  # the peers' unprivileged processes must reach their directories
    started = time.perf_counter()
    try:
        if {"postfix", "dovecot"} & set(args.targets):
            report.attempt("Postfix/Dovecot", lambda: bench_peers(ctx, root / "peers"))
        if "postfach" in args.targets:
            report.attempt("postfach", lambda: bench_postfach(ctx, root / "postfach"))
    finally:
        if args.keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    host = machine()
    print()
    workers = report.settings.get("postfach", {}).get("workers", _workers_asked(params))
    print(f"postfach workers: {workers}")
    print(delivery_table(report, False))
    print()
    print(pop3_table(report, False))
    print(NOISE_NOTE)
    for phase, waited in report.idle_waits.items():
        print(f"idle wait before {phase}: {waited:.0f}s")
    print()
    for v in verdicts(report):
        print(v)
    for e in report.errors:
        print(f"error: {e}")
    for phase, text in report.profiles.items():
        print(f"\npostfach profile during {phase}:\n{text}")
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(markdown(report, host))
    args.markdown.with_suffix(".json").write_text(json.dumps(report_json(report, host), indent=2))
    print(f"\nMarkdown: {args.markdown}  ({time.perf_counter() - started:.0f}s in all)")
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
