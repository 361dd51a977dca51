"""SEARCH evaluation and SEARCH / ESEARCH responses (pure, no event loop).

Table tests per key, laziness (cheap keys never load a message), and hypothesis properties over
random key trees: NOT is the complement, OR commutes and is the union, AND the intersection,
OLDER n is NOT YOUNGER n, UID and sequence sets select exactly their members.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postfach.imap.commands import SearchKey, SequenceSet
from postfach.imap.fetch import email_id, thread_id
from postfach.imap.search import (
    SearchContext,
    UnknownSearchKey,
    compile_key,
    esearch_response,
    flag_predicate,
    index_narrowing,
    matches,
    saved_result,
    search,
    search_response,
    uses_modseq,
)
from postfach.imap.sequence import parse_sequence_set
from postfach.mime.stored import Parsed, load_parsed, parse_for_storage
from postfach.mime.structure import normalize_crlf
from postfach.store.api import Flag, MessageMeta


def msg(text: str) -> bytes:
    return normalize_crlf(textwrap.dedent(text).lstrip("\n").encode())


def unix(y: int, m: int, d: int, hh: int = 0, mm: int = 0) -> int:
    return int(dt.datetime(y, m, d, hh, mm, tzinfo=dt.UTC).timestamp())


BODIES = [
    msg(
        """
        Date: Tue, 03 Jan 2023 23:30:00 -0500
        From: =?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <juergen@example.de>
        To: Alice <alice@example.org>, undisclosed-recipients:;
        Cc: carol@example.org
        Subject: =?utf-8?b?R3LDvMOfZQ==?= from Berlin
        Message-ID: <one@example.de>
        X-Tag: Alpha
         Beta
        Content-Type: text/plain; charset=utf-8
        Content-Transfer-Encoding: quoted-printable

        Sch=C3=B6ne Gr=C3=BC=C3=9Fe aus dem Norden.
        """
    ),
    msg(
        """
        Date: 4 Jan 2023 01:00:00 +0000
        From: Bob <bob@example.com>
        To: juergen@example.de
        Bcc: secret@example.net
        Subject: Re: Gruesse
        Message-ID: <two@example.com>
        In-Reply-To: <one@example.de>
        X-Tag:
        MIME-Version: 1.0
        Content-Type: multipart/alternative; boundary=zz

        --zz
        Content-Type: text/plain
        Content-Transfer-Encoding: base64

        VGhlIHF1aWNrIGJyb3duIGZveA==
        --zz
        Content-Type: text/html

        <p>The <b>quick</b> brown fox</p>
        --zz--
        """
    ),
    msg(
        """
        From: nobody@example.org
        Subject: no date here

        Plain body with NEEDLE inside.
        """
    ),
]
PARSED = [load_parsed(parse_for_storage(b)) for b in BODIES]
BLOBS = [hashlib.sha256(b).hexdigest() for b in BODIES]

NOW = unix(2023, 1, 10)


def make(
    uid: int,
    body: int = 0,
    flags: Flag = Flag.NONE,
    keywords: tuple[str, ...] = (),
    modseq: int = 1,
    internal: int = unix(2023, 1, 4, 12),
    saved: int | None = None,
) -> MessageMeta:
    return MessageMeta(
        id=uid * 10 + body,
        mailbox_id=1,
        uid=uid,
        modseq=modseq,
        flags=flags,
        keywords=keywords,
        internal_date=internal,
        save_date=internal if saved is None else saved,
        size=len(BODIES[body]),
        blob=BLOBS[body],
    )


def body_of(m: MessageMeta) -> int:
    return m.id % 10


class Loads:
    def __init__(self) -> None:
        self.parsed = 0
        self.data = 0

    def get_parsed(self, m: MessageMeta) -> Parsed:
        self.parsed += 1
        return PARSED[body_of(m)]

    def get_data(self, m: MessageMeta) -> bytes:
        self.data += 1
        return BODIES[body_of(m)]


def ctx_for(
    msgs: list[MessageMeta], loads: Loads | None = None, saved: tuple[int, ...] = ()
) -> SearchContext:
    loads = loads or Loads()
    return SearchContext(
        now=NOW,
        max_seq=len(msgs),
        max_uid=max((m.uid for m in msgs), default=0),
        saved=saved,
        parsed=loads.get_parsed,
        data=loads.get_data,
    )


def k(name: str, value: object = None, *keys: SearchKey) -> SearchKey:
    return SearchKey(name, value, keys)


def hits(key: SearchKey, msgs: list[MessageMeta], ctx: SearchContext | None = None) -> list[int]:
    ctx = ctx or ctx_for(msgs)
    return [m.uid for _, m in search(key, list(enumerate(msgs, 1)), ctx)]


MSGS = [
    make(1, 0, Flag.SEEN | Flag.ANSWERED, ("$Forwarded",), 5, unix(2023, 1, 3, 23, 59)),
    make(2, 1, Flag.FLAGGED, ("Work",), 9, unix(2023, 1, 4, 0, 0), saved=unix(2023, 1, 9)),
    make(3, 2, Flag.DELETED | Flag.DRAFT, (), 12, unix(2023, 1, 9, 23)),
]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (k("ALL"), [1, 2, 3]),
        (k("SEEN"), [1]),
        (k("UNSEEN"), [2, 3]),
        (k("ANSWERED"), [1]),
        (k("UNANSWERED"), [2, 3]),
        (k("FLAGGED"), [2]),
        (k("UNFLAGGED"), [1, 3]),
        (k("DELETED"), [3]),
        (k("UNDELETED"), [1, 2]),
        (k("DRAFT"), [3]),
        (k("UNDRAFT"), [1, 2]),
        (k("KEYWORD", "$forwarded"), [1]),
        (k("KEYWORD", "work"), [2]),
        (k("KEYWORD", "\\Seen"), [1]),
        (k("UNKEYWORD", "WORK"), [1, 3]),
        (k("NEW"), []),
        (k("RECENT"), []),
        (k("OLD"), [1, 2, 3]),
        (k("LARGER", len(BODIES[0])), [2]),  # sizes: 414, 449, 83
        (k("LARGER", len(BODIES[0]) - 1), [1, 2]),
        (k("SMALLER", len(BODIES[0])), [3]),
        (k("SMALLER", len(BODIES[0]) + 1), [1, 3]),
        # internal dates, in UTC
        (k("BEFORE", "2023-01-04"), [1]),
        (k("ON", "2023-01-04"), [2]),
        (k("SINCE", "2023-01-04"), [2, 3]),
        (k("SINCE", dt.date(2023, 1, 9)), [3]),
        # Date: header in its own zone; message 3 has none and uses its internal date
        (k("SENTON", "2023-01-03"), [1]),
        (k("SENTON", "2023-01-04"), [2]),
        (k("SENTBEFORE", "2023-01-04"), [1]),
        (k("SENTSINCE", "2023-01-04"), [2, 3]),
        (k("SENTON", "2023-01-09"), [3]),
        (k("SAVEDON", "2023-01-09"), [2, 3]),
        (k("SAVEDBEFORE", "2023-01-04"), [1]),
        (k("SAVEDSINCE", "2023-01-10"), []),
        (k("SAVEDATESUPPORTED"), [1, 2, 3]),
        (k("OLDER", NOW - unix(2023, 1, 4, 0, 0)), [1]),
        (k("YOUNGER", NOW - unix(2023, 1, 4, 0, 0)), [2, 3]),
        (k("MODSEQ", 9), [2, 3]),
        (k("MODSEQ", ("/flags/\\draft", "all", 12)), [3]),
        (k("UID", parse_sequence_set("2:*")), [2, 3]),
        (k("UID", parse_sequence_set("9:*")), [3]),
        (k("UID", parse_sequence_set("1,3")), [1, 3]),
        (k("SEQSET", parse_sequence_set("*")), [3]),
        (k("SEQSET", parse_sequence_set("2")), [2]),
        (k("SEQSET", SequenceSet((), saved=True)), [2]),  # $ = UID 2 below
        (k("UID", SequenceSet(((1, 1),), saved=True)), [1, 2]),
        # envelope keys (decoded, case-insensitive substring)
        (k("FROM", "jürgen"), [1]),
        (k("FROM", "MÜLLER"), [1]),
        (k("FROM", "@example.com"), [2]),
        (k("FROM", "<bob@"), [2]),
        (k("TO", "alice"), [1]),
        (k("TO", "undisclosed"), [1]),
        (k("TO", "juergen@"), [2]),
        (k("CC", "carol"), [1]),
        (k("BCC", "secret"), [2]),
        (k("SUBJECT", "grüße"), [1]),
        (k("SUBJECT", "re: gr"), [2]),
        (k("SUBJECT", ""), [1, 2, 3]),
        # HEADER: decoded, unfolded; the empty string tests for the field
        (k("HEADER", ("X-Tag", "alpha beta")), [1]),
        (k("HEADER", ("x-tag", "")), [1, 2]),
        (k("HEADER", ("In-Reply-To", "one@")), [2]),
        (k("HEADER", ("Subject", "GRÜSSE")), [1]),  # casefold: ß == ss
        # BODY / TEXT: decoded text
        (k("BODY", "schöne"), [1]),
        (k("BODY", "quick brown"), [2]),
        (k("BODY", "needle"), [3]),
        (k("BODY", "berlin"), []),
        (k("TEXT", "berlin"), [1]),
        (k("TEXT", "needle"), [3]),
        # boolean structure
        (k("NOT", None, k("SEEN")), [2, 3]),
        (k("OR", None, k("SEEN"), k("DELETED")), [1, 3]),
        (k("AND", None, k("UNSEEN"), k("BODY", "fox")), [2]),
        (k("AND", None, k("NOT", None, k("OR", None, k("FLAGGED"), k("DRAFT")))), [1]),
        # ids
        (k("EMAILID", "M" + BLOBS[1][:24]), [2]),
    ],
)
def test_keys(key: SearchKey, expected: list[int]) -> None:
    assert hits(key, MSGS, ctx_for(MSGS, saved=(2,))) == expected


def test_recent_new_old_follow_the_session_recent_set() -> None:
    """RFC 3501 §6.4.4: RECENT, NEW = RECENT UNSEEN, OLD = NOT RECENT (imaptest search-flags)."""
    ctx = ctx_for(MSGS)
    ctx.recent = frozenset({1, 2})
    assert hits(k("RECENT"), MSGS, ctx) == [1, 2]
    assert hits(k("NEW"), MSGS, ctx) == [2]  # 1 is \\Seen
    assert hits(k("OLD"), MSGS, ctx) == [3]
    assert hits(k("NOT", None, k("OLD")), MSGS, ctx) == [1, 2]


def test_threadid() -> None:
    tid = thread_id(MSGS[0], PARSED[0], BODIES[0])
    assert hits(k("THREADID", tid), MSGS) == [1, 2]  # 2 replies to 1
    assert email_id(MSGS[0]).startswith("M")


def test_cheap_keys_load_nothing() -> None:
    loads = Loads()
    key = k(
        "AND",
        None,
        k("OR", None, k("SEEN"), k("KEYWORD", "Work")),
        k("SINCE", "2023-01-01"),
        k("UID", parse_sequence_set("1:*")),
        k("NOT", None, k("LARGER", 10_000_000)),
        k("MODSEQ", 1),
    )
    assert hits(key, MSGS, ctx_for(MSGS, loads)) == [1, 2]
    assert loads.parsed == 0 and loads.data == 0


def test_envelope_keys_need_no_octets_and_cheap_keys_go_first() -> None:
    loads = Loads()
    key = k("AND", None, k("SUBJECT", "re"), k("FLAGGED"))  # SUBJECT written first
    assert hits(key, MSGS, ctx_for(MSGS, loads)) == [2]
    assert loads.data == 0 and loads.parsed == 1  # only message 2 passed FLAGGED


def test_text_index_is_used_once_and_none_falls_back() -> None:
    calls: list[tuple[str, str]] = []

    def index(key: str, needle: str) -> set[int] | None:
        calls.append((key, needle))
        return {3} if key == "BODY" else None

    loads = Loads()
    ctx = ctx_for(MSGS, loads)
    ctx.text_index = index
    assert hits(k("BODY", "whatever"), MSGS, ctx) == [3]  # trusts the index
    assert calls == [("BODY", "whatever")] and loads.data == 0
    ctx = ctx_for(MSGS, loads)
    ctx.text_index = index
    assert hits(k("TEXT", "berlin"), MSGS, ctx) == [1]  # no answer: scanned
    assert loads.data == 3


def test_message_loaded_once_per_message() -> None:
    loads = Loads()
    key = k("AND", None, k("BODY", "e"), k("TEXT", "o"), k("HEADER", ("From", "")))
    hits(key, MSGS, ctx_for(MSGS, loads))
    assert loads.data <= 3 and loads.parsed <= 3


def test_matches_caches_the_compiled_key() -> None:
    ctx = ctx_for(MSGS)
    key = k("SEEN")
    assert matches(key, MSGS[0], 1, ctx) and not matches(key, MSGS[1], 2, ctx)
    assert len(ctx._compiled) == 1


def test_unknown_key() -> None:
    with pytest.raises(UnknownSearchKey):
        compile_key(k("AND", None, k("SEEN"), k("X-NOPE")), ctx_for(MSGS))


def test_uses_modseq() -> None:
    assert uses_modseq(k("AND", None, k("SEEN"), k("NOT", None, k("MODSEQ", 4))))
    assert not uses_modseq(k("AND", None, k("SEEN")))


# --------------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------------


def test_search_response() -> None:
    assert search_response([2, 5, 9]) == b"* SEARCH 2 5 9\r\n"
    assert search_response([2, 5], modseq=917162500) == b"* SEARCH 2 5 (MODSEQ 917162500)\r\n"
    assert search_response([], modseq=5) == b"* SEARCH\r\n"


@pytest.mark.parametrize(
    ("uid", "results", "opts", "modseqs", "expected"),
    [
        (False, [1, 2, 3, 7], (), None, b'* ESEARCH (TAG "a1") ALL 1:3,7\r\n'),
        (True, [4, 9], ("MIN", "MAX"), None, b'* ESEARCH (TAG "a1") UID MIN 4 MAX 9\r\n'),
        (False, [4, 9], ("COUNT",), None, b'* ESEARCH (TAG "a1") COUNT 2\r\n'),
        (False, [], ("MIN", "MAX", "ALL", "COUNT"), None, b'* ESEARCH (TAG "a1") COUNT 0\r\n'),
        (False, [], ("ALL",), None, b'* ESEARCH (TAG "a1")\r\n'),
        (True, [], (), None, b'* ESEARCH (TAG "a1") UID\r\n'),
        (False, [1, 5], ("SAVE",), None, None),
        (False, [1, 5], ("SAVE", "COUNT"), None, b'* ESEARCH (TAG "a1") COUNT 2\r\n'),
        (False, [1, 5], ("ALL",), [30, 20], b'* ESEARCH (TAG "a1") ALL 1,5 MODSEQ 30\r\n'),
        (False, [1, 5, 8], ("MIN",), [3, 90, 10], b'* ESEARCH (TAG "a1") MIN 1 MODSEQ 3\r\n'),
        (
            False,
            [1, 5, 8],
            ("MIN", "MAX"),
            [3, 90, 10],
            b'* ESEARCH (TAG "a1") MIN 1 MAX 8 MODSEQ 10\r\n',
        ),
        (False, [1, 5], ("COUNT",), [3, 90], b'* ESEARCH (TAG "a1") COUNT 2 MODSEQ 90\r\n'),
    ],
)
def test_esearch_response(
    uid: bool,
    results: list[int],
    opts: tuple[str, ...],
    modseqs: list[int] | None,
    expected: bytes | None,
) -> None:
    assert esearch_response("a1", uid, results, opts, modseqs) == expected


def test_esearch_tag_is_quoted() -> None:
    assert esearch_response('a"b', False, [1], ("COUNT",)) == (
        b'* ESEARCH (TAG "a\\"b") COUNT 1\r\n'
    )


@pytest.mark.parametrize(
    ("opts", "expected"),
    [
        (("SAVE",), [3, 5, 9]),
        (("SAVE", "MIN"), [3]),
        (("SAVE", "MAX"), [9]),
        (("SAVE", "MIN", "MAX"), [3, 9]),
        (("SAVE", "MIN", "COUNT"), [3, 5, 9]),
        (("SAVE", "ALL", "MAX"), [3, 5, 9]),
    ],
)
def test_saved_result(opts: tuple[str, ...], expected: list[int]) -> None:
    assert saved_result([3, 5, 9], opts) == expected
    assert saved_result([], opts) == []


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------

_DATES = st.dates(dt.date(2022, 12, 30), dt.date(2023, 1, 12)).map(lambda d: d.isoformat())
_SEQSETS = st.lists(
    st.tuples(st.one_of(st.none(), st.integers(1, 12)), st.one_of(st.none(), st.integers(1, 12))),
    min_size=1,
    max_size=3,
).map(lambda r: SequenceSet(tuple(r)))

_LEAVES = st.one_of(
    st.sampled_from(
        [k(n) for n in ("ALL", "SEEN", "UNSEEN", "FLAGGED", "DELETED", "ANSWERED", "DRAFT")]
    ),
    st.sampled_from(["$a", "$B", "work"]).map(lambda w: k("KEYWORD", w)),
    st.integers(0, 2000).map(lambda n: k("LARGER", n)),
    st.integers(0, 2000).map(lambda n: k("SMALLER", n)),
    st.tuples(st.sampled_from(["BEFORE", "ON", "SINCE", "SENTON", "SAVEDSINCE"]), _DATES).map(
        lambda t: k(*t)
    ),
    st.tuples(st.sampled_from(["OLDER", "YOUNGER"]), st.integers(0, 14 * 86400)).map(
        lambda t: k(*t)
    ),
    st.integers(0, 20).map(lambda n: k("MODSEQ", n)),
    st.tuples(st.sampled_from(["UID", "SEQSET"]), _SEQSETS).map(lambda t: k(*t)),
    st.tuples(
        st.sampled_from(["SUBJECT", "FROM", "BODY", "TEXT"]),
        st.sampled_from(["e", "fox", "JÜRGEN", "needle", ""]),
    ).map(lambda t: k(*t)),
)
KEYS = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(
        inner.map(lambda a: k("NOT", None, a)),
        st.tuples(inner, inner).map(lambda ab: k("OR", None, *ab)),
        st.lists(inner, min_size=1, max_size=3).map(lambda ks: k("AND", None, *ks)),
    ),
    max_leaves=6,
)

_FLAG_SETS = st.sets(st.sampled_from([Flag.SEEN, Flag.FLAGGED, Flag.DELETED, Flag.ANSWERED]))
MAILBOXES = st.lists(
    st.tuples(
        st.integers(1, 3),  # uid gap
        st.integers(0, 2),  # body
        _FLAG_SETS,
        st.sets(st.sampled_from(["$A", "work"])),
        st.integers(1, 20),  # modseq
        st.integers(unix(2022, 12, 30), unix(2023, 1, 12)),
    ),
    max_size=10,
).map(
    lambda rows: [
        make(
            uid=sum(r[0] for r in rows[: i + 1]),
            body=r[1],
            flags=Flag(sum(r[2])),
            keywords=tuple(sorted(r[3])),
            modseq=r[4],
            internal=r[5],
        )
        for i, r in enumerate(rows)
    ]
)


def _set(key: SearchKey, msgs: list[MessageMeta]) -> set[int]:
    return set(hits(key, msgs))


@settings(max_examples=120, deadline=None)
@given(a=KEYS, b=KEYS, msgs=MAILBOXES)
def test_boolean_algebra(a: SearchKey, b: SearchKey, msgs: list[MessageMeta]) -> None:
    everything = {m.uid for m in msgs}
    sa, sb = _set(a, msgs), _set(b, msgs)
    assert _set(k("NOT", None, a), msgs) == everything - sa
    assert _set(k("OR", None, a, b), msgs) == sa | sb == _set(k("OR", None, b, a), msgs)
    assert _set(k("AND", None, a, b), msgs) == sa & sb == _set(k("AND", None, b, a), msgs)
    ctx = ctx_for(msgs)
    assert [m.uid for seq, m in enumerate(msgs, 1) if matches(a, m, seq, ctx)] == hits(a, msgs)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(0, 20 * 86400), msgs=MAILBOXES)
def test_older_is_not_younger(n: int, msgs: list[MessageMeta]) -> None:
    assert _set(k("OLDER", n), msgs) == _set(k("NOT", None, k("YOUNGER", n)), msgs)


@settings(max_examples=60, deadline=None)
@given(seqset=_SEQSETS, msgs=MAILBOXES)
def test_sequence_sets(seqset: SequenceSet, msgs: list[MessageMeta]) -> None:
    uids = [m.uid for m in msgs]
    largest_uid = max(uids, default=0)

    def members(largest: int) -> set[int]:
        out: set[int] = set()
        for a, b in seqset.ranges:
            lo, hi = sorted((largest if a is None else a, largest if b is None else b))
            out.update(range(lo, hi + 1))
        return out if largest else set()

    by_uid = members(largest_uid)
    assert _set(k("UID", seqset), msgs) == {u for u in uids if u in by_uid}
    by_seq = members(len(msgs))
    assert _set(k("SEQSET", seqset), msgs) == {u for i, u in enumerate(uids, 1) if i in by_seq}


_FLAG_NAMES = ["SEEN", "UNSEEN", "DELETED", "UNDELETED", "FLAGGED", "UNFLAGGED", "ANSWERED",
               "UNANSWERED", "DRAFT", "UNDRAFT", "ALL"]  # fmt: skip


def _flag_keys() -> st.SearchStrategy[SearchKey]:
    leaf = st.sampled_from(_FLAG_NAMES).map(lambda n: k(n))
    return st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.lists(inner, min_size=1, max_size=3).map(lambda ks: k("AND", None, *ks)),
            st.tuples(inner, inner).map(lambda ab: k("OR", None, *ab)),
            inner.map(lambda a: k("NOT", None, a)),
        ),
        max_leaves=6,
    )


@settings(max_examples=200, deadline=None)
@given(_flag_keys(), st.integers(0, 31))
def test_flag_scan_matches_like_the_general_search(key: SearchKey, bits: int) -> None:
    # SEARCH UNSEEN and other flag-only criteria are answered from the flags alone (no
    # MessageMeta per message): the answer must be the general search's.
    pred = flag_predicate(key)
    assert pred is not None
    m = make(1, 0, Flag(bits), (), 5, unix(2023, 1, 3))
    assert pred(bits) == (hits(key, [m]) == [1])


def test_criteria_beyond_flags_have_no_flag_scan() -> None:
    assert flag_predicate(k("AND", None, k("UNSEEN"), k("LARGER", 10))) is None
    assert flag_predicate(k("NOT", None, k("RECENT"))) is None
    assert flag_predicate(k("KEYWORD", "Work")) is None


def test_index_narrowing_only_where_every_match_needs_the_text() -> None:
    assert index_narrowing(k("TEXT", "needle")) == ("TEXT", "needle")
    assert index_narrowing(k("AND", None, k("UNSEEN"), k("BODY", "x y"))) == ("BODY", "x y")
    assert index_narrowing(k("OR", None, k("TEXT", "a"), k("SEEN"))) is None
    assert index_narrowing(k("NOT", None, k("TEXT", "a"))) is None
    assert index_narrowing(k("UNSEEN")) is None
