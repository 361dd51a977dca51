"""A listening socket that tracks its connections: what the POP3 and IMAP servers share (adapters).

Usable wherever an ``asyncio.AbstractServer`` is expected. ``ssl_context`` enables the in-protocol
upgrade (STLS/STARTTLS), or with ``implicit_tls`` the variant of RFC 8314 where TLS starts at
connect time. ``close()`` stops listening and asks every connection to end at its next command
boundary (a command being processed finishes and is answered; the protocol says goodbye);
``await wait_closed()`` waits until they are all gone; ``abort()`` cancels what is left.
Subclasses say how a connection is made and how long a TLS handshake may take.

Limits (`postfach.limits`): a connection is counted from accept to the end of its conversation
(the end of its task; an IMAP connection may have no task while it waits, see
`StreamConnection._task_done`). Over
``max_connections`` or ``max_connections_per_ip`` the client gets the subclass's refusal line
and a close, nothing else; on an implicit-TLS port it is closed without a handshake (a handshake
costs the server more than the client, which is what a flood wants). Implicit TLS is therefore
started by the connection itself (``loop.start_tls``), so that handshakes in progress count too.
A started command must be complete by its deadline (`postfach.limits.input_deadline`), and a
client that leaves a full output buffer unread is dropped (`postfach.limits.output_stalled`).
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import contextlib
import logging
import resource
import secrets
import socket
import ssl
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol, Self

from postfach.limits import (
    ConnectionCounter,
    Limits,
    Refusal,
    RefusalLog,
    Slot,
    input_deadline,
    output_stalled,
)

# asyncio's SSLProtocol gives every TLS connection a read buffer of ``max_size`` (256 KiB),
# zeroed when the connection starts and so resident at once: 283 KB of private memory per idle
# IMAPS connection in ``benchmarks/imap_idle.py --tls``, 45 KB with 16 KiB. A TLS record holds
# at most 16 KiB of data, so reading 16 KiB at a time costs bulk transfers some more ``recv``
# calls and nothing else. (Process wide: every asyncio TLS connection of postfach, server and
# client side, reads this way.) ``max_size`` is not public asyncio API (CPython 3.11-3.13 have
# it): a Python without it keeps asyncio's own buffer size rather than failing at import.
TLS_READ_BUFFER = 16 * 1024
_asyncio_tls_buffer = getattr(asyncio.sslproto.SSLProtocol, "max_size", None)
if isinstance(_asyncio_tls_buffer, int) and _asyncio_tls_buffer > TLS_READ_BUFFER:
    asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER

#: connections the kernel may queue before we accept them (asyncio's default is 100: a burst of
#: connections would see SYNs dropped and retried a second later)
LISTEN_BACKLOG = 1024


async def serve_bound(
    factory: Callable[[], asyncio.BaseProtocol], sock: socket.socket, **kwargs: Any
) -> asyncio.Server:
    """Serve on a socket bound and listening beforehand (by a server that drops root after
    binding, or by the supervisor, whose workers share its accept queues).

    asyncio accepts, each time the socket is readable, up to ``backlog`` connections in a row.
    With several workers on one accept queue, the first one awake then took a whole burst of
    clients (10 connections: 10 to 0, or 7 to 3, measured with ``ss``) and stayed the busy one
    for as long as they lasted. With a backlog of 1 it accepts one connection per turn of its
    event loop, so the workers take turns. asyncio also passes the backlog to ``listen()``:
    the kernel's queue is set back to `LISTEN_BACKLOG` at once."""
    kwargs.pop("backlog", None)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, sock=sock, backlog=1, **kwargs)
    sock.listen(LISTEN_BACKLOG)
    return server


def raise_file_limit(wanted: int) -> tuple[int, int]:
    """Raise the soft limit of open files towards ``wanted`` (as far as the hard limit allows;
    the usual soft default of 1024 is far below what the connection limits admit). Returns the
    limit before and after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, target
    return soft, soft


class TrackedConnection(Protocol):
    task: asyncio.Task[bool | None] | None

    def shutdown(self) -> None: ...

    def abort(self) -> None: ...


class ServerStopping(Exception):
    """Raised by `StreamConnection._read` once the server is stopping: say goodbye and close."""


class Listener(asyncio.AbstractServer):
    #: word for the in-protocol TLS upgrade in the log line ("stls", "starttls")
    upgrade_name = "starttls"

    def __init__(
        self,
        host: str | Sequence[str] | None,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None,
        implicit_tls: bool,
        log: logging.Logger,
        limits: Limits | None = None,
    ) -> None:
        if implicit_tls and ssl_context is None:
            raise ValueError("implicit_tls needs an ssl_context")
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.implicit_tls = implicit_tls
        self.limits = limits = limits if limits is not None else Limits()
        self.counter = ConnectionCounter.for_limits(limits)
        self._log = log
        self._server: asyncio.Server | None = None
        self._connections: set[TrackedConnection] = set()
        self._all_gone: asyncio.Future[None] | None = None  # wait_closed with no task to wait on
        self._closing = False
        #: a socket bound beforehand (by a server that drops root after binding)
        self.sock: socket.socket | None = None
        self._refusal_log = RefusalLog()

    # ---- what a subclass provides ------------------------------------------------------------

    def _new_connection(self) -> asyncio.Protocol:
        raise NotImplementedError

    def _handshake_timeout(self) -> float:
        return 60.0

    def refusal_line(self, refusal: Refusal) -> bytes:
        """What a client over the connection limits is told before the close."""
        raise NotImplementedError

    # ---- connections ---------------------------------------------------------------------------

    def _refuse(self, transport: asyncio.Transport, refusal: Refusal, ip: str) -> None:
        """One write and a close: a refused connection costs no task and no handshake."""
        if self.implicit_tls:
            transport.abort()
        else:
            transport.write(self.refusal_line(refusal))
            transport.close()
        count = self._refusal_log.note(refusal, asyncio.get_running_loop().time())
        if count:  # at most one line per second and reason: a flood must not flood the log
            self._log.warning(
                "event=refused reason=%s remote=%s count=%d held=%d",
                "per-ip" if refusal is Refusal.PER_IP else "total",
                ip,
                count,
                self.counter.total,
            )

    def _track(self, conn: TrackedConnection) -> None:
        self._connections.add(conn)
        if self._closing:  # accepted before close() (a TLS handshake), connected after it
            conn.shutdown()

    async def start(self) -> None:
        """Bind and start accepting connections."""
        if self._server is not None:
            raise RuntimeError("already started")
        loop = asyncio.get_running_loop()
        # Implicit TLS too listens in plain TCP: the connection starts TLS once it is admitted.
        if self.sock is not None:  # bound beforehand (by a server that drops root after binding)
            self._server = await serve_bound(self._new_connection, self.sock)
        else:
            self._server = await loop.create_server(
                self._new_connection, self.host, self.port, backlog=LISTEN_BACKLOG
            )
        self._log.info(
            "event=listen addresses=%s tls=%s",
            ",".join(f"{a[0]}:{a[1]}" for a in self.addresses),
            "implicit" if self.implicit_tls else (self.upgrade_name if self.ssl_context else "no"),
        )

    # ---- asyncio.AbstractServer / asyncio.Server look-alike ----------------------------------

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets, as ``asyncio.Server.sockets`` (empty before start)."""
        return tuple(self._server.sockets) if self._server is not None else ()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        if self._server is None:
            raise RuntimeError("not started")
        return self._server.get_loop()

    def is_serving(self) -> bool:
        return self._server is not None and self._server.is_serving()

    async def start_serving(self) -> None:
        if self._server is None:
            await self.start()
        else:
            await self._server.start_serving()

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    def close(self) -> None:
        """Stop listening and end every connection (each says goodbye its own way)."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.shutdown()

    def abort(self) -> None:
        """Cancel the connections still there after ``close()`` had its time."""
        for conn in list(self._connections):
            conn.abort()

    def _forget(self, conn: TrackedConnection) -> None:
        """The connection's conversation is over."""
        self._connections.discard(conn)
        if not self._connections and self._all_gone is not None and not self._all_gone.done():
            self._all_gone.set_result(None)

    async def wait_closed(self) -> None:
        while self._connections:
            tasks = [c.task for c in list(self._connections) if c.task is not None]
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
                continue
            # Every connection left is between two tasks (an idle IMAP connection woken by
            # close() gets its task in the loop's next round).
            self._all_gone = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(0.05):
                    await self._all_gone
            except TimeoutError:
                pass
            finally:
                self._all_gone = None
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> Self:
        if self._server is None:
            await self.start()
        return self

    # ---- conveniences ------------------------------------------------------------------------

    @property
    def addresses(self) -> list[tuple[Any, ...]]:
        return [tuple(s.getsockname()) for s in self.sockets]

    @property
    def bound_port(self) -> int:
        """The port actually listened on (useful with port 0)."""
        addresses = self.addresses
        if not addresses:
            raise RuntimeError("not listening")
        return int(addresses[0][1])

    @property
    def connection_count(self) -> int:
        return len(self._connections)


class StreamConnection(asyncio.Protocol):
    """One client connection: buffers bytes in, offers awaitable read (and the state a drain
    needs), and runs ``_run`` (the protocol's conversation) in its own task."""

    #: stop reading from a client that sends faster than we parse
    read_high_water = 64 * 1024
    #: the transport asks us to pause writing above this (and the servers wait to drain)
    write_high_water = 256 * 1024

    def __init__(self, listener: Listener) -> None:
        self._listener = listener
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._inbuf = bytearray()
        self._reading_paused = False
        self._eof = False
        self._lost: asyncio.Future[None] = self._loop.create_future()
        self._data_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._stopping = False
        self._interrupted = False
        self._slot: Slot | None = None
        self._data_at = 0.0  # when bytes last arrived
        self._command_started: float | None = None
        self._received = 0  # octets received in all
        self._consumed = 0  # octets taken off the buffer when the current command started
        self._write_watch: asyncio.TimerHandle | None = None
        self._write_watch_size = 0
        #: the client left a full output buffer unread for too long and was dropped
        self.write_timed_out = False
        self.conn_id = secrets.token_hex(4)
        self.task: asyncio.Task[bool | None] | None = None

    async def _run(self) -> bool | None:
        """The conversation; True when it only paused (a subclass that parks idle connections
        starts the next task itself), anything else when the connection is over."""
        raise NotImplementedError

    async def _start(self) -> bool | None:
        if self._listener.implicit_tls:
            try:
                await self._start_implicit_tls()
            except (ConnectionError, OSError, TimeoutError, ssl.SSLError) as exc:
                self._listener._log.info(
                    "conn=%s event=disconnect reason=tls-handshake error=%s",
                    self.conn_id,
                    type(exc).__name__,
                )
                if self._transport is not None:
                    self._transport.abort()
                return None
        return await self._run()

    async def _tls_handshake(self) -> asyncio.Transport:
        """The TLS handshake on this connection (implicit TLS, STLS, STARTTLS); the new
        transport becomes the connection's."""
        listener, transport = self._listener, self._transport
        assert listener.ssl_context is not None and transport is not None
        new_transport = await self._loop.start_tls(
            transport,
            self,
            listener.ssl_context,
            server_side=True,
            ssl_handshake_timeout=listener._handshake_timeout(),
        )
        if new_transport is None:  # pragma: no cover - only on a closed transport
            raise ConnectionResetError("connection closed during TLS handshake")
        self._transport = new_transport
        new_transport.set_write_buffer_limits(high=self.write_high_water)
        self._reading_paused = False
        return new_transport

    async def _start_implicit_tls(self) -> None:
        await self._tls_handshake()

    def _read_timeout(self, idle: float, buffered: int) -> tuple[float, bool]:
        """How long the next read may wait, and whether that is a started command's deadline
        (``buffered`` octets of it are in) rather than the idle timeout."""
        if not buffered:
            self._command_started = None
            return idle, False
        # A new command has started when the last one was taken off the buffer: a client that
        # pipelines without pause never has an empty buffer, but it keeps completing commands.
        consumed = self._received - buffered
        if self._command_started is None or consumed != self._consumed:
            self._command_started, self._consumed = self._data_at, consumed
        limits = self._listener.limits
        deadline = input_deadline(
            self._command_started, buffered, limits.command_timeout, limits.min_rate
        )
        left = max(0.0, deadline - self._loop.time())
        return (left, True) if left < idle else (idle, False)

    async def upgrade_tls(self) -> None:
        """STLS/STARTTLS after the positive reply. Must not yield before ``loop.start_tls``."""
        listener = self._listener
        self._inbuf.clear()  # plaintext pipelined after the command: injection attempt or junk
        new_transport = await self._tls_handshake()
        if self._stopping:  # STARTTLS was among the last commands received before the stop
            new_transport.pause_reading()
        # Keep _inbuf: it can already hold the client's first command sent over TLS together
        # with the end of the handshake (only plaintext from before the upgrade is dropped).
        listener._log.info(
            "conn=%s event=%s version=%s cipher=%s",
            self.conn_id,
            listener.upgrade_name,
            new_transport.get_extra_info("ssl_object").version(),
            (new_transport.get_extra_info("cipher") or ("?",))[0],
        )

    def shutdown(self) -> None:
        """The server is stopping: nothing more is read from the client; what it already sent
        is still handed out (so every complete command received is answered, and a command
        being processed is not interrupted); then ``_read`` raises `ServerStopping`."""
        self._stopping = True
        t = self._transport
        if t is not None and not t.is_closing():
            with contextlib.suppress(RuntimeError, AttributeError):
                t.pause_reading()
        self._wake_reader()

    def interrupt_read(self) -> None:
        """The session ends by itself: ``_read`` returns now, with what it has (maybe b"")."""
        self._interrupted = True
        self._wake_reader()

    def abort(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()

    # ---- asyncio.Protocol callbacks ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        listener = self._listener
        self._transport = transport
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if peer else ""
        admitted = listener.counter.admit(ip)
        if isinstance(admitted, Refusal):
            listener._refuse(transport, admitted, ip)
            return
        self._slot = admitted
        transport.set_write_buffer_limits(high=self.write_high_water)
        if listener.implicit_tls:
            transport.pause_reading()  # the ClientHello is for the TLS layer, not for us
        self._start_task(self._start())
        listener._track(self)

    def _start_task(self, coro: Coroutine[Any, Any, bool | None]) -> None:
        task = self.task = self._loop.create_task(coro)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[bool | None]) -> None:
        """A task of the connection ended: the conversation is over unless it returned True
        (it parked: the connection waits for the client without a task, and the next event
        starts one)."""
        if self.task is task:
            self.task = None
        if not task.cancelled() and task.exception() is None and task.result() is True:
            return
        if self._slot is not None:
            self._slot.release()
        self._listener._forget(self)

    def data_received(self, data: bytes) -> None:
        self._inbuf += data
        self._received += len(data)
        self._data_at = self._loop.time()
        if len(self._inbuf) > self.read_high_water and not self._reading_paused:
            self._reading_paused = True
            if self._transport is not None:
                self._transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool | None:
        self._eof = True
        self._wake_reader()
        # Keep a plain TCP connection half-open so replies to the last commands still go out;
        # the task closes it. (TLS transports cannot do half-close and ignore the answer.)
        tls = self._transport is not None and self._transport.get_extra_info("sslcontext")
        return None if tls else True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._lost.done():
            self._lost.set_result(None)
        if self._write_watch is not None:
            self._write_watch.cancel()
            self._write_watch = None
        self._wake_reader()
        self._wake_writer()

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._write_watch is None and self._transport is not None:
            self._arm_write_watch(self._transport.get_write_buffer_size())

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._write_watch is not None:
            self._write_watch.cancel()
            self._write_watch = None
        self._wake_writer()

    def _arm_write_watch(self, size: int) -> None:
        self._write_watch_size = size
        self._write_watch = self._loop.call_later(
            self._listener.limits.write_timeout, self._check_write_progress
        )

    def _check_write_progress(self) -> None:
        """The output buffer has been full for ``write_timeout``: has the client read enough?"""
        self._write_watch = None
        t = self._transport
        if t is None or self._lost.done() or not self._write_paused:
            return
        size = t.get_write_buffer_size()
        limits = self._listener.limits
        if output_stalled(self._write_watch_size, size, limits.write_timeout, limits.min_rate):
            self._listener._log.info(
                "conn=%s event=write-timeout buffered=%d read=%d seconds=%g",
                self.conn_id,
                size,
                max(0, self._write_watch_size - size),
                limits.write_timeout,
            )
            self.write_timed_out = True
            t.abort()
        else:
            self._arm_write_watch(size)

    # ---- awaitable I/O -----------------------------------------------------------------------

    def _wake_reader(self) -> None:
        if self._data_waiter is not None and not self._data_waiter.done():
            self._data_waiter.set_result(None)

    def _wake_writer(self) -> None:
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    async def _read(self) -> bytes:
        """Whatever has arrived, waiting for something; b"" at EOF or when the peer is gone.
        Once `shutdown` was called: what was received before, then `ServerStopping`; after
        `interrupt_read`: at once, with what there is."""
        while not (self._inbuf or self._eof or self._lost.done() or self._interrupted):
            if self._stopping:
                raise ServerStopping
            self._data_waiter = self._loop.create_future()
            try:
                await self._data_waiter
            finally:
                self._data_waiter = None
        data = bytes(self._inbuf)
        self._inbuf.clear()
        if self._reading_paused and self._transport is not None and not self._stopping:
            self._reading_paused = False
            self._transport.resume_reading()
        return data
