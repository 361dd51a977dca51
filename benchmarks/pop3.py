"""POP3 RETR load: concurrent clients, each logs in to its own mailbox and RETRieves everything.

The client is an ``asyncio.Protocol`` that does not keep message bodies: it counts bytes and
looks only for the ``CRLF.CRLF`` terminator, so it costs little CPU per MB (it is still Python:
the "client CPU" column says how much of the 2 cores it took). By default one command is
outstanding per connection (``depth`` 1), as common clients do; a larger ``depth`` pipelines
RETRs (both servers announce PIPELINING), which takes much of the per-command cost off the
client and shows what the server alone can do.
Timing starts once every client is logged in (logins, password hashing and the servers'
mailbox scans are not part of the figure) and ends when the last RETR is complete.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from common import HOST, PASSWORD, CpuTimes, CpuUse

_TERMINATOR = b"\r\n.\r\n"


class Pop3Error(RuntimeError):
    pass


class _Pop3Protocol(asyncio.Protocol):
    """Parses the response stream for a FIFO of commands in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._pending: collections.deque[tuple[bool, asyncio.Future[bytes]]] = collections.deque()
        self._buf = b""  # an incomplete status line (or data that came before its command)
        self._in_body = False
        self._tail = b""  # the last (up to 4) bytes seen of the current multi-line response
        self.body_bytes = 0  # bytes of multi-line responses after their status line

    # -- asyncio callbacks --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        while self._pending:
            _multi, fut = self._pending.popleft()
            if not fut.done():
                fut.set_exception(Pop3Error(f"connection lost ({exc})"))

    def data_received(self, data: bytes) -> None:
        if self._buf:
            data, self._buf = self._buf + data, b""
        pos, n = 0, len(data)
        while pos < n:
            if self._in_body:
                pos = self._body(data, pos)
                continue
            if not self._pending:
                self._buf = data[pos:]
                return
            end = data.find(b"\r\n", pos)
            if end < 0:
                self._buf = data[pos:]
                return
            self._status(data[pos:end])
            pos = end + 2

    # -- parsing --
    def _status(self, line: bytes) -> None:
        multiline, fut = self._pending[0]
        if not line.startswith(b"+OK"):
            self._pending.popleft()
            if not fut.done():
                fut.set_exception(Pop3Error(line.decode("utf-8", "replace")))
        elif not multiline:
            self._pending.popleft()
            if not fut.done():
                fut.set_result(line)
        else:
            # The status line's CRLF can be the start of the terminator (empty body).
            self._in_body = True
            self._tail = b"\r\n"

    def _body(self, data: bytes, pos: int) -> int:
        """Consume body bytes from ``pos``; the position after the terminator, or len(data)."""
        probe = self._tail + data[pos : pos + 4]  # a terminator across the chunk boundary
        i = probe.find(_TERMINATOR)
        if i >= 0:
            end = pos + i + 5 - len(self._tail)
        else:
            j = data.find(_TERMINATOR, pos)
            if j < 0:
                self.body_bytes += len(data) - pos
                self._tail = (self._tail + data[max(pos, len(data) - 4) :])[-4:]
                return len(data)
            end = j + 5
        self.body_bytes += end - pos
        self._in_body = False
        _multi, fut = self._pending.popleft()
        if not fut.done():
            fut.set_result(b"")
        return end

    # -- commands --
    def send(self, line: bytes | None, *, multiline: bool = False) -> asyncio.Future[bytes]:
        """Send ``line`` (None: expect a response without a command: the greeting)."""
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending.append((multiline, fut))
        if line is not None:
            assert self.transport is not None
            self.transport.write(line + b"\r\n")
        elif self._buf:
            self.data_received(b"")
        return fut

    async def command(self, line: bytes | None, *, multiline: bool = False) -> bytes:
        return await self.send(line, multiline=multiline)


@dataclass(frozen=True, slots=True)
class Pop3Stats:
    messages: int
    bytes: int  # bytes of message data received (after the +OK lines, dot-stuffed as sent)
    seconds: float
    login_seconds: float  # connect + USER/PASS + STAT for all clients (not in `seconds`)
    cpu: CpuUse

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0

    @property
    def retr_per_s(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


class _Session:
    def __init__(self, port: int, account: str) -> None:
        self.port = port
        self.account = account
        self.proto: _Pop3Protocol | None = None
        self.count = 0
        self.octets = 0

    async def login(self) -> None:
        loop = asyncio.get_running_loop()
        _transport, self.proto = await loop.create_connection(_Pop3Protocol, HOST, self.port)
        p = self.proto
        await p.command(None)
        await p.command(f"USER {self.account}".encode())
        await p.command(f"PASS {PASSWORD}".encode())
        stat = (await p.command(b"STAT")).split()
        self.count, self.octets = int(stat[1]), int(stat[2])

    async def retr_all(self, depth: int) -> None:
        p = self.proto
        assert p is not None
        inflight: collections.deque[asyncio.Future[bytes]] = collections.deque()
        for i in range(1, self.count + 1):
            inflight.append(p.send(b"RETR %d" % i, multiline=True))
            if len(inflight) >= depth:
                await inflight.popleft()
        while inflight:
            await inflight.popleft()

    async def quit(self) -> None:
        p = self.proto
        if p is None or p.transport is None:
            return
        try:
            async with asyncio.timeout(10):
                await p.command(b"QUIT")  # no DELE was sent: the mailbox stays as it is
        except (Pop3Error, TimeoutError, OSError):
            pass
        finally:
            p.transport.close()


async def run_pop3_round(
    port: int, accounts: Sequence[str], *, expect: int, depth: int = 1, timeout: float = 300.0
) -> Pop3Stats:
    """One round: every account's client logs in, then all RETR everything concurrently."""
    sessions = [_Session(port, a) for a in accounts]
    try:
        t_login = time.perf_counter()
        async with asyncio.timeout(120):
            await asyncio.gather(*(s.login() for s in sessions))
        login_seconds = time.perf_counter() - t_login
        for s in sessions:
            if s.count != expect:
                raise Pop3Error(f"{s.account}: STAT says {s.count} messages, expected {expect}")
        cpu0 = CpuTimes.now()
        t0 = time.perf_counter()
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(s.retr_all(depth) for s in sessions))
        seconds = time.perf_counter() - t0
        cpu = CpuUse.between(cpu0, CpuTimes.now(), seconds)
        received = sum(s.proto.body_bytes for s in sessions if s.proto is not None)
        octets = sum(s.octets for s in sessions)
        if received < octets:
            raise Pop3Error(f"received {received} bytes, less than the {octets} STAT announced")
    finally:
        await asyncio.gather(*(s.quit() for s in sessions), return_exceptions=True)
    return Pop3Stats(sum(s.count for s in sessions), received, seconds, login_seconds, cpu)


async def run_pop3(
    port: int, accounts: Sequence[str], *, expect: int, rounds: int, warmup: int = 1, depth: int = 1
) -> list[Pop3Stats]:
    """``warmup`` unmeasured rounds (server caches, Dovecot's index files), then ``rounds``."""
    for _ in range(warmup):
        await run_pop3_round(port, accounts, expect=expect, depth=depth)
    return [await run_pop3_round(port, accounts, expect=expect, depth=depth) for _ in range(rounds)]


def combine(rounds: Sequence[Pop3Stats]) -> Pop3Stats:
    """All measured rounds as one figure (total bytes over total RETR time)."""
    seconds = sum(r.seconds for r in rounds)

    def avg(pick: Callable[[CpuUse], float]) -> float:
        return sum(pick(r.cpu) * r.seconds for r in rounds) / seconds

    return Pop3Stats(
        sum(r.messages for r in rounds),
        sum(r.bytes for r in rounds),
        seconds,
        sum(r.login_seconds for r in rounds) / len(rounds),
        CpuUse(
            avg(lambda c: c.machine_cores),
            avg(lambda c: c.client_cores),
            avg(lambda c: c.other_cores),
            avg(lambda c: c.server_cores),
        ),
    )


async def message_counts(port: int, accounts: Sequence[str]) -> list[int]:
    """How many messages each account holds (login, STAT, QUIT), to check what was stored."""
    counts = []
    for account in accounts:
        s = _Session(port, account)
        try:
            async with asyncio.timeout(60):
                await s.login()
        finally:
            await s.quit()
        counts.append(s.count)
    return counts
