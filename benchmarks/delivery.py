"""Inbound delivery load: concurrent SMTP or LMTP clients, one message per transaction.

A deliberately lean client (asyncio streams, stdlib only) so that on a 2-core machine the load
generator takes as little CPU from the server as possible: each client keeps one connection,
pipelines ``MAIL``/``RCPT``/``DATA`` when the server offers PIPELINING (all three servers here
do), then sends the message and waits for the final reply before the next transaction. With
``chunking`` and a server that offers CHUNKING (RFC 3030; Postfix, Dovecot LMTP and postfach
do), the message goes as one ``BDAT <size> LAST`` pipelined with ``MAIL`` and ``RCPT``: one
round trip per message instead of two, as Exim and Exchange send it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from common import HOST, SENDER, CpuTimes, CpuUse, MessageFactory


class ProtocolError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class DeliveryStats:
    messages: int  # accepted with 250 (any failure raises instead)
    seconds: float  # first MAIL to last final 250
    started: float  # time.perf_counter() at the first MAIL
    cpu: CpuUse
    latency_ms: tuple[float, float, float]  # p50, p90, p99 of MAIL..final 250

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


async def _reply(reader: asyncio.StreamReader) -> tuple[int, str]:
    """One (possibly multi-line) SMTP reply: code and last line."""
    while True:
        line = await reader.readline()
        if not line:
            raise ProtocolError("connection closed by server")
        if len(line) < 4:
            raise ProtocolError(f"bad reply line {line!r}")
        if line[3:4] != b"-":
            return int(line[:3]), line.decode("utf-8", "replace").rstrip()


async def _expect(reader: asyncio.StreamReader, code: int, what: str) -> None:
    got, text = await _reply(reader)
    if got != code:
        raise ProtocolError(f"{what}: expected {code}, got {text!r}")


class _Client:
    def __init__(self, port: int, lmtp: bool, chunking: bool) -> None:
        self.port = port
        self.lmtp = lmtp
        self.want_chunking = chunking
        self.chunking = False
        self.pipelining = False
        self.size_ext = False
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        await _expect(self.reader, 220, "greeting")
        hello = b"LHLO" if self.lmtp else b"EHLO"
        self.writer.write(hello + b" loadgen.sender.example\r\n")
        caps: list[bytes] = []
        while True:
            line = await self.reader.readline()
            if not line.startswith(b"250"):
                raise ProtocolError(f"{hello.decode()}: {line!r}")
            caps.append(line[4:].strip().upper())
            if line[3:4] != b"-":
                break
        self.pipelining = b"PIPELINING" in caps
        self.chunking = self.want_chunking and self.pipelining and b"CHUNKING" in caps
        self.size_ext = any(c == b"SIZE" or c.startswith(b"SIZE ") for c in caps)

    async def send(self, rcpt: str, message: bytes) -> None:
        reader, writer = self.reader, self.writer
        assert reader is not None and writer is not None
        size = f" SIZE={len(message)}" if self.size_ext else ""
        if self.chunking:
            writer.write(
                f"MAIL FROM:<{SENDER}>{size}\r\nRCPT TO:<{rcpt}>\r\n"
                f"BDAT {len(message)} LAST\r\n".encode()
            )
            writer.write(message)
            await _expect(reader, 250, "MAIL")
            await _expect(reader, 250, "RCPT")
            await _expect(reader, 250, "BDAT")  # LMTP: one reply for the one recipient
            return
        envelope = [
            f"MAIL FROM:<{SENDER}>{size}\r\n".encode(),
            f"RCPT TO:<{rcpt}>\r\n".encode(),
            b"DATA\r\n",
        ]
        if self.pipelining:
            writer.write(b"".join(envelope))
            await _expect(reader, 250, "MAIL")
            await _expect(reader, 250, "RCPT")
            await _expect(reader, 354, "DATA")
        else:
            for cmd, code in zip(envelope, (250, 250, 354), strict=True):
                writer.write(cmd)
                await _expect(reader, code, cmd.split(b" ")[0].decode())
        # The test messages have no line starting with "." (no dot-stuffing needed).
        writer.write(message)
        writer.write(b".\r\n")
        await _expect(reader, 250, "end of data")  # LMTP: one reply for the one recipient

    async def quit(self) -> None:
        if self.writer is None:
            return
        try:
            self.writer.write(b"QUIT\r\n")
            if self.reader is not None:
                async with asyncio.timeout(5):
                    await _reply(self.reader)
        except (OSError, ProtocolError, TimeoutError):
            pass
        finally:
            self.writer.close()
            try:
                async with asyncio.timeout(5):
                    await self.writer.wait_closed()
            except (OSError, TimeoutError):
                pass


async def run_delivery(
    port: int,
    *,
    lmtp: bool,
    recipients: Sequence[str],
    messages: int,
    clients: int,
    factory: MessageFactory,
    serial_base: int = 0,
    timeout: float = 300.0,
    chunking: bool = False,
) -> DeliveryStats:
    """Deliver ``messages`` messages over ``clients`` connections; message i goes to
    ``recipients[i % len(recipients)]`` (with BDAT if ``chunking`` and the server offers it).
    Raises if any transaction fails."""
    conns = [_Client(port, lmtp, chunking) for _ in range(clients)]
    try:
        async with asyncio.timeout(60):
            await asyncio.gather(*(c.connect() for c in conns))
        counter = iter(range(messages))
        latencies: list[float] = []

        async def worker(c: _Client) -> None:
            for i in counter:
                rcpt = recipients[i % len(recipients)]
                message = factory.make(serial_base + i, rcpt)
                t = time.perf_counter()
                await c.send(rcpt, message)
                latencies.append(time.perf_counter() - t)

        cpu0 = CpuTimes.now()
        t0 = time.perf_counter()
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(worker(c) for c in conns))
        seconds = time.perf_counter() - t0
        cpu = CpuUse.between(cpu0, CpuTimes.now(), seconds)
    finally:
        await asyncio.gather(*(c.quit() for c in conns), return_exceptions=True)
    return DeliveryStats(len(latencies), seconds, t0, cpu, _percentiles(latencies))


def _percentiles(values: list[float]) -> tuple[float, float, float]:
    if not values:
        return (0.0, 0.0, 0.0)
    ordered = sorted(values)

    def pick(q: float) -> float:
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return (pick(0.50), pick(0.90), pick(0.99))


async def wait_until(
    count: Callable[[], int], target: int, *, since: float, timeout: float, interval: float = 0.02
) -> float:
    """Poll ``count()`` until it reaches ``target``; seconds from ``since`` (perf_counter)."""
    deadline = time.perf_counter() + timeout
    while True:
        n = count()
        now = time.perf_counter()
        if n >= target:
            return now - since
        if now > deadline:
            raise TimeoutError(f"only {n} of {target} messages arrived within {timeout}s")
        await asyncio.sleep(interval)
