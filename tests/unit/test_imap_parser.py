"""IMAP parser tables: every command and extension form, each also framed one byte at a time."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postfach.imap.commands import (
    AnyCommand,
    Append,
    AppendMessage,
    Authenticate,
    Capability,
    Check,
    Close,
    Copy,
    Create,
    Delete,
    Done,
    Enable,
    Expunge,
    Fetch,
    FetchAttr,
    FetchBinarySize,
    FetchSection,
    GetQuota,
    GetQuotaRoot,
    Id,
    Idle,
    List,
    Login,
    Logout,
    Lsub,
    Move,
    Namespace,
    Noop,
    QresyncParams,
    Rename,
    Replace,
    Search,
    SearchKey,
    Select,
    SequenceSet,
    SetQuota,
    StartTls,
    Status,
    Store,
    Subscribe,
    UndecodableName,
    Unselect,
    Unsubscribe,
)
from postfach.imap.parser import MAX_DEPTH, ParseError, parse_command, parse_done
from postfach.imap.sequence import parse_sequence_set
from postfach.imap.wire import NEED_DATA, ImapFramer, NeedContinuation


def S(text: str) -> SequenceSet:
    return parse_sequence_set(text)


def K(name: str, value: object = None, *keys: SearchKey) -> SearchKey:
    return SearchKey(name, value, keys)


def AND(*keys: SearchKey) -> SearchKey:
    return SearchKey("AND", None, keys)


def A(name: str, value: str | None = None) -> FetchAttr:
    return FetchAttr(name, value)


FAST = (A("FLAGS"), A("INTERNALDATE"), A("RFC822.SIZE"))


def frame(raw: bytes, *, bytewise: bool) -> bytes:
    """The one command the framer produces from ``raw`` (continuations answered)."""
    f = ImapFramer(max_line=8192, max_literal=1 << 20)
    chunks = [raw[i : i + 1] for i in range(len(raw))] if bytewise else [raw]
    commands: list[bytes] = []
    for chunk in chunks:
        f.receive_data(chunk)
        while (ev := f.next_event()) is not NEED_DATA:
            if isinstance(ev, bytes):
                commands.append(ev)
            else:
                assert isinstance(ev, NeedContinuation), ev
    assert f.buffered == 0
    assert len(commands) == 1, commands
    return commands[0]


def parse_wire(raw: bytes, utf8: bool = False) -> AnyCommand:
    whole = frame(raw, bytewise=False)
    assert frame(raw, bytewise=True) == whole
    return parse_command(whole, utf8_enabled=utf8)


T = "t"  # the tag used throughout
OK: list[tuple[bytes, AnyCommand]] = [
    # ---- any state (RFC 9051 §6.1, RFC 2971)
    (b"t CAPABILITY", Capability(T)),
    (b"t capability", Capability(T)),
    (b"t NOOP", Noop(T)),
    (b"t LOGOUT", Logout(T)),
    (b"t ID NIL", Id(T, None)),
    (b"t ID ()", Id(T, ())),
    (
        b't ID ("name" "sodr" "version" NIL "os" {5}\r\nLinux)',
        Id(T, (("name", "sodr"), ("version", None), ("os", "Linux"))),
    ),
    # ---- not authenticated (RFC 9051 §6.2, RFC 4959)
    (b"t STARTTLS", StartTls(T)),
    (b"t AUTHENTICATE plain", Authenticate(T, "PLAIN", None)),
    (b"t AUTHENTICATE PLAIN =", Authenticate(T, "PLAIN", b"")),
    (b"t AUTHENTICATE PLAIN AGFsaWNlAHB3", Authenticate(T, "PLAIN", b"\x00alice\x00pw")),
    (b"t AUTHENTICATE XOAUTH2 dXNlcj0=", Authenticate(T, "XOAUTH2", b"user=")),
    (b"t LOGIN alice secret", Login(T, "alice", "secret")),
    (b't LOGIN "alice" "p\\"w\\\\"', Login(T, "alice", 'p"w\\')),
    (b"t LOGIN {5}\r\nalice {7+}\r\nse cr\xc3\xa9", Login(T, "alice", "se cré")),
    (b't LOGIN "j\xc3\xb6rg" pw', Login(T, "jörg", "pw")),
    # ---- authenticated (RFC 9051 §6.3)
    (b"t ENABLE IMAP4rev2", Enable(T, ("IMAP4REV2",))),
    (b"t ENABLE CONDSTORE QRESYNC UTF8=ACCEPT", Enable(T, ("CONDSTORE", "QRESYNC", "UTF8=ACCEPT"))),
    (b"t SELECT INBOX", Select(T, "INBOX")),
    (b"t SELECT inbox", Select(T, "INBOX")),
    (b't SELECT "InBoX"', Select(T, "INBOX")),
    (b"t EXAMINE Archive", Select(T, "Archive", readonly=True)),
    (b"t SELECT INBOX (CONDSTORE)", Select(T, "INBOX", condstore=True)),
    (
        b"t SELECT INBOX (QRESYNC (67890007 20050715194045000))",
        Select(T, "INBOX", qresync=QresyncParams(67890007, 20050715194045000)),
    ),
    (
        b"t SELECT INBOX (QRESYNC (67890007 90060115194045000 41:211,214:541))",
        Select(T, "INBOX", qresync=QresyncParams(67890007, 90060115194045000, S("41:211,214:541"))),
    ),
    (
        b"t EXAMINE INBOX (QRESYNC (67890007 90060115194045000 1:29997 "
        b"(5000,7500,9000 15000,22500,27000)))",
        Select(
            T,
            "INBOX",
            readonly=True,
            qresync=QresyncParams(
                67890007,
                90060115194045000,
                S("1:29997"),
                (S("5000,7500,9000"), S("15000,22500,27000")),
            ),
        ),
    ),
    (
        b"t SELECT INBOX (QRESYNC (1 2 (1:3 4:6)) CONDSTORE)",
        Select(T, "INBOX", condstore=True, qresync=QresyncParams(1, 2, None, (S("1:3"), S("4:6")))),
    ),
    (b"t CREATE Drafts", Create(T, "Drafts")),
    (b"t CREATE MySent (USE (\\sent))", Create(T, "MySent", ("\\Sent",))),
    (
        b"t CREATE x (USE (\\Junk \\Trash \\X-Other))",
        Create(T, "x", ("\\Junk", "\\Trash", "\\X-Other")),
    ),
    (b"t CREATE x (USE ())", Create(T, "x", ())),
    (b"t DELETE foo/bar", Delete(T, "foo/bar")),
    (b"t RENAME old new", Rename(T, "old", "new")),
    (b"""t RENAME "a b" {3}\r\nc d""", Rename(T, "a b", "c d")),
    (b"t SUBSCRIBE Entw&APw-rfe", Subscribe(T, "Entwürfe")),
    (b"t UNSUBSCRIBE ~peter/mail/&U,BTFw-/&ZeVnLIqe-", Unsubscribe(T, "~peter/mail/台北/日本語")),
    (b"""t LIST "" *""", List(T, "", ("*",))),
    (b'''t LIST "" ""''', List(T, "", ("",))),
    (b"t LIST ~/Mail/ %", List(T, "~/Mail/", ("%",))),
    (b"t LIST foo/ b]r*%", List(T, "foo/", ("b]r*%",))),
    (b'''t LIST "" "Entw&APw-rfe/*"''', List(T, "", ("Entwürfe/*",))),
    (
        b"""t LIST (SUBSCRIBED RECURSIVEMATCH) "" %""",
        List(T, "", ("%",), ("SUBSCRIBED", "RECURSIVEMATCH"), extended=True),
    ),
    (b"""t LIST () "" %""", List(T, "", ("%",), extended=True)),
    (
        b"""t LIST "" (INBOX Drafts Sent/%)""",
        List(T, "", ("INBOX", "Drafts", "Sent/%"), extended=True),
    ),
    (
        b"""t LIST (special-use) "" * RETURN (CHILDREN SUBSCRIBED)""",
        List(T, "", ("*",), ("SPECIAL-USE",), ("CHILDREN", "SUBSCRIBED"), extended=True),
    ),
    (
        b"""t LIST "" % RETURN (SPECIAL-USE STATUS (MESSAGES UNSEEN SIZE))""",
        List(T, "", ("%",), (), ("SPECIAL-USE",), ("MESSAGES", "UNSEEN", "SIZE"), True),
    ),
    (b"""t LIST "" % RETURN ()""", List(T, "", ("%",), extended=True)),
    (b"t LIST (REMOTE) {0}\r\n {1}\r\n*", List(T, "", ("*",), ("REMOTE",), extended=True)),
    (b"t LSUB #news. comp.mail.*", Lsub(T, "#news.", "comp.mail.*")),
    (b"t NAMESPACE", Namespace(T)),
    (
        b"t STATUS blurdybloop (UIDNEXT MESSAGES)",
        Status(T, "blurdybloop", ("UIDNEXT", "MESSAGES")),
    ),
    (
        b"t status inbox (messages recent uidnext uidvalidity unseen deleted size highestmodseq "
        b"appendlimit mailboxid deleted-storage)",
        Status(
            T,
            "INBOX",
            (
                "MESSAGES",
                "RECENT",
                "UIDNEXT",
                "UIDVALIDITY",
                "UNSEEN",
                "DELETED",
                "SIZE",
                "HIGHESTMODSEQ",
                "APPENDLIMIT",
                "MAILBOXID",
                "DELETED-STORAGE",
            ),
        ),
    ),
    (
        b"t APPEND saved-messages (\\seen) {5}\r\nhello",
        Append(T, "saved-messages", (AppendMessage(("\\Seen",), None, b"hello"),)),
    ),
    (b"t APPEND INBOX {0+}\r\n", Append(T, "INBOX", (AppendMessage((), None, b""),))),
    (
        b"""t APPEND INBOX (\\Seen $Forwarded) "7-Feb-1994 21:52:25 -0800" {4}\r\n\r\n\r\n""",
        Append(
            T,
            "INBOX",
            (AppendMessage(("\\Seen", "$Forwarded"), "7-Feb-1994 21:52:25 -0800", b"\r\n\r\n"),),
        ),
    ),
    (
        b"""t APPEND INBOX " 7-Feb-1994 21:52:25 +0100" ~{3}\r\na\x00b""",
        Append(T, "INBOX", (AppendMessage((), " 7-Feb-1994 21:52:25 +0100", b"a\x00b", True),)),
    ),
    (
        b"t APPEND Drafts () {1}\r\nA (\\Draft) {2+}\r\nBC ~{1}\r\nD",
        Append(
            T,
            "Drafts",
            (
                AppendMessage((), None, b"A"),
                AppendMessage(("\\Draft",), None, b"BC"),
                AppendMessage((), None, b"D", True),
            ),
        ),
    ),
    (b"t IDLE", Idle(T)),
    (b'''t GETQUOTA ""''', GetQuota(T, "")),
    (b"t GETQUOTAROOT INBOX", GetQuotaRoot(T, "INBOX")),
    (
        b"""t SETQUOTA "" (STORAGE 512 message 1000)""",
        SetQuota(T, "", (("STORAGE", 512), ("MESSAGE", 1000))),
    ),
    (b"t SETQUOTA user.alice ()", SetQuota(T, "user.alice", ())),
    # ---- selected (RFC 9051 §6.4)
    (b"t CHECK", Check(T)),
    (b"t CLOSE", Close(T)),
    (b"t UNSELECT", Unselect(T)),
    (b"t EXPUNGE", Expunge(T)),
    (b"t UID EXPUNGE 3000:3002", Expunge(T, S("3000:3002"))),
    (b"t COPY 2:4 MEETING", Copy(T, False, S("2:4"), "MEETING")),
    (b"t UID COPY 1:* Trash", Copy(T, True, S("1:*"), "Trash")),
    (b"t MOVE $ Archive", Move(T, False, S("$"), "Archive")),
    (b'''t UID MOVE 42 "Junk Mail"''', Move(T, True, S("42"), "Junk Mail")),
    (
        b"t REPLACE 3 Drafts {5}\r\nhello",
        Replace(T, False, 3, "Drafts", AppendMessage((), None, b"hello")),
    ),
    (
        b"t UID REPLACE 25 Drafts (\\Draft) {5+}\r\nhello",
        Replace(T, True, 25, "Drafts", AppendMessage(("\\Draft",), None, b"hello")),
    ),
    # STORE (RFC 9051 §6.4.6, RFC 7162 §3.1.3)
    (b"t STORE 2:4 +FLAGS (\\Deleted)", Store(T, False, S("2:4"), "add", False, ("\\Deleted",))),
    (
        b"t STORE 1 -FLAGS.SILENT \\seen $Junk",
        Store(T, False, S("1"), "remove", True, ("\\Seen", "$Junk")),
    ),
    (b"t STORE 1:* FLAGS ()", Store(T, False, S("1:*"), "set", False, ())),
    (
        b"t UID STORE 7,9 (UNCHANGEDSINCE 320162338) +FLAGS.SILENT (\\Deleted)",
        Store(T, True, S("7,9"), "add", True, ("\\Deleted",), 320162338),
    ),
    (
        b"t STORE $ (unchangedsince 0) flags (\\Answered)",
        Store(T, False, S("$"), "set", False, ("\\Answered",), 0),
    ),
    # FETCH (RFC 9051 §6.4.5, RFC 3516, RFC 7162, RFC 8970, RFC 8514, RFC 8474)
    (b"t FETCH 1 FAST", Fetch(T, False, S("1"), FAST)),
    (b"t FETCH 1:* ALL", Fetch(T, False, S("1:*"), (*FAST, A("ENVELOPE")))),
    (b"t FETCH 1 full", Fetch(T, False, S("1"), (*FAST, A("ENVELOPE"), A("BODY")))),
    (b"t FETCH 2 FLAGS", Fetch(T, False, S("2"), (A("FLAGS"),))),
    (
        b"t FETCH 2:4 (FLAGS BODY[HEADER.FIELDS (DATE FROM)])",
        Fetch(
            T,
            False,
            S("2:4"),
            (A("FLAGS"), FetchSection(False, (), "HEADER.FIELDS", ("DATE", "FROM"))),
        ),
    ),
    (
        b"t FETCH 1 (BODY.PEEK[1.2.HEADER.FIELDS.NOT (x-foo {7}\r\nsubject)]<0.2048>)",
        Fetch(
            T,
            False,
            S("1"),
            (FetchSection(True, (1, 2), "HEADER.FIELDS.NOT", ("X-FOO", "SUBJECT"), (0, 2048)),),
        ),
    ),
    (
        b"t FETCH 1 (BODY[] BODY[TEXT] BODY[1] BODY[1.MIME] BODY[2.HEADER] BODY[3.1.TEXT])",
        Fetch(
            T,
            False,
            S("1"),
            (
                FetchSection(False),
                FetchSection(False, (), "TEXT"),
                FetchSection(False, (1,)),
                FetchSection(False, (1,), "MIME"),
                FetchSection(False, (2,), "HEADER"),
                FetchSection(False, (3, 1), "TEXT"),
            ),
        ),
    ),
    (
        b"t FETCH 1 BODY[]<100.50>",
        Fetch(T, False, S("1"), (FetchSection(False, partial=(100, 50)),)),
    ),
    (
        b"t FETCH 1 (BINARY[1.2] BINARY.PEEK[]<0.10> BINARY.SIZE[3])",
        Fetch(
            T,
            False,
            S("1"),
            (
                FetchSection(False, (1, 2), binary=True),
                FetchSection(True, (), partial=(0, 10), binary=True),
                FetchBinarySize((3,)),
            ),
        ),
    ),
    (
        b"t FETCH 1 (ENVELOPE BODYSTRUCTURE BODY UID RFC822 RFC822.HEADER RFC822.TEXT RFC822.SIZE "
        b"INTERNALDATE MODSEQ SAVEDATE EMAILID THREADID)",
        Fetch(
            T,
            False,
            S("1"),
            tuple(
                A(n)
                for n in [
                    "ENVELOPE",
                    "BODYSTRUCTURE",
                    "BODY",
                    "UID",
                    "RFC822",
                    "RFC822.HEADER",
                    "RFC822.TEXT",
                    "RFC822.SIZE",
                    "INTERNALDATE",
                    "MODSEQ",
                    "SAVEDATE",
                    "EMAILID",
                    "THREADID",
                ]
            ),
        ),
    ),
    (b"t FETCH 1 PREVIEW", Fetch(T, False, S("1"), (A("PREVIEW"),))),
    (b"t FETCH 1 (UID PREVIEW (LAZY))", Fetch(T, False, S("1"), (A("UID"), A("PREVIEW", "LAZY")))),
    (
        b"t FETCH 1 PREVIEW (CHANGEDSINCE 5)",
        Fetch(T, False, S("1"), (A("PREVIEW"),), changedsince=5),
    ),
    (
        b"t FETCH 1:* (FLAGS) (CHANGEDSINCE 12345)",
        Fetch(T, False, S("1:*"), (A("FLAGS"),), changedsince=12345),
    ),
    (
        b"t UID FETCH 300:500 (FLAGS) (CHANGEDSINCE 12345 VANISHED)",
        Fetch(T, True, S("300:500"), (A("FLAGS"),), changedsince=12345, vanished=True),
    ),
    (b"t UID FETCH $ FAST", Fetch(T, True, S("$"), FAST)),
    # SEARCH (RFC 9051 §6.4.4, RFC 4731, RFC 5182, RFC 5032, RFC 7162, RFC 8514, RFC 8474)
    (b"t SEARCH ALL", Search(T, False, AND(K("ALL")))),
    (
        b'''t SEARCH FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"''',
        Search(
            T,
            False,
            AND(K("FLAGGED"), K("SINCE", "1994-02-01"), K("NOT", None, K("FROM", "Smith"))),
        ),
    ),
    (
        b"""t UID SEARCH OR (SEEN DRAFT) 1:5,* uid 3:* $""",
        Search(
            T,
            True,
            AND(
                K("OR", None, AND(K("SEEN"), K("DRAFT")), K("SEQSET", S("1:5,*"))),
                K("UID", S("3:*")),
                K("SEQSET", S("$")),
            ),
        ),
    ),
    (
        b"""t SEARCH CHARSET utf-8 TEXT {5}\r\nxx\xe2\x82\xac""",
        Search(T, False, AND(K("TEXT", "xx€")), "UTF-8"),
    ),
    (
        b'''t SEARCH CHARSET KOI8-R SUBJECT "\xf0"''',
        Search(T, False, AND(K("SUBJECT", "\ufffd")), "KOI8-R"),
    ),
    (
        b"""t SEARCH ON "21-Dec-2023" BEFORE 01-jan-2024 SENTBEFORE 2-Feb-2024 SENTON 3-Mar-2024 """
        b"""SENTSINCE 4-Apr-2024 SAVEDBEFORE 5-May-2024 SAVEDON 6-Jun-2024 SAVEDSINCE 7-Jul-2024""",
        Search(
            T,
            False,
            AND(
                K("ON", "2023-12-21"),
                K("BEFORE", "2024-01-01"),
                K("SENTBEFORE", "2024-02-02"),
                K("SENTON", "2024-03-03"),
                K("SENTSINCE", "2024-04-04"),
                K("SAVEDBEFORE", "2024-05-05"),
                K("SAVEDON", "2024-06-06"),
                K("SAVEDSINCE", "2024-07-07"),
            ),
        ),
    ),
    (
        b"""t SEARCH LARGER 1000 SMALLER 4294967296000 OLDER 3600 YOUNGER 60 KEYWORD $Junk """
        b"""UNKEYWORD $Phishing HEADER X-Spam-Flag YES HEADER "Message-ID" "<a@b>" """
        b"""SAVEDATESUPPORTED""",
        Search(
            T,
            False,
            AND(
                K("LARGER", 1000),
                K("SMALLER", 4294967296000),
                K("OLDER", 3600),
                K("YOUNGER", 60),
                K("KEYWORD", "$Junk"),
                K("UNKEYWORD", "$Phishing"),
                K("HEADER", ("X-Spam-Flag", "YES")),
                K("HEADER", ("Message-ID", "<a@b>")),
                K("SAVEDATESUPPORTED"),
            ),
        ),
    ),
    (
        b"""t SEARCH ANSWERED DELETED DRAFT FLAGGED NEW OLD RECENT SEEN UNANSWERED UNDELETED """
        b"""UNDRAFT UNFLAGGED UNSEEN BCC b CC c BODY d SUBJECT e TO f TEXT g""",
        Search(
            T,
            False,
            AND(
                *(
                    K(n)
                    for n in [
                        "ANSWERED",
                        "DELETED",
                        "DRAFT",
                        "FLAGGED",
                        "NEW",
                        "OLD",
                        "RECENT",
                        "SEEN",
                        "UNANSWERED",
                        "UNDELETED",
                        "UNDRAFT",
                        "UNFLAGGED",
                        "UNSEEN",
                    ]
                ),
                K("BCC", "b"),
                K("CC", "c"),
                K("BODY", "d"),
                K("SUBJECT", "e"),
                K("TO", "f"),
                K("TEXT", "g"),
            ),
        ),
    ),
    (
        b"""t SEARCH MODSEQ 620162338 MODSEQ "/flags/\\\\draft" all 620162339""",
        Search(T, False, AND(K("MODSEQ", 620162338), K("MODSEQ", 620162339))),
    ),
    (
        b"t SEARCH EMAILID M6d99ac3275bb4e THREADID T64b478a75b7ea9",
        Search(T, False, AND(K("EMAILID", "M6d99ac3275bb4e"), K("THREADID", "T64b478a75b7ea9"))),
    ),
    (
        b"t SEARCH RETURN (MIN COUNT) FLAGGED",
        Search(T, False, AND(K("FLAGGED")), None, ("MIN", "COUNT")),
    ),
    (b"t UID SEARCH RETURN () ALL", Search(T, True, AND(K("ALL")), None, ("ALL",))),
    (
        b"t SEARCH RETURN (SAVE MAX ALL) CHARSET US-ASCII (OR NEW (ALL))",
        Search(
            T,
            False,
            AND(AND(K("OR", None, K("NEW"), AND(K("ALL"))))),
            "US-ASCII",
            ("SAVE", "MAX", "ALL"),
        ),
    ),
    # ---- tags
    (b"A001.x]y NOOP", Noop("A001.x]y")),
]


@pytest.mark.parametrize(("raw", "expected"), OK, ids=[r[:60].decode("latin-1") for r, _ in OK])
def test_parse(raw: bytes, expected: AnyCommand) -> None:
    assert parse_wire(raw + b"\r\n") == expected


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        (b"t SELECT Entw&APw-rfe&", "Entw&APw-rfe&"),
        (b"t SELECT Entw&AGE-rfe", "Entw&AGE-rfe"),
        (b"t SELECT !#$&'+,-.0123456789:;<=>?@^_`|[}", "!#$&'+,-.0123456789:;<=>?@^_`|[}"),
    ],
)
def test_invalid_modified_utf7_is_an_undecodable_name(raw: bytes, name: str) -> None:
    """Printable ASCII that is not valid modified UTF-7 is no syntax error (imaptest atoms):
    the session answers NO, so the parser keeps the name, marked."""
    cmd = parse_wire(raw + b"\r\n")
    assert isinstance(cmd, Select) and cmd.mailbox == name
    assert isinstance(cmd.mailbox, UndecodableName)
    listed = parse_wire(b'l LIST "" "' + raw.split(b" ", 2)[2] + b'%"\r\n')
    assert isinstance(listed, List) and isinstance(listed.patterns[0], UndecodableName)


UTF8_OK: list[tuple[bytes, AnyCommand]] = [
    (b'''t SELECT "Entw\xc3\xbcrfe"''', Select(T, "Entwürfe")),
    (b"t CREATE Entw&APw-rfe", Create(T, "Entw&APw-rfe")),  # no mUTF-7 once UTF-8 is on
    (b"t SELECT {5}\r\ninBOX", Select(T, "INBOX")),
    # INBOX is case-insensitive in ASCII only: Python's "\u0131nbox".upper() is "INBOX"
    (b't SELECT "\xc4\xb1nbox"', Select(T, "\u0131nbox")),
    (
        b'''t LIST "" "\xe6\x97\xa5*"''',
        List(T, "", ("日*",)),
    ),
    (
        b"t APPEND INBOX UTF8 (~{2}\r\nhi)",
        Append(T, "INBOX", (AppendMessage((), None, b"hi", True),)),
    ),
]


@pytest.mark.parametrize(("raw", "expected"), UTF8_OK)
def test_parse_utf8_enabled(raw: bytes, expected: AnyCommand) -> None:
    assert parse_wire(raw + b"\r\n", utf8=True) == expected


BAD: list[tuple[bytes, str, str]] = [
    # (raw, expected tag, a fragment of the message)
    (b"", "*", "empty"),
    (b"NOOP", "*", "tag"),
    (b"a+b NOOP", "*", "tag"),
    (b't"x NOOP', "*", "tag"),
    (b"t FROBNICATE", "t", "unknown command FROBNICATE"),
    (b"t NOOP extra", "t", "unexpected"),
    (b"t NOOP ", "t", "unexpected"),
    (b"t  NOOP", "t", "command name"),
    (b"t LOGIN alice", "t", "space"),
    (b"t LOGIN alice pw extra", "t", "unexpected"),
    (b't LOGIN "unterminated', "t", "quoted"),
    (b't LOGIN "bad\\escape" x', "t", "quoted"),
    (b"t LOGIN {5}\r\nali", "t", "literal shorter"),
    (b"t LOGIN ~{5}\r\nalice pw", "t", "literal8"),
    (b"t LOGIN {3}\r\na\x00b pw", "t", "NUL"),
    (b"t LOGIN \xff pw", "t", "user name"),
    (b't LOGIN "\xff" pw', "t", "UTF-8"),
    (b"t AUTHENTICATE", "t", "space"),
    (b"t AUTHENTICATE PLAIN !!!", "t", "base64"),
    (b"t AUTHENTICATE PLAIN AGFsaWNl=x", "t", "unexpected"),
    (b"t AUTHENTICATE PLAIN AGFsaWNlAHB", "t", "invalid base64"),
    (b"t ENABLE", "t", "capability"),
    (b"t ID", "t", "space"),
    (b't ID ("a")', "t", "space"),
    (b"t ID (a b)", "t", "ID field name"),
    (b"t SELECT", "t", "space"),
    (b"t SELECT INBOX ()", "t", "must not be empty"),
    (b"t SELECT INBOX (FOO)", "t", "unknown parameter FOO"),
    (b"t SELECT INBOX (CONDSTORE CONDSTORE)", "t", "duplicate"),
    (b"t SELECT INBOX (QRESYNC (0 1))", "t", "UIDVALIDITY out of range"),
    (b"t SELECT INBOX (QRESYNC (1 2 1:*))", "t", "not allowed"),
    (b"t SELECT INBOX (QRESYNC (1 2 1:3 (1:3)))", "t", "space"),
    (b'''t SELECT "Entw\xc3\xbcrfe"''', "t", "modified UTF-7"),
    (b"t CREATE x (USE (Sent))", "t", "special-use"),
    (b"t CREATE x (FOO (\\Sent))", "t", "unknown parameter"),
    (b"t RENAME a", "t", "space"),
    (b"t LIST", "t", "space"),
    (b'''t LIST ""''', "t", "space"),
    (b"""t LIST (BOGUS) "" *""", "t", "unknown selection option BOGUS"),
    (b"""t LIST (RECURSIVEMATCH) "" *""", "t", "RECURSIVEMATCH"),
    (b"""t LIST "" * RETURN (BOGUS)""", "t", "unknown return option"),
    (b"""t LIST "" * RETURN (STATUS ())""", "t", "must not be empty"),
    (b"""t LIST "" * RETURN (STATUS (FOO))""", "t", "unknown STATUS item"),
    (b"""t LIST "" * EXTRA""", "t", "RETURN"),
    (b"""t LIST "" ()""", "t", "must not be empty"),
    (b"t STATUS INBOX ()", "t", "must not be empty"),
    (b"t STATUS INBOX (MESSAGES BOGUS)", "t", "unknown STATUS item BOGUS"),
    (b"t STATUS INBOX MESSAGES", "t", "'('"),
    (b"t APPEND INBOX", "t", "space"),
    (b"t APPEND INBOX hello", "t", "literal"),
    (b"t APPEND INBOX (\\Seen) hello", "t", "literal"),
    (b"""t APPEND INBOX "32-Jan-2024 00:00:00 +0000" {1}\r\nx""", "t", "invalid date-time"),
    (b"t APPEND INBOX CATENATE (TEXT {1}\r\nx)", "t", "CATENATE is not supported"),
    (b"t APPEND INBOX UTF8 (~{2}\r\nhi)", "t", "UTF8=ACCEPT"),
    (b"t APPEND INBOX {1}\r\nx extra", "t", "literal"),
    (b"t APPEND INBOX (\\) {1}\r\nx", "t", "flag name"),
    (b"t APPEND INBOX (\\*) {1}\r\nx", "t", "flag name"),
    (b"t SETQUOTA x (STORAGE)", "t", "space"),
    (b"t SETQUOTA x (STORAGE -1)", "t", "resource limit"),
    (b"t EXPUNGE 1", "t", "unexpected"),
    (b"t UID EXPUNGE", "t", "space"),
    (b"t UID NOOP", "t", "UID NOOP is not a command"),
    (b"t UID", "t", "space"),
    (b"t COPY 0 x", "t", "out of range"),
    (b"t COPY 1:4294967296 x", "t", "out of range"),
    (b"t COPY 1,,2 x", "t", "invalid sequence set"),
    (b"t COPY x y", "t", "sequence set"),
    (b"t MOVE 1", "t", "space"),
    (b"t REPLACE 0 Drafts {1}\r\nx", "t", "out of range"),
    (b"t REPLACE * Drafts {1}\r\nx", "t", "message sequence number"),
    (b"t STORE 1 FLAGS", "t", "space"),
    (b"t STORE 1 +FLAG (\\Seen)", "t", "FLAGS"),
    (b"t STORE 1 (FOO 3) FLAGS (\\Seen)", "t", "STORE modifier"),
    (b"t STORE 1 (UNCHANGEDSINCE x) FLAGS (\\Seen)", "t", "mod-sequence"),
    (b"t STORE 1 (UNCHANGEDSINCE 9223372036854775808) FLAGS ()", "t", "out of range"),
    (b"t STORE 1 FLAGS (\\Seen", "t", "space"),
    (b"t FETCH 1", "t", "space"),
    (b"t FETCH 1 ()", "t", "must not be empty"),
    (b"t FETCH 1 (FLAGS ALL)", "t", "macro ALL"),
    (b"t FETCH 1 BOGUS", "t", "unknown FETCH item BOGUS"),
    (b"t FETCH 1 BODY[MIME]", "t", "invalid section MIME"),
    (b"t FETCH 1 BODY[HEADER.FIELDS]", "t", "space"),
    (b"t FETCH 1 BODY[HEADER.FIELDS ()]", "t", "must not be empty"),
    (b"t FETCH 1 BODY[1.]", "t", "HEADER"),
    (b"t FETCH 1 BODY[0]", "t", "out of range"),
    (b"t FETCH 1 BODY[1.BOGUS]", "t", "invalid section BOGUS"),
    (b"t FETCH 1 BODY[]<10>", "t", "'.'"),
    (b"t FETCH 1 BODY[]<0.0>", "t", "out of range"),
    (b"t FETCH 1 BODY.PEEK", "t", "'['"),
    (b"t FETCH 1 BINARY[TEXT]", "t", "section part"),
    (b"t FETCH 1 BINARY.SIZE[1]<0.5>", "t", "unexpected"),
    (b"t FETCH 1 PREVIEW (FUZZY)", "t", "unknown FETCH modifier FUZZY"),
    (b"t FETCH 1 FLAGS (VANISHED)", "t", "UID FETCH"),
    (b"t UID FETCH 1 FLAGS (VANISHED)", "t", "CHANGEDSINCE"),
    (b"t UID FETCH 1 FLAGS (CHANGEDSINCE 1 CHANGEDSINCE 2)", "t", "duplicate"),
    (b"t FETCH 1 FLAGS (BOGUS)", "t", "unknown FETCH modifier"),
    (b"t SEARCH", "t", "space"),
    (b"t SEARCH ", "t", "search key"),
    (b"t SEARCH BOGUS", "t", "unknown search key BOGUS"),
    (b"t SEARCH SINCE 30-Feb-2024", "t", "invalid date"),
    (b"t SEARCH SINCE 1-Foo-2024", "t", "invalid month"),
    (b"t SEARCH SINCE 2024-01-01", "t", "date"),
    (b"""t SEARCH SINCE "1-Jan-2024""", "t", "end the date"),
    (b"t SEARCH OR SEEN", "t", "space"),
    (b"t SEARCH NOT", "t", "space"),
    (b"t SEARCH (SEEN", "t", "space"),
    (b"t SEARCH ()", "t", "search key"),
    (b"t SEARCH LARGER x", "t", "size"),
    (b"t SEARCH OLDER 0", "t", "out of range"),
    (b"t SEARCH KEYWORD \\Seen", "t", "keyword"),
    (b"t SEARCH HEADER Subject", "t", "space"),
    (b"""t SEARCH MODSEQ "/foo/x" all 5""", "t", "entry name"),
    (b"""t SEARCH MODSEQ "/flags/\\\\Seen" mine 5""", "t", "entry type"),
    (b"t SEARCH EMAILID !", "t", "object id"),
    (b"t SEARCH RETURN (BOGUS) ALL", "t", "unknown search return option"),
    (b"t SEARCH RETURN (MIN)", "t", "space"),
    (b't SEARCH CHARSET UTF-8 TEXT "\xff"', "t", "UTF-8"),
    (b"t SEARCH " + b"(" * (MAX_DEPTH + 1) + b"ALL" + b")" * (MAX_DEPTH + 1), "t", "nested"),
    (b"t SEARCH " + b"NOT " * (MAX_DEPTH + 1) + b"ALL", "t", "nested"),
]


@pytest.mark.parametrize(
    ("raw", "tag", "fragment"), BAD, ids=[r[:50].decode("latin-1") for r, _, _ in BAD]
)
def test_parse_errors(raw: bytes, tag: str, fragment: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_command(raw)
    assert info.value.tag == tag
    assert fragment.lower() in info.value.text.lower(), info.value.text
    assert "\r" not in info.value.text and "\n" not in info.value.text


def test_parse_error_through_framer() -> None:
    with pytest.raises(ParseError) as info:
        parse_wire(b"x17 SELECT {3}\r\nab\x00 (QRESYNC)\r\n")
    assert info.value.tag == "x17"


def test_parse_error_code_for_catenate() -> None:
    with pytest.raises(ParseError) as info:
        parse_command(b't APPEND INBOX CATENATE (URL "/INBOX;UID=1")')
    assert info.value.code == "CANNOT"


def test_done() -> None:
    assert parse_done(b"DONE") == Done()
    assert parse_done(b"done\r\n") == Done()
    with pytest.raises(ParseError):
        parse_done(b"t NOOP")


def test_every_command_is_in_the_table() -> None:
    seen = {type(cmd) for _, cmd in OK}
    import postfach.imap.commands as c

    expected = {
        t for t in vars(c).values()
        if isinstance(t, type) and issubclass(t, c.Command) and t is not c.Command
    }  # fmt: skip
    assert expected <= seen, expected - seen


# ---- fuzzing: anything a client sends is a command or a ParseError, never a crash --------------


@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data: bytes) -> None:
    for raw in (data, b"t " + data, b"t UID " + data, b"t SEARCH " + data, b"t FETCH 1 " + data):
        try:
            parse_command(raw)
        except ParseError as e:
            assert "\n" not in e.text


@given(st.sampled_from([r for r, _ in OK]), st.data())
def test_fuzz_mutated_commands(raw: bytes, data: st.DataObject) -> None:
    pos = data.draw(st.integers(0, len(raw)))
    kind = data.draw(st.sampled_from(["delete", "insert", "truncate"]))
    if kind == "delete":
        mutated = raw[:pos] + raw[pos + 1 :]
    elif kind == "insert":
        mutated = raw[:pos] + data.draw(st.binary(min_size=1, max_size=3)) + raw[pos:]
    else:
        mutated = raw[:pos]
    for utf8 in (False, True):
        with contextlib.suppress(ParseError):
            parse_command(mutated, utf8_enabled=utf8)


@given(st.lists(st.binary(max_size=40), max_size=8))
def test_fuzz_framer_never_crashes(chunks: list[bytes]) -> None:
    f = ImapFramer(max_line=32, max_literal=64)
    for chunk in chunks:
        f.receive_data(chunk)
        while (ev := f.next_event()) is not NEED_DATA:
            if isinstance(ev, bytes):
                with contextlib.suppress(ParseError):
                    parse_command(ev)
        assert f.buffered <= 32 + 2 + 64 * 4 + 64 * 32 + 40


def test_huge_numbers_are_parse_errors() -> None:
    for raw in (b"t COPY " + b"9" * 5000 + b" x", b"t FETCH 1 BODY[]<" + b"9" * 5000 + b".1>"):
        with pytest.raises(ParseError):
            parse_command(raw)
