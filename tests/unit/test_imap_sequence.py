"""Sequence sets: parse/format round trips and RFC 9051 evaluation semantics."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postfach.imap.commands import SequenceSet
from postfach.imap.sequence import (
    contains,
    count,
    format_ranges,
    format_sequence_set,
    intersect_sorted,
    numbers,
    parse_sequence_set,
    ranges_of,
    resolve,
    sequence_numbers_valid,
    unparse,
)


def s(text: str) -> SequenceSet:
    return parse_sequence_set(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", SequenceSet(((1, 1),))),
        ("*", SequenceSet(((None, None),))),
        ("1:*", SequenceSet(((1, None),))),
        ("5:3,7", SequenceSet(((5, 3), (7, 7)))),
        ("$", SequenceSet((), saved=True)),
        ("1,$", SequenceSet(((1, 1),), saved=True)),
        ("4294967295", SequenceSet(((4294967295, 4294967295),))),
    ],
)
def test_parse(text: str, expected: SequenceSet) -> None:
    assert parse_sequence_set(text) == expected


@pytest.mark.parametrize(
    "text", ["", "0", "1:", ":1", "1,,2", "a", "4294967296", "1:2:3", "-1", "1 2", "\u0661"]
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_sequence_set(text)


def test_known_uids_forbid_star_and_dollar() -> None:
    with pytest.raises(ValueError):
        parse_sequence_set("1:*", allow_star=False)
    with pytest.raises(ValueError):
        parse_sequence_set("$", allow_saved=False)


@pytest.mark.parametrize(
    ("text", "largest", "expected"),
    [
        ("1:*", 5, [(1, 5)]),
        ("*", 5, [(5, 5)]),
        ("*", 0, []),
        ("1:*", 0, []),
        ("3", 0, []),
        ("5:3", 10, [(3, 5)]),
        ("8:*", 5, [(5, 5)]),  # RFC 9051 §6.4.8: 559:* includes the last UID
        ("2,4,3,1", 10, [(1, 4)]),
        ("7:9,1:3", 8, [(1, 3), (7, 8)]),
        ("9", 8, []),
        ("*:4", 3, [(3, 3)]),
    ],
)
def test_resolve(text: str, largest: int, expected: list[tuple[int, int]]) -> None:
    assert resolve(s(text), largest) == expected


def test_resolve_saved() -> None:
    assert resolve(s("$"), 10, saved=[3, 4, 9, 11]) == [(3, 4), (9, 9)]
    assert resolve(s("1,$"), 10, saved=[2]) == [(1, 2)]
    with pytest.raises(ValueError):
        resolve(s("$"), 10)


def test_sequence_numbers_valid() -> None:
    assert sequence_numbers_valid(s("1:3"), 3)
    assert sequence_numbers_valid(s("1:*"), 1)
    assert not sequence_numbers_valid(s("1:4"), 3)
    assert not sequence_numbers_valid(s("*"), 0)
    assert not sequence_numbers_valid(s("1"), 0)
    assert sequence_numbers_valid(s("$"), 0)


def test_helpers() -> None:
    r = resolve(s("1:3,7,10:12"), 20)
    assert contains(r, 2) and contains(r, 7) and contains(r, 12)
    assert not contains(r, 0) and not contains(r, 5) and not contains(r, 13)
    assert count(r) == 7
    assert list(numbers(r)) == [1, 2, 3, 7, 10, 11, 12]
    assert intersect_sorted(r, [2, 4, 7, 9, 11, 30]) == [2, 7, 11]
    assert format_ranges(r) == "1:3,7,10:12"
    assert format_sequence_set([5, 1, 2, 3, 3, 9, 10]) == "1:3,5,9:10"
    with pytest.raises(ValueError):
        format_sequence_set([])
    with pytest.raises(ValueError):
        format_sequence_set([0, 1])


def test_huge_ranges_are_not_expanded() -> None:
    r = resolve(s("1:4294967295"), 4294967295)
    assert r == [(1, 4294967295)]
    assert intersect_sorted(r, [1, 5]) == [1, 5]


numbers_st = st.sets(st.integers(1, 300), min_size=1, max_size=60)
seq_number = st.one_of(st.none(), st.integers(1, 40))
seqsets = st.builds(
    SequenceSet,
    st.lists(
        st.one_of(
            st.tuples(seq_number, seq_number),
            seq_number.map(lambda n: (n, n)),
        ),
        min_size=1,
        max_size=8,
    ).map(tuple),
    st.just(False),
)


@given(numbers_st)
def test_format_then_parse_round_trip(values: set[int]) -> None:
    text = format_sequence_set(values)
    assert resolve(parse_sequence_set(text), 1000) == ranges_of(values)
    assert set(numbers(resolve(parse_sequence_set(text), 1000))) == values
    # The shortest form: no two ranges touch.
    r = ranges_of(values)
    assert all(b[0] > a[1] + 1 for a, b in itertools.pairwise(r))


@given(seqsets)
def test_unparse_round_trip(seqset: SequenceSet) -> None:
    assert parse_sequence_set(unparse(seqset)) == seqset


@given(seqsets, st.integers(0, 50))
def test_resolve_matches_naive_semantics(seqset: SequenceSet, largest: int) -> None:
    expected: set[int] = set()
    if largest:
        for a, b in seqset.ranges:
            lo, hi = sorted((largest if a is None else a, largest if b is None else b))
            expected.update(n for n in range(lo, hi + 1) if 1 <= n <= largest)
    got = resolve(seqset, largest)
    assert set(numbers(got)) == expected
    assert got == ranges_of(expected)
    for n in range(0, 55):
        assert contains(got, n) == (n in expected)
