"""The benchmarks count a server's CPU and memory over its whole process tree (supervisor and
workers, benchmarks/proctree.py): a worker that exits during a measurement keeps its CPU in the
figure, and memory is summed over every process."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import proctree

# A "supervisor" that forks two "workers": each burns CPU; the first exits (and is reaped) after
# its burn, the second stays until the supervisor's stdin closes.
_SUPERVISOR = r"""
import os, sys, time

def burn(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass

pids = []
for stay in (False, True):
    pid = os.fork()
    if pid == 0:
        burn(0.4)
        if stay:
            sys.stdin.read()
        os._exit(0)
    pids.append(pid)
print("started", flush=True)
os.waitpid(pids[0], 0)          # the first worker is gone: its CPU moves to our cutime
print("reaped", flush=True)
sys.stdin.read()
os.waitpid(pids[1], 0)
"""


def test_tree_counts_workers_and_keeps_the_cpu_of_exited_ones() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _SUPERVISOR],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline() == b"started\n"
        assert proc.stdout.readline() == b"reaped\n"
        time.sleep(0.5)  # the second worker finishes its burn
        pids = proctree.tree([proc.pid])
        assert proc.pid in pids and len(pids) == 2  # supervisor + the worker still running
        # Both workers' 0.8 s are counted although one has exited (cutime of the supervisor).
        assert proctree.cpu_seconds([proc.pid]) >= 0.7
        mem = proctree.memory([proc.pid])
        assert mem.processes == 2
        assert mem.rss_kb > 0 and 0 < mem.pss_kb <= mem.rss_kb
        # A tree's figures are its own: an unrelated root does not count this one's.
        assert proc.pid not in proctree.tree([1 << 30])
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=10)
