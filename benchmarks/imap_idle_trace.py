"""``postfach`` under tracemalloc, for ``imap_idle.py --trace``: SIGUSR2 dumps a snapshot.

The n-th SIGUSR2 writes ``$IMAP_IDLE_TRACE_DIR/snap-n`` (and an empty ``snap-n.done`` once it is
complete); the arguments are those of the ``postfach`` command.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import tracemalloc
from pathlib import Path
from types import FrameType


def main() -> None:
    out = Path(os.environ["IMAP_IDLE_TRACE_DIR"])
    tracemalloc.start(12)
    count = 0

    def dump() -> None:
        nonlocal count
        snap = tracemalloc.take_snapshot()
        snap.dump(str(out / f"snap-{count}"))
        (out / f"snap-{count}.done").touch()
        count += 1

    def on_signal(_sig: int, _frame: FrameType | None) -> None:
        threading.Thread(target=dump).start()

    signal.signal(signal.SIGUSR2, on_signal)
    from postfach.cli.main import main as admin_main

    sys.argv = ["postfach", *sys.argv[1:]]
    admin_main()


if __name__ == "__main__":
    main()
