"""curl's STLS timing, made deterministic: the first command rides with the TLS Finished.

curl (and in principle fetchmail) writes ``CAPA`` the moment its handshake is done. When the
server reads the client's Finished and that first application record in one go, asyncio's SSL
protocol hands ``CAPA`` to ``data_received`` *before* ``loop.start_tls`` returns, and the
server then throws it away with the plaintext buffer: the client waits forever. With curl this
shows up as an intermittent ``curl: (28) Operation timed out`` after ``> CAPA``.

This test sends both in one segment with a memory-BIO TLS client, so it fails every time if
the bug comes back.
"""

from __future__ import annotations

import socket
import ssl

import pytest

from support import RunningServer

pytestmark = pytest.mark.interop


def _line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def test_command_in_the_same_segment_as_the_tls_finished_is_answered(
    server: RunningServer,
) -> None:
    with socket.create_connection(("127.0.0.1", server.port("pop3")), timeout=3) as sock:
        assert _line(sock).startswith(b"+OK")
        sock.sendall(b"STLS\r\n")
        assert _line(sock).startswith(b"+OK")

        ctx = ssl.create_default_context(cafile=str(server.app.config.cert_path))
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        # The client's Finished is still in `outgoing`: add the first command, send both at once.
        tls.write(b"CAPA\r\n")
        sock.sendall(outgoing.read())

        reply = b""
        while b"\r\n.\r\n" not in reply:
            data = sock.recv(65536)  # TimeoutError here is the bug
            assert data, f"server closed the connection; got {reply!r}"
            incoming.write(data)
            try:
                while True:
                    reply += tls.read(65536)
            except ssl.SSLWantReadError:
                pass
    assert reply.startswith(b"+OK")
    assert b"\r\nSTLS\r\n" not in reply  # RFC 2595: no STLS once TLS is active
