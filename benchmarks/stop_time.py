"""How long ``postfach serve`` takes to stop on SIGTERM with N idle SMTP, IMAP and POP3 clients
each, and whether every client was told (421 / * BYE / -ERR).

    .venv/bin/python benchmarks/stop_time.py 1000   # 3000 connections
"""

from __future__ import annotations

import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reliability"))

from proc import spawn

GOODBYE = {"smtp": b"421 4", "imap": b"* BYE", "pop3": b"-ERR "}


def main(per: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = spawn(Path(tmp) / "data")
        clients = []
        try:
            for name in GOODBYE:
                for _ in range(per):
                    s = socket.create_connection(("127.0.0.1", server.port(name)), timeout=30)
                    f = s.makefile("rb")
                    f.readline()  # the greeting
                    clients.append((name, s, f))
            t0 = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            status = server.proc.wait(timeout=60)
            elapsed = time.monotonic() - t0
            told = sum(1 for name, _s, f in clients if f.readline().startswith(GOODBYE[name]))
        finally:
            server.kill()
            for _name, s, f in clients:
                f.close()
                s.close()
    print(f"{len(clients)} idle connections: exit {status} after {elapsed:.2f} s, told {told}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
