"""Listening sockets bound before the server starts (``serve`` with workers, or as root before
dropping privileges): the connections accepted on them must behave like those of a listener
asyncio binds itself."""

from __future__ import annotations

import asyncio
import socket

import pytest

from postfach.app import _bind
from postfach.listener import serve_bound


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_connections_accepted_on_a_pre_bound_socket_have_nagle_off(host: str) -> None:
    """asyncio turns Nagle's algorithm off only for sockets that say IPPROTO_TCP, and
    ``socket.create_server`` says 0. Before, every connection of ``serve`` with workers had it
    on: a reply written while the client had not yet acknowledged the previous one waited for
    its delayed ACK, 40 ms (a BDAT transaction took 44 instead of 4 ms)."""

    async def main() -> int:
        sock = _bind("smtp", (host, 0))
        loop = asyncio.get_running_loop()
        nodelay: asyncio.Future[int] = loop.create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                conn = transport.get_extra_info("socket")
                nodelay.set_result(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await serve_bound(Probe, sock)
        try:
            _, writer = await asyncio.open_connection(host, sock.getsockname()[1])
            try:
                return await asyncio.wait_for(nodelay, 10)
            finally:
                writer.close()
        finally:
            server.close()
            await server.wait_closed()

    try:
        socket.create_server((host, 0), family=socket.getaddrinfo(host, 0)[0][0]).close()
    except OSError:
        pytest.skip(f"no {host} on this machine")
    assert asyncio.run(main()) != 0


def test_tls_connections_read_16_kib_at_a_time() -> None:
    """The read buffer of every TLS connection is 16 KiB instead of asyncio's 256 KiB (283
    against 45 KB of memory per idle IMAPS connection). It is set through an attribute asyncio
    does not document: on a Python where it is gone the import still works, and this test says
    that the memory figure no longer holds."""
    import postfach.listener

    assert asyncio.sslproto.SSLProtocol.max_size == postfach.listener.TLS_READ_BUFFER == 16384
