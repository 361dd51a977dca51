"""Stopping SMTP connections gracefully (adapters): what ``SIGTERM`` means for aiosmtpd sessions.

aiosmtpd has no notion of a server going away: closing the listening socket leaves every session
running until the loop is torn down under it, and the clients see a reset. Here:

* a client waiting to send its next command gets ``421 4.3.2 <host> Service shutting down`` and
  the connection is closed (RFC 5321 §3.8: a server that must stop answers 421);
* a command being processed (the store commit behind the end of DATA, an AUTH check) finishes and
  its reply goes out first; the 421 follows when the session next reads a command;
* a client in the middle of sending DATA gets ``grace`` seconds to finish it (then the message is
  committed and acknowledged as usual); after that it gets the 421 and the partial message is
  dropped: no ``250`` was sent, so the client keeps it and retries.

`GracefulSMTP` is a mixin for the aiosmtpd protocol classes; `SmtpListener` wraps the
``asyncio.Server`` and knows its sessions (``close``, ``wait_closed``, ``abort``), like
`postfach.listener.Listener` does for POP3 and IMAP.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import weakref
from collections.abc import Callable
from typing import Any

from aiosmtpd.smtp import SMTP

from postfach.listener import serve_bound

#: how long a client that is sending DATA when the server stops may take to finish
DATA_GRACE = 5.0


class GracefulSMTP:
    """Mixin for an aiosmtpd ``SMTP`` subclass (put it first in the bases)."""

    _stopping: bool = False
    _stop_deadline: float = 0.0
    _in_data: bool = False
    _read_task: asyncio.Task[Any] | None = None
    _woken: bool = False
    _reader_wrapped: bool = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        reader = getattr(self, "_reader", None)
        if reader is not None and not self._reader_wrapped:
            # Commands are read with readuntil, message data (postfach.smtp.data) with read.
            self._reader_wrapped = True
            setattr(reader, "readuntil", _guarded(self, reader.readuntil))  # noqa: B010
            setattr(reader, "read", _guarded(self, reader.read))  # noqa: B010

    async def smtp_DATA(self, arg: str) -> None:
        self._in_data = True
        try:
            await super().smtp_DATA(arg)  # type: ignore[misc]
        finally:
            self._in_data = False

    async def smtp_BDAT(self, arg: str | None) -> None:
        self._in_data = True  # a chunk on its way gets the grace period a DATA transfer gets
        try:
            await super().smtp_BDAT(arg)  # type: ignore[misc]
        finally:
            self._in_data = False

    def begin_shutdown(self, grace: float = DATA_GRACE) -> None:
        """Say goodbye at the next command boundary (at once if the session is waiting for
        one); a DATA transfer may go on for ``grace`` seconds."""
        if self._stopping:
            return
        self._stopping = True
        self._stop_deadline = asyncio.get_running_loop().time() + grace
        task = self._read_task
        if task is not None and not task.done():
            self._woken = True
            task.cancel()

    async def _goodbye(self) -> None:
        smtp: Any = self
        transport = smtp.transport
        if transport is not None and not transport.is_closing():
            with contextlib.suppress(ConnectionError):
                await asyncio.wait_for(
                    smtp.push(f"421 4.3.2 {smtp.hostname} Service shutting down"), timeout=2
                )
            transport.close()
        # connection_lost() cancels the session task; wait for that.
        await asyncio.get_running_loop().create_future()


def _guarded(conn: GracefulSMTP, read: Callable[..., Any]) -> Callable[..., Any]:
    async def guarded(*args: Any) -> bytes:
        loop = asyncio.get_running_loop()
        while True:
            if conn._stopping:
                left = conn._stop_deadline - loop.time()
                if not conn._in_data or left <= 0:
                    await conn._goodbye()
                try:
                    async with asyncio.timeout(left):
                        line: bytes = await read(*args)
                        return line
                except TimeoutError:
                    await conn._goodbye()
            task = asyncio.current_task()
            conn._read_task = task
            try:
                line = await read(*args)
                return line
            except asyncio.CancelledError:
                # Our own wake-up from begin_shutdown, not the connection going away.
                if conn._woken and task is not None and task.uncancel() == 0:
                    conn._woken = False
                    continue
                raise
            finally:
                conn._read_task = None

    return guarded


class SmtpListener(asyncio.AbstractServer):
    """An ``asyncio.Server`` for an aiosmtpd protocol factory that also ends its sessions."""

    def __init__(self, factory: Callable[[], SMTP]) -> None:
        self._factory = factory
        self._sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()
        self._server: asyncio.Server | None = None

    def protocol(self) -> SMTP:
        proto = self._factory()
        self._sessions.add(proto)
        return proto

    async def start(
        self, host: str, port: int, *, sock: socket.socket | None = None, **kwargs: Any
    ) -> SmtpListener:
        loop = asyncio.get_running_loop()
        if sock is not None:  # bound beforehand (see postfach.privileges)
            self._server = await serve_bound(self.protocol, sock, **kwargs)
        else:
            self._server = await loop.create_server(self.protocol, host, port, **kwargs)
        return self

    def _live(self) -> list[SMTP]:
        return [s for s in list(self._sessions) if s.transport is not None]

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._server.sockets) if self._server is not None else ()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        assert self._server is not None
        return self._server.get_loop()

    def is_serving(self) -> bool:
        return self._server is not None and self._server.is_serving()

    async def start_serving(self) -> None:
        assert self._server is not None
        await self._server.start_serving()

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    def close(self) -> None:
        """Stop accepting; every session says 421 at its next command boundary (also one
        still in its TLS handshake: it says 421 after the greeting)."""
        if self._server is not None:
            self._server.close()
        for s in list(self._sessions):
            if isinstance(s, GracefulSMTP):
                s.begin_shutdown()

    async def wait_closed(self) -> None:
        tasks = [t for s in self._live() if (t := s._handler_coroutine) is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def abort(self) -> None:
        """Drop whatever is still connected (a client that does not read its 421)."""
        for s in self._live():
            if isinstance(s.transport, asyncio.WriteTransport):
                s.transport.abort()
