"""A listening socket that tracks its connections: what the POP3 and IMAP servers share (adapters).

Usable wherever an ``asyncio.AbstractServer`` is expected. ``ssl_context`` enables the in-protocol
upgrade (STLS/STARTTLS), or with ``implicit_tls`` the variant of RFC 8314 where TLS starts at
connect time. ``close()`` stops listening and asks every connection to end at its next command
boundary (a command being processed finishes and is answered; the protocol says goodbye);
``await wait_closed()`` waits until they are all gone; ``abort()`` cancels what is left.
Subclasses say how a connection is made and how long a TLS handshake may take.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import ssl
from collections.abc import Sequence
from typing import Any, Protocol, Self


class TrackedConnection(Protocol):
    task: asyncio.Task[None] | None

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
    ) -> None:
        if implicit_tls and ssl_context is None:
            raise ValueError("implicit_tls needs an ssl_context")
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.implicit_tls = implicit_tls
        self._log = log
        self._server: asyncio.Server | None = None
        self._connections: set[TrackedConnection] = set()
        self._closing = False
        #: a socket bound beforehand (by a server that drops root after binding)
        self.sock: socket.socket | None = None

    # ---- what a subclass provides ------------------------------------------------------------

    def _new_connection(self) -> asyncio.Protocol:
        raise NotImplementedError

    def _handshake_timeout(self) -> float:
        return 60.0

    # ---- connections ---------------------------------------------------------------------------

    def _track(self, conn: TrackedConnection) -> None:
        self._connections.add(conn)
        if conn.task is not None:
            conn.task.add_done_callback(lambda _t: self._connections.discard(conn))
        if self._closing:  # accepted before close() (a TLS handshake), connected after it
            conn.shutdown()

    async def start(self) -> None:
        """Bind and start accepting connections."""
        if self._server is not None:
            raise RuntimeError("already started")
        loop = asyncio.get_running_loop()
        kwargs: dict[str, Any] = {}
        if self.implicit_tls:
            kwargs["ssl"] = self.ssl_context
            kwargs["ssl_handshake_timeout"] = self._handshake_timeout()
        if self.sock is not None:
            self._server = await loop.create_server(self._new_connection, sock=self.sock, **kwargs)
        else:
            self._server = await loop.create_server(
                self._new_connection, self.host, self.port, **kwargs
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

    async def wait_closed(self) -> None:
        tasks = [c.task for c in list(self._connections) if c.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
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
        self.conn_id = secrets.token_hex(4)
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        raise NotImplementedError

    async def upgrade_tls(self) -> None:
        """STLS/STARTTLS after the positive reply. Must not yield before ``loop.start_tls``."""
        listener = self._listener
        ctx, transport = listener.ssl_context, self._transport
        assert ctx is not None and transport is not None
        self._inbuf.clear()  # plaintext pipelined after the command: injection attempt or junk
        new_transport = await self._loop.start_tls(
            transport,
            self,
            ctx,
            server_side=True,
            ssl_handshake_timeout=listener._handshake_timeout(),
        )
        if new_transport is None:  # pragma: no cover - only on a closed transport
            raise ConnectionResetError("connection closed during TLS handshake")
        self._transport = new_transport
        self._reading_paused = False
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

    def abort(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()

    # ---- asyncio.Protocol callbacks ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self.task = self._loop.create_task(self._run())
        self._listener._track(self)

    def data_received(self, data: bytes) -> None:
        self._inbuf += data
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
        self._wake_reader()
        self._wake_writer()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writer()

    # ---- awaitable I/O -----------------------------------------------------------------------

    def _wake_reader(self) -> None:
        if self._data_waiter is not None and not self._data_waiter.done():
            self._data_waiter.set_result(None)

    def _wake_writer(self) -> None:
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    async def _read(self) -> bytes:
        """Whatever has arrived, waiting for something; b"" at EOF or when the peer is gone.
        Once `shutdown` was called: what was received before, then `ServerStopping`."""
        while not self._inbuf and not self._eof and not self._lost.done():
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
