"""Pipelined replies in one write (adapter over aiosmtpd; RFC 2920 §3.2 lets a server batch them).

aiosmtpd writes every reply on its own, and with an empty send buffer each write is a
``send()`` system call: a pipelined ``MAIL``/``RCPT``/``DATA`` cost three, a third of the socket
work of an inbound delivery. `HeldReplies` keeps the positive replies to ``MAIL`` and ``RCPT``
back until the next reply (``354`` to ``DATA`` in a pipelined transaction, which then carries
them) or, at the latest, until the session task next waits (a ``call_soon`` callback): a client
that sends one command and waits still gets its answer at once, in order.
"""

from __future__ import annotations

from typing import Any

#: the replies held back: MAIL and RCPT accepted (postfach.smtp.handler's texts), a BDAT chunk
#: before the last one received (postfach.smtp.data)
_HOLD = ("250 2.1.0 ", "250 2.1.5 ", "250 2.0.0 Chunk of ")


class HeldReplies:
    """Mixin for an aiosmtpd ``SMTP`` subclass, after the mixins that rewrite reply text."""

    _held: bytes = b""

    async def push(self, status: str | bytes) -> None:
        smtp: Any = self
        if isinstance(status, str) and status.startswith(_HOLD):
            if not self._held:
                smtp.loop.call_soon(self._flush_held)
            self._held += status.encode("utf-8" if smtp.enable_SMTPUTF8 else "ascii") + b"\r\n"
            return
        if self._held:
            if isinstance(status, str):
                status = status.encode("utf-8" if smtp.enable_SMTPUTF8 else "ascii")
            held, self._held = self._held, b""
            status = held + status  # aiosmtpd adds the last CRLF
        await super().push(status)  # type: ignore[misc]

    def _flush_held(self) -> None:
        held, self._held = self._held, b""
        transport = getattr(self, "transport", None)
        if held and transport is not None and not transport.is_closing():
            transport.write(held)
