"""The processes of a server under test, and their CPU time and memory summed over all of them.

A server is the process the benchmark started (a "root") and every process under it: postfach
with ``[server] workers`` is a supervisor and its forked workers, Dovecot a master with its
login, imap, pop3 and lmtp processes, Postfix a master with its daemons. Every benchmark that
reports a server's CPU or memory goes through this module, so all of them count the same way:

- the tree of a root is the root, its descendants (by the parent pid in ``/proc/PID/stat``) and
  the members of its session (each root is started as a session leader; a Postfix master that
  daemonises into a new process still stays in it);
- CPU time is utime + stime + cutime + cstime of each process in the tree: the cumulative child
  times hold the CPU of every child that exited and was reaped by its parent, so a worker or an
  imap process that ends during a measurement does not take its CPU with it (one that exited but
  is not reaped yet is a zombie in the tree and still counted by itself, never twice);
- memory is the sum of ``Rss`` and of ``Pss`` (``/proc/PID/smaps_rollup``) over the tree. RSS
  counts a page shared by N processes N times (the interpreter and copy-on-write heap of forked
  workers, Dovecot's shared libraries); PSS counts each page once, split among its sharers, so it
  is the figure to compare between a one-process and a many-process server.

Linux only (``/proc``). Reading ``/proc`` costs the caller (the load generator) a few ms per
hundred processes, never the server.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ProcStat:
    ppid: int
    sid: int
    ticks: int  # utime + stime + cutime + cstime, in clock ticks


def snapshot() -> dict[int, ProcStat]:
    """Every process on the machine: pid -> (ppid, session, CPU ticks incl. reaped children)."""
    procs: dict[int, ProcStat] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue  # exited meanwhile
        # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        # utime stime cutime cstime ...; comm may contain spaces and parentheses.
        fields = data[data.rindex(b")") + 2 :].split()
        procs[int(entry.name)] = ProcStat(
            int(fields[1]), int(fields[3]), sum(int(x) for x in fields[11:15])
        )
    return procs


def tree(roots: Iterable[int], procs: dict[int, ProcStat] | None = None) -> set[int]:
    """The living processes of the roots' trees (see the module docstring)."""
    if procs is None:
        procs = snapshot()
    roots = set(roots)
    children: dict[int, list[int]] = {}
    for pid, st in procs.items():
        children.setdefault(st.ppid, []).append(pid)
    found = {pid for pid in roots if pid in procs}
    found |= {pid for pid, st in procs.items() if st.sid in roots}
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def cpu_ticks(roots: Iterable[int], procs: dict[int, ProcStat] | None = None) -> int:
    """CPU ticks of the roots' trees, with the time of their children that exited."""
    if procs is None:
        procs = snapshot()
    return sum(procs[pid].ticks for pid in tree(roots, procs))


def cpu_seconds(roots: Iterable[int]) -> float:
    return cpu_ticks(roots) / TICKS_PER_SECOND


@dataclass(frozen=True, slots=True)
class Memory:
    rss_kb: int  # sum of the processes' resident sets (shared pages counted once per process)
    pss_kb: int  # sum of proportional set sizes (each shared page split among its sharers)
    processes: int

    def as_dict(self) -> dict[str, int]:
        return {"rss_kb": self.rss_kb, "pss_kb": self.pss_kb, "processes": self.processes}


def _rollup(pid: int) -> tuple[int, int]:
    rss = pss = 0
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


def memory(roots: Iterable[int]) -> Memory:
    """RSS and PSS (kB) summed over the roots' trees."""
    pids = tree(roots)
    rss = pss = 0
    for pid in pids:
        r, p = _rollup(pid)
        rss += r
        pss += p
    return Memory(rss, pss, len(pids))


def count(roots: Iterable[int]) -> int:
    """How many processes the roots' trees have now (a server's supervisor plus its workers)."""
    return len(tree(roots))
