"""IMAP over TCP with asyncio (adapter ring): RFC 9051, RFC 3501, RFC 8314 (implicit TLS).

One task per connection drives an `ImapSession`. As for POP3, the transport is a plain
``asyncio.Protocol`` rather than streams so that STARTTLS is safe: every byte the client
pipelined after ``STARTTLS`` is thrown away (by the session's framer and by this buffer), and
``loop.start_tls`` swaps the transport's protocol before the event loop reads anything more, so
no plaintext can be taken for data sent under TLS (RFC 9051 §6.2.1, "STARTTLS command
injection").

The session writes its responses through the `_Connection` (the `Output` contract in
`postfach.imap.session`): large results (FETCH of many messages) are written as they are built,
waiting for the client to read whenever the transport's buffer is full. Small writes are
collected and handed to the transport together (one ``send`` for a whole FETCH 1:* (FLAGS) of
a few hundred messages instead of one per message): when ``_OUT_BATCH`` octets are pending,
when the session waits for the client (``drain`` with a full transport buffer, or the next
read), and at the latest in the event loop's next round (``call_soon``), so nothing waits.
Changes of the account that arrive while a session is idle (IDLE) are written by the session
itself from the event loop.

Log lines are ``key=value`` with a per-connection id; passwords and SASL data never appear.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import ssl
from collections.abc import Sequence
from typing import Final

from postfach.imap.session import ImapBackend, ImapSession, ImapSettings, is_loopback_address
from postfach.limits import Limits, Refusal
from postfach.listener import Listener, ServerStopping, StreamConnection

__all__ = ["ImapServer", "start_imap_server"]

log = logging.getLogger("postfach.imap")

_CLOSE_TIMEOUT: Final = 5.0  # how long a graceful close (TLS shutdown, flush) may take
_OUT_BATCH: Final = 64 * 1024  # pending output above this goes to the transport at once


class _Connection(StreamConnection):
    """Buffers bytes in, offers awaitable read/drain, and runs the session in its own task."""

    read_high_water = 256 * 1024  # IMAP literals arrive in big pieces

    def __init__(self, server: ImapServer) -> None:
        super().__init__(server)
        self._server = server
        self.session: ImapSession | None = None
        self._out: list[bytes] = []  # written by the session, not yet given to the transport
        self._out_size = 0
        #: waiting for the client without a task (`_park`): for how long (else None)
        self._parked: float | None = None

    # ---- the session's Output ----------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue bytes for the client (silently dropped once the connection is going away)."""
        t = self._transport
        if t is None or t.is_closing() or not data:
            return
        if len(data) >= _OUT_BATCH:  # a big literal: no copy into a joined buffer
            self.flush()
            t.write(data)
            return
        if not self._out:
            self._loop.call_soon(self.flush)
        self._out.append(data)
        self._out_size += len(data)
        if self._out_size >= _OUT_BATCH:
            self.flush()

    def flush(self) -> None:
        """Hand what the session wrote to the transport (one write)."""
        out = self._out
        if not out:
            return
        self._out = []
        self._out_size = 0
        t = self._transport
        if t is None or t.is_closing():
            return
        t.write(out[0] if len(out) == 1 else b"".join(out))

    def _drain_needed(self) -> bool:
        """Whether `drain` would wait or raise (else it returns at once: no timer for it)."""
        t = self._transport
        return (
            self._write_paused
            or self._lost.done()
            or t is None
            or t.get_write_buffer_size() > self.write_high_water
        )

    async def drain(self) -> None:
        """Wait while the client is not reading; raises ConnectionResetError once it is gone."""
        if self._lost.done():
            raise ConnectionResetError("connection lost")
        t = self._transport
        if not self._write_paused and (
            t is None or t.get_write_buffer_size() <= self.write_high_water
        ):
            return
        self.flush()
        while self._write_paused:
            if self._lost.done():
                raise ConnectionResetError("connection lost")
            self._drain_waiter = self._loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None
        if self._lost.done():
            raise ConnectionResetError("connection lost")

    async def start_tls(self) -> None:
        """Upgrade after ``OK`` to STARTTLS (RFC 9051 §6.2.1)."""
        self.flush()  # the OK goes out in plaintext, before the handshake
        await self.upgrade_tls()

    def end(self) -> None:
        """The session said BYE by itself: the read it waits in returns now."""
        self.interrupt_read()

    # ---- the conversation --------------------------------------------------------------------

    async def _run(self) -> bool:
        srv = self._server
        transport = self._transport
        assert transport is not None
        peer = transport.get_extra_info("peername")
        remote_ip, remote_port = (str(peer[0]), peer[1]) if peer else ("", 0)
        tls = transport.get_extra_info("sslcontext") is not None
        session = self.session = ImapSession(
            srv.backend,
            srv.settings,
            self,
            remote_ip=remote_ip,
            is_loopback=is_loopback_address(remote_ip),
            tls_active=tls,
            conn_id=self.conn_id,
        )
        log.info(
            "conn=%s event=connect remote=%s port=%s tls=%s",
            self.conn_id,
            remote_ip,
            remote_port,
            "implicit" if tls else "no",
        )
        session.greet()
        return await self._converse(False)

    # ---- parking: an idle connection has no task ---------------------------------------------

    def _park(self, timeout: float) -> None:
        """Wait for the client without a task: the next event (data, EOF, loss, shutdown, the
        session's own BYE) or the timeout starts `_converse` again."""
        self._parked = timeout
        self._server.parked.add(self, timeout)

    def _unpark(self, timed_out: bool) -> None:
        """Start the conversation's next task (``timed_out``: the autologout timer fired)."""
        timeout, self._parked = self._parked, None
        if timeout is not None and not timed_out:
            self._server.parked.remove(self, timeout)
        self._start_task(self._converse(timed_out))

    def _wake_reader(self) -> None:
        if self._parked is not None:
            self._unpark(False)
        else:
            super()._wake_reader()

    def abort(self) -> None:
        if self._parked is not None and self._transport is not None:
            self._transport.abort()  # connection_lost wakes it: the session closes as usual
        else:
            super().abort()

    def _may_park(self) -> bool:
        return not (
            self._inbuf
            or self._eof
            or self._lost.done()
            or self._interrupted
            or self._stopping
            or self._write_paused
        )

    # ---- the conversation --------------------------------------------------------------------

    async def _converse(self, timed_out: bool) -> bool:
        """Read and run commands until the client has nothing more to say for now (True:
        parked) or the connection is over (False, after the session and transport closed)."""
        session = self.session
        assert session is not None
        reason = "logout"
        parked = False
        try:
            if timed_out:
                reason = "autologout"
                session.autologout_bye()
            while not session.closing:
                buffered = session.buffered
                timeout, command = self._read_timeout(session.autologout, buffered)
                self.flush()
                if not buffered and self._may_park():
                    self._park(timeout)
                    parked = True
                    return True
                try:
                    async with asyncio.timeout(timeout):
                        data = await self._read()
                except TimeoutError:
                    reason = "command-timeout" if command else "autologout"
                    if command:
                        session.command_timeout_bye()
                    else:
                        session.autologout_bye()
                    break
                if self._interrupted:  # it said BYE while we waited (its account was deleted)
                    reason = session.close_reason
                    break
                if not data:
                    reason = "disconnect"
                    break
                await session.feed(data)
                if not session.closing and self._drain_needed():
                    async with asyncio.timeout(session.autologout):
                        await self.drain()
            else:
                reason = session.close_reason
        except ServerStopping:
            reason = "shutdown"
            with contextlib.suppress(ConnectionError):
                session.shutdown_bye()
        except asyncio.CancelledError:
            reason = "shutdown"
            session.shutdown_bye()
            raise
        except TimeoutError:
            reason = "write-timeout"
        except (ConnectionError, ssl.SSLError) as exc:
            reason = "write-timeout" if self.write_timed_out else f"error:{type(exc).__name__}"
        except Exception:
            reason = "internal-error"
            log.exception("conn=%s event=connection-error", self.conn_id)
        finally:
            if not parked:
                try:
                    await session.close()
                finally:
                    await self._close_transport()
                    log.info(
                        "conn=%s event=disconnect reason=%s account=%r",
                        self.conn_id,
                        reason,
                        session.account,
                    )
        return False

    async def _close_transport(self) -> None:
        self.flush()
        transport = self._transport
        if transport is None:
            return
        if not transport.is_closing():
            transport.close()  # flushes what is buffered, TLS close_notify included
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await asyncio.shield(self._lost)
        except TimeoutError:
            transport.abort()
        except asyncio.CancelledError:
            transport.abort()
            raise


class _ParkedTimers:
    """The autologout timers of parked connections: one event-loop timer per distinct timeout
    instead of one per connection. Connections parked with the same timeout expire in the order
    they were parked, so each timeout keeps its connections in an insertion-ordered dict
    (connection -> deadline) and one timer for the oldest; adding, removing (the client spoke)
    and expiring are O(1) per connection."""

    def __init__(self) -> None:
        self._queues: dict[float, dict[_Connection, float]] = {}
        self._timers: dict[float, asyncio.TimerHandle] = {}

    def add(self, conn: _Connection, timeout: float) -> None:
        loop = conn._loop
        queue = self._queues.setdefault(timeout, {})
        queue[conn] = deadline = loop.time() + timeout
        if timeout not in self._timers:
            self._timers[timeout] = loop.call_at(deadline, self._expire, loop, timeout)

    def remove(self, conn: _Connection, timeout: float) -> None:
        queue = self._queues.get(timeout)
        if queue is not None:
            queue.pop(conn, None)  # the timer stays: it finds a later deadline and waits again

    def _expire(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        del self._timers[timeout]
        queue = self._queues.get(timeout)
        if queue is None:
            return
        now = loop.time()
        expired: list[_Connection] = []
        next_deadline = None
        for conn, deadline in queue.items():
            if deadline > now:
                next_deadline = deadline
                break
            expired.append(conn)
        for conn in expired:
            del queue[conn]
        if next_deadline is not None:
            self._timers[timeout] = loop.call_at(next_deadline, self._expire, loop, timeout)
        elif not queue:
            del self._queues[timeout]
        for conn in expired:
            conn._unpark(True)

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())


class ImapServer(Listener):
    """An IMAP listener, usable wherever an ``asyncio.AbstractServer`` is expected.

    ``ssl_context`` enables STARTTLS, or with ``implicit_tls`` the IMAPS variant (RFC 8314) where
    TLS starts at connect time. ``close()`` stops listening and ends every connection with
    ``* BYE``; ``await wait_closed()`` waits until they are all gone.
    """

    upgrade_name = "starttls"

    def __init__(
        self,
        backend: ImapBackend,
        settings: ImapSettings,
        host: str | Sequence[str] | None = "127.0.0.1",
        port: int = 143,
        *,
        ssl_context: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        limits: Limits | None = None,
    ) -> None:
        super().__init__(
            host, port, ssl_context=ssl_context, implicit_tls=implicit_tls, log=log, limits=limits
        )
        self.backend = backend
        self.parked = _ParkedTimers()  # idle connections without a task, by autologout timeout
        # STARTTLS is on offer exactly when there is a context and the port is not TLS already.
        self.settings = dataclasses.replace(
            settings, tls_available=ssl_context is not None and not implicit_tls
        )

    def _new_connection(self) -> asyncio.Protocol:
        return _Connection(self)

    def _handshake_timeout(self) -> float:
        return min(60.0, self.settings.autologout_unauthenticated)

    def refusal_line(self, refusal: Refusal) -> bytes:
        # RFC 9051 §7.1.5: BYE as the greeting refuses the connection; RFC 5530 UNAVAILABLE.
        return f"* BYE [UNAVAILABLE] {refusal.value}, try again later\r\n".encode()


async def start_imap_server(
    backend: ImapBackend,
    settings: ImapSettings,
    host: str | Sequence[str] | None = "127.0.0.1",
    port: int = 143,
    ssl_context: ssl.SSLContext | None = None,
    implicit_tls: bool = False,
    sock: socket.socket | None = None,
    limits: Limits | None = None,
) -> ImapServer:
    """Create and start an ImapServer; stop it with ``close()`` and ``await wait_closed()``."""
    server = ImapServer(
        backend,
        settings,
        host,
        port,
        ssl_context=ssl_context,
        implicit_tls=implicit_tls,
        limits=limits,
    )
    server.sock = sock
    await server.start()
    return server
