"""The queue runner's loop: it does not re-read a backlog that is already in flight."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from postfach.queue.runner import Envelope, Notice, QueueRunner, SendResult
from postfach.queue.schedule import Reply
from postfach.queue.store import NewRecipient, QueuedMessage, QueuedRecipient, QueueStore


class SlowTransport:
    """Holds every attempt until released; counts them."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.attempts = 0

    async def send(
        self, domain: str, envelope: Envelope, rcpts: Sequence[QueuedRecipient], message: bytes
    ) -> SendResult:
        self.attempts += 1
        await self.release.wait()
        return SendResult({r.id: Reply(250, "2.0.0", "ok") for r in rcpts})


class NoNotices:
    async def notify(self, message: QueuedMessage, data: bytes, notices: list[Notice]) -> None:
        raise AssertionError("no DSN expected")


def test_a_backlog_in_flight_is_not_polled_and_drains_through_the_limit(tmp_path: Path) -> None:
    store = QueueStore(tmp_path)
    for i in range(30):
        store.enqueue("a@example.org", [NewRecipient(f"r{i}@x.test")], b"m", 1.0)
    looks = 0
    real_due = store.due

    def counting_due(now: float, limit: int = 1000) -> list[QueuedRecipient]:
        nonlocal looks
        looks += 1
        return real_due(now, limit)

    store.due = counting_due  # type: ignore[method-assign]
    transport = SlowTransport()

    async def main() -> None:
        runner = QueueRunner(store, transport, NoNotices(), per_domain=2, poll=30.0)
        runner.start()
        await asyncio.sleep(1.0)  # all 30 in flight, 2 dialling, 28 waiting for the limit
        assert transport.attempts == 2
        assert looks <= 3, looks  # was one look every 50 ms (about 20 here)
        transport.release.set()
        for _ in range(200):
            if not store.messages():
                break
            await asyncio.sleep(0.05)
        await runner.stop()

    asyncio.run(main())
    assert store.messages() == [] and transport.attempts == 30
    store.close()


def test_next_due_after_a_time(tmp_path: Path) -> None:
    store = QueueStore(tmp_path)
    store.enqueue("a@example.org", [NewRecipient("x@one.test")], b"m", 10.0)
    store.enqueue("a@example.org", [NewRecipient("y@one.test")], b"m", 20.0)
    assert store.next_due() == 10.0
    assert store.next_due(after=10.0) == 20.0
    assert store.next_due(after=20.0) is None
    store.close()
