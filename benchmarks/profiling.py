"""Optional sampling profile of the postfach server during a phase (``run.py --profile DIR``).

py-spy attaches to the running server by pid (``--nonblocking``: the server is never paused) and
writes collapsed stacks; `summarize` turns them into the top functions by own and total time.
The profiler takes CPU from a 2-core machine: figures from a profiled run are not comparable.
"""

from __future__ import annotations

import shutil
import signal
import sys
from collections import Counter
from pathlib import Path

from common import Child


def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


class Profiler:
    def __init__(self, pid: int, out: Path, rate: int = 250) -> None:
        exe = py_spy()
        if exe is None:
            raise RuntimeError("py-spy is not installed (.venv/bin/pip install py-spy)")
        self.out = out
        argv = [exe, "record", "--pid", str(pid), "--format", "raw", "--output", str(out)]
        # --subprocesses: a postfach with [server] workers is a supervisor and its workers.
        argv += ["--rate", str(rate), "--nonblocking", "--threads", "--subprocesses"]
        # Not a server: its CPU is not counted as the server's.
        self.child = Child("py-spy", argv, out.with_suffix(".log"), server=False)

    def stop(self) -> None:
        # SIGINT makes py-spy stop sampling and write its output.
        self.child.stop(timeout=60, sig=signal.SIGINT)


def _frame(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (file.py:123)``."""
    name, _, where = frame.partition(" (")
    if not where:
        return name
    path = where.rstrip(")")
    for marker in ("site-packages/", "src/", "lib/python3"):
        i = path.rfind(marker)
        if i >= 0:
            path = path[i + len(marker) :]
            break
    return f"{name} ({path})"


# Frames on every stack (start-up, the event loop's own loop, thread bootstrap): not informative.
_PLUMBING = (
    "click/",
    "threading.py",
    "asyncio/runners.py",
    "asyncio/base_events.py",
    "asyncio/events.py",
    "cli/main.py",
    "(postfach)",
    "concurrent/futures/thread.py",
)


def _function(frame: str) -> str:
    """``func (file.py:123)`` -> ``func (file.py)``: own time summed over a function's lines."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rpartition(':')[0]})" if where else name


def summarize(raw: Path, top: int = 20, exclude: tuple[str, ...] = ()) -> str:
    """Top functions by own and by inclusive samples, and the threads the samples fell in.

    Stacks with a frame whose function name is in ``exclude`` are left out (and counted).
    """
    own: Counter[str] = Counter()
    own_lines: Counter[str] = Counter()
    total: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    samples = excluded = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        n = int(count_text)
        head, *rest = stack.split(";")
        frames = [_frame(f) for f in rest]
        if exclude and any(f.partition(" (")[0] in exclude for f in frames):
            excluded += n
            continue
        samples += n
        # With --threads the first frame names the thread: "thread (0x7f12): MainThread".
        name = head.partition(": ")[2] or head
        threads[name.rstrip("0123456789_") or name] += n
        if frames:
            own[_function(frames[-1])] += n
            own_lines[frames[-1]] += n
        for f in {_function(f) for f in frames}:
            if not any(p in f for p in _PLUMBING):
                total[f] += n
    if samples == 0:
        return "no samples"

    def block(title: str, counter: Counter[str], k: int) -> list[str]:
        rows = [f"  {100 * n / samples:5.1f}%  {f}" for f, n in counter.most_common(k)]
        return ["", title, *rows]

    head_line = f"{samples} samples (py-spy, non-idle)"
    if excluded:
        head_line += f"; {excluded} more in {', '.join(exclude)} left out"
    lines = [head_line]
    lines += block("by thread:", threads, 8)
    lines += block("own time by function:", own, top)
    lines += block("own time by line:", own_lines, top // 2)
    lines += block("total time (the function and what it called):", total, top)
    return "\n".join(lines)
