r"""``postfach serve`` with several worker processes (``[server] workers``): the supervisor.

One process and one event loop use one CPU core. With ``workers = N > 1`` the process that
``serve`` starts becomes a supervisor that does no mail work itself:

1. It binds every listener (as root: binds, then drops to ``[server] user``), opens the store
   and the queue database once to create or migrate them, sweeps the leftovers of a crash
   (`sweep_leftovers`: only here, never while workers write), makes the certificate if there
   is none and closes the store again, so that no thread exists when it forks.
   It takes the pid file (`postfach.control`).
2. It makes the shared counter table (`postfach.sharedcounts`) and the shared failed-login
   throttle (`postfach.sharedthrottle`) and the table of IMAP `\Recent` claims
   (`postfach.sharedrecent`), and forks N workers. Each runs the
   normal `postfach.app.App` on the inherited listening sockets: all workers accept from one
   accept queue per listener, and the kernel hands each connection to one of them. Worker 0 is
   the primary: it alone runs the outbound queue runner and the full-text indexer.
3. Once every worker has started it prints the banner (the listening addresses), once.

With one worker per usable CPU (the default ``workers = "auto"`` on up to 8 cores) each worker
is bound to a CPU of its own (`worker_cpu`, ``[server] cpu_affinity = "auto"``, the default):
a worker's event loop and its store writer hand every message to each other, and on one CPU
those wake-ups and the GIL hand-overs are cheaper than across two (docs/benchmarks.md,
session 8). ``cpu_affinity = "off"`` leaves the workers to the scheduler.

Then it passes signals on: SIGTERM/SIGINT (graceful stop: it closes its own copies of the
listening sockets and sends every worker SIGTERM; each stops as a single server does; it exits 0
when all are gone), SIGHUP (TLS reload) and SIGUSR1 (queue wake-up, account check: ``postfach
queue flush``, ``user del``) to every worker; SIGUSR2, which a worker sends when it queued
outbound mail, as SIGUSR2 to the primary alone, whose runner then looks at once.

A worker that exits unexpectedly is logged (``event=worker_exit``), its counts are cleared and it
is started again after a back-off (0.5 s, doubling up to 30 s while workers keep dying within
30 s of their start). Every worker asks the kernel for SIGKILL when the supervisor dies
(``PR_SET_PDEATHSIG``), so a supervisor killed with SIGKILL takes its workers with it at once and
nothing keeps the ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import select
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from postfach import privileges
from postfach.app import RUNNER_SIGNAL, App, WorkerRole, _bind, login_throttle
from postfach.config import Address, Config, listener_items
from postfach.control import WAKE_SIGNAL, PidFile
from postfach.datadir import StartupError, open_store
from postfach.queue.store import QueueStore
from postfach.sharedcounts import SharedCounts
from postfach.sharedrecent import SharedRecentClaims
from postfach.sharedthrottle import SharedThrottle
from postfach.tls import ReloadableTls, ensure_self_signed

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_FIRST_BACKOFF = 0.5
_MAX_BACKOFF = 30.0
_STABLE = 30.0  # a worker that ran this long resets the back-off
_STARTUP_TIMEOUT = 120.0
_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    WAKE_SIGNAL,
    RUNNER_SIGNAL,
    signal.SIGCHLD,
)

#: what the CLI prints once the server listens: (addresses, no accounts yet)
Banner = Callable[[dict[str, Address], bool], None]


def worker_cpu(index: int, workers: int, usable: Collection[int]) -> int | None:
    """The CPU worker ``index`` is bound to under ``cpu_affinity = "auto"``: with one worker per
    usable CPU, worker i gets the i-th of them in number order; otherwise (fewer or more workers
    than CPUs, a single worker) none: binding some CPUs to workers and leaving others to chance
    would only stop the scheduler from moving a worker to an idle CPU."""
    cpus = sorted(usable)
    if workers < 2 or len(cpus) != workers or not 0 <= index < workers:
        return None
    return cpus[index]


@dataclass
class _Worker:
    pid: int
    started: float
    ready: int | None  # read end of the pipe on which the worker reports that it listens


class Supervisor:
    def __init__(self, cfg: Config, reload: Callable[[], Config], banner: Banner) -> None:
        self.cfg = cfg
        self.reload = reload
        self.banner = banner
        self.count = cfg.workers
        self.sockets: dict[str, socket.socket] = {}
        self.workers: dict[int, _Worker] = {}
        self.restart_at: dict[int, float] = {}
        self.backoff: dict[int, float] = {}
        self.counts: SharedCounts | None = None
        self.throttle: SharedThrottle | None = None
        self.recent: SharedRecentClaims | None = None
        self.pidfile: PidFile | None = None
        self.stopping = False
        self.started = False  # every first worker reported that it listens
        self.failed = False
        self._pending: list[int] = []
        self._wake_r, self._wake_w = -1, -1
        self._no_accounts = False
        self._stop_requested = False
        #: the CPUs the supervisor may run on (its workers' to share out, `worker_cpu`)
        self.usable_cpus: set[int] = os.sched_getaffinity(0)

    # ---- start ---------------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; the exit status (1: the server could not start)."""
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w)
        for sig in _SIGNALS:  # before any listener exists: a SIGTERM is always a clean stop
            signal.signal(sig, self._note)
        try:
            self._prepare()
            log.info("event=workers_start count=%d supervisor=%d", self.count, os.getpid())
            for index in range(self.count):
                if not self.stopping:
                    self._spawn(index)
            self._loop()
        finally:
            for sock in self.sockets.values():
                sock.close()
            if self.pidfile is not None:
                self.pidfile.release()
            if self.counts is not None:
                self.counts.close()
            if self.throttle is not None:
                self.throttle.close()
            if self.recent is not None:
                self.recent.close()
            signal.set_wakeup_fd(-1)
        return 1 if self.failed else 0

    def _prepare(self) -> None:
        cfg = self.cfg
        run_as = privileges.plan(cfg)
        if run_as is not None:
            privileges.prepare_data_dir(cfg.data_dir, run_as)
        for name, addr in listener_items(cfg.listeners):
            if name != "http":
                self.sockets[name] = _bind(name, addr)
        if run_as is not None:
            privileges.drop(run_as)
        store = open_store(cfg.data_dir, index_text=False)
        try:
            temps, orphans = store.sweep_leftovers()  # no worker runs yet: nothing is in flight
            if temps or orphans:
                log.info("event=swept_leftovers temp_files=%d blob_files=%d", temps, orphans)
            self._no_accounts = not store.list_accounts()
        finally:
            store.close()
        QueueStore(cfg.data_dir).close()  # created or migrated here, not by racing workers
        try:
            ensure_self_signed(cfg.cert_path, cfg.key_path, cfg.hostname)
            ReloadableTls(cfg.cert_path, cfg.key_path)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise StartupError(f"cannot load TLS certificate {cfg.cert_path}: {exc}") from None
        pidfile = PidFile(cfg.data_dir)
        try:
            if pidfile.acquire():
                self.pidfile = pidfile
            else:
                log.warning(
                    "event=pidfile_unavailable path=%s reason=%r",
                    pidfile.path,
                    "held by another process (a second server on this data directory?)",
                )
        except OSError as exc:
            log.warning("event=pidfile_unavailable path=%s reason=%r", pidfile.path, str(exc))
        self.counts = SharedCounts(self.count)
        self.throttle = SharedThrottle(login_throttle(cfg))
        self.recent = SharedRecentClaims()
        others = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
        if others:  # a thread would not exist in the children (and may hold a lock)
            log.warning("event=threads_at_fork threads=%s", ",".join(others))

    # ---- workers -------------------------------------------------------------------------------

    def _spawn(self, index: int) -> None:
        ready_r, ready_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child (the reliability tests cover it)
            code = 1
            try:
                os.close(ready_r)
                code = self._child(index, parent, ready_w)
            except BaseException:
                log.exception("event=worker_failed worker=%d", index)
            finally:
                logging.shutdown()
                os._exit(code)
        os.close(ready_w)
        self.workers[index] = _Worker(pid, time.monotonic(), ready_r)
        log.debug("event=worker_forked worker=%d pid=%d", index, pid)

    def _child(self, index: int, parent: int, ready: int) -> int:  # pragma: no cover - child
        _die_with(parent)
        self._bind_cpu(index)  # before any thread exists: the threads started later inherit it
        signal.set_wakeup_fd(-1)
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        for other in self.workers.values():
            if other.ready is not None:
                os.close(other.ready)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        for sig in (signal.SIGHUP, WAKE_SIGNAL, RUNNER_SIGNAL):  # until the App takes them
            signal.signal(sig, signal.SIG_IGN)
        if self.pidfile is not None:
            self.pidfile.close_inherited()
        assert self.counts is not None and self.throttle is not None and self.recent is not None
        self.counts.column = index

        def wake_runner() -> None:
            with contextlib.suppress(OSError):
                os.kill(parent, RUNNER_SIGNAL)

        role = WorkerRole(index, self.sockets, self.counts, self.throttle, wake_runner, self.recent)
        try:
            asyncio.run(self._serve(role, ready))
        except StartupError as exc:
            print(f"postfach: error: {exc}", file=sys.stderr, flush=True)
            return 1
        return 0

    def _bind_cpu(self, index: int) -> None:  # pragma: no cover - child
        cpu = worker_cpu(index, self.count, self.usable_cpus) if self.cfg.cpu_affinity else None
        if cpu is None:
            return
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError as exc:  # a CPU taken offline meanwhile, a cpuset that forbids it ...
            log.warning("event=cpu_affinity_failed worker=%d cpu=%d error=%r", index, cpu, exc)

    async def _serve(self, role: WorkerRole, ready: int) -> None:  # pragma: no cover - child
        app = App(self.cfg, config_loader=self.reload, worker=role)
        await app.start()
        cpus = sorted(os.sched_getaffinity(0))
        log.info(
            "event=worker_start worker=%d pid=%d primary=%s cpus=%s",
            role.index,
            os.getpid(),
            "yes" if role.primary else "no",
            ",".join(map(str, cpus)) if len(cpus) < len(self.usable_cpus) else "any",
        )
        os.write(ready, b"1")
        os.close(ready)
        await app.serve_forever()

    # ---- the supervisor's loop -----------------------------------------------------------------

    def _note(self, signum: int, _frame: object) -> None:
        self._pending.append(signum)

    def _loop(self) -> None:
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        while self.workers or self.restart_at:
            now = time.monotonic()
            waits = [t - now for t in self.restart_at.values()]
            if not self.started:
                waits.append(deadline - now)
            timeout = max(0.0, min(waits)) if waits else None
            fds = [self._wake_r] + [w.ready for w in self.workers.values() if w.ready is not None]
            readable, _, _ = select.select(fds, [], [], timeout)
            if self._wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 512)
            for index, w in list(self.workers.items()):
                if w.ready is not None and w.ready in readable:
                    self._read_ready(index, w)
            self._handle_signals()
            self._reap()
            self._restart_due()
            if self._stop_requested and self.failed:
                self._stop()
            if not self.started and not self.stopping and time.monotonic() > deadline:
                log.error("event=workers_not_started seconds=%d", _STARTUP_TIMEOUT)
                self.failed = True
                self._stop()

    def _read_ready(self, index: int, w: _Worker) -> None:
        assert w.ready is not None
        try:
            ok = os.read(w.ready, 1) == b"1"
        except OSError:
            ok = False
        os.close(w.ready)
        w.ready = None
        if not ok:
            return  # it failed while starting: reaped as an exit
        everyone = len(self.workers) == self.count and not self.stopping
        if everyone and not self.started and all(x.ready is None for x in self.workers.values()):
            self.started = True
            addresses: dict[str, Address] = {}
            for name, sock in self.sockets.items():
                host, port = sock.getsockname()[:2]
                addresses[name] = (str(host), int(port))
            self.banner(addresses, self._no_accounts)
            if self._stop_requested:
                self._stop()

    def _handle_signals(self) -> None:
        pending, self._pending = self._pending, []
        for sig in pending:
            if sig in (signal.SIGTERM, signal.SIGINT) and not self.started and not self.failed:
                # As a single process: a stop asked for during the start comes after it (the
                # banner tells what was listening), unless the start fails.
                self._stop_requested = True
            elif sig in (signal.SIGTERM, signal.SIGINT):
                self._stop()
            elif sig in (signal.SIGHUP, WAKE_SIGNAL):
                self._send_all(sig)
            elif sig == RUNNER_SIGNAL:
                primary = self.workers.get(0)
                if primary is not None and primary.ready is None:
                    _kill(primary.pid, RUNNER_SIGNAL)

    def _stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        log.info("event=stopping workers=%d", len(self.workers))
        # New connections are refused as soon as the workers have closed theirs too.
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()
        self.restart_at.clear()
        self._send_all(signal.SIGTERM)

    def _send_all(self, sig: int) -> None:
        for w in self.workers.values():
            _kill(w.pid, sig)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            index = next((i for i, w in self.workers.items() if w.pid == pid), None)
            if index is None:
                continue
            w = self.workers.pop(index)
            if w.ready is not None:
                os.close(w.ready)
            assert self.counts is not None
            self.counts.clear_column(index)
            how = _describe(status)
            if self.stopping:
                log.info("event=worker_stopped worker=%d pid=%d status=%s", index, pid, how)
                continue
            if not self.started:  # a first worker could not start: the server cannot either
                log.error("event=worker_exit worker=%d pid=%d status=%s starting", index, pid, how)
                self.failed = True
                self._stop()
                continue
            lived = time.monotonic() - w.started
            delay = self.backoff.get(index, 0.0)
            fresh = lived >= _STABLE or not delay
            delay = _FIRST_BACKOFF if fresh else min(_MAX_BACKOFF, 2 * delay)
            self.backoff[index] = delay
            self.restart_at[index] = time.monotonic() + delay
            log.warning(
                "event=worker_exit worker=%d pid=%d status=%s lived=%.1f restart_in=%.1f",
                index,
                pid,
                how,
                lived,
                delay,
            )

    def _restart_due(self) -> None:
        now = time.monotonic()
        for index, at in list(self.restart_at.items()):
            if at <= now and not self.stopping:
                del self.restart_at[index]
                self._spawn(index)


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal-{signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit-{os.waitstatus_to_exitcode(status)}"


def _die_with(parent: int) -> None:  # pragma: no cover - runs in the child
    """SIGKILL for this process when the supervisor dies (Linux), and if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            log.warning("event=pdeathsig_failed errno=%d", ctypes.get_errno())
    except (OSError, AttributeError):
        log.warning("event=pdeathsig_unavailable")
    if os.getppid() != parent:  # the supervisor died before the request was in place
        os._exit(1)
