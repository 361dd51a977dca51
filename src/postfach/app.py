"""The composition root: builds the real store, hub, services and listeners and wires them.

Nothing else in the package constructs concrete implementations; tests build an `App` with a
temporary data directory and ephemeral ports (``POSTFACH_SMTP=127.0.0.1:0`` and so on).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from postfach import privileges
from postfach.auth.passwords import Authenticator
from postfach.auth.throttle import LoginThrottle, Throttle
from postfach.config import Address, Config, ConfigError, listener_items
from postfach.control import WAKE_SIGNAL, PidFile
from postfach.datadir import StartupError, open_store
from postfach.delivery import DeliverySettings, LocalDelivery
from postfach.dkim import DkimKeys
from postfach.imap.server import start_imap_server
from postfach.imap.session import ImapBackend, ImapSettings
from postfach.limits import Limits, SessionCounter
from postfach.listener import LISTEN_BACKLOG, raise_file_limit
from postfach.maildrop import StorePop3Backend
from postfach.mime.stored import parse_for_storage
from postfach.outbound import Outbound, SubmitSettings
from postfach.pop3.server import start_pop3_server
from postfach.pop3.session import Pop3Settings
from postfach.queue.bounce import Bouncer
from postfach.queue.runner import QueueRunner
from postfach.queue.schedule import Schedule
from postfach.queue.store import QueueStore
from postfach.sharedcounts import SharedCounts
from postfach.sharedrecent import SharedRecentClaims
from postfach.sharedthrottle import SharedThrottle
from postfach.smtp.client import Resolver, SmtpClient
from postfach.smtp.graceful import DATA_GRACE, SmtpListener
from postfach.smtp.handler import make_smtp_factory
from postfach.smtp.submission import make_submission_factory
from postfach.store.hub import Hub
from postfach.store.sqlite import SqliteMailstore
from postfach.tls import ReloadableTls, ensure_self_signed

log = logging.getLogger(__name__)

#: a worker that is not the primary asks the supervisor with this signal to wake the primary's
#: queue runner, which the supervisor then sends it (postfach.supervisor)
RUNNER_SIGNAL = signal.SIGUSR2

#: how long a stopping server waits for its connections to finish before dropping them (must
#: exceed the SMTP DATA grace; the whole stop stays under 10 s)
STOP_GRACE = DATA_GRACE + 2.0


def _account_wants_copy(store: SqliteMailstore, name: str) -> bool:
    """The account's own ``sent_copy`` setting (``postfach user set ADDR sent_copy auto``)."""
    account = store.get_account(name)
    return account is not None and account.sent_copy == "auto"


@dataclass(frozen=True)
class WorkerRole:
    """An `App` running as one of the worker processes of `postfach.supervisor`, which has bound
    the listeners (``sockets``), prepared the data directory and holds the pid file. Worker 0 is
    the primary: it alone runs the outbound queue runner and the full-text indexer; the others
    ask it to look at the queue through ``wake_runner``. ``counts`` holds the connection and
    session counts of all workers, ``throttle`` their failed logins, ``recent`` which messages
    an IMAP session has been told of as \\Recent."""

    index: int
    sockets: dict[str, socket.socket]
    counts: SharedCounts
    throttle: SharedThrottle
    wake_runner: Callable[[], None]
    recent: SharedRecentClaims

    @property
    def primary(self) -> bool:
        return self.index == 0


@dataclass
class App:
    config: Config
    store: SqliteMailstore | None = None
    hub: Hub = field(default_factory=Hub)
    servers: dict[str, asyncio.AbstractServer] = field(default_factory=dict)
    addresses: dict[str, Address] = field(default_factory=dict)
    created_certificate: bool = False
    # Outbound mail. Tests inject a resolver (never real DNS) and the port their MX peers use.
    resolver: Resolver | None = None
    mx_port: int = 25
    queue: QueueStore | None = None
    runner: QueueRunner | None = None
    outbound: Outbound | None = None
    # Re-reads the configuration on SIGHUP (for new [tls] paths); None: keep the paths.
    config_loader: Callable[[], Config] | None = None
    tls: ReloadableTls | None = None
    pidfile: PidFile | None = None
    worker: WorkerRole | None = None
    _stopped: asyncio.Event | None = None

    async def start(self) -> None:
        cfg = self.config
        # Before any listener exists, so a SIGTERM from a supervisor that saw a port open is
        # always a graceful stop (not the default action, which kills the process).
        self._stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, self._stopped.set)
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signal.SIGHUP, self.reload_tls)
        # As root: bind every listener now, then become [server] user for good.
        bound: dict[str, socket.socket] = {}
        run_as = privileges.plan(cfg) if self.worker is None else None
        if self.worker is not None:
            bound = dict(self.worker.sockets)
        elif run_as is not None:
            privileges.prepare_data_dir(cfg.data_dir, run_as)
            try:
                for lname, laddr in listener_items(cfg.listeners):
                    if lname != "http":
                        bound[lname] = _bind(lname, laddr)
                privileges.drop(run_as)
            except BaseException:
                for sock in bound.values():
                    sock.close()
                raise
        self._check_file_limit()
        worker = self.worker
        self.store = store = open_store(cfg.data_dir, index_text=worker is None or worker.primary)
        if worker is None:  # a supervisor sweeps before its workers start, never while they run
            temps, orphans = store.sweep_leftovers()  # after a crash: files no commit kept
            if temps or orphans:
                log.info("event=swept_leftovers temp_files=%d blob_files=%d", temps, orphans)
        self.hub.bind(asyncio.get_running_loop())
        self.hub.sessions = SessionCounter(
            cfg.limits.max_sessions_per_user,
            shared=worker.counts.scoped("sessions") if worker is not None else None,
        )
        store.set_publisher(self.hub.publish)
        try:
            self.created_certificate = ensure_self_signed(cfg.cert_path, cfg.key_path, cfg.hostname)
            self.tls = ReloadableTls(cfg.cert_path, cfg.key_path)
            tls = self.tls.context
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise StartupError(f"cannot load TLS certificate {cfg.cert_path}: {exc}") from None
        delivery = LocalDelivery(
            store,
            DeliverySettings(
                hostname=cfg.hostname,
                quota_temporary=cfg.quota_temporary,
                max_message_size=cfg.max_message_size,
            ),
            structure=parse_for_storage,
        )
        throttle: Throttle = login_throttle(cfg) if worker is None else worker.throttle
        # One authenticator (and so one throttle) for POP3, IMAP and submission.
        auth = Authenticator(store.password_hash, throttle, rehash=store.areplace_password)
        self.queue = queue = QueueStore(cfg.data_dir)
        bouncer = Bouncer(cfg.hostname, delivery, queue)
        delivery.remote_bounce = bouncer.send
        sub = cfg.submission
        dkim = DkimKeys(cfg.data_dir, sub.dkim_selector) if sub.dkim else None
        self.outbound = outbound = Outbound(
            delivery,
            queue,
            bouncer,
            SubmitSettings(
                hostname=cfg.hostname,
                refuse_full_mailbox=sub.refuse_full_mailbox,
                sent_copy_window=sub.sent_copy_window,
            ),
            signer=dkim.sign if dkim is not None else None,
            wants_sent_copy=lambda name: (
                sub.wants_sent_copy(name) or _account_wants_copy(store, name)
            ),
        )
        client = SmtpClient(cfg.hostname, relay=cfg.relay, mx_port=self.mx_port)
        if self.resolver is not None:
            client.resolver = self.resolver
        q = cfg.queue
        self.runner = runner = QueueRunner(
            queue,
            client,
            bouncer,
            Schedule(first_retry=q.first_retry, max_age=q.max_age, delay_notice=q.delay_notice),
            per_domain=q.per_domain,
            poll=q.poll,
            sent_copy=outbound.place_sent_copy,
        )
        bouncer.wake = outbound.wake = runner.wake
        if worker is not None and not worker.primary:
            bouncer.wake = outbound.wake = worker.wake_runner
        pop3_backend = StorePop3Backend(store, self.hub, auth)
        ls = cfg.listeners
        try:
            for name, addr, lmtp in (("smtp", ls.smtp, False), ("lmtp", ls.lmtp, True)):
                if addr is None:
                    continue
                factory = make_smtp_factory(
                    delivery,
                    hostname=cfg.hostname,
                    tls_context=tls,
                    data_size_limit=cfg.max_message_size,
                    lmtp=lmtp,
                    timeout=cfg.smtp_timeout,
                    limits=self._limits(name),
                )
                await self._listen(
                    name,
                    addr,
                    SmtpListener(factory).start(
                        *addr, sock=bound.get(name), backlog=LISTEN_BACKLOG
                    ),
                )
            for name, addr, implicit in (
                ("submission", ls.submission, False),
                ("submissions", ls.submissions, True),
            ):
                if addr is None:
                    continue
                sub_factory = make_submission_factory(
                    outbound,
                    auth.authenticate,
                    hostname=cfg.hostname,
                    tls_context=tls,
                    data_size_limit=cfg.max_message_size,
                    implicit_tls=implicit,
                    plaintext_auth_on_loopback=cfg.allow_plaintext_on_loopback,
                    plaintext_auth=cfg.allow_plaintext,
                    timeout=cfg.smtp_timeout,
                    limits=self._limits(name),
                )
                # Implicit TLS too: the protocol starts it once the connection is admitted.
                await self._listen(
                    name,
                    addr,
                    SmtpListener(sub_factory).start(
                        *addr, sock=bound.get(name), backlog=LISTEN_BACKLOG
                    ),
                )
            for name, addr, implicit in (("pop3", ls.pop3, False), ("pop3s", ls.pop3s, True)):
                if addr is None:
                    continue
                settings = Pop3Settings(
                    hostname=cfg.hostname,
                    tls_available=True,
                    allow_plaintext=cfg.allow_plaintext,
                    allow_plaintext_on_loopback=cfg.allow_plaintext_on_loopback,
                    autologout=cfg.pop3_autologout,
                )
                await self._listen(
                    name,
                    addr,
                    start_pop3_server(
                        pop3_backend,
                        settings,
                        addr[0],
                        addr[1],
                        ssl_context=tls,
                        implicit_tls=implicit,
                        sock=bound.get(name),
                        limits=self._limits(name),
                    ),
                )
            imap_backend = ImapBackend(store, self.hub, auth.authenticate)
            if worker is not None:
                imap_backend.recent = worker.recent  # one table for every worker's sessions
            for name, addr, implicit in (("imap", ls.imap, False), ("imaps", ls.imaps, True)):
                if addr is None:
                    continue
                imap_settings = ImapSettings(
                    hostname=cfg.hostname,
                    tls_available=True,
                    allow_plaintext=cfg.allow_plaintext,
                    allow_plaintext_on_loopback=cfg.allow_plaintext_on_loopback,
                    max_message_size=cfg.max_message_size,
                    # RFC 9051 §5.4; Config may carry its own values (tests shorten them).
                    autologout_authenticated=cfg.imap_autologout,
                    autologout_unauthenticated=cfg.imap_login_timeout,
                    max_line=cfg.limits.max_line,
                )
                await self._listen(
                    name,
                    addr,
                    start_imap_server(
                        imap_backend,
                        imap_settings,
                        addr[0],
                        addr[1],
                        ssl_context=tls,
                        implicit_tls=implicit,
                        sock=bound.get(name),
                        limits=self._limits(name),
                    ),
                )
            if worker is None or worker.primary:
                runner.start()
            if os.geteuid() == 0 and (worker is None or worker.primary):
                log.warning("event=running_as_root hint=set [server] user or POSTFACH_USER")
            self._claim_pidfile(loop, runner)
        except BaseException:
            await self.stop()
            for sock in bound.values():  # bound before the drop, not yet handed to a server
                sock.close()
            raise

    def reload_tls(self) -> bool:
        """SIGHUP: load the certificate and key again (from the [tls] paths of a re-read
        configuration) for new handshakes; open connections are not touched. A bad new
        certificate is logged and the one in use is kept."""
        if self.tls is None:
            return False
        cfg = self.config
        if self.config_loader is not None:
            try:
                cfg = self.config_loader()
            except (ConfigError, OSError) as exc:
                log.error("event=tls-reload result=error reason=%r (configuration unchanged)", exc)
        try:
            shown = self.tls.reload(cfg.cert_path, cfg.key_path)
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.error(
                "event=tls-reload result=error cert=%s key=%s reason=%r"
                " (keeping the certificate in use)",
                cfg.cert_path,
                cfg.key_path,
                str(exc),
            )
            return False
        log.info("event=tls-reload result=ok cert=%s sha256=%s", cfg.cert_path, shown)
        return True

    def _limits(self, listener: str) -> Limits:
        """``[limits]`` for one listener: in a worker, counted together with the other workers."""
        if self.worker is None:
            return self.config.limits
        return replace(self.config.limits, shared=self.worker.counts.scoped(listener))

    def _check_file_limit(self) -> None:
        """Every listener may hold ``max_connections``: make room for them (plus the store's
        files), or say at start which limit the connections will run into."""
        cfg = self.config
        listeners = sum(1 for _ in listener_items(cfg.listeners))
        per = cfg.limits.max_connections or 10_000
        wanted = listeners * per + 256
        before, after = raise_file_limit(wanted)
        if after < wanted:
            log.warning(
                "event=file-limit open_files=%d needed=%d"
                " (raise the hard limit, ulimit -Hn, or lower [limits] max_connections)",
                after,
                wanted,
            )
        elif after != before:
            log.info("event=file-limit open_files=%d was=%d", after, before)

    async def _listen(self, name: str, addr: Address, coro: object) -> None:
        try:
            server = await coro  # type: ignore[misc]
        except OSError as exc:
            raise _listen_error(name, addr, exc) from None
        self.servers[name] = server
        sock = server.sockets[0].getsockname()
        self.addresses[name] = (sock[0], sock[1])
        log.info("event=listening service=%s address=%s:%d", name, sock[0], sock[1])

    async def serve_forever(self) -> None:
        assert self._stopped is not None
        await self._stopped.wait()
        await self.stop()

    def request_stop(self) -> None:
        if self._stopped is not None:
            self._stopped.set()

    def _claim_pidfile(self, loop: asyncio.AbstractEventLoop, runner: QueueRunner) -> None:
        """A process of its own (not a test's server thread): the pid file and SIGUSR1, with
        which ``postfach queue flush``/``retry`` wake the runner at once (control.py)."""
        if threading.current_thread() is not threading.main_thread():
            return
        loop.add_signal_handler(WAKE_SIGNAL, self._woken, runner)  # before the pid is published
        if self.worker is not None:  # the supervisor holds the pid file and passes signals on
            if self.worker.primary:
                loop.add_signal_handler(RUNNER_SIGNAL, runner.wake)
            return
        pidfile = PidFile(self.config.data_dir)
        try:
            if pidfile.acquire():
                self.pidfile = pidfile
                return
            why = "held by another process (a second server on this data directory?)"
        except OSError as exc:
            why = exc.strerror or str(exc)
        log.warning("event=pidfile_unavailable path=%s reason=%r", pidfile.path, why)

    def _woken(self, runner: QueueRunner) -> None:
        """SIGUSR1 from the CLI: due queue work, or an account deleted (its sessions end)."""
        runner.wake()
        store = self.store
        if store is not None:
            self.hub.recheck_accounts(lambda i: store.get_account_by_id(i) is not None)

    async def stop(self) -> None:
        """Graceful stop (SIGTERM): stop accepting; commands being processed finish and are
        answered; every client is told (``421``, ``* BYE``, ``-ERR``); a DATA transfer gets
        `DATA_GRACE` seconds; whoever is left after `STOP_GRACE` is dropped. Then the queue
        runner stops and the store writer commits what it was given."""
        if self.pidfile is not None:
            self.pidfile.release()
            self.pidfile = None
            # A late wake-up must not kill us (closing the loop would restore SIG_DFL).
            asyncio.get_running_loop().remove_signal_handler(WAKE_SIGNAL)
            signal.signal(WAKE_SIGNAL, signal.SIG_IGN)
        if self.worker is not None and threading.current_thread() is threading.main_thread():
            loop = asyncio.get_running_loop()
            for sig in (WAKE_SIGNAL, RUNNER_SIGNAL, signal.SIGHUP):  # passed on late: not fatal
                loop.remove_signal_handler(sig)
                signal.signal(sig, signal.SIG_IGN)
        for server in self.servers.values():
            server.close()
        waiting = [asyncio.ensure_future(server.wait_closed()) for server in self.servers.values()]
        if waiting:
            _done, late = await asyncio.wait(waiting, timeout=STOP_GRACE)
            if late:
                log.warning("event=stop_abort listeners=%d", len(late))
                for server in self.servers.values():
                    abort = getattr(server, "abort", None)
                    if abort is not None:
                        abort()
                await asyncio.wait(late, timeout=1.0)
                for task in late:
                    task.cancel()
        self.servers.clear()
        if self.runner is not None:
            await self.runner.stop()
            self.runner = None
        if self.queue is not None:
            self.queue.close()
            self.queue = None
        if self.store is not None:
            self.store.close()
            self.store = None


def login_throttle(cfg: Config) -> LoginThrottle:
    """The failed-login delay and lockout of ``[auth]``."""
    a = cfg.auth
    return LoginThrottle(
        base=a.failure_delay,
        ceiling=a.max_failure_delay,
        window=a.lockout_window,
        ip_limit=a.lockout_ip,
        account_limit=a.lockout_account,
        lockout=a.lockout_duration,
    )


def _listen_error(name: str, addr: Address, exc: OSError) -> StartupError:
    if exc.errno == errno.EADDRINUSE:
        why = "address already in use"
    elif exc.errno == errno.EACCES:
        why = "permission denied"
    else:
        why = exc.strerror or str(exc)
    return StartupError(
        f"cannot listen on {addr[0]}:{addr[1]} for {name}: {why}"
        f" (set POSTFACH_{name.upper()}=HOST:PORT or off)"
    )


def _bind(name: str, addr: Address) -> socket.socket:
    """A listening socket bound now (before dropping root), as ``loop.create_server`` would."""
    try:
        family = socket.getaddrinfo(addr[0], addr[1], type=socket.SOCK_STREAM)[0][0]
        sock = socket.create_server(addr, family=family, backlog=LISTEN_BACKLOG)
    except OSError as exc:
        raise _listen_error(name, addr, exc) from None
    # socket.create_server leaves the protocol number 0, accepted connections inherit it, and
    # asyncio sets TCP_NODELAY only on sockets that say IPPROTO_TCP: without this, every
    # connection of `serve` with workers (or after dropping root) had Nagle's algorithm on, and
    # a reply written while the previous one was not yet acknowledged waited for the client's
    # delayed ACK (40 ms on Linux; BDAT's final 250 every time).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, fileno=sock.detach())
    sock.setblocking(False)
    return sock


def check_config(cfg: Config) -> None:
    if not cfg.hostname:
        raise ConfigError("hostname must not be empty")
