"""The fetch state: snapshot round trip, journal replay, torn records, generations."""

from __future__ import annotations

import pytest

from postfach.client.state import FetchState, Inflight, Known, RunRecord, StoredRecord


def sample() -> FetchState:
    s = FetchState("alice@pop.example.org")
    s.known["a"] = Known(100, "1.M1.host")
    s.inflight = [Inflight("b", "tok")]
    s.unconfirmed = {"f" * 64: 2}
    s.history = [RunRecord(1, 2, 3, 0, 1)]
    s.generation = 7
    return s


def test_snapshot_round_trip() -> None:
    s = sample()
    t = FetchState.from_json(s.to_json())
    assert t == s


@pytest.mark.parametrize(
    "text", ["", "[]", '{"version": 2}', '{"version": 1, "server": "x"}', "{nope"]
)
def test_bad_snapshots_are_value_errors(text: str) -> None:
    with pytest.raises(ValueError):
        FetchState.from_json(text)


def test_journal_records_apply_and_replay() -> None:
    live = sample()
    journal = live.record([], [Inflight("c", "t1"), Inflight("d", "t2")])
    journal += live.record(
        [StoredRecord("c", 200, "c-file"), StoredRecord(None, 201, None, "e" * 64)],
        [Inflight("d", "t2")],
    )
    assert live.known["c"] == Known(200, "c-file")
    assert live.unconfirmed["e" * 64] == 1
    assert live.inflight == [Inflight("d", "t2")]

    replayed = sample()
    assert replayed.replay(journal.encode()) == 2
    assert replayed == live


def test_torn_last_record_and_old_generations_are_ignored() -> None:
    live = sample()
    line = live.record([StoredRecord("x", 1, None)], [])
    old = FetchState("alice@pop.example.org", generation=6).record([StoredRecord("y", 1, None)], [])
    s = sample()
    assert s.replay((old + line + line[:-5]).encode()) == 1
    assert "x" in s.known and "y" not in s.known
    with pytest.raises(ValueError):
        sample().replay(b'{"junk": 1}\n')
