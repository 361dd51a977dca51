"""How long ``postfach serve`` takes to stop on SIGTERM with N idle SMTP, IMAP and POP3 clients
each, and whether every client was told (421 / * BYE / -ERR).

    .venv/bin/python benchmarks/stop_time.py 1000               # 3000 connections
    .venv/bin/python benchmarks/stop_time.py 1000 --workers 2   # a supervisor and 2 workers

"exit" is when the ``serve`` process (with workers: the supervisor) exited; "all gone" is when
the last process of its tree (the workers) was gone as well.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "reliability"))

import proctree  # noqa: E402
from common import raise_nofile  # noqa: E402
from postfach_server import add_workers_argument  # noqa: E402
from proc import spawn  # noqa: E402

GOODBYE = {"smtp": b"421 4", "imap": b"* BYE", "pop3": b"-ERR "}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rindex(b")") + 2 :][:1] != b"Z"  # a zombie has exited


def main(per: int, workers: int | None) -> None:
    raise_nofile(4 * per + 1024)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        # Every client is on 127.0.0.1: no per-address or total limit.
        (data / "postfach.toml").write_text(
            "[limits]\nmax_connections = 0\nmax_connections_per_ip = 0\nmax_sessions_per_user = 0\n"
        )
        env = {} if workers is None else {"POSTFACH_WORKERS": str(workers)}
        server = spawn(data, env=env)
        clients = []
        try:
            time.sleep(1)  # let a supervisor start its workers
            pids = proctree.tree([server.pid])
            asked = "unset (server default)" if workers is None else str(workers)
            print(f"POSTFACH_WORKERS {asked}: {len(pids)} process(es)", flush=True)
            for name in GOODBYE:
                for _ in range(per):
                    s = socket.create_connection(("127.0.0.1", server.port(name)), timeout=30)
                    f = s.makefile("rb")
                    f.readline()  # the greeting
                    clients.append((name, s, f))
            pids = proctree.tree([server.pid])
            t0 = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            status = server.proc.wait(timeout=60)
            elapsed = time.monotonic() - t0
            while any(_alive(p) for p in pids) and time.monotonic() - t0 < 60:
                time.sleep(0.02)
            left = [p for p in pids if _alive(p)]
            all_gone = time.monotonic() - t0
            told = sum(1 for name, _s, f in clients if f.readline().startswith(GOODBYE[name]))
        finally:
            server.kill()
            for _name, s, f in clients:
                f.close()
                s.close()
    gone = f"all {len(pids)} process(es) gone after {all_gone:.2f} s"
    if left:
        gone = f"{len(left)} of {len(pids)} process(es) still running after 60 s: {left}"
        for p in left:
            os.kill(p, signal.SIGKILL)  # ours: the tree of the server this script started
    print(
        f"{len(clients)} idle connections: exit {status} after {elapsed:.2f} s, {gone}, told {told}"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("per", type=int, nargs="?", default=300, help="clients per protocol")
    add_workers_argument(ap)
    args = ap.parse_args()
    main(args.per, args.workers)
