"""Connection limits and slow-client deadlines for the aiosmtpd protocols (adapter).

A mixin placed before aiosmtpd's ``SMTP`` in the class bases of the MX, LMTP and submission
protocols:

* **At accept**, the connection asks the listener's `ConnectionCounter` for a slot. Refused, the
  client gets ``421 4.7.0`` and a close — one write, no task, no aiosmtpd session. On the
  implicit-TLS port (465) it is closed without a handshake; there the protocol starts TLS itself
  (``loop.start_tls``) after admission, so that handshakes in progress are counted too.
* **Command deadline.** aiosmtpd restarts its timer only when a whole valid command has been
  read, never on single bytes, so a client sending a byte a minute is dropped ``timeout``
  seconds after its last command: a per-command deadline already.
* **DATA deadline.** aiosmtpd does not restart its timer during DATA either, which would cut off
  a big message on a slow line. Here the timer is extended while the message arrives: it must be
  complete by ``DATA + timeout + octets / min_rate`` (`postfach.limits.input_deadline`), so a
  byte-a-minute sender is out after about ``timeout`` seconds and a 50 MB message at 10 KB/s gets
  its 85 minutes. Each BDAT chunk gets the same deadline for its octets.
* **Timeout.** The client is told ``421 4.4.2`` and the connection closed; if it does not read
  (the close would wait for the output buffer to drain forever) it is aborted a few seconds
  later. Replies are small and aiosmtpd waits for each to drain (64 KiB high-water mark), so a
  client that pipelines commands and never reads stops being read and then times out.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from aiosmtpd.smtp import SMTP, syntax

from postfach.limits import ConnectionCounter, Limits, Refusal, RefusalLog, Slot, input_deadline

log = logging.getLogger("postfach.smtp.limits")

_ABORT_AFTER = 5.0  # seconds a timed-out connection gets to take its 421 before it is aborted


class ConnectionLimits:
    """What one listener's protocols share: the counter, the limits, the implicit TLS context."""

    def __init__(
        self, limits: Limits | None = None, implicit_tls: ssl.SSLContext | None = None
    ) -> None:
        self.limits = limits = limits if limits is not None else Limits()
        self.counter = ConnectionCounter.for_limits(limits)
        self.implicit_tls = implicit_tls
        self._refusal_log = RefusalLog()

    def log_refusal(self, refusal: Refusal, ip: str, now: float) -> None:
        count = self._refusal_log.note(refusal, now)
        if count:  # at most one line per second and reason: a flood must not flood the log
            log.warning(
                "event=refused reason=%s remote=%s count=%d held=%d",
                "per-ip" if refusal is Refusal.PER_IP else "total",
                ip,
                count,
                self.counter.total,
            )


class LimitedSMTP(SMTP):
    """The mixin (see the module docstring); ``connection_limits`` comes from the factory."""

    def __init__(self, *args: Any, connection_limits: ConnectionLimits, **kwargs: Any) -> None:
        self._pf_limits = connection_limits
        self._pf_admitted = False  # the accept-time check has been made
        self._pf_started = False  # aiosmtpd has been handed the connection
        self._pf_slot: Slot | None = None
        self._pf_octets = 0  # octets received so far
        self._pf_data: tuple[float, int] | None = None  # DATA began: (when, octets before)
        self._pf_early = bytearray()
        super().__init__(*args, **kwargs)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._pf_admitted:  # aiosmtpd's STARTTLS hands over the TLS transport
            super().connection_made(transport)
            return
        self._pf_admitted = True
        assert isinstance(transport, asyncio.Transport)
        shared = self._pf_limits
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if peer else ""
        admitted = shared.counter.admit(ip)
        if isinstance(admitted, Refusal):
            if shared.implicit_tls is not None:
                transport.abort()
            else:
                transport.write(
                    f"421 4.7.0 {self.hostname} {admitted.value}, try again later\r\n".encode()
                )
                transport.close()
            shared.log_refusal(admitted, ip, self.loop.time())
            return
        self._pf_slot = admitted
        if shared.implicit_tls is None:
            self._pf_started = True
            super().connection_made(transport)
            return
        transport.pause_reading()  # the ClientHello is for the TLS layer
        self.loop.create_task(self._pf_implicit_tls(transport, shared.implicit_tls))

    async def _pf_implicit_tls(self, transport: asyncio.Transport, ctx: ssl.SSLContext) -> None:
        try:
            tls = await self.loop.start_tls(
                transport,
                self,
                ctx,
                server_side=True,
                ssl_handshake_timeout=min(60.0, self._timeout_duration),
            )
        except (ConnectionError, OSError, TimeoutError, ssl.SSLError) as exc:
            log.info("event=tls-handshake-failed error=%s", type(exc).__name__)
            transport.abort()
            self._pf_release()
            return
        if tls is None:  # pragma: no cover - only on a closed transport
            self._pf_release()
            return
        self._pf_started = True
        # Through the whole class chain (admitted now, so it goes straight to aiosmtpd), so that
        # the mixins before this one see the TLS connection start (graceful.GracefulSMTP).
        self.connection_made(tls)
        if self._pf_early:
            early, self._pf_early = bytes(self._pf_early), bytearray()
            super().data_received(early)

    def _pf_release(self) -> None:
        slot, self._pf_slot = self._pf_slot, None
        if slot is not None:
            slot.release()

    def connection_lost(self, error: Exception | None) -> None:
        self._pf_release()
        if self._pf_started:
            super().connection_lost(error)

    def eof_received(self) -> bool | None:
        if not self._pf_started:
            return None
        return super().eof_received()

    def data_received(self, data: bytes) -> None:
        self._pf_octets += len(data)
        if self._pf_started:
            super().data_received(data)
        else:  # arrived with the end of the TLS handshake, before aiosmtpd took over
            self._pf_early += data

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        self._pf_data = (self.loop.time(), self._pf_octets)
        try:
            await super().smtp_DATA(arg)
        finally:
            self._pf_data = None
            if self.transport is not None:
                self._reset_timeout()  # the next command gets a full timeout again

    @syntax("BDAT chunk-size [LAST]")
    async def smtp_BDAT(self, arg: str | None) -> None:
        # A chunk gets the time DATA gets for the same octets (the next command a full timeout).
        self._pf_data = (self.loop.time(), self._pf_octets)
        try:
            await super().smtp_BDAT(arg)  # type: ignore[misc]
        finally:
            self._pf_data = None
            if self.transport is not None:
                self._reset_timeout()

    def _timeout_cb(self) -> None:
        if self._pf_data is not None:
            started, before = self._pf_data
            deadline = input_deadline(
                started,
                self._pf_octets - before,
                self._timeout_duration,
                self._pf_limits.limits.min_rate,
            )
            left = deadline - self.loop.time()
            if left > 0:  # the message is still arriving fast enough
                self._reset_timeout(left)
                return
        transport = self.transport
        if not isinstance(transport, asyncio.Transport):
            return
        if transport.is_closing():  # already told; it is not reading its 421
            transport.abort()
            return
        assert self.session is not None
        log.info("event=timeout remote=%s in_data=%s", self.session.peer, self._pf_data is not None)
        transport.write(f"421 4.4.2 {self.hostname} Error: timeout exceeded\r\n".encode())
        transport.close()
        self.loop.call_later(_ABORT_AFTER, transport.abort)
