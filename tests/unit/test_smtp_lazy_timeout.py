"""`postfach.smtp.lean.LazyTimeout`: one idle timer whose deadline moves, firing exactly when
the last reset says (later resets push it back, a shorter one brings it forward)."""

from __future__ import annotations

import asyncio

from postfach.smtp.lean import LazyTimeout, quiet_sanitized_log


class FakeSession(LazyTimeout):
    def __init__(self, loop: asyncio.AbstractEventLoop, duration: float) -> None:
        self.loop = loop
        self._timeout_duration = duration
        self._timeout_handle: asyncio.TimerHandle | None = None
        self.fired: list[float] = []
        self.extend_once = 0.0

    def _timeout_cb(self) -> None:
        self.fired.append(self.loop.time())
        if self.extend_once:  # like LimitedSMTP during a DATA transfer that still arrives
            left, self.extend_once = self.extend_once, 0.0
            self._reset_timeout(left)


def test_fires_once_after_the_last_reset() -> None:
    async def main() -> tuple[float, list[float]]:
        s = FakeSession(asyncio.get_running_loop(), 0.2)
        for _ in range(5):  # commands keep coming: the timer never fires meanwhile
            s._reset_timeout()
            await asyncio.sleep(0.1)
        last = s.loop.time()
        s._reset_timeout()
        await asyncio.sleep(0.5)
        return last, s.fired

    last, fired = asyncio.run(main())
    assert len(fired) == 1
    assert 0.19 <= fired[0] - last <= 0.35


def test_shorter_reset_brings_it_forward_and_callback_can_extend() -> None:
    async def main() -> tuple[float, list[float]]:
        s = FakeSession(asyncio.get_running_loop(), 10.0)
        s._reset_timeout()
        start = s.loop.time()
        s.extend_once = 0.1
        s._reset_timeout(0.1)
        await asyncio.sleep(0.5)
        return start, s.fired

    start, fired = asyncio.run(main())
    assert len(fired) == 2  # once at 0.1 s, and once more after the extension it asked for
    assert 0.09 <= fired[0] - start <= 0.25
    assert 0.09 <= fired[1] - fired[0] <= 0.25


def test_quiet_log_skips_filtered_levels_only() -> None:
    import logging

    logger = logging.getLogger("postfach.test.quiet")
    logger.setLevel(logging.WARNING)
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    logger.addHandler(Keep())
    logger.propagate = False
    quiet_sanitized_log(logger.info, "%r", b"MAIL FROM:<a@b>")
    quiet_sanitized_log(logger.warning, "%r", b"\x1b[31m")
    assert [r.levelno for r in seen] == [logging.WARNING]  # the INFO line was dropped early
