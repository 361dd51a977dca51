"""SEARCH: evaluate a `SearchKey` tree against messages, and format the results (pure core).

A search key tree is compiled once per command into nested closures (`compile_key`), then run
over every message; AND children are reordered so that keys answered from `MessageMeta` alone
(flags, dates, sizes, UIDs, MODSEQ) run before keys that need the stored structure (ENVELOPE) and
those before keys that need the message octets. Most searches therefore never load a body.

Rules, with the RFC they come from:

- Strings match as case-insensitive substrings (RFC 9051 §6.4.4), compared after Unicode case
  folding. Header values are RFC 2047 decoded; bodies are transfer and charset decoded
  (`postfach.mime.structure.search_text`).
- FROM, TO, CC, BCC, SUBJECT are answered from the ENVELOPE stored at delivery (no message
  octets are read): SUBJECT against the decoded subject, an address field against each address
  written as ``Decoded Name <mailbox@host>`` (and a group's name). HEADER reads the header and
  matches the decoded, unfolded value of every field of that name; an empty string matches every
  message that has the field (RFC 9051 §6.4.4).
- BODY and TEXT use the store's full-text index when the context has one (``text_index``) and it
  answers; otherwise they scan ``search_text`` (TEXT: header text and body text).
- BEFORE, ON, SINCE compare the date of the internal date, taken in UTC (the store keeps Unix
  seconds without a zone), disregarding the time (RFC 9051 §6.4.4). SENTBEFORE, SENTON,
  SENTSINCE compare the date of the Date: header in the header's own zone; a message without a
  parseable Date: uses its internal date instead (as Dovecot does). SAVEDBEFORE, SAVEDON,
  SAVEDSINCE use the save date in UTC (RFC 8514 §5); SAVEDATESUPPORTED matches every message.
- OLDER n / YOUNGER n (RFC 5032 §3): the internal date is more than n seconds before ``now`` /
  at most n seconds before it (so OLDER n is exactly NOT YOUNGER n).
- MODSEQ n matches messages whose MODSEQ is at least n (RFC 7162 §3.1.5); the entry name and
  type, if the parser kept them, are ignored (flags are not tracked separately).
- RECENT, NEW (RECENT UNSEEN) and OLD (NOT RECENT) use ``SearchContext.recent``, the messages
  that are \\Recent in the session (RFC 3501 §2.3.2, §6.4.4). IMAP4rev2 has no \\Recent (RFC 9051
  §2.3.2): there it is empty, so RECENT and NEW match nothing and OLD everything.
- KEYWORD / UNKEYWORD compare flag names case-insensitively (RFC 9051 §2.3.2); a system flag
  name given there tests that flag.
- A bare sequence set (``SEQSET``) is sequence numbers, ``UID`` is UIDs, ``*`` the largest number
  of each; ``$`` is the saved result (RFC 5182 §2.1), kept as UIDs.
- EMAILID / THREADID (RFC 8474 §6) compare with the ids FETCH shows (`postfach.imap.fetch`).

Responses: ``* SEARCH`` (RFC 9051 §7.3.4 / RFC 3501 §7.2.5) with ``(MODSEQ n)`` when the criteria
used MODSEQ (RFC 7162 §3.1.6), and ``* ESEARCH`` (RFC 4731 §3.1, RFC 9051 §7.3.4), whose SAVE
option is RFC 5182 §2.1.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_tz
from typing import Final

from postfach.imap.commands import SearchKey, SequenceSet
from postfach.imap.fetch import email_id, thread_id
from postfach.imap.response import quoted
from postfach.imap.sequence import Ranges, contains, format_sequence_set, resolve
from postfach.mime.stored import Parsed
from postfach.mime.structure import Address, decode_words, header_fields, search_text
from postfach.store.api import Flag, MessageMeta

__all__ = [
    "Predicate",
    "SearchContext",
    "UnknownSearchKey",
    "compile_key",
    "esearch_response",
    "flag_predicate",
    "index_narrowing",
    "matches",
    "saved_result",
    "search",
    "search_response",
    "uses_modseq",
]

Predicate = Callable[[MessageMeta, int], bool]
"""A compiled search key: (message, sequence number) -> matches."""


class UnknownSearchKey(ValueError):
    """A key name this module does not know (the parser should never produce one): BAD."""


@dataclass(slots=True)
class SearchContext:
    """What a search needs besides the messages.

    ``now``: Unix seconds (OLDER/YOUNGER). ``max_seq`` / ``max_uid``: the values of ``*``.
    ``saved``: the ``$`` result, as UIDs (RFC 5182). ``recent``: the UIDs that are \\Recent in
    this session (RFC 3501 §2.3.2; empty for IMAP4rev2). ``parsed`` / ``data``: load a message's
    stored structure / octets; only called for keys that need them (ENVELOPE keys, HEADER, BODY,
    TEXT, SENT*, THREADID). ``text_index(key, string)``: the store's full-text index for "BODY"
    or "TEXT"; returns the UIDs (in the selected mailbox) that match, or None when it cannot
    answer (then the bodies are scanned).
    """

    now: int
    max_seq: int
    max_uid: int
    saved: Collection[int] = ()
    recent: Collection[int] = frozenset()
    parsed: Callable[[MessageMeta], Parsed] | None = None
    data: Callable[[MessageMeta], bytes] | None = None
    text_index: Callable[[str, str], set[int] | None] | None = None
    # per-search caches
    _index_hits: dict[tuple[str, str], set[int] | None] = field(
        default_factory=dict, init=False, repr=False
    )
    _compiled: dict[int, tuple[SearchKey, Predicate]] = field(
        default_factory=dict, init=False, repr=False
    )
    _msg_id: int = field(default=-1, init=False, repr=False)
    _parsed: Parsed | None = field(default=None, init=False, repr=False)
    _data: bytes | None = field(default=None, init=False, repr=False)
    _text: tuple[str, str] | None = field(default=None, init=False, repr=False)

    def _switch(self, msg: MessageMeta) -> None:
        if msg.id != self._msg_id:
            self._msg_id = msg.id
            self._parsed = None
            self._data = None
            self._text = None

    def message_parsed(self, msg: MessageMeta) -> Parsed:
        self._switch(msg)
        if self._parsed is None:
            if self.parsed is None:
                raise ValueError("this search needs the message structure, and none was given")
            self._parsed = self.parsed(msg)
        return self._parsed

    def message_data(self, msg: MessageMeta) -> bytes:
        self._switch(msg)
        if self._data is None:
            if self.data is None:
                raise ValueError("this search needs the message octets, and none were given")
            self._data = self.data(msg)
        return self._data

    def message_text(self, msg: MessageMeta) -> tuple[str, str]:
        """(header text, body text), case folded."""
        self._switch(msg)
        if self._text is None:
            headers, body = search_text(self.message_data(msg), self.message_parsed(msg).part)
            self._text = (headers.casefold(), body.casefold())
        return self._text

    def index_hits(self, key: str, needle: str) -> set[int] | None:
        if self.text_index is None:
            return None
        k = (key, needle)
        if k not in self._index_hits:
            self._index_hits[k] = self.text_index(key, needle)
        return self._index_hits[k]


# --------------------------------------------------------------------------------------------
# Compilation
# --------------------------------------------------------------------------------------------

_FLAG_KEYS: Final = {
    "ANSWERED": (Flag.ANSWERED, True),
    "DELETED": (Flag.DELETED, True),
    "DRAFT": (Flag.DRAFT, True),
    "FLAGGED": (Flag.FLAGGED, True),
    "SEEN": (Flag.SEEN, True),
    "UNANSWERED": (Flag.ANSWERED, False),
    "UNDELETED": (Flag.DELETED, False),
    "UNDRAFT": (Flag.DRAFT, False),
    "UNFLAGGED": (Flag.FLAGGED, False),
    "UNSEEN": (Flag.SEEN, False),
}
_SYSTEM_FLAGS: Final = {
    "\\seen": Flag.SEEN,
    "\\answered": Flag.ANSWERED,
    "\\flagged": Flag.FLAGGED,
    "\\deleted": Flag.DELETED,
    "\\draft": Flag.DRAFT,
}
_ENVELOPE_KEYS: Final = frozenset({"FROM", "TO", "CC", "BCC", "SUBJECT"})
_EPOCH: Final = dt.date(1970, 1, 1).toordinal()
_DAY: Final = 86400

# Cost classes for ordering AND children: meta only, stored structure, message octets.
_CHEAP, _STRUCTURE, _OCTETS = 0, 1, 2


def _cost(key: SearchKey) -> int:
    name = key.name
    if name in ("AND", "OR", "NOT"):
        return max((_cost(k) for k in key.keys), default=_CHEAP)
    if name in _ENVELOPE_KEYS or name.startswith("SENT"):
        return _STRUCTURE
    if name in ("HEADER", "BODY", "TEXT", "THREADID"):
        return _OCTETS
    return _CHEAP


def uses_modseq(key: SearchKey) -> bool:
    """True if the criteria use MODSEQ: the response then carries MODSEQ (RFC 7162 §3.1.6)."""
    return key.name == "MODSEQ" or any(uses_modseq(k) for k in key.keys)


def _day(value: object) -> int:
    """A search date as days since 1970-01-01."""
    if isinstance(value, dt.date):
        return value.toordinal() - _EPOCH
    return dt.date.fromisoformat(str(value)).toordinal() - _EPOCH


def _int(value: object) -> int:
    if isinstance(value, tuple):  # MODSEQ with entry name and type: the number comes last
        value = value[-1]
    if isinstance(value, int):
        return value
    return int(str(value))


def _sent_day(msg: MessageMeta, ctx: SearchContext) -> int:
    """The day of the Date: header in its own zone; the internal date's day if unparseable."""
    date = ctx.message_parsed(msg).envelope.date
    if date:
        try:
            parts = parsedate_tz(date)
            if parts is not None:
                return dt.date(parts[0], parts[1], parts[2]).toordinal() - _EPOCH
        except (ValueError, TypeError, IndexError, OverflowError):
            pass
    return msg.internal_date // _DAY


def _address_text(addresses: Iterable[Address]) -> str:
    out: list[str] = []
    for a in addresses:
        if a.host is None:  # group start (name in mailbox) or group end
            if a.mailbox:
                out.append(decode_words(a.mailbox))
            continue
        spec = f"<{a.mailbox}@{a.host}>"
        out.append(f"{decode_words(a.name)} {spec}" if a.name else spec)
    return ", ".join(out)


def _envelope_text(msg: MessageMeta, ctx: SearchContext, name: str) -> str:
    env = ctx.message_parsed(msg).envelope
    if name == "SUBJECT":
        return decode_words(env.subject or "")
    addresses = {"FROM": env.from_, "TO": env.to, "CC": env.cc, "BCC": env.bcc}[name]
    return _address_text(addresses)


def _header_values(msg: MessageMeta, ctx: SearchContext, field_name: str) -> list[str]:
    """Decoded, unfolded values of every field named ``field_name`` in the message header."""
    root = ctx.message_parsed(msg).part
    raw = header_fields(
        ctx.message_data(msg), root.header_start, root.header_end, [field_name], False
    )
    values: list[str] = []
    for line in raw.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            if values:
                values[-1] += line.decode("utf-8", "surrogateescape")
            continue
        values.append(line.partition(b":")[2].decode("utf-8", "surrogateescape"))
    return [decode_words(v.strip(" \t")) for v in values]


def _seq_ranges(seqset: SequenceSet, largest: int) -> Ranges:
    return resolve(seqset, largest, ())  # "$" is handled separately (as UIDs)


def compile_key(key: SearchKey, ctx: SearchContext) -> Predicate:
    """Compile a search key into a predicate; raises `UnknownSearchKey` for an unknown name."""
    name = key.name
    value = key.value

    if name == "AND":
        preds = [compile_key(k, ctx) for k in sorted(key.keys, key=_cost)]
        if len(preds) == 1:
            return preds[0]
        return lambda m, s: all(p(m, s) for p in preds)
    if name == "OR":
        a, b = (compile_key(k, ctx) for k in sorted(key.keys, key=_cost))
        return lambda m, s: a(m, s) or b(m, s)
    if name == "NOT":
        inner = compile_key(key.keys[0], ctx)
        return lambda m, s: not inner(m, s)
    if name in ("ALL", "SAVEDATESUPPORTED"):
        return lambda m, s: True
    recent = ctx.recent
    if name == "RECENT":  # RFC 3501 §6.4.4
        return lambda m, s: m.uid in recent
    if name == "OLD":
        return lambda m, s: m.uid not in recent
    if name == "NEW":  # RECENT UNSEEN
        return lambda m, s: m.uid in recent and not m.flags & Flag.SEEN
    if name in _FLAG_KEYS:
        bit, want = _FLAG_KEYS[name]
        return lambda m, s: bool(m.flags & bit) == want
    if name in ("KEYWORD", "UNKEYWORD"):
        word = str(value).lower()
        want = name == "KEYWORD"
        system = _SYSTEM_FLAGS.get(word)
        if system is not None:
            return lambda m, s: bool(m.flags & system) == want
        return lambda m, s: any(k.lower() == word for k in m.keywords) == want
    if name == "LARGER":
        n = _int(value)
        return lambda m, s: m.size > n
    if name == "SMALLER":
        n = _int(value)
        return lambda m, s: m.size < n
    if name in ("BEFORE", "ON", "SINCE", "SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"):
        day = _day(value)
        by_save_date = name.startswith("SAVED")
        op = name.removeprefix("SAVED")

        def stamp(m: MessageMeta) -> int:
            return (m.save_date if by_save_date else m.internal_date) // _DAY

        if op == "BEFORE":
            return lambda m, s: stamp(m) < day
        if op == "ON":
            return lambda m, s: stamp(m) == day
        return lambda m, s: stamp(m) >= day
    if name in ("SENTBEFORE", "SENTON", "SENTSINCE"):
        day = _day(value)
        if name == "SENTBEFORE":
            return lambda m, s: _sent_day(m, ctx) < day
        if name == "SENTON":
            return lambda m, s: _sent_day(m, ctx) == day
        return lambda m, s: _sent_day(m, ctx) >= day
    if name == "OLDER":
        limit = ctx.now - _int(value)
        return lambda m, s: m.internal_date < limit
    if name == "YOUNGER":
        limit = ctx.now - _int(value)
        return lambda m, s: m.internal_date >= limit
    if name == "MODSEQ":
        n = _int(value)
        return lambda m, s: m.modseq >= n
    if name in ("UID", "SEQSET"):
        seqset = value if isinstance(value, SequenceSet) else SequenceSet()
        by_uid = name == "UID"
        ranges = _seq_ranges(seqset, ctx.max_uid if by_uid else ctx.max_seq)
        dollar = frozenset(ctx.saved) if seqset.saved else frozenset()
        if by_uid:
            return lambda m, s: contains(ranges, m.uid) or m.uid in dollar
        return lambda m, s: contains(ranges, s) or m.uid in dollar
    if name in _ENVELOPE_KEYS:
        needle = str(value).casefold()
        return lambda m, s: needle in _envelope_text(m, ctx, name).casefold()
    if name == "HEADER":
        field_name, text = value if isinstance(value, tuple) else (str(value), "")
        fname = str(field_name)
        needle = str(text).casefold()
        return lambda m, s: any(needle in v.casefold() for v in _header_values(m, ctx, fname))
    if name in ("BODY", "TEXT"):
        needle = str(value).casefold()
        text_key = name

        def text_match(m: MessageMeta, s: int) -> bool:
            hits = ctx.index_hits(text_key, str(value))
            if hits is not None:
                return m.uid in hits
            headers, body = ctx.message_text(m)
            return needle in body or (text_key == "TEXT" and needle in headers)

        return text_match
    if name == "EMAILID":
        wanted = str(value)
        return lambda m, s: email_id(m) == wanted
    if name == "THREADID":
        wanted = str(value)
        return lambda m, s: thread_id(m, ctx.message_parsed(m), ctx.message_data(m)) == wanted
    raise UnknownSearchKey(f"unknown search key {name!r}")


def index_narrowing(key: SearchKey) -> tuple[str, str] | None:
    """A BODY or TEXT key that every match of ``key`` must satisfy (the key itself, or one of
    the keys of a top-level AND), as (name, string) for ``SearchContext.text_index``: the
    session then looks only at the messages the index names. None when there is none (OR
    and NOT cannot narrow)."""
    if key.name in ("BODY", "TEXT"):
        return key.name, str(key.value)
    if key.name == "AND":
        for k in key.keys:
            found = index_narrowing(k)
            if found is not None:
                return found
    return None


def flag_predicate(key: SearchKey) -> Callable[[int], bool] | None:
    """For criteria made only of system-flag keys (SEEN, UNSEEN, DELETED, ...), ALL, AND, OR
    and NOT: a predicate on a message's flags as an int, so that the session can scan the
    flags of the whole mailbox without building a `MessageMeta` per message (SEARCH UNSEEN);
    None for any other criteria."""
    name = key.name
    if name in _FLAG_KEYS:
        bit, want = _FLAG_KEYS[name]
        mask = int(bit)
        return (lambda f: f & mask != 0) if want else (lambda f: f & mask == 0)
    if name == "ALL":
        return lambda f: True
    subs = [flag_predicate(k) for k in key.keys]
    if not subs or any(p is None for p in subs):
        return None
    preds = [p for p in subs if p is not None]
    if name == "AND":
        if len(preds) == 1:
            return preds[0]
        return lambda f: all(p(f) for p in preds)
    if name == "OR" and len(preds) == 2:
        a, b = preds
        return lambda f: a(f) or b(f)
    if name == "NOT" and len(preds) == 1:
        inner = preds[0]
        return lambda f: not inner(f)
    return None


def matches(key: SearchKey, msg: MessageMeta, seq: int, ctx: SearchContext) -> bool:
    """Whether one message matches; the compiled key is cached in ``ctx`` (by identity)."""
    entry = ctx._compiled.get(id(key))
    if entry is None or entry[0] is not key:
        entry = (key, compile_key(key, ctx))
        ctx._compiled[id(key)] = entry
    return entry[1](msg, seq)


def search(
    key: SearchKey, messages: Iterable[tuple[int, MessageMeta]], ctx: SearchContext
) -> list[tuple[int, MessageMeta]]:
    """The (sequence number, message) pairs that match, in the order given."""
    pred = compile_key(key, ctx)
    return [(seq, m) for seq, m in messages if pred(m, seq)]


# --------------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------------


def search_response(numbers: Sequence[int], modseq: int | None = None) -> bytes:
    """``* SEARCH 2 5 9`` (RFC 9051 §7.3.4 for IMAP4rev1 clients; RFC 3501 §7.2.5).

    ``modseq``: when the criteria used MODSEQ, the highest MODSEQ of the matching messages;
    omitted when nothing matched (RFC 7162 §3.1.6).
    """
    out = b"* SEARCH"
    if numbers:
        out += b" " + b" ".join(b"%d" % n for n in numbers)
        if modseq is not None:
            out += b" (MODSEQ %d)" % modseq
    return out + b"\r\n"


def _minmax_only(opts: Collection[str]) -> bool:
    return bool({"MIN", "MAX"} & set(opts)) and not {"ALL", "COUNT"} & set(opts)


def saved_result(uids: Sequence[int], return_opts: Collection[str]) -> list[int]:
    """What SEARCH RETURN (SAVE ...) stores as ``$`` (RFC 5182 §2.1): all matches, unless MIN
    and/or MAX come without ALL and COUNT, then only those. ``uids`` ascending."""
    if not uids:
        return []
    opts = {o.upper() for o in return_opts}
    if _minmax_only(opts):
        out = []
        if "MIN" in opts:
            out.append(uids[0])
        if "MAX" in opts and uids[-1] not in out:
            out.append(uids[-1])
        return out
    return list(uids)


def esearch_response(
    tag: str,
    uid: bool,
    results: Sequence[int],
    return_opts: Collection[str],
    modseqs: Sequence[int] | None = None,
) -> bytes | None:
    """``* ESEARCH (TAG "t") [UID] [MIN n] [MAX n] [ALL set] [COUNT n] [MODSEQ m]`` (RFC 4731).

    ``results``: the matching numbers (UIDs for UID SEARCH), ascending. ``return_opts``: upper
    case; empty means ALL (RFC 4731 §3.1). ``modseqs``: when the criteria used MODSEQ, the MODSEQ
    of each result (same order): the response then reports the highest of the messages it
    returns; of the MIN/MAX ones only when neither ALL nor COUNT was asked for (RFC 7162
    §3.1.6 / RFC 4731 §3.2). MIN, MAX and ALL are left out when nothing matched (RFC 4731 §3.1).
    Returns None for RETURN (SAVE) alone, which has no untagged response (RFC 5182 §2.1).
    """
    opts = [o.upper() for o in return_opts] or ["ALL"]
    if set(opts) == {"SAVE"}:
        return None
    out = [b"* ESEARCH (TAG " + quoted(tag) + b")"]
    if uid:
        out.append(b"UID")
    if results:
        if "MIN" in opts:
            out.append(b"MIN %d" % results[0])
        if "MAX" in opts:
            out.append(b"MAX %d" % results[-1])
        if "ALL" in opts:
            out.append(b"ALL " + format_sequence_set(results).encode())
    if "COUNT" in opts:
        out.append(b"COUNT %d" % len(results))
    if modseqs and results:
        if _minmax_only(opts):
            picked = []
            if "MIN" in opts:
                picked.append(modseqs[0])
            if "MAX" in opts:
                picked.append(modseqs[-1])
            out.append(b"MODSEQ %d" % max(picked))
        else:
            out.append(b"MODSEQ %d" % max(modseqs))
    return b" ".join(out) + b"\r\n"
