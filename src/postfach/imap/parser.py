"""IMAP command parser (pure core; RFC 9051 §6 and §9, RFC 3501, and the extensions below).

A cursor parser in the manner of mox: ``_Cursor.take*`` consume and return a bool (or None),
``_Cursor.expect*`` consume or raise `ParseError`. It works on one complete command as
`postfach.imap.wire.ImapFramer` returns it (literals inline, final line end removed) and
produces the frozen dataclasses of `postfach.imap.commands`::

    cmd = parse_command(b"a1 SELECT INBOX (CONDSTORE)", utf8_enabled=False)

Every ``ParseError`` becomes ``tag BAD [code] text`` (``*`` when no tag could be read).

Choices:

* Keywords (command names, search keys, FETCH items, options) are case-insensitive; they come
  out upper case. System flags are normalised to their canonical spelling (``\\SEEN`` →
  ``\\Seen``); keywords (``$Forwarded``) are kept as sent.
* Mailbox names: ``INBOX`` in any case becomes ``"INBOX"`` (RFC 9051 §5.1). Without UTF-8
  (``utf8_enabled=False``) names are modified UTF-7 and decoded strictly (RFC 3501 §5.1.3);
  with it they are UTF-8 (RFC 9051 §5.1, RFC 6855 §3). LIST references and patterns are decoded
  the same way but never normalised.
* Strings must be valid UTF-8 (IMAP4rev2 allows UTF-8 in quoted strings; IMAP4rev1 clients
  send ASCII) and hold no NUL. Search strings under a CHARSET other than US-ASCII/UTF-8 are
  decoded with replacement characters, so the session can answer ``NO [BADCHARSET]``.
* Numbers: ``number``/``nz-number`` are 32-bit, ``number64`` and mod-sequences 63-bit
  (RFC 9051 §9, RFC 7162 §7). A mod-sequence of 0 is accepted everywhere.
* ``SEARCH RETURN ()`` means ``RETURN (ALL)`` (RFC 4731 §3.1) and comes out as ``("ALL",)``.
* ``SEARCH MODSEQ "/flags/\\\\Seen" all 5``: the entry name and type are checked, then dropped;
  the value is the mod-sequence (RFC 7162 §3.1.5 lets a server use the message's).
* FETCH: the macros ALL/FAST/FULL are expanded (RFC 9051 §6.4.5); ``UID`` is not added for
  UID FETCH (the session does it). ``VANISHED`` needs UID FETCH and CHANGEDSINCE (RFC 7162
  §3.2.6).
* APPEND: MULTIAPPEND (RFC 3502), literal8 (RFC 3516) and RFC 6855 ``UTF8 (~{n}...)`` (with
  UTF-8 enabled only; it comes out as a binary message) are accepted; CATENATE (RFC 4469) is
  refused with a clear BAD. NUL octets inside a plain APPEND literal are left to the session.
* Search nesting (parentheses, NOT, OR) is limited to ``MAX_DEPTH`` levels.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import re
from collections.abc import Callable
from typing import Final, Literal, NoReturn

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
    FetchItem,
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
from postfach.imap.response import parse_date_time
from postfach.imap.sequence import parse_sequence_set
from postfach.imap.utf7 import decode_mutf7

__all__ = [
    "MAX_DEPTH",
    "STATUS_ITEMS",
    "ParseError",
    "parse_command",
    "parse_done",
]

#: Deepest nesting of search keys (parentheses, NOT, OR) accepted.
MAX_DEPTH: Final = 64

MAX_NUMBER: Final = 2**32 - 1
MAX_NUMBER64: Final = 2**63 - 1

#: STATUS data items (RFC 9051 §6.3.11, RFC 3501 RECENT, RFC 7162, RFC 7889, RFC 8474,
#: RFC 9208 DELETED-STORAGE).
STATUS_ITEMS: Final = frozenset({
    "MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "DELETED", "SIZE",
    "HIGHESTMODSEQ", "APPENDLIMIT", "MAILBOXID", "DELETED-STORAGE",
})  # fmt: skip

_SYSTEM_FLAGS: Final = {
    f.upper(): f for f in ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "\\Recent")
}
_USE_ATTRS: Final = {
    f.upper(): f
    for f in ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash")
}
_LIST_SELECT: Final = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
_LIST_RETURN: Final = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE"})
_SEARCH_RETURN: Final = frozenset({"MIN", "MAX", "ALL", "COUNT", "SAVE"})

_FAST: Final = (FetchAttr("FLAGS"), FetchAttr("INTERNALDATE"), FetchAttr("RFC822.SIZE"))
_MACROS: Final[dict[str, tuple[FetchItem, ...]]] = {
    "FAST": _FAST,
    "ALL": (*_FAST, FetchAttr("ENVELOPE")),
    "FULL": (*_FAST, FetchAttr("ENVELOPE"), FetchAttr("BODY")),
}
_SIMPLE_FETCH: Final = frozenset({
    "ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822", "RFC822.HEADER", "RFC822.SIZE", "RFC822.TEXT",
    "BODYSTRUCTURE", "UID", "MODSEQ", "SAVEDATE", "EMAILID", "THREADID",
})  # fmt: skip

# Search keys by the kind of argument they take (RFC 9051 §6.4.4, RFC 3501 §6.4.4, RFC 5032,
# RFC 8514, RFC 8474).
_SEARCH_BARE: Final = frozenset({
    "ALL", "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "NEW", "OLD", "RECENT", "SEEN",
    "UNANSWERED", "UNDELETED", "UNDRAFT", "UNFLAGGED", "UNSEEN", "SAVEDATESUPPORTED",
})  # fmt: skip
_SEARCH_STRING: Final = frozenset({"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"})
_SEARCH_DATE: Final = frozenset({
    "BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE",
    "SAVEDBEFORE", "SAVEDON", "SAVEDSINCE",
})  # fmt: skip
_SEARCH_WITH_ARG: Final = _SEARCH_STRING | _SEARCH_DATE | {
    "LARGER", "SMALLER", "OLDER", "YOUNGER", "KEYWORD", "UNKEYWORD", "HEADER", "UID", "NOT",
    "OR", "MODSEQ", "EMAILID", "THREADID",
}  # fmt: skip
_MONTHS: Final = {
    m: i + 1
    for i, m in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
    )
}

# RFC 9051 §9: ATOM-CHAR is any CHAR except atom-specials: ( ) { SP CTL % * " \ ]
_ATOM: Final = re.compile(rb"[!#$&'+,\-./0-9:;<=>?@A-Z\[^_`a-z|}~]+")
_ASTRING: Final = re.compile(rb"[!#$&'+,\-./0-9:;<=>?@A-Z\[\]^_`a-z|}~]+")
_LIST_CHARS: Final = re.compile(rb"[!#$%&'*+,\-./0-9:;<=>?@A-Z\[\]^_`a-z|}~]+")
_TAG: Final = re.compile(rb"[!#$&',\-./0-9:;<=>?@A-Z\[\]^_`a-z|}~]+")
_KEYWORD: Final = re.compile(rb"[A-Za-z0-9][A-Za-z0-9.\-=]*")
_DIGITS: Final = re.compile(rb"[0-9]+")
_SEQSET: Final = re.compile(rb"[0-9:*,$]+")
_QUOTED: Final = re.compile(rb'"((?:[^"\\\r\n\x00]|\\["\\])*)"')
_QUOTED_ESCAPE: Final = re.compile(rb'\\(["\\])')
_LITERAL: Final = re.compile(rb"(~?)\{([0-9]{1,20})(\+?)\}\r?\n")
_BASE64: Final = re.compile(rb"[A-Za-z0-9+/]+={0,2}")
_OBJECTID: Final = re.compile(rb"[A-Za-z0-9_\-]{1,255}")
_DATE: Final = re.compile(rb"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})")


class ParseError(Exception):
    """A malformed command: answer ``tag BAD [code] text``."""

    def __init__(self, tag: str, text: str, code: str | None = None) -> None:
        super().__init__(f"{tag} {text}")
        self.tag = tag
        self.text = text
        self.code = code


def _show(b: bytes) -> str:
    """A short printable excerpt for error messages."""
    if not b:
        return "end of command"
    text = b[:24].decode("ascii", errors="replace")
    text = "".join(c if " " <= c <= "~" else "?" for c in text)
    return repr(text + ("..." if len(b) > 24 else ""))


class _Cursor:
    """The parse position in one command; ``take*`` return a value or None/False,
    ``expect*`` raise ParseError."""

    def __init__(self, data: bytes, utf8: bool) -> None:
        self.data = data
        self.pos = 0
        self.utf8 = utf8
        self.tag = "*"
        self.command = ""

    # ---- basics ---------------------------------------------------------------------------

    def fail(self, text: str, code: str | None = None) -> NoReturn:
        prefix = f"{self.command}: " if self.command else ""
        raise ParseError(self.tag, prefix + text, code)

    def fail_expected(self, what: str) -> NoReturn:
        self.fail(f"expected {what} at {_show(self.data[self.pos :])}")

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def peek(self, lit: bytes) -> bool:
        """Whether the input continues with ``lit`` (case-insensitive), without consuming."""
        end = self.pos + len(lit)
        return self.data[self.pos : end].upper() == lit.upper()

    def take(self, lit: bytes) -> bool:
        if self.peek(lit):
            self.pos += len(lit)
            return True
        return False

    def expect(self, lit: bytes, what: str | None = None) -> None:
        if not self.take(lit):
            self.fail_expected(what or repr(lit.decode()))

    def take_sp(self) -> bool:
        return self.take(b" ")

    def expect_sp(self) -> None:
        self.expect(b" ", "a space")

    def expect_end(self) -> None:
        if not self.at_end():
            self.fail(f"unexpected {_show(self.data[self.pos :])}")

    def match(self, pattern: re.Pattern[bytes]) -> bytes | None:
        m = pattern.match(self.data, self.pos)
        if m is None:
            return None
        self.pos = m.end()
        return m.group(0)

    # ---- atoms and numbers ------------------------------------------------------------------

    def take_keyword(self) -> str | None:
        """A command name, option or item name: letters, digits, ``.``, ``-``, ``=``."""
        kw = self.match(_KEYWORD)
        return None if kw is None else kw.decode("ascii").upper()

    def expect_keyword(self, what: str) -> str:
        kw = self.take_keyword()
        if kw is None:
            self.fail_expected(what)
        return kw

    def expect_atom(self, what: str = "an atom") -> str:
        atom = self.match(_ATOM)
        if atom is None:
            self.fail_expected(what)
        return atom.decode("ascii")

    def expect_number(self, what: str = "a number", *, nz: bool = False, bits: int = 32) -> int:
        digits = self.match(_DIGITS)
        if digits is None:
            self.fail_expected(what)
        n = int(digits) if len(digits) <= 20 else MAX_NUMBER64 + 1
        if n > (MAX_NUMBER if bits == 32 else MAX_NUMBER64) or (nz and n == 0):
            self.fail(f"{what} out of range: {digits.decode()}")
        return n

    def expect_seqset(self, what: str = "a sequence set", *, star: bool = True) -> SequenceSet:
        raw = self.match(_SEQSET)
        if raw is None:
            self.fail_expected(what)
        try:
            return parse_sequence_set(raw.decode("ascii"), allow_star=star, allow_saved=star)
        except ValueError as e:
            self.fail(f"invalid sequence set ({e})")

    # ---- strings --------------------------------------------------------------------------

    def take_literal(self, *, binary: bool = False) -> tuple[bytes, bool] | None:
        """``{n}`` CRLF and n octets (``~{n}`` when ``binary``); returns (data, is_literal8)."""
        m = _LITERAL.match(self.data, self.pos)
        if m is None:
            return None
        if m.group(1) and not binary:
            self.fail("literal8 (~{n}) is not allowed here")
        size = int(m.group(2))
        start = m.end()
        if start + size > len(self.data):
            self.fail("literal shorter than announced")
        self.pos = start + size
        return self.data[start : self.pos], bool(m.group(1))

    def take_quoted(self) -> bytes | None:
        if not self.peek(b'"'):
            return None
        m = _QUOTED.match(self.data, self.pos)
        if m is None:
            self.fail("invalid quoted string (unterminated, bad escape, CR, LF or NUL)")
        self.pos = m.end()
        return _QUOTED_ESCAPE.sub(rb"\1", m.group(1))

    def take_string_bytes(self) -> bytes | None:
        """string = quoted / literal (RFC 9051 §9)."""
        q = self.take_quoted()
        if q is not None:
            return q
        lit = self.take_literal()
        if lit is None:
            return None
        if b"\x00" in lit[0]:
            self.fail("NUL is not allowed in a string")
        return lit[0]

    def expect_string_bytes(self, what: str = "a string") -> bytes:
        s = self.take_string_bytes()
        if s is None:
            self.fail_expected(what)
        return s

    def expect_astring_bytes(self, what: str = "a string") -> bytes:
        s = self.take_string_bytes()
        if s is None:
            s = self.match(_ASTRING)
        if s is None:
            self.fail_expected(what)
        return s

    def decode(self, raw: bytes, what: str) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.fail(f"{what} is not valid UTF-8")

    def expect_astring(self, what: str = "a string") -> str:
        return self.decode(self.expect_astring_bytes(what), what)

    def expect_string(self, what: str = "a string") -> str:
        return self.decode(self.expect_string_bytes(what), what)

    def take_nil(self) -> bool:
        # NIL as an atom: not followed by another atom character.
        if self.peek(b"NIL"):
            after = self.data[self.pos + 3 : self.pos + 4]
            if not after or not _ATOM.match(after):
                self.pos += 3
                return True
        return False

    # ---- mailbox names ------------------------------------------------------------------

    def name_text(self, raw: bytes, what: str) -> str:
        """Decode a mailbox name, reference or pattern: UTF-8 or modified UTF-7."""
        if self.utf8:
            return self.decode(raw, what)
        try:
            return decode_mutf7(raw.decode("ascii"))
        except UnicodeDecodeError:
            self.fail(f"{what} is not valid modified UTF-7 (8-bit octets)")
        except ValueError:  # printable ASCII, just not a valid name: the session says NO
            return UndecodableName(raw.decode("ascii"))

    def expect_mailbox(self, what: str = "a mailbox name") -> str:
        """mailbox = "INBOX" / astring (RFC 9051 §9); INBOX is case-insensitive."""
        name = self.name_text(self.expect_astring_bytes(what), what)
        return "INBOX" if name.isascii() and name.upper() == "INBOX" else name

    def expect_list_mailbox(self) -> str:
        """list-mailbox = 1*list-char / string (RFC 9051 §9): wildcards allowed unquoted."""
        raw = self.take_string_bytes()
        if raw is None:
            raw = self.match(_LIST_CHARS)
        if raw is None:
            self.fail_expected("a mailbox pattern")
        return self.name_text(raw, "mailbox pattern")

    # ---- flags and dates --------------------------------------------------------------------

    def expect_flag(self) -> str:
        """flag = system flag / flag-keyword / flag-extension (RFC 9051 §9)."""
        if self.take(b"\\"):
            atom = self.match(_ATOM)
            if atom is None:
                self.fail_expected("a flag name after '\\'")
            name = "\\" + atom.decode("ascii")
            return _SYSTEM_FLAGS.get(name.upper(), name)
        return self.expect_atom("a flag")

    def expect_flag_list(self) -> tuple[str, ...]:
        """flag-list = "(" [flag *(SP flag)] ")"."""
        self.expect(b"(", "'(' to start a flag list")
        flags: list[str] = []
        if not self.take(b")"):
            while True:
                flags.append(self.expect_flag())
                if self.take(b")"):
                    break
                self.expect_sp()
        return tuple(flags)

    def expect_date(self) -> str:
        """date = date-text / DQUOTE date-text DQUOTE; returned as ISO ``YYYY-MM-DD``."""
        quoted = self.take(b'"')
        m = _DATE.match(self.data, self.pos)
        if m is None:
            self.fail_expected("a date like 1-Feb-1994")
        month = _MONTHS.get(m.group(2).decode("ascii").upper())
        if month is None:
            self.fail(f"invalid month in date {m.group(0).decode()!r}")
        try:
            day = _dt.date(int(m.group(3)), month, int(m.group(1)))
        except ValueError:
            self.fail(f"invalid date {m.group(0).decode()!r}")
        self.pos = m.end()
        if quoted:
            self.expect(b'"', "'\"' to end the date")
        return day.isoformat()

    def take_date_time(self) -> str | None:
        """date-time = DQUOTE date-day-fixed "-" date-month "-" date-year SP time SP zone
        DQUOTE; returned as sent, without the quotes."""
        if not self.peek(b'"'):
            return None
        raw = self.take_quoted()
        assert raw is not None
        text = raw.decode("ascii", errors="replace")
        try:
            parse_date_time(text)
        except ValueError:
            self.fail(f"invalid date-time {text!r}")
        return text

    def expect_paren_list(self, item: Callable[[], None], what: str, *, empty: bool) -> None:
        """``"(" item *(SP item) ")"``; ``empty`` allows ``()``."""
        self.expect(b"(", f"'(' to start {what}")
        if self.take(b")"):
            if not empty:
                self.fail(f"{what} must not be empty")
            return
        while True:
            item()
            if self.take(b")"):
                return
            self.expect_sp()


# ---- entry points ---------------------------------------------------------------------------


def parse_command(data: bytes, *, utf8_enabled: bool = False) -> AnyCommand:
    """Parse one complete command (as ``ImapFramer`` returns it) or raise ``ParseError``.

    ``utf8_enabled``: the client enabled IMAP4rev2 or UTF8=ACCEPT, so mailbox names are UTF-8
    rather than modified UTF-7.
    """
    c = _Cursor(bytes(data), utf8_enabled)
    if not data.strip():
        c.fail("empty command line")
    tag = c.match(_TAG)
    if tag is None or not c.take_sp():
        c.fail("a command starts with a tag and a space")
    c.tag = tag.decode("ascii")
    name = c.take_keyword()
    if name is None:
        c.fail_expected("a command name")
    handler = _COMMANDS.get(name)
    if handler is None:
        c.fail(f"unknown command {name}")
    c.command = name
    command = handler(c)
    c.expect_end()
    return command


def parse_done(line: bytes) -> Done:
    """The line that ends IDLE (RFC 9051 §6.3.13): ``DONE``, in any case."""
    if line.rstrip(b"\r\n").upper() != b"DONE":
        raise ParseError("*", "expected DONE to end IDLE")
    return Done()


# ---- any state (RFC 9051 §6.1) ---------------------------------------------------------------


def _no_args(cls: Callable[[str], AnyCommand]) -> Callable[[_Cursor], AnyCommand]:
    # CAPABILITY §6.1.1, NOOP §6.1.2, LOGOUT §6.1.3, STARTTLS §6.2.1, NAMESPACE §6.3.10,
    # IDLE §6.3.13 (RFC 2177), CHECK (RFC 3501 §6.4.1), CLOSE §6.4.1, UNSELECT §6.4.2 (RFC 3691)
    def parse(c: _Cursor) -> AnyCommand:
        return cls(c.tag)

    return parse


def _id(c: _Cursor) -> Id:
    # RFC 2971 §3.3: "ID" SP ( "(" #(string SP nstring) ")" / nil )
    c.expect_sp()
    if c.take_nil():
        return Id(c.tag, None)
    params: list[tuple[str, str | None]] = []

    def pair() -> None:
        key = c.expect_string("an ID field name")
        c.expect_sp()
        value = None if c.take_nil() else c.expect_string("an ID value or NIL")
        params.append((key, value))

    c.expect_paren_list(pair, "the ID parameter list", empty=True)
    return Id(c.tag, tuple(params))


# ---- not authenticated (RFC 9051 §6.2) -------------------------------------------------------


def _authenticate(c: _Cursor) -> Authenticate:
    # RFC 9051 §6.2.2; RFC 4959 SASL-IR: "AUTHENTICATE" SP auth-type [SP (base64 / "=")]
    c.expect_sp()
    mechanism = c.expect_atom("a SASL mechanism name").upper()
    initial: bytes | None = None
    if c.take_sp():
        if c.take(b"="):
            initial = b""
        else:
            raw = c.match(_BASE64)
            if raw is None:
                c.fail_expected("a base64 initial response or '='")
            try:
                initial = base64.b64decode(raw, validate=True)
            except binascii.Error:
                c.fail("invalid base64 in the initial response")
    return Authenticate(c.tag, mechanism, initial)


def _login(c: _Cursor) -> Login:
    # RFC 9051 §6.2.3: "LOGIN" SP userid SP password
    c.expect_sp()
    user = c.expect_astring("a user name")
    c.expect_sp()
    password = c.expect_astring("a password")
    return Login(c.tag, user, password)


# ---- authenticated (RFC 9051 §6.3) -----------------------------------------------------------


def _enable(c: _Cursor) -> Enable:
    # RFC 9051 §6.3.1, RFC 5161 §3.1: "ENABLE" 1*(SP capability)
    caps: list[str] = []
    while c.take_sp():
        caps.append(c.expect_atom("a capability name").upper())
    if not caps:
        c.fail_expected("a capability name")
    return Enable(c.tag, tuple(caps))


def _qresync(c: _Cursor) -> QresyncParams:
    # RFC 7162 §3.2.5: "QRESYNC" SP "(" uidvalidity SP mod-sequence-value [SP known-uids]
    #                  [SP seq-match-data] ")"
    c.expect(b"(", "'(' after QRESYNC")
    uidvalidity = c.expect_number("a UIDVALIDITY", nz=True)
    c.expect_sp()
    modseq = c.expect_number("a mod-sequence", nz=True, bits=64)  # mod-sequence-value >= 1
    known: SequenceSet | None = None
    match: tuple[SequenceSet, SequenceSet] | None = None
    if c.take_sp():
        if not c.peek(b"("):
            known = c.expect_seqset("known UIDs", star=False)
        if known is None or c.take_sp():
            c.expect(b"(", "'(' to start the sequence match data")
            seqs = c.expect_seqset("known sequence numbers", star=False)
            c.expect_sp()
            uids = c.expect_seqset("known UIDs", star=False)
            c.expect(b")", "')' to end the sequence match data")
            match = (seqs, uids)
    c.expect(b")", "')' to end the QRESYNC parameters")
    return QresyncParams(uidvalidity, modseq, known, match)


def _select(readonly: bool) -> Callable[[_Cursor], Select]:
    # RFC 9051 §6.3.2 (SELECT), §6.3.3 (EXAMINE); RFC 4466 §2.1 select-params;
    # RFC 7162 §3.1.8 CONDSTORE, §3.2.5 QRESYNC
    def parse(c: _Cursor) -> Select:
        c.expect_sp()
        mailbox = c.expect_mailbox()
        seen: set[str] = set()
        qresync: QresyncParams | None = None

        def param() -> None:
            nonlocal qresync
            name = c.expect_keyword("a SELECT parameter")
            if name in seen:
                c.fail(f"duplicate parameter {name}")
            seen.add(name)
            if name == "QRESYNC":
                c.expect_sp()
                qresync = _qresync(c)
            elif name != "CONDSTORE":
                c.fail(f"unknown parameter {name}")

        if c.take_sp():
            c.expect_paren_list(param, "the parameter list", empty=False)
        return Select(c.tag, mailbox, readonly, "CONDSTORE" in seen, qresync)

    return parse


def _create(c: _Cursor) -> Create:
    # RFC 9051 §6.3.4; RFC 6154 §3 CREATE-SPECIAL-USE: create-param = "USE" SP "(" [use-attr
    # *(SP use-attr)] ")". Unknown use-attrs are kept: the session answers NO [USEATTR].
    c.expect_sp()
    mailbox = c.expect_mailbox()
    uses: list[str] = []

    def use_attr() -> None:
        c.expect(b"\\", "a special-use attribute such as \\Sent")
        name = "\\" + c.expect_atom("a special-use attribute")
        uses.append(_USE_ATTRS.get(name.upper(), name))

    def param() -> None:
        name = c.expect_keyword("a CREATE parameter")
        if name != "USE":
            c.fail(f"unknown parameter {name}")
        c.expect_sp()
        c.expect_paren_list(use_attr, "the USE list", empty=True)

    if c.take_sp():
        c.expect_paren_list(param, "the parameter list", empty=False)
    return Create(c.tag, mailbox, tuple(uses))


def _one_mailbox(cls: Callable[[str, str], AnyCommand]) -> Callable[[_Cursor], AnyCommand]:
    # DELETE §6.3.5, SUBSCRIBE §6.3.7, UNSUBSCRIBE §6.3.8, GETQUOTAROOT (RFC 9208 §4.3)
    def parse(c: _Cursor) -> AnyCommand:
        c.expect_sp()
        return cls(c.tag, c.expect_mailbox())

    return parse


def _rename(c: _Cursor) -> Rename:
    # RFC 9051 §6.3.6: "RENAME" SP mailbox SP mailbox
    c.expect_sp()
    old = c.expect_mailbox("the existing mailbox name")
    c.expect_sp()
    new = c.expect_mailbox("the new mailbox name")
    return Rename(c.tag, old, new)


def _list(c: _Cursor) -> List:
    # RFC 9051 §6.3.9; RFC 5258 §3 LIST-EXTENDED; RFC 5819 LIST-STATUS; RFC 6154 SPECIAL-USE:
    # "LIST" [SP list-select-opts] SP mailbox SP mbox-or-pat [SP list-return-opts]
    c.expect_sp()
    extended = False
    selection: list[str] = []
    returns: list[str] = []
    status: list[str] = []

    def select_opt() -> None:
        opt = c.expect_keyword("a selection option")
        if opt not in _LIST_SELECT:
            c.fail(f"unknown selection option {opt}")
        selection.append(opt)

    if c.peek(b"("):
        extended = True
        c.expect_paren_list(select_opt, "selection options", empty=True)
        c.expect_sp()
        if "RECURSIVEMATCH" in selection and not set(selection) - {"RECURSIVEMATCH", "REMOTE"}:
            c.fail("RECURSIVEMATCH needs another selection option (RFC 5258 §3)")
    ref_raw = c.expect_astring_bytes("a reference name")
    reference = c.name_text(ref_raw, "reference name")
    c.expect_sp()
    patterns: list[str] = []
    if c.peek(b"("):
        extended = True

        def pattern() -> None:
            patterns.append(c.expect_list_mailbox())

        c.expect_paren_list(pattern, "the pattern list", empty=False)
    else:
        patterns.append(c.expect_list_mailbox())

    def status_att() -> None:
        status.append(_status_att(c))

    def return_opt() -> None:
        opt = c.expect_keyword("a return option")
        if opt == "STATUS":
            c.expect_sp()
            c.expect_paren_list(status_att, "the STATUS items", empty=False)
        elif opt not in _LIST_RETURN:
            c.fail(f"unknown return option {opt}")
        returns.append(opt)

    if c.take_sp():
        c.expect(b"RETURN", "RETURN")
        c.expect_sp()
        extended = True
        c.expect_paren_list(return_opt, "return options", empty=True)
    return List(
        c.tag,
        reference,
        tuple(patterns),
        tuple(dict.fromkeys(selection)),
        tuple(dict.fromkeys(r for r in returns if r != "STATUS")),
        tuple(dict.fromkeys(status)),
        extended,
    )


def _lsub(c: _Cursor) -> Lsub:
    # RFC 3501 §6.3.9: "LSUB" SP mailbox SP list-mailbox
    c.expect_sp()
    reference = c.name_text(c.expect_astring_bytes("a reference name"), "reference name")
    c.expect_sp()
    return Lsub(c.tag, reference, c.expect_list_mailbox())


def _status_att(c: _Cursor) -> str:
    item = c.expect_keyword("a STATUS item")
    if item not in STATUS_ITEMS:
        c.fail(f"unknown STATUS item {item}")
    return item


def _status(c: _Cursor) -> Status:
    # RFC 9051 §6.3.11; RFC 7162 HIGHESTMODSEQ; RFC 7889 APPENDLIMIT; RFC 8474 MAILBOXID;
    # RFC 9208 DELETED-STORAGE: "STATUS" SP mailbox SP "(" status-att *(SP status-att) ")"
    c.expect_sp()
    mailbox = c.expect_mailbox()
    c.expect_sp()
    items: list[str] = []

    def item() -> None:
        items.append(_status_att(c))

    c.expect_paren_list(item, "the STATUS items", empty=False)
    return Status(c.tag, mailbox, tuple(dict.fromkeys(items)))


def _append_message(c: _Cursor) -> AppendMessage:
    # RFC 9051 §6.3.12: append-opts SP append-data, after the SP that starts append-opts:
    # [flag-list SP] [date-time SP] (literal / literal8 / "UTF8" SP "(" literal8 ")")
    flags: tuple[str, ...] = ()
    if c.peek(b"("):
        flags = c.expect_flag_list()
        c.expect_sp()
    internal_date = c.take_date_time()
    if internal_date is not None:
        c.expect_sp()
    if c.peek(b"CATENATE"):
        c.fail("CATENATE is not supported", "CANNOT")
    if c.take(b"UTF8 "):
        # RFC 6855 §4: "UTF8" SP "(" literal8 ")"
        if not c.utf8:
            c.fail("APPEND UTF8 needs ENABLE UTF8=ACCEPT")
        c.expect(b"(", "'(' after UTF8")
        lit = c.take_literal(binary=True)
        if lit is None or not lit[1]:
            c.fail_expected("a literal8 (~{n}) inside UTF8 (...)")
        c.expect(b")", "')' after the UTF8 literal")
        return AppendMessage(flags, internal_date, lit[0], True)
    lit = c.take_literal(binary=True)
    if lit is None:
        c.fail_expected("the message as a literal {n}")
    return AppendMessage(flags, internal_date, lit[0], lit[1])


def _append(c: _Cursor) -> Append:
    # RFC 9051 §6.3.12; RFC 3502 MULTIAPPEND: "APPEND" SP mailbox 1*append-message
    c.expect_sp()
    mailbox = c.expect_mailbox()
    messages: list[AppendMessage] = []
    while True:
        c.expect_sp()
        messages.append(_append_message(c))
        if c.at_end():
            return Append(c.tag, mailbox, tuple(messages))


def _getquota(c: _Cursor) -> GetQuota:
    # RFC 9208 §4.2: "GETQUOTA" SP quota-root-name
    c.expect_sp()
    return GetQuota(c.tag, c.expect_astring("a quota root"))


def _setquota(c: _Cursor) -> SetQuota:
    # RFC 9208 §4.4: "SETQUOTA" SP quota-root-name SP "(" [setquota-resource
    #                *(SP setquota-resource)] ")"; setquota-resource = resource-name SP number64
    c.expect_sp()
    root = c.expect_astring("a quota root")
    c.expect_sp()
    limits: list[tuple[str, int]] = []

    def resource() -> None:
        name = c.expect_atom("a resource name").upper()
        c.expect_sp()
        limits.append((name, c.expect_number("a resource limit", bits=64)))

    c.expect_paren_list(resource, "the resource limits", empty=True)
    return SetQuota(c.tag, root, tuple(limits))


# ---- selected (RFC 9051 §6.4) ----------------------------------------------------------------


def _expunge(c: _Cursor, uid: bool) -> Expunge:
    # RFC 9051 §6.4.3; RFC 4315 §2.1 UID EXPUNGE: "UID EXPUNGE" SP sequence-set
    if not uid:
        return Expunge(c.tag)
    c.expect_sp()
    return Expunge(c.tag, c.expect_seqset("a UID set"))


class _SearchParser:
    """search-key (RFC 9051 §6.4.4 and §9, RFC 3501 §6.4.4, RFC 5032, RFC 7162 §3.1.5,
    RFC 8514 §4.3, RFC 8474 §6)."""

    def __init__(self, c: _Cursor, strict_utf8: bool) -> None:
        self.c = c
        self.strict = strict_utf8

    def text(self, what: str) -> str:
        raw = self.c.expect_astring_bytes(what)
        if self.strict:
            return self.c.decode(raw, what)
        return raw.decode("utf-8", errors="replace")

    def key(self, depth: int) -> SearchKey:
        c = self.c
        if depth > MAX_DEPTH:
            c.fail("search keys nested too deeply")
        if c.take(b"("):
            keys = [self.key(depth + 1)]
            while not c.take(b")"):
                c.expect_sp()
                keys.append(self.key(depth + 1))
            return SearchKey("AND", keys=tuple(keys))
        if c.peek(b"*") or c.peek(b"$") or (c.data[c.pos : c.pos + 1].isdigit()):
            return SearchKey("SEQSET", c.expect_seqset())
        name = c.expect_keyword("a search key")
        if name in _SEARCH_BARE:
            return SearchKey(name)
        if name not in _SEARCH_WITH_ARG:
            c.fail(f"unknown search key {name}")
        c.expect_sp()
        if name in _SEARCH_STRING:
            return SearchKey(name, self.text(f"a string after {name}"))
        if name in _SEARCH_DATE:
            return SearchKey(name, c.expect_date())
        if name in ("LARGER", "SMALLER"):
            return SearchKey(name, c.expect_number("a size", bits=64))
        if name in ("OLDER", "YOUNGER"):
            return SearchKey(name, c.expect_number("a number of seconds", nz=True))
        if name in ("KEYWORD", "UNKEYWORD"):
            return SearchKey(name, c.expect_atom("a keyword"))
        if name == "HEADER":
            field = self.text("a header field name")
            c.expect_sp()
            return SearchKey(name, (field, self.text("a header value")))
        if name == "UID":
            return SearchKey(name, c.expect_seqset("a UID set"))
        if name == "NOT":
            return SearchKey(name, keys=(self.key(depth + 1),))
        if name == "OR":
            first = self.key(depth + 1)
            c.expect_sp()
            return SearchKey(name, keys=(first, self.key(depth + 1)))
        if name == "MODSEQ":
            return SearchKey(name, self.modseq())
        if name in ("EMAILID", "THREADID"):
            objectid = c.match(_OBJECTID)
            if objectid is None:
                c.fail_expected("an object id")
            return SearchKey(name, objectid.decode("ascii"))
        raise AssertionError(name)  # pragma: no cover - _SEARCH_WITH_ARG lists every key

    def modseq(self) -> int:
        # RFC 7162 §3.1.5: "MODSEQ" [SP entry-name SP entry-type-req] SP mod-sequence-valzer
        c = self.c
        if c.peek(b'"'):
            entry = c.expect_string("an entry name")
            if not entry.lower().startswith("/flags/") or len(entry) == 7:
                c.fail(f"invalid MODSEQ entry name {entry!r}")
            c.expect_sp()
            kind = c.expect_keyword("priv, shared or all").lower()
            if kind not in ("priv", "shared", "all"):
                c.fail(f"invalid MODSEQ entry type {kind!r}")
            c.expect_sp()
        return c.expect_number("a mod-sequence", bits=64)


def _search(c: _Cursor, uid: bool) -> Search:
    # RFC 9051 §6.4.4; RFC 4731 §3.1 ESEARCH RETURN; RFC 5182 SAVE:
    # "SEARCH" [SP "RETURN" SP "(" [search-return-opt *(SP search-return-opt)] ")"]
    #          SP ["CHARSET" SP charset SP] search-key *(SP search-key)
    c.expect_sp()
    return_opts: tuple[str, ...] | None = None
    if c.take(b"RETURN "):
        opts: list[str] = []

        def opt() -> None:
            name = c.expect_keyword("a search return option")
            if name not in _SEARCH_RETURN:
                c.fail(f"unknown search return option {name}")
            opts.append(name)

        c.expect_paren_list(opt, "search return options", empty=True)
        return_opts = tuple(dict.fromkeys(opts)) or ("ALL",)
        c.expect_sp()
    charset: str | None = None
    if c.take(b"CHARSET "):
        charset = c.expect_astring("a charset name").upper()
        c.expect_sp()
    parser = _SearchParser(c, charset in (None, "UTF-8", "US-ASCII"))
    keys = [parser.key(1)]
    while c.take_sp():
        keys.append(parser.key(1))
    return Search(c.tag, uid, SearchKey("AND", keys=tuple(keys)), charset, return_opts)


def _section_part(c: _Cursor) -> tuple[int, ...]:
    # section-part = nz-number *("." nz-number); stops before "." followed by a non-digit.
    parts = [c.expect_number("a section part number", nz=True)]
    while c.peek(b".") and c.data[c.pos + 1 : c.pos + 2].isdigit():
        c.pos += 1
        parts.append(c.expect_number("a section part number", nz=True))
    return tuple(parts)


def _partial(c: _Cursor) -> tuple[int, int] | None:
    # partial = "<" number64 "." nz-number64 ">"
    if not c.take(b"<"):
        return None
    origin = c.expect_number("a partial origin", bits=64)
    c.expect(b".", "'.' in <origin.count>")
    count = c.expect_number("a partial length", nz=True, bits=64)
    c.expect(b">", "'>' to end <origin.count>")
    return origin, count


def _section(c: _Cursor, peek: bool) -> FetchSection:
    # section = "[" [section-spec] "]"; section-spec = section-msgtext / (section-part
    # ["." section-text]); section-text = section-msgtext / "MIME" (RFC 9051 §9)
    c.expect(b"[", "'['")
    part: tuple[int, ...] = ()
    spec = ""
    fields: list[str] = []
    if c.data[c.pos : c.pos + 1].isdigit():
        part = _section_part(c)
        if c.take(b"."):
            spec = c.expect_keyword("HEADER, HEADER.FIELDS, TEXT or MIME")
    elif not c.peek(b"]"):
        spec = c.expect_keyword("HEADER, HEADER.FIELDS or TEXT")
    allowed = ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT")
    if spec and spec not in allowed and not (spec == "MIME" and part):
        c.fail(f"invalid section {spec}")
    if spec.startswith("HEADER.FIELDS"):
        c.expect_sp()

        def field() -> None:
            fields.append(c.expect_astring("a header field name").upper())

        c.expect_paren_list(field, "the header field list", empty=False)
    c.expect(b"]", "']' to end the section")
    return FetchSection(peek, part, spec, tuple(fields), _partial(c))


def _binary_section(c: _Cursor) -> tuple[int, ...]:
    # section-binary = "[" [section-part] "]" (RFC 3516 §4.1, RFC 9051 §9)
    c.expect(b"[", "'[' after BINARY")
    part = () if c.peek(b"]") else _section_part(c)
    c.expect(b"]", "']' to end the binary section")
    return part


def _fetch_att(c: _Cursor) -> FetchItem:
    # fetch-att (RFC 9051 §6.4.5, RFC 3516, RFC 7162 MODSEQ, RFC 8514 SAVEDATE, RFC 8474
    # EMAILID/THREADID, RFC 8970 PREVIEW)
    name = c.expect_keyword("a FETCH item")
    if name in _SIMPLE_FETCH:
        return FetchAttr(name)
    if name == "BODY":
        return _section(c, False) if c.peek(b"[") else FetchAttr("BODY")
    if name == "BODY.PEEK":
        return _section(c, True)
    if name in ("BINARY", "BINARY.PEEK"):
        part = _binary_section(c)
        return FetchSection(name == "BINARY.PEEK", part, "", (), _partial(c), binary=True)
    if name == "BINARY.SIZE":
        return FetchBinarySize(_binary_section(c))
    if name == "PREVIEW":
        # "PREVIEW" [SP "(" preview-mod *(SP preview-mod) ")"]; preview-mod = "LAZY".
        # Only a "(" followed by LAZY belongs here; "(CHANGEDSINCE" is a fetch modifier.
        if c.peek(b" (LAZY"):
            c.pos += 1
            mods: list[str] = []

            def mod() -> None:
                m = c.expect_keyword("LAZY")
                if m != "LAZY":
                    c.fail(f"unknown PREVIEW modifier {m}")
                mods.append(m)

            c.expect_paren_list(mod, "PREVIEW modifiers", empty=False)
            return FetchAttr("PREVIEW", "LAZY")
        return FetchAttr("PREVIEW")
    if name in _MACROS:
        c.fail(f"the macro {name} cannot be used inside a list")
    c.fail(f"unknown FETCH item {name}")


def _fetch(c: _Cursor, uid: bool) -> Fetch:
    # RFC 9051 §6.4.5; RFC 7162 §3.1.4.1 CHANGEDSINCE, §3.2.6 VANISHED:
    # "FETCH" SP sequence-set SP ("ALL" / "FULL" / "FAST" / fetch-att /
    #         "(" fetch-att *(SP fetch-att) ")") [SP "(" fetch-modifier *(SP fetch-modifier) ")"]
    c.expect_sp()
    sequence = c.expect_seqset()
    c.expect_sp()
    items: list[FetchItem] = []
    if c.peek(b"("):

        def att() -> None:
            items.append(_fetch_att(c))

        c.expect_paren_list(att, "FETCH items", empty=False)
    else:
        start = c.pos
        word = c.take_keyword()
        if word in _MACROS:
            items.extend(_MACROS[word])
        else:
            c.pos = start
            items.append(_fetch_att(c))
    changedsince: int | None = None
    vanished = False

    def modifier() -> None:
        nonlocal changedsince, vanished
        name = c.expect_keyword("a FETCH modifier")
        if name == "CHANGEDSINCE" and changedsince is None:
            c.expect_sp()
            changedsince = c.expect_number("a mod-sequence", bits=64)
        elif name == "VANISHED" and not vanished:
            vanished = True
        elif name in ("CHANGEDSINCE", "VANISHED"):
            c.fail(f"duplicate modifier {name}")
        else:
            c.fail(f"unknown FETCH modifier {name}")

    if c.take_sp():
        c.expect_paren_list(modifier, "FETCH modifiers", empty=False)
    if vanished and not uid:
        c.fail("VANISHED is only allowed with UID FETCH")
    if vanished and changedsince is None:
        c.fail("VANISHED needs CHANGEDSINCE")
    return Fetch(c.tag, uid, sequence, tuple(dict.fromkeys(items)), changedsince, vanished)


def _store(c: _Cursor, uid: bool) -> Store:
    # RFC 9051 §6.4.6; RFC 7162 §3.1.3 UNCHANGEDSINCE:
    # "STORE" SP sequence-set [SP "(" "UNCHANGEDSINCE" SP mod-sequence-valzer ")"]
    #         SP (["+" / "-"] "FLAGS" [".SILENT"]) SP (flag-list / (flag *(SP flag)))
    c.expect_sp()
    sequence = c.expect_seqset()
    c.expect_sp()
    unchangedsince: int | None = None
    if c.peek(b"("):

        def modifier() -> None:
            nonlocal unchangedsince
            name = c.expect_keyword("a STORE modifier")
            if name != "UNCHANGEDSINCE" or unchangedsince is not None:
                c.fail(f"unknown or duplicate STORE modifier {name}")
            c.expect_sp()
            unchangedsince = c.expect_number("a mod-sequence", bits=64)

        c.expect_paren_list(modifier, "STORE modifiers", empty=False)
        c.expect_sp()
    mode: Literal["set", "add", "remove"] = "set"
    if c.take(b"+"):
        mode = "add"
    elif c.take(b"-"):
        mode = "remove"
    item = c.expect_keyword("FLAGS or FLAGS.SILENT")
    if item not in ("FLAGS", "FLAGS.SILENT"):
        c.fail(f"expected FLAGS or FLAGS.SILENT, not {item}")
    c.expect_sp()
    if c.peek(b"("):
        flags = c.expect_flag_list()
    else:
        found = [c.expect_flag()]
        while c.take_sp():
            found.append(c.expect_flag())
        flags = tuple(found)
    return Store(c.tag, uid, sequence, mode, item == "FLAGS.SILENT", flags, unchangedsince)


def _copy_move(c: _Cursor, uid: bool, move: bool) -> Copy | Move:
    # RFC 9051 §6.4.7 (COPY), §6.4.8 (MOVE, RFC 6851): sequence-set SP mailbox
    c.expect_sp()
    sequence = c.expect_seqset()
    c.expect_sp()
    mailbox = c.expect_mailbox()
    return Move(c.tag, uid, sequence, mailbox) if move else Copy(c.tag, uid, sequence, mailbox)


def _replace(c: _Cursor, uid: bool) -> Replace:
    # RFC 8508 §6: "REPLACE" SP seq-number SP mailbox append-message (UID REPLACE: a UID)
    c.expect_sp()
    number = c.expect_number("a UID" if uid else "a message sequence number", nz=True)
    c.expect_sp()
    mailbox = c.expect_mailbox()
    c.expect_sp()
    return Replace(c.tag, uid, number, mailbox, _append_message(c))


_UID_COMMANDS: Final[dict[str, Callable[[_Cursor, bool], AnyCommand]]] = {
    "COPY": lambda c, uid: _copy_move(c, uid, False),
    "MOVE": lambda c, uid: _copy_move(c, uid, True),
    "FETCH": _fetch,
    "SEARCH": _search,
    "STORE": _store,
    "EXPUNGE": _expunge,
    "REPLACE": _replace,
}


def _uid(c: _Cursor) -> AnyCommand:
    # RFC 9051 §6.4.9: "UID" SP (copy / move / fetch / search / store / uid-expunge); RFC 8508
    c.expect_sp()
    name = c.expect_keyword("a command after UID")
    handler = _UID_COMMANDS.get(name)
    if handler is None:
        c.fail(f"UID {name} is not a command")
    c.command = f"UID {name}"
    return handler(c, True)


_COMMANDS: Final[dict[str, Callable[[_Cursor], AnyCommand]]] = {
    "CAPABILITY": _no_args(Capability),
    "NOOP": _no_args(Noop),
    "LOGOUT": _no_args(Logout),
    "ID": _id,
    "STARTTLS": _no_args(StartTls),
    "AUTHENTICATE": _authenticate,
    "LOGIN": _login,
    "ENABLE": _enable,
    "SELECT": _select(False),
    "EXAMINE": _select(True),
    "CREATE": _create,
    "DELETE": _one_mailbox(Delete),
    "RENAME": _rename,
    "SUBSCRIBE": _one_mailbox(Subscribe),
    "UNSUBSCRIBE": _one_mailbox(Unsubscribe),
    "LIST": _list,
    "LSUB": _lsub,
    "NAMESPACE": _no_args(Namespace),
    "STATUS": _status,
    "APPEND": _append,
    "IDLE": _no_args(Idle),
    "GETQUOTA": _getquota,
    "GETQUOTAROOT": _one_mailbox(GetQuotaRoot),
    "SETQUOTA": _setquota,
    "CHECK": _no_args(Check),
    "CLOSE": _no_args(Close),
    "UNSELECT": _no_args(Unselect),
    "EXPUNGE": lambda c: _expunge(c, False),
    "SEARCH": lambda c: _search(c, False),
    "FETCH": lambda c: _fetch(c, False),
    "STORE": lambda c: _store(c, False),
    "COPY": lambda c: _copy_move(c, False, False),
    "MOVE": lambda c: _copy_move(c, False, True),
    "REPLACE": lambda c: _replace(c, False),
    "UID": _uid,
}
