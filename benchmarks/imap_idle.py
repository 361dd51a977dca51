"""postfach IMAP: memory per idle connection (LOGIN, SELECT INBOX, IDLE) at 1,000 and 5,000.

``.venv/bin/python benchmarks/imap_idle.py`` (``--help`` for the knobs). Starts ``postfach
serve`` on 127.0.0.1 (plaintext IMAP: no TLS objects in the figure; ``--tls`` measures implicit
TLS on the IMAPS port instead), opens the connections in steps (``--steps 1000,5000``) and after
each step reports, for the server's process tree (the serve process and any children):

* VmRSS and Pss (``/proc/PID/smaps_rollup``; what a process owns plus its share of pages shared
  with others, so the sum over several worker processes counts shared pages once);
* the delta against the tree before the first connection, per connection.

Each connection is one IMAP client in this process: LOGIN, SELECT INBOX of a ``--messages``
message mailbox (``--accounts`` accounts, so connections share mailboxes as real users do not;
the message listing is shared per mailbox either way), IDLE, then nothing. After the last step
one message is delivered over SMTP to every account and the benchmark checks that each idling
client was told (``* n EXISTS``) and how long that took.

``--trace`` runs the server under ``tracemalloc`` (through ``imap_idle_trace.py``, which dumps a
snapshot on SIGUSR2) and prints the top allocation sites of the connections of the first step,
grouped by traceback: where the bytes of a connection go. Tracing slows the server down and adds
its own memory, so the RSS figures of a ``--trace`` run are not the ones to report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import smtplib
import ssl
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import proctree  # noqa: E402
from common import DOMAIN, HOST, Child, free_port  # noqa: E402
from imap import (  # noqa: E402
    Client,
    PostfachImap,
    fill_postfach,
    load_templates,
    make_message,
    say,
    throughput_accounts,
    wait_imap,
)


def _kb(pid: int, path: str, key: str) -> int:
    try:
        with open(f"/proc/{pid}/{path}") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_memory(root: int) -> dict[str, int]:
    pids = proctree.tree([root])  # the server and its workers
    return {
        "processes": len(pids),
        "rss_kb": sum(_kb(p, "status", "VmRSS") for p in pids),
        "anon_kb": sum(_kb(p, "status", "RssAnon") for p in pids),
        "file_kb": sum(_kb(p, "status", "RssFile") for p in pids),
        "pss_kb": sum(_kb(p, "smaps_rollup", "Pss") for p in pids),
    }


class TlsClient(Client):
    """The benchmark client over implicit TLS (IMAPS)."""

    async def connect(self, port: int) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.reader, self.writer = await asyncio.open_connection(HOST, port, limit=1 << 16, ssl=ctx)
        greeting = await self.reader.readline()
        if not greeting.startswith(b"* OK"):
            raise RuntimeError(f"greeting {greeting[:80]!r}")


@dataclass
class Server(PostfachImap):
    tls: bool = False
    trace_dir: Path | None = None
    imaps_port: int = 0

    def env(self) -> dict[str, str]:
        env = super().env()
        if self.tls:
            env["POSTFACH_IMAPS"] = f"{HOST}:{self.imaps_port}"
        return env

    def start(self) -> None:
        if self.trace_dir is None:
            super().start()
            return
        from common import wait_for_banner

        env = self.env() | {"IMAP_IDLE_TRACE_DIR": str(self.trace_dir)}
        argv = [sys.executable, str(HERE / "imap_idle_trace.py"), "serve"]
        self.child = Child("postfach", argv, self.root / "postfach.log", env=env)
        wait_for_banner(self.smtp_port, 120, self.child.proc, "postfach smtp")


def make_tls(data_dir: Path) -> None:
    """A self-signed certificate for the IMAPS listener, named in postfach.toml."""
    import subprocess

    key, cert = data_dir / "key.pem", data_dir / "cert.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    cfg = data_dir / "postfach.toml"
    cfg.write_text(cfg.read_text() + f'\n[tls]\ncert = "{cert}"\nkey = "{key}"\n')


async def open_idle(
    port: int, accounts: list[str], start: int, n: int, tls: bool
) -> tuple[list[Client], int]:
    sem = asyncio.Semaphore(64)
    clients: list[Client] = []
    failed = 0

    async def one(i: int) -> None:
        nonlocal failed
        async with sem:
            c = TlsClient() if tls else Client()
            try:
                async with asyncio.timeout(120):
                    await c.login(port, accounts[i % len(accounts)])
                    await c.idle()
                clients.append(c)
            except Exception as exc:
                failed += 1
                if failed <= 3:
                    say(f"connection {i} failed: {exc!r}")
                c.close()

    await asyncio.gather(*(one(i) for i in range(start, start + n)))
    return clients, failed


async def wait_exists(clients: list[Client], timeout: float) -> tuple[int, float]:
    """How many idling clients saw ``* n EXISTS`` within ``timeout``, and the slowest time."""
    t0 = time.perf_counter()
    slowest = 0.0

    async def one(c: Client) -> bool:
        nonlocal slowest
        assert c.reader is not None
        while True:
            line = await c.reader.readline()
            if not line:
                return False
            if line.endswith(b"EXISTS\r\n"):
                slowest = max(slowest, time.perf_counter() - t0)
                return True

    async def guarded(c: Client) -> bool:
        try:
            async with asyncio.timeout(timeout):
                return await one(c)
        except TimeoutError:
            return False

    told = await asyncio.gather(*(guarded(c) for c in clients))
    return sum(told), slowest


def deliver(port: int, accounts: list[str]) -> None:
    with smtplib.SMTP(HOST, port, timeout=60) as s:
        s.sendmail(
            f"bench@{DOMAIN}",
            accounts,
            b"From: bench@example.org\r\nSubject: wake up\r\n\r\nnew mail\r\n",
        )


def trace_report(trace_dir: Path, n: int, top: int) -> list[str]:
    before = tracemalloc.Snapshot.load(str(trace_dir / "snap-0"))
    after = tracemalloc.Snapshot.load(str(trace_dir / "snap-1"))
    stats = after.compare_to(before, "traceback")
    lines = []
    total = sum(s.size_diff for s in stats)
    lines.append(f"traced delta: {total / n:.0f} B per connection ({total / 1024:.0f} KiB)")
    by_file = after.compare_to(before, "filename")
    lines.append(
        "by file (innermost frame): "
        + ", ".join(
            f"{s.traceback[0].filename.rsplit('/', 1)[-1]} {s.size_diff / n:.0f}"
            for s in by_file[:12]
            if s.size_diff > 0
        )
    )
    keep = os.environ.get("IMAP_IDLE_KEEP")
    if keep:
        shutil.copytree(trace_dir, keep, dirs_exist_ok=True)
    for s in stats[:top]:
        if s.size_diff <= 0:
            continue
        frames = [
            f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}"
            for f in s.traceback
            if "tracemalloc" not in f.filename
        ]
        lines.append(
            f"{s.size_diff / n:8.0f} B/conn {s.count_diff / n:6.2f} blocks/conn  "
            + " < ".join(frames[-1::-1][:6])
        )
    return lines


def snapshot(pid: int, trace_dir: Path, i: int) -> None:
    target = trace_dir / f"snap-{i}"
    os.kill(pid, signal.SIGUSR2)
    for _ in range(600):
        if target.exists() and (trace_dir / f"snap-{i}.done").exists():
            return
        time.sleep(0.1)
    raise RuntimeError("no tracemalloc snapshot from the server")


async def run(
    srv: Server, accounts: list[str], steps: list[int], args: argparse.Namespace
) -> dict[str, object]:
    assert srv.child is not None
    pid = srv.child.proc.pid
    port = srv.imaps_port if srv.tls else srv.imap_port
    await asyncio.sleep(2)
    base = tree_memory(pid)
    out: dict[str, object] = {"base": base}
    if srv.trace_dir is not None:
        snapshot(pid, srv.trace_dir, 0)
    clients: list[Client] = []
    rows = []
    failed_total = 0
    for step in steps:
        t0 = time.perf_counter()
        new, failed = await open_idle(port, accounts, len(clients), step - len(clients), srv.tls)
        clients += new
        failed_total += failed
        opened = time.perf_counter() - t0
        await asyncio.sleep(3)
        mem = tree_memory(pid)
        n = len(clients)
        row = {
            "connections": n,
            "failed": failed_total,
            "open_s": round(opened, 1),
            **mem,
            "rss_per_conn_kb": round((mem["rss_kb"] - base["rss_kb"]) / max(1, n), 2),
            "pss_per_conn_kb": round((mem["pss_kb"] - base["pss_kb"]) / max(1, n), 2),
            "anon_per_conn_kb": round((mem["anon_kb"] - base["anon_kb"]) / max(1, n), 2),
        }
        if rows:  # the slope since the first step (its one-time costs: listings, store pages)
            first = rows[0]
            more = n - int(first["connections"])
            row["rss_marginal_kb"] = round((mem["rss_kb"] - int(first["rss_kb"])) / max(1, more), 2)
            row["anon_marginal_kb"] = round(
                (mem["anon_kb"] - int(first["anon_kb"])) / max(1, more), 2
            )
        say(f"step: {row}")
        rows.append(row)
        if srv.trace_dir is not None and len(rows) == 1:
            snapshot(pid, srv.trace_dir, 1)
            out["trace"] = trace_report(srv.trace_dir, n, args.top)
            for line in out["trace"]:  # type: ignore[attr-defined]
                print(line)
    out["steps"] = rows
    if not args.no_deliver and clients:
        t0 = time.perf_counter()
        await asyncio.get_running_loop().run_in_executor(None, deliver, srv.smtp_port, accounts)
        told, slowest = await wait_exists(clients, 30)
        out["delivery"] = {
            "idling": len(clients),
            "told": told,
            "slowest_s": round(slowest, 2),
            "smtp_s": round(time.perf_counter() - t0, 2),
        }
        say(f"delivery: {out['delivery']}")
    for c in clients:
        c.close()
    await asyncio.sleep(0.5)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--accounts", type=int, default=10)
    ap.add_argument("--messages", type=int, default=500)
    ap.add_argument("--steps", default="1000,5000", help="connection counts to measure at")
    ap.add_argument("--tls", action="store_true", help="implicit TLS (IMAPS) instead of plain")
    ap.add_argument("--trace", action="store_true", help="tracemalloc the first step")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--no-deliver", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(steps) * 2 + 200
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    templates = load_templates()
    accounts = throughput_accounts(args.accounts)
    root = Path(tempfile.mkdtemp(prefix="imapidle-"))
    results: dict[str, object] = {"args": vars(args) | {"json": str(args.json)}}
    results["loadavg_start"] = os.getloadavg()
    srv = Server(root / "postfach", accounts, tls=args.tls, imaps_port=free_port())
    if args.trace:
        srv.trace_dir = root / "trace"
        srv.trace_dir.mkdir(parents=True)
    try:
        srv.setup()
        if args.tls:
            make_tls(srv.data_dir)
        plan = {
            a: (lambda a=a: (make_message(templates, a, i) for i in range(args.messages)))
            for a in accounts
        }
        results["fill"] = fill_postfach(srv.data_dir, plan)
        srv.start()
        wait_imap(srv.imap_port, 60, "postfach")
        results.update(asyncio.run(run(srv, accounts, steps, args)))
    finally:
        results["loadavg_end"] = os.getloadavg()
        log = srv.log_tail()
        srv.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({k: v for k, v in results.items() if k != "trace"}, indent=1, default=str))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    if not results.get("steps"):
        print(log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
