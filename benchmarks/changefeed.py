"""What the store's change feed costs (docs/benchmarks.md, "changefeed").

Three figures, each against whichever ``postfach`` is importable (run it once with
``PYTHONPATH=<checkout of the commit before>/src`` for the "before" figures):

* CPU per delivery in the store alone: a store with a publisher (as in the server) delivers
  ``--deliveries`` messages of 2 KB one at a time (one group commit, hence one feed row, each:
  the worst case) and then as many again 50 at a time (group commits); process CPU time / count.
* idle CPU of ``postfach serve``: utime + stime from /proc/PID/stat over ``--idle`` seconds,
  once the server has started and settled.
* (feed only) latency from a commit in one store instance to its publication by another one
  on the same data directory (two processes' worth of stores in one).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from postfach.store.sqlite import SqliteMailstore

LISTENERS = ("smtp", "lmtp", "submission", "submissions", "pop3", "pop3s", "imap", "imaps")


def message(i: int) -> bytes:
    head = f"From: a@example.net\r\nTo: b@example.org\r\nSubject: message {i}\r\n\r\n".encode()
    return head + b"x" * 70 + b"\r\n" * 1 + (b"y" * 78 + b"\r\n") * 24


def store_cpu(root: Path, n: int) -> tuple[float, float]:
    """ms of CPU per delivery: one at a time, and 50 at a time."""
    heard: list[object] = []
    s = SqliteMailstore(root / "store", index_text=False)
    s.set_publisher(heard.extend)
    try:
        s.add_domain("example.org")
        acc = s.add_account("b@example.org", "h")
        staged = [s.stage(message(i)) for i in range(2 * n + 100)]
        for b in staged[:100]:  # warm up
            s.deliver([acc.id], b, 1_700_000_000)
        t0 = time.process_time()
        for b in staged[100 : 100 + n]:
            s.deliver([acc.id], b, 1_700_000_000)
        single = (time.process_time() - t0) / n * 1000
        t0 = time.process_time()
        rest = staged[100 + n :]
        for i in range(0, len(rest), 50):
            futs = [s.submit(s._op_deliver, [acc.id], b, 1_700_000_000, "INBOX", 0)
                    for b in rest[i : i + 50]]  # fmt: skip
            concurrent.futures.wait(futs)
        grouped = (time.process_time() - t0) / len(rest) * 1000
        return single, grouped
    finally:
        s.close()


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu(root: Path, seconds: float) -> float:
    """CPU seconds per minute of an idle ``postfach serve``."""
    data = root / "serve"
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTFACH_")}
    env.update({f"POSTFACH_{n.upper()}": "127.0.0.1:0" for n in LISTENERS})
    env["POSTFACH_HTTP"] = "off"
    cmd = [sys.executable, "-m", "postfach", "--data", str(data), "serve"]
    with open(root / "serve.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env)
    try:
        time.sleep(15)  # started, swept, indexer idle
        start = proc_cpu(proc.pid)
        time.sleep(seconds)
        used = proc_cpu(proc.pid) - start
        return used / seconds * 60
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def latency(root: Path, n: int) -> list[float]:
    """Seconds from a commit in store A to its publication by store B."""
    try:
        from postfach.store.feed import Follower  # noqa: F401
    except ImportError:
        return []
    got = threading.Event()
    a = SqliteMailstore(root / "lat", index_text=False)
    b = SqliteMailstore(root / "lat", index_text=False)
    b.set_publisher(lambda changes: got.set())
    out: list[float] = []
    try:
        a.add_domain("example.org")
        acc = a.add_account("b@example.org", "h")
        for i in range(n):
            blob = a.stage(message(i))
            got.clear()
            a.deliver([acc.id], blob, 1_700_000_000)
            t0 = time.monotonic()
            got.wait(5)
            out.append(time.monotonic() - t0)
            time.sleep(0.013 * (i % 7))  # commits at different points of the poll cycle
    finally:
        a.close()
        b.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--deliveries", type=int, default=2000)
    ap.add_argument("--idle", type=float, default=60.0)
    ap.add_argument("--latency", type=int, default=50)
    ap.add_argument(
        "--poll-interval",
        type=float,
        default=None,
        help="seconds between the follower's polls (default: postfach's); a large value leaves"
        " the poll out of an instruction count taken under callgrind, where wall time stretches",
    )
    args = ap.parse_args()
    if args.poll_interval is not None:
        SqliteMailstore.feed_interval = args.poll_interval
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.deliveries:
            single, grouped = store_cpu(root, args.deliveries)
            print(
                f"store CPU per delivery: {single:.3f} ms one at a time, {grouped:.3f} ms grouped"
            )
        lat = latency(root, args.latency)
        if lat:
            lat.sort()
            print(
                f"feed latency over {len(lat)}: median {statistics.median(lat) * 1000:.0f} ms,"
                f" max {lat[-1] * 1000:.0f} ms"
            )
        if args.idle:
            print(f"idle serve: {idle_cpu(root, args.idle) * 1000:.0f} ms CPU per minute")
        print(f"load average: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
