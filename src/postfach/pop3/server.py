"""POP3 over TCP with asyncio (adapter ring).

One task per connection drives a ``Pop3Session``. The transport is handled through a plain
``asyncio.Protocol`` rather than streams so that STLS can be done safely: when the client says
STLS, every byte it pipelined after the command is thrown away, and ``loop.start_tls`` swaps the
transport's protocol before the event loop reads anything more, so no plaintext can end up being
taken for data sent under TLS (RFC 2595, "STARTTLS command injection").

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

from postfach.limits import Limits, Refusal
from postfach.listener import Listener, ServerStopping, StreamConnection
from postfach.pop3.session import Pop3Backend, Pop3Session, Pop3Settings, is_loopback_address

__all__ = ["Pop3Server", "start_pop3_server"]

log = logging.getLogger("postfach.pop3")

# Replies up to this size are joined into one write; bigger ones go chunk by chunk (no copy).
_JOIN_MAX = 256 * 1024

_CLOSE_TIMEOUT: Final = 5.0  # how long a graceful close (TLS shutdown, flush) may take


class _Connection(StreamConnection):
    """Buffers bytes in, offers awaitable read/drain, and runs the session in its own task."""

    def __init__(self, server: Pop3Server) -> None:
        super().__init__(server)
        self._server = server

    def _write(self, chunks: Sequence[bytes]) -> None:
        if self._transport is None or self._transport.is_closing():
            raise ConnectionResetError("connection closed")
        if sum(len(c) for c in chunks) <= _JOIN_MAX:
            # One write, one send(): a RETR of a typical message (or the replies to several
            # pipelined commands) leaves in one go rather than as one segment per chunk.
            self._transport.write(b"".join(chunks))
            return
        for chunk in chunks:
            if chunk:
                self._transport.write(chunk)

    async def _drain(self) -> None:
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

    def _needs_drain(self) -> bool:
        t = self._transport
        return self._write_paused or (
            t is not None and t.get_write_buffer_size() > self.write_high_water
        )

    # ---- the conversation --------------------------------------------------------------------

    async def _run(self) -> None:
        srv = self._server
        settings = srv.settings
        transport = self._transport
        assert transport is not None
        peer = transport.get_extra_info("peername")
        remote_ip, remote_port = (str(peer[0]), peer[1]) if peer else ("", 0)
        tls = transport.get_extra_info("sslcontext") is not None
        session = Pop3Session(
            srv.backend,
            settings,
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
        reason = "quit"
        try:
            self._write((session.greeting(),))
            while True:
                timeout, command = self._read_timeout(settings.autologout, session.buffered)
                try:
                    async with asyncio.timeout(timeout):
                        data = await self._read()
                except TimeoutError:
                    reason = "command-timeout" if command else "autologout"
                    if command:
                        self._write((session.command_timeout_reply(),))
                    else:
                        self._write((session.autologout_reply(),))
                    break
                if not data:
                    reason = "disconnect"
                    break
                session.receive_data(data)
                # Replies to the commands that arrived together (pipelining) are collected and
                # written together, up to _JOIN_MAX octets at a time: one send() for them all.
                out: list[bytes] = []
                pending = 0
                while (reply := await session.next_reply()) is not None:
                    out += reply.chunks
                    if reply.start_tls:
                        self._write(out)
                        out = []
                        await self._start_tls(session)
                        break
                    pending += sum(len(c) for c in reply.chunks)
                    if pending >= _JOIN_MAX or self._write_paused:
                        self._write(out)
                        out, pending = [], 0
                        if self._needs_drain():
                            async with asyncio.timeout(settings.autologout):
                                await self._drain()
                if out:
                    self._write(out)
                if session.closing:
                    reason = "closed"
                    break
                if self._write_paused:
                    async with asyncio.timeout(settings.autologout):
                        await self._drain()
                elif self._lost.done():
                    raise ConnectionResetError("connection lost")
        except ServerStopping:
            reason = "shutdown"
            with contextlib.suppress(ConnectionError):
                self._write((session.shutdown_reply(),))
        except asyncio.CancelledError:
            reason = "shutdown"
            raise
        except TimeoutError:
            reason = "write-timeout"
        except (ConnectionError, ssl.SSLError) as exc:
            reason = "write-timeout" if self.write_timed_out else f"error:{type(exc).__name__}"
        except Exception:
            reason = "internal-error"
            log.exception("conn=%s event=connection-error", self.conn_id)
        finally:
            try:
                await session.close()  # releases the maildrop lock; never commits
            finally:
                await self._close_transport()
                log.info(
                    "conn=%s event=disconnect reason=%s account=%r",
                    self.conn_id,
                    reason,
                    session.account,
                )

    async def _start_tls(self, session: Pop3Session) -> None:
        """Upgrade after ``+OK`` to STLS (RFC 2595 §4)."""
        await self.upgrade_tls()
        session.tls_started()

    async def _close_transport(self) -> None:
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


class Pop3Server(Listener):
    """A POP3 listener, usable wherever an ``asyncio.AbstractServer`` is expected.

    ``ssl_context`` enables STLS, or with ``implicit_tls`` the POP3S variant (RFC 8314) where TLS
    starts at connect time. ``close()`` stops listening and ends every connection (maildrop locks
    released, nothing committed); ``await wait_closed()`` waits until they are all gone.
    """

    upgrade_name = "stls"

    def __init__(
        self,
        backend: Pop3Backend,
        settings: Pop3Settings,
        host: str | Sequence[str] | None = "127.0.0.1",
        port: int = 110,
        *,
        ssl_context: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        limits: Limits | None = None,
    ) -> None:
        super().__init__(
            host, port, ssl_context=ssl_context, implicit_tls=implicit_tls, log=log, limits=limits
        )
        self.backend = backend
        # STLS is on offer exactly when there is a context and the port is not TLS already.
        self.settings = dataclasses.replace(
            settings, tls_available=ssl_context is not None and not implicit_tls
        )

    def _new_connection(self) -> asyncio.Protocol:
        return _Connection(self)

    def _handshake_timeout(self) -> float:
        return min(60.0, self.settings.autologout)

    def refusal_line(self, refusal: Refusal) -> bytes:
        # RFC 3206 SYS/TEMP: a temporary problem on our side; try again later.
        return f"-ERR [SYS/TEMP] {refusal.value}, try again later\r\n".encode()


async def start_pop3_server(
    backend: Pop3Backend,
    settings: Pop3Settings,
    host: str | Sequence[str] | None = "127.0.0.1",
    port: int = 110,
    ssl_context: ssl.SSLContext | None = None,
    implicit_tls: bool = False,
    sock: socket.socket | None = None,
    limits: Limits | None = None,
) -> Pop3Server:
    """Create and start a Pop3Server; stop it with ``close()`` and ``await wait_closed()``."""
    server = Pop3Server(
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
