"""Which messages a fetch downloads and deletes under each policy, and when it warns."""

from __future__ import annotations

import pytest

from postfach.client.policy import (
    DAY,
    Plan,
    Policy,
    ServerMessage,
    growth_warning,
    make_plan,
    quota_warning,
)
from postfach.client.state import Known, RunRecord

NOW = 1_700_000_000
LISTING = [ServerMessage(1, 100, "a"), ServerMessage(2, 200, "b"), ServerMessage(3, 300, "c")]
KNOWN = {
    "a": Known(NOW - 10 * DAY, "file-a"),
    "b": Known(NOW - 2 * DAY, "file-b"),
    "gone": Known(NOW - 50 * DAY, "file-gone"),
}


def plan(policy: Policy, days: int = 0, present: set[str] | None = None) -> Plan:
    return make_plan(policy, days, LISTING, KNOWN, NOW, present)


def numbers(ms: tuple[ServerMessage, ...]) -> list[int]:
    return [m.number for m in ms]


def test_delete_downloads_new_and_deletes_everything() -> None:
    p = plan(Policy.DELETE)
    assert numbers(p.download) == [3] and numbers(p.delete) == [1, 2]
    assert p.delete_downloaded and p.kept == 0 and p.download_octets == 300


def test_keep_never_deletes() -> None:
    p = plan(Policy.KEEP)
    assert numbers(p.download) == [3] and p.delete == () and not p.delete_downloaded
    assert p.kept == 2


@pytest.mark.parametrize(("days", "deleted"), [(0, [1, 2]), (2, [1, 2]), (3, [1]), (11, [])])
def test_keep_days(days: int, deleted: list[int]) -> None:
    p = plan(Policy.KEEP_DAYS, days)
    assert numbers(p.delete) == deleted
    assert p.delete_downloaded is (days == 0)


def test_delete_when_deleted_locally() -> None:
    p = plan(Policy.DELETE_WHEN_DELETED_LOCALLY, present={"file-b"})
    assert numbers(p.download) == [3] and numbers(p.delete) == [1]
    assert not p.delete_downloaded
    with pytest.raises(ValueError):
        plan(Policy.DELETE_WHEN_DELETED_LOCALLY)


def test_without_uidl_everything_is_new() -> None:
    listing = [ServerMessage(1, 10, None), ServerMessage(2, 10, None)]
    p = make_plan(Policy.DELETE, 0, listing, KNOWN, NOW)
    assert numbers(p.download) == [1, 2] and p.delete == ()


def runs(*octets: int, vanished_at: int = -1, deleted_at: int = -1) -> list[RunRecord]:
    return [
        RunRecord(NOW + i, i + 1, o, int(i == vanished_at), int(i == deleted_at))
        for i, o in enumerate(octets)
    ]


def test_growth_warning_needs_growth_on_each_of_the_last_runs() -> None:
    assert growth_warning(runs(10, 20, 30, 40), 3) is not None
    text = growth_warning(runs(5, 10, 20, 30, 40), 3)
    assert text is not None and "grew on each of the last 3 runs" in text and "bounces" in text
    assert growth_warning(runs(10, 20, 30), 3) is None  # not enough history
    assert growth_warning(runs(10, 20, 20, 40), 3) is None  # no growth once
    assert growth_warning(runs(10, 20, 30, 40, vanished_at=2), 3) is None  # another client deleted
    assert growth_warning(runs(10, 20, 30, 40, deleted_at=1), 3) is None  # we deleted
    assert growth_warning(runs(10, 20, 30, 40, deleted_at=3), 3) is None  # we just deleted
    assert growth_warning(runs(10, 20, 30, 40), 0) is None  # switched off


def test_quota_warning() -> None:
    assert quota_warning(79, 100) is None
    text = quota_warning(80 << 20, 100 << 20)
    assert text is not None and "80%" in text
    assert quota_warning(10**9, 0) is None
