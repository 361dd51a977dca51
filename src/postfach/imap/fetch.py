"""One ``* n FETCH (...)`` response for one message (pure core).

Built from the message's `MessageMeta`, its MIME tree parsed once at delivery (`Parsed`) and a
bytes accessor that is only called when an item needs the message's octets (BODY[...], BINARY,
RFC822*, PREVIEW, THREADID). Every section is an exact byte range of the stored message; nothing
is re-serialised (DESIGN.md "The store"). The response comes back as a list of byte chunks so the
server can ``writelines`` it without copying a big body into a bigger string.

Rules implemented here:

- Items and their syntax: RFC 9051 §6.4.5 (FETCH) and §7.5.2 (FETCH response); RFC 3501 §6.4.5
  for the IMAP4rev1-only items (RFC822, RFC822.HEADER, RFC822.TEXT).
- ``BODY.PEEK[...]`` is answered as ``BODY[...]``; a partial ``<origin.count>`` is answered as
  ``<origin>`` with at most ``count`` octets; an origin past the end gives an empty string
  (RFC 9051 §6.4.5). A section that does not exist (part number out of range, HEADER or TEXT of
  a part that is not a message) is answered with NIL, as Dovecot does.
- \\Seen is implied by BODY[...] (not PEEK), BINARY[...] (not PEEK), RFC822 and RFC822.TEXT
  (RFC 9051 §6.4.5, RFC 3516 §4.2); never in a read-only (EXAMINE) session (RFC 9051 §6.3.3).
- BINARY / BINARY.SIZE (RFC 3516): the content transfer encoding of a leaf part is undone
  (base64, quoted-printable as RFC 2045 §6.7 decodes it: `decode_qp`; 7bit/8bit/binary are
  identity). Any other encoding raises
  `UnknownCte`, which the session answers with ``NO [UNKNOWN-CTE]`` (RFC 3516 §4.3). Multipart
  and message parts and ``BINARY[]`` are returned as stored. Content with a NUL octet is sent as
  a literal8 ``~{n}`` (RFC 3516 §4.2), anything else as an ordinary literal.
- MODSEQ: RFC 7162 §3.1.4.1. With CONDSTORE enabled, a response that carries a \\Seen flag set
  implicitly by this FETCH also carries UID and MODSEQ (RFC 7162 §3.1).
- SAVEDATE: RFC 8514 §4 (``SAVEDATE "date-time"``).
- EMAILID / THREADID: RFC 8474 §5. EMAILID is ``M`` + the first 24 hex digits of the blob's
  sha256: every copy of the same octets (COPY, MOVE, a delivery to several local recipients) has
  the same id, and different octets a different one. THREADID is ``T`` + the first 24 hex digits
  of the sha256 of the thread's root Message-ID, taken as the first msg-id of References, else of
  In-Reply-To, else the message's own Message-ID (a message without any gets ``T`` + its blob
  hash: a thread of one). Well-formed threads (References starting at the root) share one id.
- PREVIEW: RFC 8970 §3, computed on demand (also for ``PREVIEW (LAZY)``).

No literal may carry NUL (RFC 9051 §4.3). APPEND stores parts that hold NUL base64-encoded
(`base64_nul_parts`, RFC 3516 §4.4); in what still holds NUL (a message delivered by SMTP, a
NUL in a header) BODY[], RFC822 and the other non-binary items send 0x80 in its place, as
Dovecot does (the size stays the same); BINARY sends the NUL in a literal8.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from postfach.imap.commands import FetchAttr, FetchBinarySize, FetchItem, FetchSection
from postfach.imap.response import astring, flag_list, format_date_time, nstring
from postfach.mime.stored import Parsed
from postfach.mime.structure import (
    Part,
    find_section,
    header_fields,
    imap_body,
    imap_bodystructure,
    imap_envelope,
    parse,
    preview,
    section_range,
)
from postfach.mime.text import decode_qp
from postfach.store.api import Flag, MessageMeta

__all__ = [
    "FetchResponse",
    "UnknownCte",
    "email_id",
    "fetch_plan",
    "fetch_response",
    "flags_lines",
    "format_flags",
    "implies_seen",
    "meta_only",
    "meta_response",
    "needs_data",
    "thread_id",
]


class UnknownCte(Exception):
    """BINARY of a part whose Content-Transfer-Encoding we cannot decode (RFC 3516 §4.3).

    The session answers the command with ``NO [UNKNOWN-CTE]``.
    """

    def __init__(self, encoding: str) -> None:
        super().__init__(f"unknown content transfer encoding {encoding!r}")
        self.encoding = encoding


@dataclass(frozen=True, slots=True)
class FetchResponse:
    """The response as chunks (for ``writelines``) and whether \\Seen must now be stored."""

    chunks: list[bytes] = field(default_factory=list)
    set_seen: bool = False

    @property
    def size(self) -> int:
        return sum(len(c) for c in self.chunks)

    def to_bytes(self) -> bytes:
        return b"".join(self.chunks)


# --------------------------------------------------------------------------------------------
# Small helpers shared with the view
# --------------------------------------------------------------------------------------------


def format_flags(flags: Flag, keywords: Sequence[str], recent: bool = False) -> bytes:
    """``(\\Seen $Forwarded)``: the flag-list of a FETCH FLAGS item (RFC 9051 §7.5.2);
    ``recent``: with ``\\Recent`` first (IMAP4rev1 sessions only, RFC 3501 §2.3.2)."""
    return _format_flags(int(flags), tuple(keywords), recent)


@functools.lru_cache(maxsize=4096)
def _format_flags(flags: int, keywords: tuple[str, ...], recent: bool) -> bytes:
    # FETCH 1:* (FLAGS) formats the same few combinations thousands of times; the enum
    # arithmetic behind Flag.names() was a quarter of such a command's time (py-spy).
    names = [*Flag(flags).names(), *keywords]
    if recent:
        names.insert(0, "\\Recent")
    return flag_list(names).encode("utf-8", "surrogateescape")


def implies_seen(items: Sequence[FetchItem]) -> bool:
    """True when these items set \\Seen on an unseen message (RFC 9051 §6.4.5).

    Lets the session store \\Seen *before* building the responses, so they show the stored flags
    and, with CONDSTORE, the new MODSEQ (pass ``flags_changed=True`` to `fetch_response`).
    """
    for item in items:
        if isinstance(item, FetchSection):
            if not item.peek:
                return True
        elif isinstance(item, FetchAttr) and item.name in ("RFC822", "RFC822.TEXT"):
            return True
    return False


def needs_data(items: Sequence[FetchItem]) -> bool:
    """True when answering these items reads the message octets (not only meta and structure).

    BINARY.SIZE of a part without a transfer encoding is answered from the structure; this
    function still says True for it (the session may load lazily anyway: the accessor passed to
    `fetch_response` is only called when needed).
    """
    for item in items:
        if isinstance(item, (FetchSection, FetchBinarySize)):
            return True
        if isinstance(item, FetchAttr) and item.name in _DATA_ATTRS:
            return True
    return False


_DATA_ATTRS: Final = frozenset({"RFC822", "RFC822.HEADER", "RFC822.TEXT", "PREVIEW", "THREADID"})
#: items answered from `MessageMeta` alone (no structure, no octets)
_META_ATTRS: Final = frozenset(
    {"UID", "FLAGS", "MODSEQ", "RFC822.SIZE", "INTERNALDATE", "SAVEDATE", "EMAILID"}
)


def meta_only(items: Sequence[FetchItem]) -> bool:
    """True when these items are answered from the message's `MessageMeta` alone: the session
    can build such responses for many messages without reading anything per message."""
    return all(isinstance(i, FetchAttr) and i.name in _META_ATTRS for i in items)


def email_id(meta: MessageMeta) -> str:
    """RFC 8474 EMAILID: the same for every copy of the same octets (see module docstring)."""
    return "M" + meta.blob[:24]


_MSG_ID = re.compile(rb"<[^<>\s]*>")


def thread_id(meta: MessageMeta, parsed: Parsed, data: bytes) -> str:
    """RFC 8474 THREADID derived from the thread's root Message-ID (see module docstring)."""
    root = parsed.part
    refs = header_fields(data, root.header_start, root.header_end, ("references",), False)
    m = _MSG_ID.search(refs)
    if m is None and parsed.envelope.in_reply_to:
        m = _MSG_ID.search(parsed.envelope.in_reply_to.encode("utf-8", "surrogateescape"))
    if m is None and parsed.envelope.message_id:
        m = _MSG_ID.search(parsed.envelope.message_id.encode("utf-8", "surrogateescape"))
    if m is None:
        return "T" + meta.blob[:24]
    return "T" + hashlib.sha256(m.group()).hexdigest()[:24]


# --------------------------------------------------------------------------------------------
# Transfer decoding for BINARY (RFC 3516)
# --------------------------------------------------------------------------------------------

_IDENTITY: Final = frozenset({"7bit", "8bit", "binary"})
_B64_JUNK = re.compile(rb"[^A-Za-z0-9+/]+")


def _b64decode(raw: bytes) -> bytes:
    """Lenient base64 as mail readers do: junk is skipped, missing padding tolerated."""
    clean = _B64_JUNK.sub(b"", raw)
    rest = len(clean) % 4
    if rest == 1:
        clean = clean[:-1]
    elif rest:
        clean += b"=" * (4 - rest)
    return binascii.a2b_base64(clean)


def _binary_node(part: Part, section: tuple[int, ...]) -> Part | None:
    return part if not section else find_section(part, section)


def _decoded(node: Part, data: bytes, whole: bool) -> bytes:
    """The content of ``node`` with its transfer encoding undone (RFC 3516 §4.2)."""
    if whole:  # BINARY[]: the message as stored
        return data[node.header_start : node.body_end]
    raw = data[node.body_start : node.body_end]
    if node.children or node.message is not None:
        return raw  # RFC 2045 §6.4: composite types carry no encoding of their own
    encoding = node.encoding
    if encoding in _IDENTITY:
        return raw
    if encoding == "base64":
        return _b64decode(raw)
    if encoding == "quoted-printable":
        return decode_qp(raw)
    raise UnknownCte(encoding)


_CTE_FIELD = re.compile(rb"(?im)^content-transfer-encoding[ \t]*:.*(?:\r?\n[ \t].*)*\r?\n")


def _header_end(header: bytes) -> tuple[bytes, bytes] | None:
    """A part's header as (its field lines, the empty line ending them), None if it has none."""
    if header in (b"\r\n", b"\n"):
        return b"", header
    for end, blank in ((b"\r\n\r\n", b"\r\n"), (b"\n\r\n", b"\r\n"), (b"\r\n\n", b"\n"),
                       (b"\n\n", b"\n")):  # fmt: skip
        if header.endswith(end):
            return header[: -len(blank)], blank
    return None


def _base64_lines(data: bytes) -> bytes:
    body = binascii.b2a_base64(data, newline=False)
    return b"\r\n".join(body[i : i + 76] for i in range(0, len(body), 76))


def base64_nul_parts(data: bytes) -> bytes:
    """``data`` with the body of every leaf part that holds a NUL octet encoded as base64.

    For a message APPENDed as literal8 (RFC 3516 §4.4). No literal of IMAP4rev1 or IMAP4rev2
    may carry NUL (RFC 9051 §4.3: CHAR8 excludes it), so BODY[] could not return such a part
    as stored; base64 keeps it exact for BINARY[] and BINARY.SIZE (the decoded octets are the
    ones sent) and makes BODY[] legal. Dovecot does the same. Parts without NUL are left as
    they are. A part with NUL and no empty line (parsed as a header without a body: no header
    holds NUL) is taken as a body without a header. NUL left in a real header is replaced by
    FETCH (`_Builder.octets`).
    """
    root = parse(data)
    leaves: list[Part] = []

    def walk(part: Part) -> None:
        if part.children:
            for child in part.children:
                walk(child)
        elif part.message is not None:
            walk(part.message)
        elif b"\x00" in data[part.header_start : part.body_end]:
            leaves.append(part)

    walk(root)
    out: list[bytes] = []
    pos = 0
    for part in sorted(leaves, key=lambda p: p.header_start):
        split = _header_end(data[part.header_start : part.header_end])
        if split is None and part.body_start == part.body_end:  # no header: all of it is body
            out += [data[pos : part.header_start], b"Content-Transfer-Encoding: base64\r\n\r\n",
                    _base64_lines(data[part.header_start : part.body_end])]  # fmt: skip
        elif split is not None and b"\x00" in data[part.body_start : part.body_end]:
            fields, blank = split
            out += [data[pos : part.header_start], _CTE_FIELD.sub(b"", fields),
                    b"Content-Transfer-Encoding: base64" + blank, blank,
                    _base64_lines(data[part.body_start : part.body_end])]  # fmt: skip
        else:  # NUL only in a header: the field stays, FETCH replaces the NUL
            continue
        pos = part.body_end
    if not out:
        return data
    out.append(data[pos:])
    return b"".join(out)


# --------------------------------------------------------------------------------------------
# The response
# --------------------------------------------------------------------------------------------


def _section_text(item: FetchSection) -> str:
    """The section as echoed in the response: ``1.2.HEADER.FIELDS (FROM TO)``."""
    parts = ".".join(str(n) for n in item.part)
    spec = item.spec.upper()
    if spec:
        parts = f"{parts}.{spec}" if parts else spec
        if spec.startswith("HEADER.FIELDS"):
            fields = b" ".join(astring(f) for f in item.fields).decode("utf-8", "surrogateescape")
            parts += f" ({fields})"
    return parts


class _Builder:
    """Collects text and literals; literals become chunks of their own (never copied)."""

    __slots__ = ("chunks", "text")

    def __init__(self, head: bytes) -> None:
        self.text: list[bytes] = [head]
        self.chunks: list[bytes] = []

    def add(self, piece: bytes) -> None:
        self.text.append(piece)

    def octets(self, value: bytes | None, binary: bool = False) -> None:
        """A body as a literal (literal8 when it holds NUL and ``binary``), or NIL."""
        if value is None:
            self.text.append(b"NIL")
            return
        if not value:
            self.text.append(b'""')
            return
        if b"\x00" in value:
            if binary:  # RFC 3516 §4.2: literal8 carries NUL
                self.text.append(b"~")
            else:  # RFC 9051 §4.3: no NUL in a literal; 0x80 as Dovecot, the size stays
                value = value.replace(b"\x00", b"\x80")
        self.text.append(b"{%d}\r\n" % len(value))
        self.chunks.append(b"".join(self.text))
        self.chunks.append(value)
        self.text = []

    def finish(self) -> list[bytes]:
        self.text.append(b")\r\n")
        self.chunks.append(b"".join(self.text))
        return self.chunks


def _partial(value: bytes | None, partial: tuple[int, int] | None) -> bytes | None:
    if value is None or partial is None:
        return value
    origin, count = partial
    if origin == 0 and count >= len(value):
        return value  # no copy
    return value[origin : origin + count]


def fetch_response(
    seq: int,
    meta: MessageMeta,
    items: Sequence[FetchItem],
    *,
    parsed: Callable[[], Parsed],
    data: Callable[[], bytes],
    uid: bool = False,
    condstore: bool = False,
    flags_changed: bool = False,
    readonly: bool = False,
    imap4rev2: bool = False,
    utf8: bool = False,
    recent: bool = False,
) -> FetchResponse:
    """Build ``* seq FETCH (...)`` for one message.

    ``parsed`` and ``data`` are called at most once each, and only when an item needs them.
    ``uid``: a UID FETCH: UID is always included (RFC 9051 §6.4.9), first unless the items
    name it. Items are answered in the order given, each once. ``flags_changed``: this
    command changed the flags (the session stored an implied \\Seen before calling): FLAGS is
    included even if not asked for (RFC 9051 §6.4.5), and with ``condstore`` UID and MODSEQ too
    (RFC 7162 §3.1). ``readonly``: EXAMINE, \\Seen is never implied. ``imap4rev2``: the client
    enabled IMAP4rev2 (message/global in BODYSTRUCTURE, RFC 9051 §7.5.2); ``utf8``: IMAP4rev2 or
    UTF8=ACCEPT is in effect, so PREVIEW text may be a UTF-8 quoted string (RFC 9051 §4.3).
    ``recent``: the message is \\Recent in this (IMAP4rev1) session; FLAGS shows it.

    If the items imply \\Seen and ``meta`` lacks it (and not ``readonly``), the result has
    ``set_seen=True`` and the FLAGS shown already include \\Seen: the session must store it. Its
    MODSEQ (if asked for) is the one before that store; sessions with CONDSTORE should rather
    store first (see `implies_seen`).

    Raises `UnknownCte` for BINARY of a part with an unknown transfer encoding.
    """
    items = tuple(items)
    set_seen = not readonly and _implies_seen(items) and not meta.flags & Flag.SEEN
    flags = meta.flags | Flag.SEEN if set_seen else meta.flags
    flags_changed = flags_changed or set_seen

    loaded: list[Parsed] = []
    octets: list[bytes] = []

    def get_parsed() -> Parsed:
        if not loaded:
            loaded.append(parsed())
        return loaded[0]

    def get_data() -> bytes:
        if not octets:
            octets.append(data())
        return octets[0]

    out = _Builder(b"* %d FETCH (" % seq)
    first = True
    for item in _plan(items, uid, flags_changed, condstore):
        if not first:
            out.add(b" ")
        first = False
        if isinstance(item, FetchAttr):
            _attr(out, item, meta, flags, get_parsed, get_data, imap4rev2, utf8, recent)
        elif isinstance(item, FetchSection):
            _section(out, item, get_parsed, get_data)
        else:
            _binary_size(out, item, get_parsed, get_data)
    return FetchResponse(out.finish(), set_seen)


@functools.lru_cache(maxsize=256)
def _implies_seen(items: tuple[FetchItem, ...]) -> bool:
    return implies_seen(items)


@functools.lru_cache(maxsize=256)
def _plan(
    items: tuple[FetchItem, ...], uid: bool, flags_changed: bool, condstore: bool
) -> tuple[FetchItem, ...]:
    """The items of one response in order: UID first when implied, each item once, FLAGS and
    MODSEQ added when implied (the same for every message of a command: computed once)."""
    wanted: list[FetchItem] = []
    seen_items: set[FetchItem] = set()
    names = {i.name for i in items if isinstance(i, FetchAttr)}
    if (uid or (flags_changed and condstore)) and "UID" not in names:
        wanted.append(FetchAttr("UID"))
    for item in items:
        if item not in seen_items:
            seen_items.add(item)
            wanted.append(item)
    if flags_changed and "FLAGS" not in names:
        wanted.append(FetchAttr("FLAGS"))
    if flags_changed and condstore and "MODSEQ" not in names:
        wanted.append(FetchAttr("MODSEQ"))
    return tuple(wanted)


def fetch_plan(
    items: Sequence[FetchItem], *, uid: bool = False, flags_changed: bool = False,
    condstore: bool = False,
) -> tuple[FetchItem, ...]:  # fmt: skip
    """The items `meta_response` answers, in order (the arguments as for `fetch_response`)."""
    return _plan(tuple(items), uid, flags_changed, condstore)


def flags_lines(
    plan: Sequence[FetchItem],
) -> Callable[[int, int, int, tuple[str, ...], bool], bytes] | None:
    """For a `fetch_plan` of FLAGS alone or with UID (FETCH 1:* (FLAGS), UID FETCH 1:*
    (FLAGS)): a function (seq, uid, flags as int, keywords, recent) -> the response line,
    the same octets `meta_response` gives; None for any other plan. It needs no `MessageMeta`:
    the session feeds it the view's flag array."""
    names = tuple(getattr(item, "name", "") for item in plan)
    if not all(isinstance(item, FetchAttr) for item in plan):
        return None
    fmt = _format_flags
    if names == ("FLAGS",):
        return lambda seq, uid, f, k, r: b"* %d FETCH (FLAGS %s)\r\n" % (seq, fmt(f, k, r))
    if names == ("UID", "FLAGS"):
        return lambda seq, uid, f, k, r: b"* %d FETCH (UID %d FLAGS %s)\r\n" % (
            seq, uid, fmt(f, k, r)
        )  # fmt: skip
    if names == ("FLAGS", "UID"):
        return lambda seq, uid, f, k, r: b"* %d FETCH (FLAGS %s UID %d)\r\n" % (
            seq, fmt(f, k, r), uid
        )  # fmt: skip
    return None


def meta_response(seq: int, meta: MessageMeta, plan: Sequence[FetchItem], recent: bool) -> bytes:
    """``* seq FETCH (...)`` for items that `meta_only` accepts, from a `fetch_plan`: the same
    octets `fetch_response` gives, for the many-message case (FETCH 1:* (FLAGS))."""
    flags = meta.flags
    parts = [_meta_attr(item.name, meta, flags, recent) for item in plan]  # type: ignore[union-attr]
    return b"* %d FETCH (%s)\r\n" % (seq, b" ".join(parts))


@functools.lru_cache(maxsize=8192)
def _internaldate(unix_seconds: int) -> bytes:
    # FETCH 1:* (UID RFC822.SIZE FLAGS INTERNALDATE), what a syncing client sends at every
    # run: the same dates formatted again each time (datetime formatting is slow).
    return b"INTERNALDATE " + format_date_time(unix_seconds).encode()


def _meta_attr(name: str, meta: MessageMeta, flags: Flag, recent: bool) -> bytes:
    if name == "FLAGS":
        return b"FLAGS " + format_flags(flags, meta.keywords, recent)
    if name == "UID":
        return b"UID %d" % meta.uid
    if name == "MODSEQ":  # RFC 7162 §3.1.4.1
        return b"MODSEQ (%d)" % meta.modseq
    if name == "RFC822.SIZE":
        return b"RFC822.SIZE %d" % meta.size
    if name == "INTERNALDATE":
        return _internaldate(meta.internal_date)
    if name == "SAVEDATE":  # RFC 8514 §4
        return b"SAVEDATE " + format_date_time(meta.save_date).encode()
    if name == "EMAILID":  # RFC 8474 §5.1
        return b"EMAILID (" + email_id(meta).encode() + b")"
    raise ValueError(f"not a metadata FETCH item {name!r}")


def _attr(
    out: _Builder,
    item: FetchAttr,
    meta: MessageMeta,
    flags: Flag,
    get_parsed: Callable[[], Parsed],
    get_data: Callable[[], bytes],
    imap4rev2: bool,
    utf8: bool,
    recent: bool = False,
) -> None:
    name = item.name
    if name in _META_ATTRS:
        out.add(_meta_attr(name, meta, flags, recent))
    elif name == "THREADID":  # RFC 8474 §5.2
        tid = thread_id(meta, get_parsed(), get_data())
        out.add(b"THREADID (" + tid.encode() + b")")
    elif name == "ENVELOPE":
        out.add(b"ENVELOPE " + imap_envelope(get_parsed().envelope))
    elif name == "BODYSTRUCTURE":
        out.add(b"BODYSTRUCTURE " + imap_bodystructure(get_parsed().part, imap4rev2=imap4rev2))
    elif name == "BODY":
        out.add(b"BODY " + imap_body(get_parsed().part))
    elif name in ("RFC822", "RFC822.HEADER", "RFC822.TEXT"):  # RFC 3501 §6.4.5
        spec = {"RFC822": "", "RFC822.HEADER": "HEADER", "RFC822.TEXT": "TEXT"}[name]
        span = section_range(get_parsed().part, (), spec)
        body = get_data()
        out.add(name.encode() + b" ")
        out.octets(None if span is None else body[span[0] : span[1]])
    elif name == "PREVIEW":  # RFC 8970 §3
        out.add(b"PREVIEW " + nstring(preview(get_data(), get_parsed().part), utf8=utf8))
    else:
        raise ValueError(f"unknown FETCH item {name!r}")


def _section(
    out: _Builder,
    item: FetchSection,
    get_parsed: Callable[[], Parsed],
    get_data: Callable[[], bytes],
) -> None:
    label = b"BINARY[" if item.binary else b"BODY["
    out.add(label + _section_text(item).encode("utf-8", "surrogateescape") + b"]")
    if item.partial is not None:
        out.add(b"<%d>" % item.partial[0])
    out.add(b" ")
    if not item.binary and not item.part and not item.spec:
        # BODY[] is the whole message (the root part spans every octet): no need to load the
        # stored structure (a third of a FETCH n BODY.PEEK[], py-spy).
        out.octets(_partial(get_data(), item.partial))
        return
    root = get_parsed().part
    value: bytes | None
    if item.binary:  # RFC 3516 §4.2
        node = _binary_node(root, item.part)
        value = None if node is None else _decoded(node, get_data(), not item.part)
        out.octets(_partial(value, item.partial), binary=True)
        return
    spec = item.spec.upper()
    span = section_range(root, item.part, spec)
    if span is None:
        value = None
    elif spec.startswith("HEADER.FIELDS"):
        value = header_fields(get_data(), span[0], span[1], item.fields, spec.endswith(".NOT"))
    else:
        body = get_data()
        value = body if span == (0, len(body)) else body[span[0] : span[1]]
    out.octets(_partial(value, item.partial))


def _binary_size(
    out: _Builder,
    item: FetchBinarySize,
    get_parsed: Callable[[], Parsed],
    get_data: Callable[[], bytes],
) -> None:
    out.add(b"BINARY.SIZE[" + ".".join(str(n) for n in item.part).encode() + b"] ")
    node = _binary_node(get_parsed().part, item.part)
    if node is None:
        out.add(b"NIL")
        return
    whole = not item.part
    if whole:
        size = node.body_end - node.header_start
    elif node.children or node.message is not None or node.encoding in _IDENTITY:
        size = node.size
    else:
        size = len(_decoded(node, get_data(), False))
    out.add(b"%d" % size)
