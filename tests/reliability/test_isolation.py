"""Account isolation (issue 6, point 5): as alice, try to reach bob's mail by every path.

Three accounts: alice@example.org, bob@example.org and bob@other.example. Every message of both
bobs contains ``BOBSECRET``; bob's folder names and keyword contain ``bobonly``. Alice then tries
every IMAP command with hostile mailbox names (``..``, ``/``, ``~``, namespaces, wildcards,
controls, modified UTF-7 and UTF-8 tricks), LIST/LSUB with hostile references and patterns, UIDs
and sequence numbers outside her view, QRESYNC with made-up known UIDs, SEARCH/ESEARCH, and IDLE
while bob gets mail; POP3 and SMTP AUTH with bob as authorization identity; and logins under
other spellings of her name. After every test (autouse fixture): no byte of bob's mail was in
any answer, both bobs' store state (folders, UIDs, flags, MODSEQs, subscriptions, usage) is
unchanged, none of alice's stored messages holds bob's secret, and the server logged no error.
"""

from __future__ import annotations

import re
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest
from isolation_support import (
    ALICE,
    ATTEMPTS,
    BOB,
    BOB_FOLDER,
    BOB_KEYWORD,
    BOB_SUBFOLDER,
    FOLDER_MARK,
    OTHER,
    PASSWORDS,
    SECRET,
    ErrorLog,
    ImapReply,
    RawImap,
    RawLines,
    b64,
    isolation_server,
    mail,
    plain,
    snapshot,
    stored_texts,
)

from postfach.auth.passwords import hash_password
from postfach.imap.utf7 import encode_mutf7
from support import RunningServer

pytestmark = pytest.mark.timeout(120)

APW, BPW = PASSWORDS[ALICE], PASSWORDS[BOB]


# ---- the server and its accounts --------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, ErrorLog]]:
    data: Path = tmp_path_factory.mktemp("isolation") / "data"
    with isolation_server(data) as (srv, errors):
        for i in (1, 2):
            srv.send([ALICE], mail("x@remote.example", ALICE, f"alice visible {i}", "alice text"))
        for i in range(1, 6):
            body = f"BOBSECRET inbox {i}"
            srv.send([BOB], mail("x@remote.example", BOB, f"BOBSECRET {i}", body))
        for i in (1, 2):
            srv.send([OTHER], mail("x@remote.example", OTHER, f"other {i}", "BOBSECRET other"))
        bob = RawImap(srv.port("imap"))
        bob.login(BOB, BPW)
        for name in (BOB_FOLDER, BOB_SUBFOLDER):
            assert bob.cmd(f'CREATE "{name}"').status == "OK"
        for name, n in ((BOB_FOLDER, 2), (BOB_SUBFOLDER, 1)):
            for i in range(n):
                msg = mail(BOB, BOB, f"BOBSECRET folder {i}", "BOBSECRET in a folder")
                r = bob.cmd(f'APPEND "{name}" (\\Seen) {{{len(msg)}+}}\r\n'.encode() + msg)
                assert r.status == "OK", r.raw
        assert bob.cmd(f'SUBSCRIBE "{BOB_FOLDER}"').status == "OK"
        assert bob.cmd("SELECT INBOX").status == "OK"
        assert bob.cmd(f"UID STORE 2 +FLAGS (\\Flagged {BOB_KEYWORD})").status == "OK"
        assert bob.cmd("UID STORE 4 +FLAGS (\\Deleted)").status == "OK"  # not expunged
        bob.close()
        alice = RawImap(srv.port("imap"))
        alice.login(ALICE, APW)
        assert alice.cmd('CREATE "Work"').status == "OK"
        msg = mail(ALICE, ALICE, "alice work", "alice text in Work")
        assert alice.cmd(f"APPEND Work {{{len(msg)}+}}\r\n".encode() + msg).status == "OK"
        alice.close()
        errors.take()
        yield srv, errors
        print("\nisolation attempts per protocol:", dict(sorted(ATTEMPTS.items())))


@pytest.fixture(autouse=True)
def unchanged(
    world: tuple[RunningServer, ErrorLog], request: pytest.FixtureRequest
) -> Iterator[None]:
    """After every test: both bobs exactly as before, alice holds none of their bytes.

    (A test marked ``bob_gets_mail`` changes bob's account itself, on purpose.)
    """
    srv, errors = world
    before = {name: snapshot(srv, name) for name in (BOB, OTHER)}
    yield
    if request.node.get_closest_marker("bob_gets_mail") is None:
        for name in (BOB, OTHER):
            assert snapshot(srv, name) == before[name], f"{name} changed"
    for text in stored_texts(srv, ALICE):
        assert SECRET not in text, "bob's mail reached alice's store"
    assert errors.take() == []


@pytest.fixture
def srv(world: tuple[RunningServer, ErrorLog]) -> RunningServer:
    return world[0]


@pytest.fixture
def alice(srv: RunningServer) -> Iterator[RawImap]:
    conn = RawImap(srv.port("imap"))
    conn.login(ALICE, APW)
    yield conn
    conn.close()


def alice_names(srv: RunningServer) -> set[str]:
    acc = srv.store.get_account(ALICE)
    assert acc is not None
    return {b.name for b in srv.store.list_mailboxes(acc.id)}


# ---- checks -----------------------------------------------------------------------------------


def clean(r: ImapReply, *, names_typed: bool = False) -> None:
    """No byte of bob's mail; bob's folder names only where alice typed them herself."""
    assert SECRET.lower() not in r.raw.lower(), r.raw[:2000]
    assert b"SERVERBUG" not in r.raw, r.raw
    if not names_typed:
        for line in r.untagged:
            assert FOLDER_MARK not in line.lower(), line


def refused(r: ImapReply, *, bad_ok: bool = True) -> None:
    """An error where one is due: NO with a response code, or BAD."""
    clean(r, names_typed=True)
    allowed = ("NO", "BAD") if bad_ok else ("NO",)
    assert r.status in allowed, r.raw
    if r.status == "NO":
        assert r.code, f"NO without a response code: {r.tagged!r}"


def reset(conn: RawImap, r: ImapReply) -> None:
    """After a BAD, an OK resets the server's BAD counter (it closes after 20 in a row)."""
    if r.status == "BAD":
        assert conn.cmd("NOOP").status == "OK"


def astring(name: str | bytes) -> bytes:
    """A mailbox argument: quoted when it can be, else a LITERAL+ literal (controls, UTF-8)."""
    raw = name.encode() if isinstance(name, str) else name
    if all(0x20 <= b < 0x7F for b in raw):
        return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d+}\r\n" % len(raw) + raw


# Every way we could think of to name somebody else's mailbox, or to escape one's own.
PATH_TRICKS = [
    "../bob@example.org/INBOX", "../bob@example.org", "../bob/INBOX", "..", "../", ".", "./INBOX",
    "/", "/bob", "/bob@example.org/INBOX", "//INBOX", "///", "INBOX/../../bob@example.org",
    "INBOX/../../bob/INBOX", "INBOX/..", "INBOX/.", "INBOX//", "INBOX/", "Work/../INBOX",
    "..\\bob\\INBOX", "INBOX\\..\\..\\bob", "\\\\bob", "~bob", "~bob/INBOX",
    "~bob@example.org/INBOX", "~/INBOX", "~", "#Users/bob", "#Users/bob@example.org/INBOX",
    "#user/bob/INBOX", "#shared", "#shared/bob", "#shared/INBOX", "#public/INBOX", "#mh/INBOX",
    "#news.comp.mail", "Other Users/bob", "Other Users/bob@example.org/INBOX",
    "Shared Folders/INBOX", "user/bob", "user.bob", "user/bob@example.org/INBOX",
    "bob@example.org/INBOX", "bob@example.org", "bob", "bob/INBOX", "bob@other.example/INBOX",
    "example.org/bob/INBOX", BOB_FOLDER, BOB_SUBFOLDER, f"../bob@example.org/{BOB_FOLDER}",
    f"INBOX/../{BOB_FOLDER}", f"~bob/{BOB_FOLDER}", "%", "*", "INBOX*", "INBOX%", "*/INBOX",
    "%/%", "%/INBOX", "bob*", "*bob*",
    # modified UTF-7: "../", "..", "/", "INBOX/.." encoded; ASCII that must not be encoded;
    # unterminated, invalid alphabet, half UTF-16 units, lone surrogates, adjacent runs
    "&AC4ALgAv-bob@example.org/INBOX", "&AC4ALg-", "&AC8-INBOX", "INBOX&AC8ALgAu-",
    "&AC4ALgAv-&AC4ALgAv-bob", "&AEkATgBCAE8AWA-", "&AGk-nbox", "&ACo-", "&ACU-", "&AAA-",
    "&AA0ACg-", "&-", "&", "&AC4", "&ZeVnLIqe", "&Jjo", "&Jjo-&Jjo-", "&2D3eAA-", "&2D0-",
    "&AC4ALgAv", "&!!-", "&,,,-", "&Jj-", "&Jjo-/../&Jjo-", "&AGIAbwBi-@example.org/INBOX",
]  # fmt: skip

# Names with controls and UTF-8, sent as literals (UTF-8 after ENABLE UTF8=ACCEPT).
CONTROL_TRICKS: list[bytes] = [
    b"INBOX\x00../bob", b"\x00", b"../bob\r\nZ9 SELECT INBOX", b"bob\n", b"INBOX\r", b"\x7f",
    b"bob@example.org\x00INBOX", b"\xc2\x85bob", b"\x1b[2J",
]  # fmt: skip
UTF8_TRICKS: list[str] = [
    "\u2024\u2024/bob@example.org/INBOX",  # one-dot leaders
    "\uff0e\uff0e/bob@example.org/INBOX",  # fullwidth full stops (NFKC would make "..")
    "\u2215bob@example.org\u2215INBOX",  # division slash
    "\uff0fbob@example.org/INBOX",  # fullwidth solidus
    ".\u0307./bob",  # combining dot above: NFC keeps it a separate level name
    "Geheim-b\u006f\u0308bonly",  # decomposed o-umlaut: NFC composes it
    "\u0130NBOX",  # capital I with dot above
    "\u0131nbox",  # dotless i: its str.upper() is "INBOX"
    "\u212aelvin",
    "bob\u200b@example.org/INBOX",  # zero-width space
    "\u202ebob",  # right-to-left override
    "bob\ufeff",
]
#: Spellings of alice's own INBOX: these must open her INBOX (2 messages) and nothing else.
INBOX_SPELLINGS = ["INBOX", "inbox", "InBoX", "iNbOx"]


# ---- mailbox names in every command -----------------------------------------------------------


def _all_names() -> list[bytes]:
    return [n.encode() for n in PATH_TRICKS] + CONTROL_TRICKS


NAME_COMMANDS = ["SELECT", "EXAMINE", "STATUS", "DELETE", "GETQUOTAROOT", "APPEND", "RENAME-FROM",
                 "COPY", "MOVE", "UNSUBSCRIBE"]  # fmt: skip


@pytest.mark.parametrize("command", NAME_COMMANDS)
def test_hostile_names_reach_nothing(alice: RawImap, srv: RunningServer, command: str) -> None:
    """Every hostile name is refused (NO with a code, or BAD) and shows nothing of bob's."""
    note = b"From: <alice@example.org>\r\nSubject: probe\r\n\r\nalice probe\r\n"
    for name in _all_names():
        arg = astring(name)
        if command in ("COPY", "MOVE"):
            assert alice.cmd("SELECT INBOX").status == "OK"
            r = alice.cmd(b"UID " + command.encode() + b" 1 " + arg)
        elif command == "STATUS":
            r = alice.cmd(b"STATUS " + arg + b" (MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ SIZE)")
        elif command == "APPEND":
            r = alice.cmd(b"APPEND " + arg + b" {%d+}\r\n" % len(note) + note)
        elif command == "RENAME-FROM":
            r = alice.cmd(b"RENAME " + arg + b' "Loot"')
        elif command == "UNSUBSCRIBE":
            r = alice.cmd(b"UNSUBSCRIBE " + arg)
            if r.status == "OK":  # RFC 9051 §6.3.7 allows unsubscribing any name
                clean(r)
                continue
        else:
            r = alice.cmd(command.encode() + b" " + arg)
        refused(r)
        if command in ("SELECT", "EXAMINE") and r.status == "NO":
            assert not any(b"EXISTS" in ln for ln in r.untagged), r.raw
        reset(alice, r)
    assert "Loot" not in alice_names(srv)
    assert alice.cmd("SELECT INBOX").untagged.count(b"* 2 EXISTS") == 1


def test_create_rename_subscribe_stay_in_alices_account(alice: RawImap, srv: RunningServer) -> None:
    """CREATE/RENAME/SUBSCRIBE with hostile names either fail or make a folder of alice's own,
    empty, which she can delete again; nothing appears in bob's account."""
    before = alice_names(srv)
    made = 0
    for name in _all_names():
        arg = astring(name)
        r = alice.cmd(b"CREATE " + arg)
        if r.status == "OK":
            made += 1
            clean(r, names_typed=True)
            new = alice_names(srv) - before
            assert new, name  # the folder is alice's
            st = alice.cmd(b"STATUS " + arg + b" (MESSAGES)")
            assert st.status == "OK" and b"(MESSAGES 0)" in st.raw, st.raw
            for created in sorted(new, key=len, reverse=True):
                d = alice.cmd(b"DELETE " + astring(encode_mutf7(created)))
                assert d.status == "OK", d.raw
        else:
            refused(r)
            reset(alice, r)
        r = alice.cmd(b'RENAME "Work" ' + arg)
        if r.status == "OK":
            clean(r, names_typed=True)
            new = alice_names(srv) - before
            assert new and "Work" not in alice_names(srv)
            [target] = [n for n in new if not any(o.startswith(n + "/") for o in new)]
            back = alice.cmd(b"RENAME " + astring(encode_mutf7(target)) + b' "Work"')
            assert back.status == "OK", back.raw
            for leftover in sorted(alice_names(srv) - before, key=len, reverse=True):
                assert alice.cmd(b"DELETE " + astring(encode_mutf7(leftover))).status == "OK"
        else:
            refused(r)
            reset(alice, r)
        r = alice.cmd(b"SUBSCRIBE " + arg)
        if r.status == "OK":
            lsub = alice.cmd('LSUB "" "*"')
            assert lsub.status == "OK"
            assert SECRET.lower() not in lsub.raw.lower()
            u = alice.cmd(b"UNSUBSCRIBE " + arg)
            assert u.status == "OK", u.raw
        else:
            refused(r)
            reset(alice, r)
    assert alice_names(srv) == before
    assert made < len(_all_names())  # most tricks must be refused outright
    work = alice.cmd('STATUS "Work" (MESSAGES)')
    assert b"(MESSAGES 1)" in work.raw


def test_inbox_spellings_open_alices_inbox(alice: RawImap) -> None:
    for name in INBOX_SPELLINGS:
        r = alice.cmd(f'EXAMINE "{name}"')
        clean(r)
        assert r.status == "OK" and b"* 2 EXISTS" in r.untagged, r.raw
        f = alice.cmd("FETCH 1:* (BODY.PEEK[])")
        clean(f)
        assert f.raw.count(b"alice visible") == 2


def test_utf8_names_after_enable(alice: RawImap, srv: RunningServer) -> None:
    """UTF-8 names (RFC 6855) that look like, or normalise to, paths or bob's names."""
    assert alice.cmd("ENABLE UTF8=ACCEPT").status == "OK"
    before = alice_names(srv)
    for name in UTF8_TRICKS:
        arg = astring(name)
        for verb in (b"SELECT ", b"STATUS ", b"DELETE ", b"RENAME "):
            tail = {b"STATUS ": b" (MESSAGES)", b"RENAME ": b' "Loot"'}.get(verb, b"")
            r = alice.cmd(verb + arg + tail)
            refused(r)
            reset(alice, r)
        r = alice.cmd(b"CREATE " + arg)
        if r.status == "OK":
            st = alice.cmd(b"STATUS " + arg + b" (MESSAGES)")
            assert b"(MESSAGES 0)" in st.raw, st.raw
            for created in alice_names(srv) - before:
                assert alice.cmd(b"DELETE " + astring(created)).status == "OK"
        else:
            refused(r)
            reset(alice, r)
    assert alice_names(srv) == before


# ---- LIST and LSUB ----------------------------------------------------------------------------

REFERENCES = ["", "../", "..", "/", "//", "~bob", "~bob/", "~", "#Users/", "#shared/", "#public/",
              "Other Users/", "bob@example.org/", "INBOX/../../", "%", "*", "&AC4ALgAv-",
              "../bob@example.org/", "\\"]  # fmt: skip
PATTERNS = ["*", "%", "%/%", "%/%/%", "../*", "..", "/*", "#*", "~*", "~bob/*", "*bob*",
            "bob@example.org/*", "&AC4ALgAv-*", "INBOX*", "", "Geheim*", "*/*", "%bob%",
            "Other Users/*", "#Users/*", "#shared/*"]  # fmt: skip


def list_names(r: ImapReply, kind: bytes = b"LIST") -> list[str]:
    """Mailbox names in untagged LIST/LSUB lines (quoted, literal or atom)."""
    out = []
    for line in r.untagged:
        if not line.startswith(b"* " + kind + b" "):
            continue
        m = re.match(rb'\* [A-Z]+ \([^)]*\) (?:"[^"]*"|NIL) (.*)$', line, re.DOTALL)
        assert m, line
        rest = m.group(1)
        if rest.startswith(b'"'):
            q = re.match(rb'"((?:[^"\\]|\\.)*)"', rest)
            assert q, line
            out.append(re.sub(rb"\\(.)", rb"\1", q.group(1)).decode())
        elif rest.startswith(b"{"):
            n = int(rest[1 : rest.index(b"}")])
            start = rest.index(b"\r\n") + 2
            out.append(rest[start : start + n].decode())
        else:
            out.append(rest.split(b" ", 1)[0].decode())
    return out


def test_list_and_lsub_show_only_alices_folders(alice: RawImap, srv: RunningServer) -> None:
    mine = {encode_mutf7(n) for n in alice_names(srv)} | {""}
    seen = 0
    for ref in REFERENCES:
        for pat in PATTERNS:
            for verb, kind in (("LIST", b"LIST"), ("LSUB", b"LSUB")):
                r = alice.cmd(f"{verb} {astring(ref).decode()} {astring(pat).decode()}")
                clean(r)
                assert r.status in ("OK", "BAD"), r.raw
                reset(alice, r)
                names = list_names(r, kind)
                seen += len(names)
                assert set(names) <= mine, (ref, pat, names)
    assert seen > 0  # the matrix did list alice's own folders
    extended = [
        'LIST (SUBSCRIBED) "" "*"',
        'LIST (REMOTE) "" "*"',
        'LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"',
        'LIST "" ("*" "../*" "~bob*" "#*")',
        'LIST "" "*" RETURN (STATUS (MESSAGES UIDNEXT UIDVALIDITY SIZE HIGHESTMODSEQ) '
        "SUBSCRIBED CHILDREN SPECIAL-USE)",
        'LIST "~bob/" "*" RETURN (STATUS (MESSAGES))',
        'LIST "" "bob@example.org/*" RETURN (STATUS (MESSAGES))',
        'LIST (SPECIAL-USE) "" "*"',
        "NAMESPACE",
    ]
    for text in extended:
        r = alice.cmd(text)
        clean(r)
        assert r.status in ("OK", "BAD"), r.raw
        reset(alice, r)
        assert set(list_names(r)) <= mine, (text, r.raw)
        for line in r.untagged:
            if line.startswith(b"* STATUS "):
                assert b"(MESSAGES 2" in line or b"MESSAGES 1" in line or b"MESSAGES 0" in line
    ns = alice.cmd("NAMESPACE")
    assert b"* NAMESPACE ((" in ns.raw and ns.raw.count(b"NIL NIL") == 1, ns.raw  # personal only


# ---- UIDs, sequence numbers and searches outside the view -------------------------------------


def fetched_uids(r: ImapReply) -> set[int]:
    return {int(m) for m in re.findall(rb"^\* \d+ FETCH \(.*?UID (\d+)", r.raw, re.M)}


MESSAGE_COMMANDS = [
    # (command, expected status); alice's INBOX has UIDs 1 and 2, bob's INBOX has 1..5
    ("UID FETCH 3:5 (BODY[] FLAGS)", "OK"),
    ("UID FETCH 1:* (UID BODY.PEEK[] FLAGS)", "OK"),
    ("UID FETCH * (UID BODY.PEEK[])", "OK"),
    ("UID FETCH 4294967295 (BODY.PEEK[])", "OK"),
    ("UID FETCH 4294967296 (BODY.PEEK[])", "BAD"),
    ("UID FETCH 0 (BODY.PEEK[])", "BAD"),
    ("UID FETCH 3,4,5,99,100000 (BODY.PEEK[] BINARY.PEEK[1] RFC822.SIZE ENVELOPE)", "OK"),
    ("UID FETCH 3:5 (BODYSTRUCTURE PREVIEW EMAILID THREADID SAVEDATE MODSEQ)", "OK"),
    ("UID FETCH 1:5 (FLAGS) (CHANGEDSINCE 0)", "OK"),
    ("FETCH 3 (BODY.PEEK[])", "BAD"),
    ("FETCH 1:5 (BODY.PEEK[])", "BAD"),
    ("FETCH 4294967295 (BODY.PEEK[])", "BAD"),
    ("FETCH 0 (BODY.PEEK[])", "BAD"),
    ("FETCH * (UID BODY.PEEK[])", "OK"),
    ("FETCH $ (BODY.PEEK[])", "OK"),
    ("UID FETCH $ (BODY.PEEK[])", "OK"),
    ("FETCH 1:* (BODY.PEEK[HEADER.FIELDS (Subject)] BODY.PEEK[TEXT]<0.100>)", "OK"),
    ("UID STORE 3:5 +FLAGS (\\Deleted \\Seen $Stolen)", "OK"),
    ("UID STORE 4 -FLAGS (\\Deleted)", "OK"),
    ("UID STORE 2:5 (UNCHANGEDSINCE 1) +FLAGS.SILENT (\\Answered)", "OK"),
    ("STORE 3:5 +FLAGS (\\Deleted)", "BAD"),
    ("UID COPY 3:5 Work", "OK"),
    ("UID MOVE 3:5 Work", "OK"),
    ("COPY 3:5 Work", "BAD"),
    ("UID EXPUNGE 3:5", "OK"),
    ("UID EXPUNGE 4", "OK"),
    ("SEARCH UID 3:5", "OK"),
    ("UID SEARCH UID 1:*", "OK"),
    ("SEARCH TEXT BOBSECRET", "OK"),
    ("SEARCH BODY BOBSECRET", "OK"),
    ("SEARCH SUBJECT BOBSECRET", "OK"),
    ("SEARCH KEYWORD $Bobonly", "OK"),
    ("SEARCH FLAGGED", "OK"),
    ("SEARCH DELETED", "OK"),
    ("SEARCH RETURN (ALL COUNT MIN MAX) UID 1:100", "OK"),
    ("UID SEARCH RETURN (ALL COUNT) TEXT BOBSECRET", "OK"),
    ("SEARCH RETURN (SAVE) UID 3:5", "OK"),
    ("SEARCH MODSEQ 1", "OK"),
    ("SEARCH 1:5", "OK"),  # a search key, not a command target: lenient, only 1 and 2 match
    ("NOTIFY SET (selected MessageNew (UID BODY[])) (subtree INBOX (MessageNew))", "BAD"),
    ("NOTIFY SET (mailboxes ~bob (MessageNew))", "BAD"),
    ('ID ("name" "probe" "user" "bob@example.org")', "OK"),
    ('GETQUOTA ""', "OK"),
    ('GETQUOTA "bob@example.org"', "NO"),
    ('GETQUOTA "#user/bob"', "NO"),
    ('SETQUOTA "" (STORAGE 1)', "NO"),
    ('SETQUOTA "bob@example.org" (STORAGE 1)', "NO"),
    ("GETQUOTAROOT INBOX", "OK"),
]


def test_uids_and_sequence_numbers_outside_the_view(alice: RawImap) -> None:
    sel = alice.cmd("SELECT INBOX")
    assert b"* 2 EXISTS" in sel.untagged and FOLDER_MARK not in sel.raw.lower(), sel.raw
    for text, want in MESSAGE_COMMANDS:
        r = alice.cmd(text)
        if want == "OK":
            clean(r)
            assert r.status == "OK", (text, r.raw)
        else:
            refused(r)
            assert r.status == want, (text, r.raw)
        reset(alice, r)
        assert fetched_uids(r) <= {1, 2}, (text, r.raw)
        for line in r.untagged:
            if line.startswith((b"* SEARCH", b"* ESEARCH")):
                numbers = re.sub(rb"\((?:MODSEQ|TAG) [^)]*\)|COUNT \d+", b"", line)
                assert not re.search(rb"\b[3-9]\b", numbers.split(b"UID", 1)[-1]), (text, line)
        if text.startswith("UID FETCH 3:5") or text.startswith("UID FETCH 3,4"):
            assert not any(b" FETCH " in ln for ln in r.untagged), (text, r.raw)
    # what happened to alice's own mail is hers: UID 1, 2 still there, Work got no copy of bob's
    f = alice.cmd("UID FETCH 1:* (UID)")
    assert fetched_uids(f) == {1, 2}
    assert b"(MESSAGES 1)" in alice.cmd('STATUS "Work" (MESSAGES)').raw
    alice.cmd("UID STORE 1:2 -FLAGS.SILENT (\\Deleted \\Answered)")


def test_emailid_of_bobs_message_finds_nothing(alice: RawImap, srv: RunningServer) -> None:
    bob = srv.store.get_account(BOB)
    assert bob is not None
    inbox = srv.store.get_mailbox(bob.id, "INBOX")
    assert inbox is not None
    ids = [f"M{m.blob[:24]}" for m in srv.store.list_messages(inbox.id)]
    assert alice.cmd("SELECT INBOX").status == "OK"
    for emailid in ids:
        r = alice.cmd(f"UID SEARCH EMAILID {emailid}")
        clean(r)
        assert r.status == "OK" and r.untagged == [b"* SEARCH"], r.raw


def test_qresync_select_with_fake_known_uids(alice: RawImap, srv: RunningServer) -> None:
    bob = srv.store.get_account(BOB)
    assert bob is not None
    bob_inbox = srv.store.get_mailbox(bob.id, "INBOX")
    assert bob_inbox is not None
    assert alice.cmd("ENABLE QRESYNC").status == "OK"
    for validity in (bob_inbox.uidvalidity, 1, 4294967295):
        for params in (f"{validity} 1", f"{validity} 1 1:10", f"{validity} 1 1:5 (1:5 1:5)",
                       f"{validity} 1 3:4294967295 (1,2,3 1,2,3)"):  # fmt: skip
            r = alice.cmd(f"SELECT INBOX (QRESYNC ({params}))")
            clean(r)
            assert r.status == "OK", r.raw
            assert fetched_uids(r) <= {1, 2}, r.raw
            f = alice.cmd("UID FETCH 1:10 (FLAGS) (CHANGEDSINCE 1 VANISHED)")
            clean(f)
            assert f.status == "OK" and fetched_uids(f) <= {1, 2}, f.raw
    bad_selects = ("SELECT INBOX (QRESYNC (0 1))", "SELECT INBOX (QRESYNC (1 1 0:5))",
                   f"EXAMINE {BOB_FOLDER} (QRESYNC (1 1))")  # fmt: skip
    for bad in bad_selects:
        r = alice.cmd(bad)
        refused(r)
        reset(alice, r)


@pytest.mark.bob_gets_mail
def test_idle_hears_nothing_of_bobs_mail(alice: RawImap, srv: RunningServer) -> None:
    assert alice.cmd("SELECT INBOX").status == "OK"
    alice.n += 1
    alice.sock.sendall(b"I1 IDLE\r\n")
    assert alice._line().startswith(b"+ ")
    srv.send([BOB, OTHER], mail("x@remote.example", BOB, "BOBSECRET late", "BOBSECRET idle"))
    bob = RawImap(srv.port("imap"))
    bob.login(BOB, BPW)
    bob.cmd("SELECT INBOX")
    bob.cmd(f"UID STORE 1 +FLAGS ({BOB_KEYWORD})")
    bob.close()
    srv.send([ALICE], mail("x@remote.example", ALICE, "alice idle", "for alice"))
    line = alice._line()
    assert line == b"* 3 EXISTS", line  # alice's own delivery, and nothing before it
    alice.sock.sendall(b"DONE\r\n")
    rest = [alice._line()]
    while not rest[-1].startswith(b"I1 "):
        rest.append(alice._line())
    assert rest[-1].startswith(b"I1 OK"), rest
    assert all(SECRET not in ln and FOLDER_MARK not in ln.lower() for ln in rest), rest
    f = alice.cmd("UID FETCH 3 (BODY.PEEK[])")
    clean(f)
    assert b"for alice" in f.raw
    assert alice.cmd("UID STORE 3 +FLAGS.SILENT (\\Deleted)").status == "OK"
    assert alice.cmd("UID EXPUNGE 3").status == "OK"


# ---- authentication identities ----------------------------------------------------------------


def imap_auth(srv: RunningServer, initial: str) -> ImapReply:
    conn = RawImap(srv.port("imap"))
    try:
        return conn.cmd(f"AUTHENTICATE PLAIN {initial}", count="imap-auth")
    finally:
        conn.close()


AUTHZ_FOREIGN = [BOB, "BOB@EXAMPLE.ORG", " bob@example.org", "bob@example.org ", OTHER, "bob",
                 "*", "root", "postmaster@example.org", "alice@example.org\u200b",
                 "alice@other.example", "alice"]  # fmt: skip


def test_imap_authenticate_with_foreign_authzid_is_refused(srv: RunningServer) -> None:
    for authzid in AUTHZ_FOREIGN:
        r = imap_auth(srv, plain(authzid, ALICE, APW))
        assert r.status == "NO" and r.code == "AUTHORIZATIONFAILED", (authzid, r.raw)
    for authzid in ("", ALICE, "ALICE@example.org"):
        r = imap_auth(srv, plain(authzid, ALICE, APW))
        assert r.status == "OK" and b"alice@example.org authenticated" in r.raw, (authzid, r.raw)
    # bob's authcid with alice's password, or bob's password under alice's name: no
    for creds in (plain(ALICE, BOB, APW), plain(BOB, ALICE, BPW), plain("", BOB, APW)):
        r = imap_auth(srv, creds)
        assert r.status == "NO" and r.code == "AUTHENTICATIONFAILED", r.raw
    # malformed PLAIN: extra NUL fields, missing fields
    for raw in (b"bob\0alice@example.org\0" + APW.encode() + b"\0", b"\0\0", b"alice@example.org"):
        r = imap_auth(srv, b64(raw))
        assert r.status == "BAD", r.raw


LOGIN_SPELLINGS = [
    (ALICE, True), ("ALICE@EXAMPLE.ORG", True), ("Alice@Example.Org", True),
    ("alice", False), ("ALICE", False), ("alice@example.org.", False), ("alice@EXAMPLE", False),
    ("alice@other.example", False), ("alice%example.org", False), ("alice@example.org\tx", False),
    ("@example.org", False), ("*", False), ("%", False), ("alice@example.org/bob", False),
]  # fmt: skip


def test_login_spellings_map_to_alice_only(srv: RunningServer) -> None:
    for user, ok in LOGIN_SPELLINGS:
        conn = RawImap(srv.port("imap"))
        r = conn.cmd(b"LOGIN " + astring(user) + b" " + astring(APW), count="imap-auth")
        if ok:
            assert r.status == "OK" and b"alice@example.org authenticated" in r.raw, (user, r.raw)
            sel = conn.cmd("EXAMINE INBOX")
            assert b"* 2 EXISTS" in sel.untagged
            f = conn.cmd("FETCH 1:* (BODY.PEEK[])")
            clean(f)
            assert f.raw.count(b"alice visible") == 2
        else:
            assert r.status == "NO" and r.code == "AUTHENTICATIONFAILED", (user, r.raw)
        conn.close()
    # the bob of the other domain is his own account, with his own password
    conn = RawImap(srv.port("imap"))
    assert conn.cmd(f'LOGIN "{OTHER}" "{BPW}"').status == "NO"
    conn.close()


# ---- POP3 -------------------------------------------------------------------------------------


def pop3(srv: RunningServer) -> RawLines:
    p = RawLines(srv.port("pop3"))
    assert p.line().startswith(b"+OK")
    return p


def pop_cmd(p: RawLines, line: str, multiline: bool = False) -> bytes:
    from isolation_support import ATTEMPTS as counter

    counter["pop3"] += 1
    p.send(line)
    reply = p.pop_reply(multiline)
    assert SECRET not in reply, reply
    return reply


def test_pop3_authzid_and_login_spellings(srv: RunningServer) -> None:
    for authzid in AUTHZ_FOREIGN:
        p = pop3(srv)
        reply = pop_cmd(p, f"AUTH PLAIN {plain(authzid, ALICE, APW)}")
        assert reply.startswith(b"-ERR [AUTH]"), (authzid, reply)
        p.close()
    for authzid in ("", ALICE, "ALICE@example.org"):
        p = pop3(srv)
        reply = pop_cmd(p, f"AUTH PLAIN {plain(authzid, ALICE, APW)}")
        assert reply.startswith(b"+OK") and b"alice@example.org" in reply, reply
        assert pop_cmd(p, "QUIT").startswith(b"+OK")
        p.close()
    # AUTH PLAIN after an empty challenge, AUTH LOGIN with and without initial response
    p = pop3(srv)
    assert pop_cmd(p, "AUTH PLAIN") == b"+ "
    assert pop_cmd(p, plain(BOB, ALICE, APW)).startswith(b"-ERR [AUTH]")
    assert pop_cmd(p, "AUTH LOGIN") == b"+ VXNlcm5hbWU6"
    assert pop_cmd(p, b64(BOB)) == b"+ UGFzc3dvcmQ6"
    assert pop_cmd(p, b64(APW)).startswith(b"-ERR [AUTH]")
    assert pop_cmd(p, f"AUTH LOGIN {b64(ALICE)}") == b"+ UGFzc3dvcmQ6"
    assert pop_cmd(p, b64(BPW)).startswith(b"-ERR [AUTH]")
    p.close()
    for user, ok in LOGIN_SPELLINGS:
        if "\t" in user:
            continue
        p = pop3(srv)
        assert pop_cmd(p, f"USER {user}").startswith(b"+OK")
        reply = pop_cmd(p, f"PASS {APW}")
        assert reply.startswith(b"+OK" if ok else b"-ERR [AUTH]"), (user, reply)
        if ok:
            assert b"alice@example.org" in reply
            assert pop_cmd(p, "QUIT").startswith(b"+OK")
        p.close()
    p = pop3(srv)
    assert b"APOP" not in pop_cmd(p, "CAPA", multiline=True)  # no APOP: nothing to try there
    assert pop_cmd(p, "APOP bob@example.org 0123456789abcdef0123456789abcdef").startswith(b"-ERR")
    p.close()


def test_pop3_sees_only_alices_messages(srv: RunningServer) -> None:
    p = pop3(srv)
    pop_cmd(p, f"USER {ALICE}")
    assert pop_cmd(p, f"PASS {APW}").startswith(b"+OK")
    listing = pop_cmd(p, "LIST", multiline=True)
    assert listing.count(b"\r\n") == 2, listing  # two messages: alice's INBOX
    for n in (1, 2):
        assert b"alice visible" in pop_cmd(p, f"RETR {n}", multiline=True)
    for arg in ("3", "5", "0", "-1", "4294967296", "99999999999999999999", "1.5", "0x1", "+3",
                " 3", "3 ", "bob", "1 2"):  # fmt: skip
        for verb, multi in (("RETR", True), ("TOP", True), ("DELE", False), ("LIST", False),
                            ("UIDL", False)):  # fmt: skip
            line = f"{verb} {arg}" if verb != "TOP" else f"TOP {arg} 0"
            reply = pop_cmd(p, line, multiline=multi)
            assert reply.startswith(b"-ERR"), (line, reply)
            assert pop_cmd(p, "NOOP").startswith(b"+OK")  # 20 -ERR in a row close the session
    assert pop_cmd(p, "TOP 1 99999", multiline=True).count(b"alice") >= 1
    uidl = pop_cmd(p, "UIDL", multiline=True)
    assert uidl.count(b"\r\n") == 2
    assert pop_cmd(p, "RSET").startswith(b"+OK")
    assert pop_cmd(p, "QUIT").startswith(b"+OK")
    p.close()


def test_pop3_in_use_is_per_account(srv: RunningServer) -> None:
    """bob holding his maildrop does not lock alice out, and alice's lock is hers only."""
    b = pop3(srv)
    pop_cmd(b, f"USER {BOB}")
    assert pop_cmd(b, f"PASS {BPW}").startswith(b"+OK")
    a = pop3(srv)
    pop_cmd(a, f"USER {ALICE}")
    assert pop_cmd(a, f"PASS {APW}").startswith(b"+OK")
    # a second alice is refused with IN-USE, and so is an authzid trick aimed at bob's lock
    a2 = pop3(srv)
    pop_cmd(a2, f"USER {ALICE}")
    assert pop_cmd(a2, f"PASS {APW}").startswith(b"-ERR [IN-USE]")
    assert pop_cmd(a2, f"AUTH PLAIN {plain(BOB, ALICE, APW)}").startswith(b"-ERR [AUTH]")
    a2.close()
    assert pop_cmd(a, "DELE 1").startswith(b"+OK")
    assert pop_cmd(a, "RSET").startswith(b"+OK")  # nothing deleted in the end
    for conn in (a, b):
        assert pop_cmd(conn, "QUIT").startswith(b"+OK")
        conn.close()


# ---- submission -------------------------------------------------------------------------------


def submission(srv: RunningServer) -> RawLines:
    s = RawLines(srv.port("submission"))
    assert s.smtp_reply().startswith(b"220")
    s.send("EHLO client.test")
    assert s.smtp_reply().startswith(b"250")
    return s


def smtp_cmd(s: RawLines, line: str) -> bytes:
    ATTEMPTS["submission-auth"] += 1
    s.send(line)
    return s.smtp_reply()


def test_submission_authzid_is_refused(srv: RunningServer) -> None:
    for authzid in AUTHZ_FOREIGN:
        s = submission(srv)
        reply = smtp_cmd(s, f"AUTH PLAIN {plain(authzid, ALICE, APW)}")
        assert reply.startswith(b"535 5.7.8"), (authzid, reply)
        assert smtp_cmd(s, f"MAIL FROM:<{BOB}>").startswith(b"530 5.7.0")
        s.close()
    s = submission(srv)
    assert smtp_cmd(s, "AUTH PLAIN") == b"334 "
    assert smtp_cmd(s, plain(BOB, ALICE, APW)).startswith(b"535 5.7.8")
    assert smtp_cmd(s, "AUTH LOGIN").startswith(b"334 ")
    assert smtp_cmd(s, b64(BOB)).startswith(b"334 ")
    assert smtp_cmd(s, b64(APW)).startswith(b"535 5.7.8")
    s.close()
    for user, ok in LOGIN_SPELLINGS:
        s = submission(srv)
        reply = smtp_cmd(s, f"AUTH PLAIN {plain('', user, APW)}")
        assert reply.startswith(b"235 2.7.0" if ok else b"535 5.7.8"), (user, reply)
        if ok:  # it is alice, and only alice: bob is not her sender
            assert smtp_cmd(s, f"MAIL FROM:<{BOB}>").startswith(b"553 5.7.1")
            assert smtp_cmd(s, f"MAIL FROM:<{ALICE}>").startswith(b"250")
        s.close()


SENDER_TRICKS = [BOB, OTHER, "BOB@EXAMPLE.ORG", "bob@example.org.", "bob@EXAMPLE.org",
                 '"bob"@example.org', "bob+tag@example.org", "@example.org:bob@example.org",
                 "alice@example.org@bob@example.org", "bob%example.org@example.org",
                 "example.org!bob", "alice@other.example", "", "postmaster@example.org",
                 "alice@example.org.bob", "alice@[127.0.0.1]"]  # fmt: skip


def test_submission_sender_must_be_alices(srv: RunningServer) -> None:
    queue = srv.app.queue
    assert queue is not None
    with smtplib.SMTP("127.0.0.1", srv.port("submission"), timeout=30) as s:
        s.ehlo("client.test")
        s.login(ALICE, APW)
        for sender in SENDER_TRICKS:
            ATTEMPTS["submission-auth"] += 1
            code, text = s.docmd("MAIL", f"FROM:<{sender}>")
            assert code in (553, 501, 555) and code != 250, (sender, code, text)
            if code == 553:
                assert text.startswith(b"5.7.1") or text.startswith(b"5.1."), (sender, text)
            s.rset()
        # From: and Sender: headers naming bob, in every shape the parser might misread
        froms = [
            f"From: {BOB}", f"From: <{BOB}>", f"From: Alice <{ALICE}>, {BOB}",
            f"From: {ALICE}\r\nFrom: {BOB}", f"From: {ALICE}\r\nSender: {BOB}",
            f"From: {ALICE}\r\nsender: <{OTHER}>", f"FROM: {BOB}", f"From: (alice) {BOB}",
            f"From: Group: {BOB};", f"From:\r\n {BOB}", f'From: "{ALICE}" <{BOB}>',
            f"From: {BOB} ({ALICE})", f"From: =?utf-8?q?{ALICE}?= <{BOB}>",
        ]  # fmt: skip
        for header in froms:
            ATTEMPTS["submission-auth"] += 1
            assert s.mail(ALICE)[0] == 250
            assert s.rcpt(ALICE)[0] == 250
            code, text = s.data(f"{header}\r\nSubject: forged\r\n\r\nforged\r\n".encode())
            assert code in (553, 550), (header, code, text)
            s.rset()
    assert queue.messages() == []
    assert all(b"Subject: forged" not in t for t in stored_texts(srv, ALICE))


# ---- a deleted account's sessions -------------------------------------------------------------


def test_deleted_accounts_sessions_reach_nothing_of_the_next_account(srv: RunningServer) -> None:
    """An administrator deletes an account whose owner is still connected (IMAP selected, POP3
    with a DELE pending) and adds the next one. Finding: SQLite gave the new account the old
    one's id (and its mailboxes the old ids), and the old IMAP session read the new account's
    mail. Now ids are never reused and the IMAP session ends with BYE."""
    leaver, newhire = "leaver@example.org", "newhire@example.org"
    srv.store.add_account(leaver, hash_password("leaver pw"), 0, 0)
    srv.send([leaver], mail("x@remote.example", leaver, "leaver mail", "for the leaver"))
    imap = RawImap(srv.port("imap"))
    imap.login(leaver, "leaver pw")
    assert b"* 1 EXISTS" in imap.cmd("SELECT INBOX").untagged
    pop = pop3(srv)
    pop_cmd(pop, f"USER {leaver}")
    assert pop_cmd(pop, "PASS leaver pw").startswith(b"+OK")
    assert pop_cmd(pop, "DELE 1").startswith(b"+OK")
    srv.store.delete_account(leaver)
    srv.store.add_account(newhire, hash_password("newhire pw"), 0, 0)
    try:
        secret = "NEWHIRESECRET"
        srv.send([newhire], mail("x@remote.example", newhire, "newhire mail", secret))
        replies = []
        for text in ("UID FETCH 1:* (BODY.PEEK[])", "SELECT INBOX", "FETCH 1:* (BODY.PEEK[])"):
            replies.append(imap.cmd(text))
            if imap.closed:
                break
        assert all(secret.encode() not in r.raw for r in replies), replies
        # The session ends with BYE: pushed as soon as the account is gone (the server is told
        # of the deletion), or at the latest in answer to the next command.
        first = replies[0]
        assert b"* BYE" in first.raw, first
        assert first.status == "BYE" or (first.status, first.code) == ("NO", "UNAVAILABLE")
        assert pop_cmd(pop, "QUIT").startswith(b"-ERR [SYS/PERM]")
        pop.close()
        imap.close()
        acc = srv.store.get_account(newhire)
        assert acc is not None and acc.used_messages == 1  # the leaver's DELE hit nothing
        texts = stored_texts(srv, newhire)
        assert len(texts) == 1 and secret.encode() in texts[0]
        again = RawImap(srv.port("imap"))
        assert again.cmd(f'LOGIN "{leaver}" "leaver pw"').status == "NO"
        again.close()
    finally:
        srv.store.delete_account(newhire)
