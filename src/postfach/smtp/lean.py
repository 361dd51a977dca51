"""Less work per SMTP command in aiosmtpd's command loop (adapter over aiosmtpd).

Two costs aiosmtpd pays on every command line, whatever the server does with it:

* ``_reset_timeout`` cancels the idle timer and schedules a new one (a ``TimerHandle`` and a heap
  operation each time, four or five times per delivered message). `LazyTimeout` keeps one timer
  and only moves its deadline; when the timer fires early it re-arms itself for what is left, so
  a session still times out exactly when the last reset says.
* ``sanitized_log`` turns the command line into a printable string before the logger is asked
  whether that level is wanted; aiosmtpd's ``mail.log`` logger is at WARNING in postfach, so the
  work is thrown away. `quiet_sanitized_log` asks first (installed by `install`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import aiosmtpd.smtp

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_original_sanitized_log = aiosmtpd.smtp.sanitized_log


def quiet_sanitized_log(func: Callable[..., None], msg: Any, *args: Any, **kwargs: Any) -> None:
    """aiosmtpd's ``sanitized_log``, skipped when the logger would drop the record anyway."""
    logger = getattr(func, "__self__", None)
    level = _LEVELS.get(getattr(func, "__name__", ""))
    if isinstance(logger, logging.Logger) and level is not None and not logger.isEnabledFor(level):
        return
    _original_sanitized_log(func, msg, *args, **kwargs)


def install() -> None:
    """Make aiosmtpd's command loop use `quiet_sanitized_log` (it looks the name up per call)."""
    aiosmtpd.smtp.sanitized_log = quiet_sanitized_log


class LazyTimeout:
    """Mixin for an aiosmtpd ``SMTP`` subclass: the idle timer is moved, not replaced."""

    _deadline: float = 0.0

    def _reset_timeout(self, duration: float | None = None) -> None:
        smtp: Any = self
        loop: asyncio.AbstractEventLoop = smtp.loop
        delay = duration or smtp._timeout_duration
        self._deadline = loop.time() + delay
        handle: asyncio.TimerHandle | None = smtp._timeout_handle
        if handle is not None and not handle.cancelled():
            if handle.when() <= self._deadline:
                return  # fires first, then re-arms itself for the rest (`_lazy_timeout`)
            handle.cancel()
        smtp._timeout_handle = loop.call_later(delay, self._lazy_timeout)

    def _lazy_timeout(self) -> None:
        smtp: Any = self
        left = self._deadline - smtp.loop.time()
        if left > 0:
            smtp._timeout_handle = smtp.loop.call_later(left, self._lazy_timeout)
            return
        # Fired: a `_reset_timeout` from the callback (LimitedSMTP extends a DATA transfer that
        # still arrives fast enough) must schedule a new timer, not rely on this one.
        smtp._timeout_handle.cancel()
        smtp._timeout_cb()
