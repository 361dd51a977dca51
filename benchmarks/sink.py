"""A fast SMTP sink on 127.0.0.1: accepts every message and forgets it, counting (stdlib only).

``python benchmarks/sink.py PORT`` runs it until SIGTERM. It offers PIPELINING, 8BITMIME and
SIZE (no STARTTLS: the benchmark measures the relays, not the sink), answers 250 to MAIL, RCPT
and the end of DATA at once, and answers the private command ``XCOUNT`` with
``250 <messages> <recipients>`` so the benchmark can see when everything has arrived. One
asyncio protocol per connection, no stream objects: it should never be the bottleneck.
"""

from __future__ import annotations

import asyncio
import signal
import sys

GREETING = b"220 sink.bench ESMTP\r\n"
EHLO = (
    b"250-sink.bench\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 104857600\r\n"
    b"250 ENHANCEDSTATUSCODES\r\n"
)
END = b"\r\n.\r\n"


class Counts:
    messages = 0
    recipients = 0


class Sink(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.in_data = False
        self.rcpts = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(GREETING)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        out: list[bytes] = []
        while True:
            if self.in_data:
                at = self.buf.find(END)
                if at < 0:
                    break
                del self.buf[: at + len(END)]
                self.in_data = False
                Counts.messages += 1
                Counts.recipients += self.rcpts
                self.rcpts = 0
                out.append(b"250 2.0.0 Ok: discarded\r\n")
                continue
            nl = self.buf.find(b"\n")
            if nl < 0:
                break
            line = bytes(self.buf[: nl + 1]).rstrip(b"\r\n")
            del self.buf[: nl + 1]
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO", b"LHLO"):
                out.append(EHLO)
            elif verb == b"MAIL":
                self.rcpts = 0
                out.append(b"250 2.1.0 Ok\r\n")
            elif verb == b"RCPT":
                self.rcpts += 1
                out.append(b"250 2.1.5 Ok\r\n")
            elif verb == b"DATA":
                self.in_data = True
                self.buf[:0] = b"\r\n"  # so that an immediate "." line matches END
                out.append(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            elif verb in (b"RSET", b"NOOP"):
                out.append(b"250 2.0.0 Ok\r\n")
            elif verb == b"QUIT":
                out.append(b"221 2.0.0 Bye\r\n")
                assert self.transport is not None
                self.transport.write(b"".join(out))
                self.transport.close()
                return
            elif line.upper() == b"XCOUNT":
                out.append(f"250 {Counts.messages} {Counts.recipients}\r\n".encode())
            else:
                out.append(b"502 5.5.2 Command not recognized\r\n")
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Sink, "127.0.0.1", port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
