"""Sequence sets: parse, evaluate against a mailbox, format (pure core; RFC 9051 §9, §6.4.8).

A `SequenceSet` keeps the ranges as the client wrote them. ``resolve`` turns it into sorted,
merged, inclusive ``(low, high)`` ranges within ``1..largest``:

* ``*`` is the largest number in use: the message count for sequence numbers, the highest UID
  in the mailbox for UIDs (RFC 9051 §9, "seq-number"). When the mailbox is empty ``*`` has no
  value and every range that uses it is empty.
* ``n:m`` is the same as ``m:n``. So in a UID set ``n:*`` with ``n`` above the highest UID
  still matches the last message (RFC 9051 §6.4.8: "UID range of 559:* always includes the UID
  of the last message in the mailbox, even if 559 is higher than any assigned UID value").
* Numbers above ``largest`` match nothing; for sequence numbers that is a client error, which
  ``sequence_numbers_valid`` detects so the session can answer BAD.
* ``$`` (RFC 5182 SEARCHRES) is the saved search result: the session passes it as ``saved`` in
  the same number space (UIDs or sequence numbers) as the set.

Ranges are never expanded into numbers here, so ``1:4294967295`` costs nothing.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from typing import Final

from postfach.imap.commands import SequenceSet

__all__ = [
    "MAX_NUMBER",
    "Ranges",
    "contains",
    "count",
    "format_ranges",
    "format_sequence_set",
    "intersect_sorted",
    "numbers",
    "parse_sequence_set",
    "ranges_of",
    "resolve",
    "sequence_numbers_valid",
    "unparse",
]

#: nz-number is a 32-bit unsigned number (RFC 9051 §9).
MAX_NUMBER: Final = 4294967295

#: Sorted, merged, inclusive ranges: ``[(1, 3), (5, 5)]`` is 1:3,5.
Ranges = list[tuple[int, int]]


def _merge(pairs: Iterable[tuple[int, int]]) -> Ranges:
    out: Ranges = []
    for lo, hi in sorted(pairs):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def ranges_of(values: Iterable[int]) -> Ranges:
    """Sorted, merged ranges covering exactly ``values`` (any order, duplicates allowed)."""
    out: Ranges = []
    for v in sorted(set(values)):
        if out and v == out[-1][1] + 1:
            out[-1] = (out[-1][0], v)
        else:
            out.append((v, v))
    return out


def resolve(seqset: SequenceSet, largest: int, saved: Iterable[int] | None = None) -> Ranges:
    """Evaluate ``seqset`` against a mailbox whose largest number in use is ``largest``.

    ``largest`` is the message count (sequence numbers) or the highest UID (UIDs); 0 for an
    empty mailbox. ``saved`` is the ``$`` result; ``ValueError`` if the set uses ``$`` and
    ``saved`` is None.
    """
    pairs: list[tuple[int, int]] = []
    for first, last in seqset.ranges:
        if largest <= 0:
            continue
        a = largest if first is None else first
        b = largest if last is None else last
        lo, hi = (a, b) if a <= b else (b, a)
        lo, hi = max(lo, 1), min(hi, largest)
        if lo <= hi:
            pairs.append((lo, hi))
    if seqset.saved:
        if saved is None:
            raise ValueError("the sequence set uses $ but there is no saved result")
        pairs.extend((v, v) for v in saved if 1 <= v <= largest)
    return _merge(pairs)


def sequence_numbers_valid(seqset: SequenceSet, count: int) -> bool:
    """False when a message sequence-number set names a message that does not exist.

    Every explicit number must be at most ``count``, and ``*`` needs a non-empty mailbox
    (RFC 9051 §9, "seq-number": "*" is the largest number in use). ``$`` is not checked.
    """
    for first, last in seqset.ranges:
        for n in (first, last):
            if (n is None and count <= 0) or (n is not None and n > count):
                return False
    return True


def contains(ranges: Ranges, n: int) -> bool:
    """Whether ``n`` lies in the resolved ``ranges`` (binary search)."""
    i = bisect.bisect_right(ranges, (n, MAX_NUMBER + 1)) - 1
    return i >= 0 and ranges[i][0] <= n <= ranges[i][1]


def count(ranges: Ranges) -> int:
    return sum(hi - lo + 1 for lo, hi in ranges)


def numbers(ranges: Ranges) -> Iterator[int]:
    """The numbers in the resolved ``ranges``, ascending."""
    for lo, hi in ranges:
        yield from range(lo, hi + 1)


def intersect_sorted(ranges: Ranges, values: Sequence[int]) -> list[int]:
    """The members of the ascending ``values`` (e.g. a mailbox's UIDs) that lie in ``ranges``.

    Costs O(len(ranges) * log(len(values)) + len(result)).
    """
    out: list[int] = []
    for lo, hi in ranges:
        i = bisect.bisect_left(values, lo)
        j = bisect.bisect_right(values, hi, lo=i)
        out.extend(values[i:j])
    return out


# ---- text form ---------------------------------------------------------------------------------


def _number(text: str) -> int | None:
    if text == "*":
        return None
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"invalid sequence number {text!r}")
    n = int(text) if len(text) <= 20 else MAX_NUMBER + 1
    if not 1 <= n <= MAX_NUMBER:
        raise ValueError(f"sequence number {text} out of range (1..{MAX_NUMBER})")
    return n


def parse_sequence_set(
    text: str, *, allow_star: bool = True, allow_saved: bool = True
) -> SequenceSet:
    """Parse ``1,3:5,7:*`` or ``$`` (RFC 9051 §9 sequence-set, RFC 5182); ``ValueError`` if bad.

    ``$`` may appear as any element. ``allow_star=False`` for sets where ``*`` is not allowed
    (RFC 7162 known-uids).
    """
    if not text:
        raise ValueError("empty sequence set")
    ranges: list[tuple[int | None, int | None]] = []
    saved = False
    for part in text.split(","):
        if part == "$":
            if not allow_saved:
                raise ValueError("$ is not allowed here")
            saved = True
            continue
        first, colon, last = part.partition(":")
        a = _number(first)
        b = _number(last) if colon else a
        if not allow_star and (a is None or b is None):
            raise ValueError("* is not allowed here")
        ranges.append((a, b))
    return SequenceSet(tuple(ranges), saved)


def unparse(seqset: SequenceSet) -> str:
    """The set as written (``$`` last); ``parse_sequence_set(unparse(s)) == s``."""
    parts: list[str] = []
    for a, b in seqset.ranges:
        sa = "*" if a is None else str(a)
        parts.append(sa if a == b else f"{sa}:{'*' if b is None else b}")
    if seqset.saved:
        parts.append("$")
    return ",".join(parts)


def format_ranges(ranges: Iterable[tuple[int, int]]) -> str:
    """``[(1, 3), (5, 5)]`` → ``"1:3,5"``."""
    return ",".join(str(lo) if lo == hi else f"{lo}:{hi}" for lo, hi in ranges)


def format_sequence_set(values: Iterable[int]) -> str:
    """Compress numbers into the shortest range form: ``[1, 2, 3, 5]`` → ``"1:3,5"``.

    For UIDPLUS COPYUID/APPENDUID (RFC 4315), ESEARCH ALL (RFC 4731) and VANISHED (RFC 7162).
    Order and duplicates do not matter. ``ValueError`` when empty (an empty set has no wire
    form) or when a number is not an nz-number.
    """
    ranges = ranges_of(values)
    if not ranges:
        raise ValueError("an empty sequence set has no wire form")
    if ranges[0][0] < 1 or ranges[-1][1] > MAX_NUMBER:
        raise ValueError("sequence numbers must be in 1..4294967295")
    return format_ranges(ranges)
