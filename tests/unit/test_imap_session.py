"""IMAP command semantics: the session against a real SqliteMailstore in tmp_path, no sockets.

The state matrix runs every command in every state (RFC 9051 §3, §6); the other tests pin down
the behaviours the session owns: authentication, errors, updates between sessions (§7.5.1),
quota, isolation between accounts.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from postfach.imap.session import ImapBackend, ImapSession, ImapSettings
from postfach.store.api import INBOX, Account
from postfach.store.hub import Hub
from postfach.store.sqlite import SqliteMailstore

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")
PASSWORD = "secret"
SETTINGS = ImapSettings(hostname="imap.example.org", allow_plaintext=True, tls_available=True)


def message(n: int, body: str = "Hello there.\r\n", subject: str | None = None) -> bytes:
    return (
        f"From: Sender <sender@remote.example>\r\nTo: alice@example.org\r\n"
        f"Subject: {subject or f'message {n}'}\r\nMessage-ID: <m{n}@remote.example>\r\n"
        f"Date: Mon, 1 Jan 2024 10:00:0{n % 10} +0000\r\n\r\n{body}"
    ).encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Out:
    """The session's Output: collects what would go to the client."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.tls_started = 0
        self.ended = False

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        await asyncio.sleep(0)

    async def start_tls(self) -> None:
        self.tls_started += 1

    def end(self) -> None:
        self.ended = True

    def take(self) -> bytes:
        out = bytes(self.data)
        self.data.clear()
        return out


class Client:
    def __init__(self, session: ImapSession, out: Out) -> None:
        self.session = session
        self.out = out
        self.n = 0

    async def raw(self, data: bytes) -> bytes:
        """Feed bytes; return everything written in response (after letting the loop run)."""
        await self.session.feed(data)
        await settle()
        return self.out.take()

    async def lines(self, line: str | bytes) -> list[str]:
        data = line.encode() if isinstance(line, str) else line
        out = await self.raw(data + b"\r\n")
        return out.decode("utf-8", "replace").split("\r\n")[:-1]

    async def cmd(self, text: str | bytes) -> list[str]:
        """Send ``tN text``; return all response lines (tagged one last)."""
        self.n += 1
        tag = f"t{self.n}"
        data = text.encode() if isinstance(text, str) else text
        return await self.lines(tag.encode() + b" " + data)

    async def ok(self, text: str | bytes) -> list[str]:
        lines = await self.cmd(text)
        assert lines and lines[-1].startswith(f"t{self.n} OK"), lines
        return lines

    async def status(self, text: str | bytes) -> str:
        """The tagged status word (OK, NO, BAD) of the reply to ``text``, or "" if none."""
        lines = await self.cmd(text)
        tag = f"t{self.n} "
        for line in lines:
            if line.startswith(tag):
                return line[len(tag) :].split(" ", 1)[0]
        return ""

    async def login(self, user: str = "alice@example.org") -> None:
        await self.ok(f'LOGIN {user} "{PASSWORD}"')


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@dataclasses.dataclass
class Env:
    store: SqliteMailstore
    hub: Hub
    sessions: list[ImapSession] = dataclasses.field(default_factory=list)
    backend: ImapBackend | None = None

    def account(self, name: str = "alice@example.org", messages: int = 2, **kw: Any) -> Account:
        acc = self.store.add_account(name, "unused-hash", **kw)
        for i in range(1, messages + 1):
            self.deliver(name, message(i))
        return acc

    def deliver(self, name: str, data: bytes, mailbox: str = INBOX) -> None:
        acc = self.store.get_account(name)
        assert acc is not None
        blob = self.store.stage(data, _structure(data))
        self.store.deliver([acc.id], blob, 1700000000, mailbox)

    async def two_selected(self) -> tuple[Client, Client]:
        """Two sessions of alice's, logged in, with INBOX selected."""
        a, b = self.client(), self.client()
        for cl in (a, b):
            await cl.login()
            await cl.ok("SELECT INBOX")
        return a, b

    def client(self, settings: ImapSettings = SETTINGS, **kw: Any) -> Client:
        async def authenticate(user: str, password: str, ip: str) -> str | None:
            acc = self.store.get_account(user)
            return acc.name if acc is not None and password == PASSWORD else None

        out = Out()
        if self.backend is None:  # one per server, as in app.py (it holds the \Recent claims)
            self.backend = ImapBackend(self.store, self.hub, authenticate)
        session = ImapSession(self.backend, settings, out, conn_id="test", **kw)
        self.sessions.append(session)
        session.greet()
        out.take()
        return Client(session, out)


def _structure(data: bytes) -> str:
    from postfach.mime.stored import parse_for_storage

    return parse_for_storage(data)


@asynccontextmanager
async def environment(tmp: Path) -> AsyncIterator[Env]:
    hub = Hub(asyncio.get_running_loop())
    store = SqliteMailstore(tmp / "store", publish=hub.publish)
    store.add_domain("example.org")
    env = Env(store, hub)
    try:
        yield env
    finally:
        for s in env.sessions:
            await s.close()
        await asyncio.to_thread(store.close)


def run(tmp: Path, body: Any) -> None:
    """Run ``body(env)`` (a coroutine function) in a fresh event loop and store."""

    async def main() -> None:
        async with environment(tmp) as env:
            await body(env)

    asyncio.run(main())


# ---- the state matrix -------------------------------------------------------------------------

APPEND_MSG = b"Subject: appended\r\n\r\nbody\r\n"
LIT = b"{%d+}\r\n" % len(APPEND_MSG) + APPEND_MSG

# (name, command text, group). Groups: any, nonauth, auth, selected; the expected reply in an
# allowed state is OK unless EXPECT says otherwise.
COMMANDS: list[tuple[str, bytes, str]] = [
    ("CAPABILITY", b"CAPABILITY", "any"),
    ("NOOP", b"NOOP", "any"),
    ("ID", b'ID ("name" "test")', "any"),
    ("LOGOUT", b"LOGOUT", "any"),
    ("STARTTLS", b"STARTTLS", "nonauth"),
    ("AUTHENTICATE", b"AUTHENTICATE PLAIN " + b64(b"\0alice@example.org\0secret").encode(),
     "nonauth"),
    ("LOGIN", b'LOGIN alice@example.org "secret"', "nonauth"),
    ("ENABLE", b"ENABLE CONDSTORE", "auth"),
    ("SELECT", b"SELECT INBOX", "auth"),
    ("EXAMINE", b"EXAMINE INBOX", "auth"),
    ("CREATE", b"CREATE Projects/2024", "auth"),
    ("DELETE", b"DELETE Junk", "auth"),
    ("RENAME", b"RENAME Archive Old", "auth"),
    ("SUBSCRIBE", b"SUBSCRIBE Junk", "auth"),
    ("UNSUBSCRIBE", b"UNSUBSCRIBE Junk", "auth"),
    ("LIST", b'LIST "" *', "auth"),
    ("LSUB", b'LSUB "" *', "auth"),
    ("NAMESPACE", b"NAMESPACE", "auth"),
    ("STATUS", b"STATUS INBOX (MESSAGES UIDNEXT)", "auth"),
    ("APPEND", b"APPEND INBOX (\\Seen) " + LIT, "auth"),
    ("IDLE", b"IDLE\r\nDONE", "auth"),
    ("GETQUOTA", b'GETQUOTA ""', "auth"),
    ("GETQUOTAROOT", b"GETQUOTAROOT INBOX", "auth"),
    ("SETQUOTA", b'SETQUOTA "" (STORAGE 100)', "auth"),
    ("CHECK", b"CHECK", "selected"),
    ("CLOSE", b"CLOSE", "selected"),
    ("UNSELECT", b"UNSELECT", "selected"),
    ("EXPUNGE", b"EXPUNGE", "selected"),
    ("UID EXPUNGE", b"UID EXPUNGE 1:*", "selected"),
    ("SEARCH", b"SEARCH ALL", "selected"),
    ("UID SEARCH", b"UID SEARCH ALL", "selected"),
    ("FETCH", b"FETCH 1 (FLAGS)", "selected"),
    ("UID FETCH", b"UID FETCH 1:* (FLAGS)", "selected"),
    ("STORE", b"STORE 1 +FLAGS (\\Flagged)", "selected"),
    ("UID STORE", b"UID STORE 1 +FLAGS (\\Flagged)", "selected"),
    ("COPY", b"COPY 1 Trash", "selected"),
    ("UID COPY", b"UID COPY 1 Trash", "selected"),
    ("MOVE", b"MOVE 1 Trash", "selected"),
    ("UID MOVE", b"UID MOVE 1 Trash", "selected"),
    ("REPLACE", b"REPLACE 1 INBOX " + LIT, "selected"),
    ("UID REPLACE", b"UID REPLACE 1 INBOX " + LIT, "selected"),
]  # fmt: skip
STATES = ["not-authenticated", "authenticated", "selected"]
ALLOWED_GROUPS = {
    "not-authenticated": {"any", "nonauth"},
    "authenticated": {"any", "auth"},
    "selected": {"any", "auth", "selected"},
}
# Allowed, but refused for a reason of its own.
EXPECT = {("SETQUOTA", "authenticated"): "NO", ("SETQUOTA", "selected"): "NO"}


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize(("name", "text", "group"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_state_matrix(tmp_path: Path, state: str, name: str, text: bytes, group: str) -> None:
    expected = EXPECT.get((name, state), "OK" if group in ALLOWED_GROUPS[state] else "BAD")

    async def body(env: Env) -> None:
        env.account()
        cl = env.client()
        if state != "not-authenticated":
            await cl.login()
        if state == "selected":
            await cl.ok("SELECT INBOX")
        lines = await cl.cmd(text)
        tagged = [ln for ln in lines if ln.startswith(f"t{cl.n} ")]
        assert len(tagged) == 1, lines
        assert tagged[0].split(" ")[1] == expected, lines
        if expected == "BAD" and group != "any":
            assert "[CLIENTBUG]" in tagged[0], tagged
        # The session survives whatever happened (except LOGOUT, which ends it).
        if name == "LOGOUT":
            assert cl.session.closing
            assert await cl.raw(b"x NOOP\r\n") == b""
        else:
            assert await cl.status("NOOP") == "OK"

    run(tmp_path, body)


def test_matrix_covers_every_command() -> None:
    from postfach.imap.session import ALLOWED

    covered = {name.removeprefix("UID ") for name, _t, _g in COMMANDS}
    known = {t.__name__.upper() for t in set().union(*ALLOWED.values())}
    assert known <= covered, known - covered
    assert len(COMMANDS) * len(STATES) >= 120


def test_commands_after_logout_are_ignored(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        env.account()
        cl = env.client()
        out = await cl.raw(b"a LOGOUT\r\nb NOOP\r\n")
        assert out == b"* BYE logging out\r\na OK LOGOUT completed\r\n"

    run(tmp_path, body)


# ---- greeting, capabilities, authentication -----------------------------------------------


def test_capabilities_follow_tls_and_plaintext_policy(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        env.account()
        strict = dataclasses.replace(SETTINGS, allow_plaintext=False)
        cl = env.client(strict, tls_active=False)
        caps = (await cl.ok("CAPABILITY"))[0]
        assert "STARTTLS" in caps and "LOGINDISABLED" in caps and "AUTH=PLAIN" not in caps
        assert "IMAP4rev1" in caps and "IMAP4rev2" in caps and "APPENDLIMIT=" in caps
        lines = await cl.cmd('LOGIN alice@example.org "secret"')
        assert lines[-1].startswith(f"t{cl.n} NO [PRIVACYREQUIRED]")
        lines = await cl.cmd("AUTHENTICATE PLAIN " + b64(b"\0alice@example.org\0secret"))
        assert lines[-1].startswith(f"t{cl.n} NO [PRIVACYREQUIRED]")
        await cl.ok("STARTTLS")
        assert cl.out.tls_started == 1
        caps = (await cl.ok("CAPABILITY"))[0]
        assert "STARTTLS" not in caps and "LOGINDISABLED" not in caps and "AUTH=PLAIN" in caps
        assert await cl.status("STARTTLS") == "BAD"
        lines = await cl.ok('LOGIN alice@example.org "secret"')
        assert "[CAPABILITY IMAP4rev1 IMAP4rev2" in lines[-1]
        caps = (await cl.ok("CAPABILITY"))[0]
        assert "AUTH=" not in caps and "LOGINDISABLED" not in caps

        # Loopback exception (cfg.allow_plaintext_on_loopback).
        loop_ok = dataclasses.replace(strict, allow_plaintext_on_loopback=True)
        cl2 = env.client(loop_ok, is_loopback=True)
        await cl2.login()
        cl3 = env.client(loop_ok, is_loopback=False)
        assert await cl3.status('LOGIN alice@example.org "secret"') == "NO"

    run(tmp_path, body)


def test_starttls_discards_pipelined_commands(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        env.account()
        cl = env.client()
        out = await cl.raw(b'a STARTTLS\r\nb LOGIN alice@example.org "secret"\r\n')
        assert out == b"a OK Begin TLS negotiation now\r\n"
        assert cl.session.account is None

    run(tmp_path, body)


def test_login_failures(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        env.account()
        cl = env.client()
        for _ in range(4):
            lines = await cl.cmd('LOGIN alice@example.org "wrong"')
            assert lines == [f"t{cl.n} NO [AUTHENTICATIONFAILED] invalid credentials"]
        lines = await cl.cmd('LOGIN nobody@example.org "secret"')
        assert lines[0].startswith(f"t{cl.n} NO [AUTHENTICATIONFAILED]")
        assert lines[1].startswith("* BYE")
        assert cl.session.closing

    run(tmp_path, body)


def test_authenticate_exchanges(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        env.account()
        cl = env.client()
        # PLAIN without initial response: an empty challenge, then the credentials.
        assert await cl.cmd("AUTHENTICATE PLAIN") == ["+ "]
        lines = await cl.lines(b64(b"\0alice@example.org\0secret"))
        assert lines[-1].startswith(f"t{cl.n} OK [CAPABILITY ")
        # LOGIN: two challenges; "*" cancels (BAD).
        cl = env.client()
        assert await cl.cmd("AUTHENTICATE LOGIN") == ["+ VXNlcm5hbWU6"]
        assert await cl.lines(b64(b"alice@example.org")) == ["+ UGFzc3dvcmQ6"]
        assert (await cl.lines("*"))[-1].startswith(f"t{cl.n} BAD")
        assert await cl.cmd("AUTHENTICATE LOGIN " + b64(b"alice@example.org")) == ["+ UGFzc3dvcmQ6"]
        assert (await cl.lines(b64(b"wrong")))[-1].startswith(f"t{cl.n} NO [AUTHENTICATIONFAILED]")
        assert (await cl.cmd("AUTHENTICATE PLAIN ====="))[-1].startswith(f"t{cl.n} BAD")
        assert (await cl.cmd("AUTHENTICATE PLAIN"))[0] == "+ "
        assert (await cl.lines("not base64!"))[-1].startswith(f"t{cl.n} BAD")
        assert (await cl.cmd("AUTHENTICATE CRAM-MD5"))[-1].startswith(f"t{cl.n} NO")
        assert await cl.status("AUTHENTICATE PLAIN =") == "BAD"
        lines = await cl.cmd(
            "AUTHENTICATE PLAIN " + b64(b"alice@example.org\0alice@example.org\0secret")
        )
        assert lines[-1].startswith(f"t{cl.n} OK")
        assert cl.session.account == "alice@example.org"

    run(tmp_path, body)


# ---- robustness -------------------------------------------------------------------------------


def test_garbage_gets_bad_until_too_many(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        cl = env.client()
        for i in range(19):
            lines = await cl.lines(f"x{i} FROBNICATE \x01")
            assert lines[-1].startswith(f"x{i} BAD"), lines
            assert not cl.session.closing
        assert await cl.status("NOOP") == "OK"  # an OK resets the count
        for _ in range(19):
            await cl.lines(b"\xff\xfe garbage")
        assert not cl.session.closing
        lines = await cl.lines(b"y garbage")
        assert lines[-1].startswith("* BYE")
        assert cl.session.closing

    run(tmp_path, body)


def test_internal_error_is_serverbug_and_session_survives(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(env: Env) -> None:
        env.account()
        cl = env.client()
        await cl.login()

        def boom(account_id: int) -> None:
            raise RuntimeError("disk on fire")

        real = env.store.list_mailboxes
        env.store.list_mailboxes = boom  # type: ignore[method-assign, assignment]
        lines = await cl.cmd('LIST "" *')
        assert lines[-1] == f"t{cl.n} NO [SERVERBUG] internal error; the incident was logged"
        env.store.list_mailboxes = real  # type: ignore[method-assign]
        assert await cl.status('LIST "" *') == "OK"

    run(tmp_path, body)
    assert "disk on fire" in caplog.text


def test_limits(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        env.account()
        small = dataclasses.replace(SETTINGS, max_message_size=100, max_line=1024)
        cl = env.client(small)
        await cl.login()
        assert "APPENDLIMIT=100" in (await cl.ok("CAPABILITY"))[0]
        lines = await cl.cmd("APPEND INBOX {101}")
        assert lines == [f"t{cl.n} NO [TOOBIG] literal larger than APPENDLIMIT"]
        lines = await cl.cmd(b"APPEND INBOX {101+}\r\n" + b"x" * 101)
        assert lines[-1].startswith(f"t{cl.n} BAD [TOOBIG]")
        lines = await cl.cmd(b"NOOP " + b"x" * 2000)
        assert lines[-1].startswith(f"t{cl.n} BAD")
        assert await cl.status("NOOP") == "OK"
        lines = await cl.cmd(b"APPEND INBOX {10}")
        assert lines == ["+ Ready for literal data"]
        lines = await cl.lines(b"Subject: x")
        assert lines[-1].startswith(f"t{cl.n} OK [APPENDUID ")

    run(tmp_path, body)


def test_autologout_values(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        env.account()
        cl = env.client()
        assert cl.session.autologout == 60.0
        await cl.login()
        assert cl.session.autologout == 30 * 60.0
        cl.session.autologout_bye()
        assert cl.out.take() == b"* BYE Autologout; idle for too long\r\n"
        assert cl.session.closing

    run(tmp_path, body)


# ---- mailboxes ----------------------------------------------------------------------------------


def test_mailbox_management(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        env.account()
        cl = env.client()
        await cl.login()
        lines = await cl.ok('LIST "" *')
        assert lines[:-1] == [
            '* LIST (\\HasNoChildren) "/" INBOX',
            '* LIST (\\HasNoChildren \\Archive) "/" Archive',
            '* LIST (\\HasNoChildren \\Drafts) "/" Drafts',
            '* LIST (\\HasNoChildren \\Junk) "/" Junk',
            '* LIST (\\HasNoChildren \\Sent) "/" Sent',
            '* LIST (\\HasNoChildren \\Trash) "/" Trash',
        ]
        assert (await cl.ok('LIST "" ""'))[0] == '* LIST (\\Noselect) "/" ""'
        lines = await cl.ok("CREATE Work/2024/")
        assert "[MAILBOXID (" in lines[-1]
        lines = await cl.ok('LIST "" Work*')
        assert any("\\HasChildren" in ln and "Work" in ln for ln in lines)
        assert any("\\HasNoChildren" in ln and "Work/2024" in ln for ln in lines)
        assert (await cl.cmd("CREATE Work"))[-1].startswith(f"t{cl.n} NO [ALREADYEXISTS]")
        assert (await cl.cmd("CREATE inbox"))[-1].startswith(f"t{cl.n} NO [ALREADYEXISTS]")
        for bad in ('"a//b"', '"../alice"', '"x/./y"', '"%"', '"/abs"'):
            lines = await cl.cmd(f"CREATE {bad}")
            assert lines[-1].startswith(f"t{cl.n} NO [CANNOT]"), (bad, lines)
        lines = await cl.cmd("CREATE Sent2 (USE (\\Sent))")
        assert lines[-1].startswith(f"t{cl.n} OK")
        lines = await cl.cmd("CREATE Weird (USE (\\Bogus))")
        assert lines[-1].startswith(f"t{cl.n} NO [USEATTR]")
        assert any("\\Sent" in ln for ln in await cl.ok('LIST "" Sent2'))
        lines = await cl.ok('LIST (SPECIAL-USE) "" *')
        assert len(lines) == 7  # 6 special-use mailboxes + the tagged OK
        assert await cl.status("DELETE INBOX") == "NO"
        assert (await cl.cmd("DELETE Nope"))[-1].startswith(f"t{cl.n} NO [NONEXISTENT]")
        await cl.ok("RENAME Work Play")
        names = " ".join(await cl.ok('LIST "" *'))
        assert "Play/2024" in names and "Work" not in names
        assert (await cl.cmd("RENAME Play Sent"))[-1].startswith(f"t{cl.n} NO [ALREADYEXISTS]")
        assert (await cl.cmd("RENAME Nope X"))[-1].startswith(f"t{cl.n} NO [NONEXISTENT]")
        await cl.ok("DELETE Play")
        lines = await cl.ok('LIST "" %')
        assert any("Play" in ln and "\\NonExistent" not in ln and "\\Noselect" in ln
                   for ln in lines), lines  # fmt: skip

    run(tmp_path, body)


def test_rename_inbox_moves_messages(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        env.account()
        cl = env.client()
        await cl.login()
        await cl.ok("RENAME INBOX Old")
        assert "MESSAGES 0" in (await cl.ok("STATUS INBOX (MESSAGES)"))[0]
        assert "MESSAGES 2" in (await cl.ok("STATUS Old (MESSAGES)"))[0]

    run(tmp_path, body)


def test_subscriptions_and_lsub(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        env.account()
        cl = env.client()
        await cl.login()
        await cl.ok("CREATE a/b")
        await cl.ok("SUBSCRIBE a/b")
        await cl.ok("SUBSCRIBE ghost")  # need not exist (RFC 9051 §6.3.7)
        await cl.ok("UNSUBSCRIBE Junk")
        lines = await cl.ok('LSUB "" %')
        assert '* LSUB (\\Noselect) "/" a' in lines
        assert '* LSUB (\\Noselect) "/" ghost' in lines
        assert not any(ln.endswith(" Junk") for ln in lines)
        lines = await cl.ok('LIST (SUBSCRIBED) "" *')
        assert any("ghost" in ln and "\\NonExistent" in ln for ln in lines)
        assert any(ln.endswith(" a/b") and "\\Subscribed" in ln for ln in lines)
        lines = await cl.ok('LIST (SUBSCRIBED RECURSIVEMATCH) "" %')
        assert any(' a ("CHILDINFO"' in ln for ln in lines), lines
        lines = await cl.ok('LIST "" * RETURN (SUBSCRIBED CHILDREN STATUS (MESSAGES UNSEEN))')
        assert "* STATUS INBOX (MESSAGES 2 UNSEEN 2)" in lines
        assert any(ln.startswith("* LIST (") and "\\Subscribed" in ln and "INBOX" in ln
                   for ln in lines)  # fmt: skip

    run(tmp_path, body)


def test_status_quota_namespace_id(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        env.account(quota_bytes=10_000, quota_messages=100)
        cl = env.client()
        await cl.login()
        lines = await cl.ok(
            "STATUS INBOX (MESSAGES UIDNEXT UIDVALIDITY UNSEEN DELETED SIZE RECENT"
            " HIGHESTMODSEQ APPENDLIMIT MAILBOXID)"
        )
        assert lines[0].startswith("* STATUS INBOX (MESSAGES 2 UIDNEXT 3 UIDVALIDITY ")
        assert "UNSEEN 2 DELETED 0 SIZE " in lines[0] and "MAILBOXID (" in lines[0]
        assert (await cl.cmd("STATUS Nope (MESSAGES)"))[-1].startswith(f"t{cl.n} NO [NONEXISTENT]")
        assert await cl.status("STATUS INBOX (BOGUS)") == "BAD"
        lines = await cl.ok("GETQUOTAROOT INBOX")
        assert lines[0] == '* QUOTAROOT INBOX ""'
        assert lines[1].startswith('* QUOTA "" (STORAGE 1 10 MESSAGE 2 100)')
        assert (await cl.ok('GETQUOTA ""'))[0] == lines[1]
        assert (await cl.cmd('GETQUOTA "other"'))[-1].startswith(f"t{cl.n} NO")
        assert (await cl.cmd('SETQUOTA "" (STORAGE 1)'))[-1].startswith(f"t{cl.n} NO [NOPERM]")
        assert (await cl.ok("NAMESPACE"))[0] == '* NAMESPACE (("" "/")) NIL NIL'
        assert (await cl.ok("ID NIL"))[0].startswith('* ID ("name" "postfach" "version" ')

    run(tmp_path, body)


def test_modified_utf7_and_utf8_names(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        env.account()
        cl = env.client()
        await cl.login()
        await cl.ok("CREATE Entw&APw-rfe")  # "Entwürfe" in modified UTF-7
        assert any("Entw&APw-rfe" in ln for ln in await cl.ok('LIST "" *'))
        assert (await cl.ok("ENABLE UTF8=ACCEPT"))[0] == "* ENABLED UTF8=ACCEPT"
        assert any('"Entwürfe"' in ln for ln in await cl.ok('LIST "" *'))
        await cl.ok('SELECT "Entwürfe"')

    run(tmp_path, body)


# ---- selected state -----------------------------------------------------------------------


def test_select_and_examine_responses(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        env.account()
        cl = env.client()
        await cl.login()
        lines = await cl.ok("SELECT INBOX")
        assert lines[0].startswith("* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft")
        assert "* 2 EXISTS" in lines and "* 2 RECENT" in lines  # the first to see them
        assert "* OK [UNSEEN 1] first unseen" in lines
        assert any(ln.startswith("* OK [PERMANENTFLAGS (") and "\\*)]" in ln for ln in lines)
        assert any(ln.startswith("* OK [UIDVALIDITY ") for ln in lines)
        assert any(ln.startswith("* OK [UIDNEXT 3]") for ln in lines)
        assert lines[-1] == f"t{cl.n} OK [READ-WRITE] SELECT completed"
        lines = await cl.ok("EXAMINE INBOX")
        assert lines[0] == "* OK [CLOSED] previous mailbox closed"
        assert "* OK [PERMANENTFLAGS ()] flags" in lines
        assert "* 0 RECENT" in lines  # the SELECT before claimed them (RFC 3501 §2.3.2)
        assert lines[-1] == f"t{cl.n} OK [READ-ONLY] EXAMINE completed"
        assert (await cl.cmd("STORE 1 +FLAGS (\\Seen)"))[-1].startswith(f"t{cl.n} NO")
        assert await cl.status("EXPUNGE") == "NO"
        # FETCH BODY[] does not set \Seen in a read-only mailbox.
        lines = await cl.ok("FETCH 1 (BODY[] FLAGS)")
        assert "\\Seen" not in " ".join(lines)
        lines = await cl.cmd("SELECT Nope")
        assert lines[-1].startswith(f"t{cl.n} NO [NONEXISTENT]")
        assert cl.session.state.value == "authenticated"
        # IMAP4rev2: no RECENT, no UNSEEN, a LIST response.
        await cl.ok("ENABLE IMAP4rev2")
        lines = await cl.ok("SELECT INBOX")
        assert "* 0 RECENT" not in lines and not any("[UNSEEN" in ln for ln in lines)
        assert '* LIST (\\HasNoChildren) "/" INBOX' in lines

    run(tmp_path, body)


def test_fetch_and_store(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        env.account()
        cl = env.client()
        await cl.login()
        await cl.ok("SELECT INBOX")
        lines = await cl.ok("FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)] FLAGS)")
        assert "\\Seen" not in " ".join(lines)
        lines = await cl.ok("FETCH 1 BODY[TEXT]")
        assert lines[0] == "* 1 FETCH (BODY[TEXT] {14}"
        assert lines[1] == "Hello there."
        assert "FLAGS (\\Recent \\Seen)" in lines[2]
        lines = await cl.ok("UID FETCH 2 (FLAGS)")
        assert lines[0] == "* 2 FETCH (UID 2 FLAGS (\\Recent))"
        assert (await cl.cmd("FETCH 3 FLAGS"))[-1].startswith(f"t{cl.n} BAD")
        assert (await cl.ok("UID FETCH 3:5 FLAGS")) == [f"t{cl.n} OK FETCH completed"]
        lines = await cl.ok("STORE 1:2 +FLAGS (\\Flagged $Important)")
        # The new keyword is announced first (RFC 9051 §7.3.5), then the flags.
        assert lines[0].startswith("* FLAGS (") and "$Important" in lines[0]
        assert "* 1 FETCH (UID 1 FLAGS (\\Recent \\Seen \\Flagged $Important))" in lines
        assert "* 2 FETCH (UID 2 FLAGS (\\Recent \\Flagged $Important))" in lines
        lines = await cl.ok("STORE 1 -FLAGS.SILENT (\\Flagged)")
        assert lines == [f"t{cl.n} OK STORE completed"]
        lines = await cl.ok("UID STORE 1 FLAGS (\\Answered)")
        assert lines[0] == "* 1 FETCH (UID 1 FLAGS (\\Recent \\Answered))"
        assert (await cl.cmd("STORE 1 +FLAGS (\\Recent)"))[-1].startswith(f"t{cl.n} BAD")

    run(tmp_path, body)


def test_append_stores_exact_octets(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        env.account(messages=0)
        cl = env.client()
        await cl.login()
        raw = b"Subject: bare LF\nX-Trailing: spaces   \n\nline one\nline two\r\n\x01\n"
        lines = await cl.cmd(
            b'APPEND INBOX (\\Seen $Label) "05-Mar-2024 14:15:16 +0100" {%d+}\r\n' % len(raw) + raw
        )
        assert lines[-1].startswith(f"t{cl.n} OK [APPENDUID ")
        await cl.ok("SELECT INBOX")
        out = await cl.raw(b"f1 FETCH 1 (BODY[] INTERNALDATE FLAGS RFC822.SIZE)\r\n")
        assert b"{%d}\r\n" % len(raw) + raw in out
        assert b'INTERNALDATE "05-Mar-2024 13:15:16 +0000"' in out
        assert b"FLAGS (\\Recent \\Seen $Label)" in out and b"RFC822.SIZE %d" % len(raw) in out
        assert (await cl.cmd("APPEND Nope {3+}\r\nabc"))[-1].startswith(f"t{cl.n} NO [TRYCREATE]")
        assert (await cl.cmd('APPEND INBOX "bad date" {3+}\r\nabc'))[-1].split()[1] == "BAD"
        # MULTIAPPEND: all or nothing.
        lines = await cl.cmd(b"APPEND INBOX {3+}\r\nabc (\\Flagged) {3+}\r\ndef")
        assert lines[-1].startswith(f"t{cl.n} OK [APPENDUID ") and ":" in lines[-1]
        assert "* 3 EXISTS" in lines

    run(tmp_path, body)


def test_quota(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        env.account()
        used = env.store.get_account("alice@example.org")
        assert used is not None and 300 < used.used_bytes < 1000
        # Room for one copy of both messages, which then fills more than 90 %.
        env.store.set_quota("alice@example.org", 2 * used.used_bytes + 50, 0)
        cl = env.client()
        await cl.login()
        await cl.ok("SELECT INBOX")
        big = b"Subject: big\r\n\r\n" + b"x" * 1700 + b"\r\n"
        lines = await cl.cmd(b"APPEND INBOX {%d+}\r\n" % len(big) + big)
        assert lines[-1].startswith(f"t{cl.n} NO [OVERQUOTA]")
        lines = await cl.cmd(b"APPEND INBOX {3+}\r\nabc {%d+}\r\n" % len(big) + big)
        assert lines[-1].startswith(f"t{cl.n} NO [OVERQUOTA]")
        assert "MESSAGES 2" in (await cl.ok("STATUS INBOX (MESSAGES)"))[0]
        await cl.ok("COPY 1:2 Trash")
        lines = await cl.cmd("COPY 1:2 Archive")
        assert lines[-1].startswith(f"t{cl.n} NO [OVERQUOTA]")
        assert "MESSAGES 0" in (await cl.ok("STATUS Archive (MESSAGES)"))[0]
        await cl.ok("MOVE 1 Archive")  # a move costs nothing
        # Over 90 %: an ALERT at login.
        cl2 = env.client()
        lines = await cl2.cmd('LOGIN alice@example.org "secret"')
        assert lines[0].startswith("* OK [ALERT] Your mailbox is")
        assert lines[-1].startswith(f"t{cl2.n} OK")

    run(tmp_path, body)


def test_copy_move_replace(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        env.account()
        cl = env.client()
        await cl.login()
        lines = await cl.ok("SELECT Trash")
        trash_validity = next(ln for ln in lines if "UIDVALIDITY" in ln).split()[3].rstrip("]")
        await cl.ok("SELECT INBOX")
        lines = await cl.ok("COPY 1:2 Trash")
        assert lines[-1] == f"t{cl.n} OK [COPYUID {trash_validity} 1:2 1:2] COPY completed"
        assert (await cl.cmd("COPY 1 Nope"))[-1].startswith(f"t{cl.n} NO [TRYCREATE]")
        lines = await cl.ok("MOVE 2 Trash")
        assert lines == [
            f"* OK [COPYUID {trash_validity} 2 3] moved",
            "* 2 EXPUNGE",
            f"t{cl.n} OK MOVE completed",
        ]
        lines = await cl.ok("UID MOVE 99 Trash")
        assert lines[-1].startswith(f"t{cl.n} OK")
        lines = await cl.ok(b"REPLACE 1 Drafts {9+}\r\nSubject: ")
        assert lines[0].startswith("* OK [APPENDUID ")
        assert lines[1] == "* 1 EXPUNGE"
        assert "* 0 EXISTS" not in lines
        assert "MESSAGES 1" in (await cl.ok("STATUS Drafts (MESSAGES)"))[0]

    run(tmp_path, body)


# ---- several sessions on one mailbox (RFC 9051 §7.5.1) -----------------------------------


def test_other_sessions_see_changes_where_allowed(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        env.account(messages=3)
        a, b = await env.two_selected()
        await a.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
        assert await b.ok("NOOP") == [
            "* 2 FETCH (UID 2 FLAGS (\\Deleted))",
            f"t{b.n} OK NOOP completed",
        ]
        await a.ok("EXPUNGE")
        # No EXPUNGE during FETCH/STORE/SEARCH by sequence number: numbers stay valid.
        lines = await b.ok("FETCH 3 (UID)")
        assert lines == ["* 3 FETCH (UID 3)", f"t{b.n} OK FETCH completed"]
        lines = await b.ok("SEARCH ALL")
        assert lines[0] == "* SEARCH 1 3"
        lines = await b.cmd("FETCH 2 (FLAGS)")
        assert lines[-1].startswith(f"t{b.n} NO [EXPUNGEISSUED]")
        # ... but UID commands and NOOP may send it.
        lines = await b.ok("UID FETCH 1 (FLAGS)")
        assert "* 2 EXPUNGE" in lines
        assert (await b.ok("FETCH 2 (UID)"))[0] == "* 2 FETCH (UID 3)"
        # New mail shows up as EXISTS at the next command.
        env.deliver("alice@example.org", message(7))
        await settle()
        assert "* 3 EXISTS" in await b.ok("NOOP")
        assert "* 3 EXISTS" in await a.ok("CHECK")

    run(tmp_path, body)


def test_idle_gets_updates_immediately(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        env.account()
        a, b = await env.two_selected()
        assert await b.cmd("IDLE") == ["+ idling"]
        env.deliver("alice@example.org", message(3))
        await asyncio.sleep(0.05)
        assert b.out.take() == b"* 3 EXISTS\r\n* 1 RECENT\r\n"  # b learnt of it first
        await a.ok("STORE 1 +FLAGS (\\Deleted)")
        await a.ok("EXPUNGE")
        await asyncio.sleep(0.05)
        assert b.out.take() == (b"* 1 FETCH (UID 1 FLAGS (\\Deleted))\r\n* 1 EXPUNGE\r\n")
        assert await b.lines("DONE") == [f"t{b.n} OK IDLE terminated"]
        # Anything but DONE ends IDLE with BAD.
        assert await b.cmd("IDLE") == ["+ idling"]
        assert (await b.lines("NOOP"))[-1].startswith(f"t{b.n} BAD")
        # IDLE in the authenticated state works too (nothing to report).
        await b.ok("UNSELECT")
        assert await b.raw(b"i IDLE\r\ndone\r\n") == b"+ idling\r\ni OK IDLE terminated\r\n"

    run(tmp_path, body)


def test_condstore_and_qresync(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        env.account(messages=3)
        first = env.client()  # takes the \\Recent flags, so FLAGS below show none
        await first.login()
        await first.ok("SELECT INBOX")
        cl = env.client()
        await cl.login()
        lines = await cl.ok("SELECT INBOX (CONDSTORE)")
        hms = int(next(ln for ln in lines if "HIGHESTMODSEQ" in ln).split()[3].rstrip("]"))
        validity = next(ln for ln in lines if "UIDVALIDITY" in ln).split()[3].rstrip("]")
        lines = await cl.ok("STORE 1 +FLAGS (\\Seen)")
        assert lines[0] == f"* 1 FETCH (UID 1 FLAGS (\\Seen) MODSEQ ({hms + 1}))"
        lines = await cl.ok(f"STORE 1,2 (UNCHANGEDSINCE {hms}) +FLAGS (\\Flagged)")
        assert lines[-1] == f"t{cl.n} OK [MODIFIED 1] conditional STORE failed"
        assert lines[0] == f"* 2 FETCH (UID 2 FLAGS (\\Flagged) MODSEQ ({hms + 2}))"
        lines = await cl.ok(f"FETCH 1:* (FLAGS) (CHANGEDSINCE {hms})")
        assert len(lines) == 3 and all("MODSEQ" in ln for ln in lines[:2])
        lines = await cl.ok(f"SEARCH MODSEQ {hms + 2}")
        assert lines[0] == f"* SEARCH 2 (MODSEQ {hms + 2})"
        await cl.ok("STORE 3 +FLAGS.SILENT (\\Deleted)")
        lines = await cl.ok("EXPUNGE")
        assert lines[0] == "* 3 EXPUNGE"
        assert lines[-1].startswith(f"t{cl.n} OK [HIGHESTMODSEQ {hms + 4}]")
        # QRESYNC: resynchronise from the first HIGHESTMODSEQ.
        cl2 = env.client()
        await cl2.login()
        assert (await cl2.cmd(f"SELECT INBOX (QRESYNC ({validity} {hms}))"))[-1].split()[1] == (
            "BAD"
        )
        assert (await cl2.ok("ENABLE QRESYNC"))[0] == "* ENABLED CONDSTORE QRESYNC"
        lines = await cl2.ok(f"SELECT INBOX (QRESYNC ({validity} {hms} 1:3))")
        assert "* VANISHED (EARLIER) 3" in lines
        assert any(ln.startswith("* 1 FETCH (UID 1 FLAGS (\\Seen) MODSEQ (") for ln in lines)
        assert any(ln.startswith("* 2 FETCH (UID 2 FLAGS (\\Flagged) MODSEQ (") for ln in lines)
        lines = await cl2.ok(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {hms} VANISHED)")
        assert lines[0] == "* VANISHED (EARLIER) 3"
        # With QRESYNC, expunges are VANISHED.
        await cl.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        await cl.ok("EXPUNGE")
        assert "* VANISHED 1" in await cl2.ok("NOOP")

    run(tmp_path, body)


def test_search_esearch_searchres(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        env.account(messages=0)
        for i in range(1, 6):
            env.deliver("alice@example.org", message(i, body=f"body number {i}\r\n"))
        cl = env.client()
        await cl.login()
        await cl.ok("SELECT INBOX")
        await cl.ok("STORE 2,4 +FLAGS (\\Flagged)")
        assert (await cl.ok("SEARCH FLAGGED"))[0] == "* SEARCH 2 4"
        assert (await cl.ok("UID SEARCH UNFLAGGED"))[0] == "* SEARCH 1 3 5"
        assert (await cl.ok('SEARCH BODY "number 3"'))[0] == "* SEARCH 3"
        assert (await cl.ok('SEARCH SUBJECT "message 5"'))[0] == "* SEARCH 5"
        assert (await cl.ok("SEARCH OR 1 5 NOT 1"))[0] == "* SEARCH 5"
        lines = await cl.ok("SEARCH RETURN (MIN MAX COUNT ALL) NOT FLAGGED")
        assert lines[0] == f'* ESEARCH (TAG "t{cl.n}") MIN 1 MAX 5 ALL 1,3,5 COUNT 3'
        lines = await cl.ok("UID SEARCH RETURN () ALL")
        assert lines[0] == f'* ESEARCH (TAG "t{cl.n}") UID ALL 1:5'
        assert await cl.ok("SEARCH RETURN (SAVE) FLAGGED") == [f"t{cl.n} OK SEARCH completed"]
        assert (await cl.ok("FETCH $ (UID)"))[:2] == ["* 2 FETCH (UID 2)", "* 4 FETCH (UID 4)"]
        assert (await cl.ok("UID SEARCH UID $"))[0] == "* SEARCH 2 4"
        lines = await cl.cmd("SEARCH CHARSET KOI8-R ALL")
        assert lines[-1].startswith(f"t{cl.n} NO [BADCHARSET")
        assert (await cl.ok("SEARCH CHARSET UTF-8 ALL"))[0] == "* SEARCH 1 2 3 4 5"
        await cl.ok("ENABLE IMAP4rev2")
        assert (await cl.ok("SEARCH FLAGGED"))[0] == f'* ESEARCH (TAG "t{cl.n}") ALL 2,4'
        assert (await cl.ok("SEARCH DELETED"))[0] == f'* ESEARCH (TAG "t{cl.n}")'

    run(tmp_path, body)


def test_accounts_are_isolated(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        env.account("alice@example.org")
        env.account("bob@example.org", messages=0)
        bob = env.client()
        await bob.login("bob@example.org")
        lines = await bob.ok("SELECT INBOX")
        assert "* 0 EXISTS" in lines
        assert await bob.ok("UID FETCH 1:* (FLAGS)") == [f"t{bob.n} OK FETCH completed"]
        for name in ("../alice@example.org/INBOX", "alice@example.org/INBOX", "/INBOX"):
            assert (await bob.cmd(f'SELECT "{name}"'))[-1].split()[1] == "NO"
            assert (await bob.cmd(f'STATUS "{name}" (MESSAGES)'))[-1].split()[1] == "NO"
        # bob's changes never reach alice's sessions.
        alice = env.client()
        await alice.login()
        await alice.ok("SELECT INBOX")
        await bob.ok(b"APPEND INBOX {3+}\r\nabc")
        assert await alice.ok("NOOP") == [f"t{alice.n} OK NOOP completed"]
        assert (await alice.ok("STATUS INBOX (MESSAGES)"))[0].endswith("(MESSAGES 2)")

    run(tmp_path, body)


def test_deleted_selected_mailbox(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        env.account()
        a, b = env.client(), env.client()
        for cl in (a, b):
            await cl.login()
        await a.ok("CREATE Box")
        await b.ok("SELECT Box")
        await a.ok("DELETE Box")
        lines = await b.cmd("FETCH 1:* FLAGS")
        assert lines[-1].split()[1] in ("NO", "BAD")
        await b.ok("UNSELECT")

    run(tmp_path, body)


# ---- extensions that ride on FETCH, SEARCH, LIST, APPEND ------------------------------------


def test_binary_preview_savedate_objectid_within(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        env.account(messages=0)
        mime = (
            b"Subject: b64\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\nSGVsbG8sIHdvcmxkIQ==\r\n"
        )
        env.deliver("alice@example.org", mime)
        cl = env.client()
        await cl.login()
        await cl.ok("SELECT INBOX")
        out = await cl.raw(b"f FETCH 1 (BINARY.PEEK[1] BINARY.SIZE[1])\r\n")
        assert b"BINARY[1] {13}\r\nHello, world!" in out and b"BINARY.SIZE[1] 13" in out
        lines = await cl.ok("FETCH 1 (PREVIEW SAVEDATE EMAILID THREADID)")
        assert '"Hello, world!"' in lines[0] and "SAVEDATE " in lines[0]
        assert "EMAILID (M" in lines[0] and "THREADID (T" in lines[0]
        emailid = lines[0].split("EMAILID (")[1].split(")")[0]
        assert (await cl.ok(f"SEARCH EMAILID {emailid}"))[0] == "* SEARCH 1"
        assert (await cl.ok("SEARCH YOUNGER 4000000000"))[0] == "* SEARCH 1"
        assert (await cl.ok("SEARCH OLDER 4000000000"))[0] == "* SEARCH"
        assert (await cl.ok("SEARCH SAVEDSINCE 1-Jan-2020"))[0] == "* SEARCH 1"
        # literal8 APPEND may carry NUL; an ordinary literal may not (RFC 3516, RFC 9051 §4.3).
        data = b"Subject: nul\r\n\r\na\x00b\r\n"
        lines = await cl.cmd(b"APPEND INBOX ~{%d+}\r\n" % len(data) + data)
        assert lines[-1].startswith(f"t{cl.n} OK [APPENDUID ")
        lines = await cl.cmd(b"APPEND INBOX {%d+}\r\n" % len(data) + data)
        assert lines[-1].startswith(f"t{cl.n} BAD")
        # The part holding NUL is stored base64-encoded (RFC 3516 §4.4; imaptest append-binary):
        # BINARY[1] gives back the octets sent, BODY[] carries no NUL.
        out = await cl.raw(b"g FETCH 2 (BINARY.PEEK[1] BINARY.SIZE[1] BODY.PEEK[])\r\n")
        assert b"BINARY[1] ~{5}\r\na\x00b\r\n BINARY.SIZE[1] 5 " in out
        assert b"Content-Transfer-Encoding: base64\r\n\r\nYQBiDQo=)" in out
        assert b"\x00" not in out.split(b"BODY[]")[1]

    run(tmp_path, body)


def test_list_extended_forms(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        env.account()
        cl = env.client()
        await cl.login()
        lines = await cl.ok('LIST "" (INBOX Sent)')
        assert lines[:-1] == ['* LIST (\\HasNoChildren) "/" INBOX',
                              '* LIST (\\HasNoChildren \\Sent) "/" Sent']  # fmt: skip
        lines = await cl.ok('LIST "" inbox')
        assert lines[0] == '* LIST (\\HasNoChildren) "/" INBOX'
        lines = await cl.ok('LIST (REMOTE) "" "Dr*" RETURN (STATUS (MESSAGES MAILBOXID))')
        assert lines[0] == '* LIST (\\HasNoChildren \\Drafts) "/" Drafts'
        assert lines[1].startswith("* STATUS Drafts (MESSAGES 0 MAILBOXID (F")
        assert await cl.status('LIST (RECURSIVEMATCH) "" *') == "BAD"
        await cl.ok("CREATE INBOX/Sub")
        lines = await cl.ok('LIST "" INBOX*')
        assert lines[0] == '* LIST (\\HasChildren) "/" INBOX'
        assert lines[1] == '* LIST (\\HasNoChildren) "/" INBOX/Sub'

    run(tmp_path, body)


def test_authorization_identity(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        env.account()
        env.account("bob@example.org", messages=0)
        cl = env.client()
        lines = await cl.cmd(
            "AUTHENTICATE PLAIN " + b64(b"bob@example.org\0alice@example.org\0secret")
        )
        assert lines[-1].startswith(f"t{cl.n} NO [AUTHORIZATIONFAILED]")
        assert cl.session.account is None

    run(tmp_path, body)


# ---- found by imaptest (docs/conformance.md) ------------------------------------------------


def test_invalid_modified_utf7_names_are_no_not_bad(tmp_path: Path) -> None:
    """imaptest atoms: a name of printable ASCII that is not valid modified UTF-7 is well-formed
    IMAP; it names no mailbox (NO), matches nothing (LIST is OK and empty), cannot be created."""

    async def body(env: Env) -> None:
        env.account()
        cl = env.client()
        await cl.login()
        name = "!#$&'+,-.0123456789:;<=>?@^_`|[}"
        lines = await cl.cmd(f"SELECT {name}")
        assert lines == [f"t{cl.n} NO [NONEXISTENT] no such mailbox"]
        assert await cl.ok(f'LIST "" {name}%*') == [f"t{cl.n} OK LIST completed"]
        assert await cl.ok(f'LIST "{name}" *') == [f"t{cl.n} OK LIST completed"]
        lines = await cl.cmd(f"CREATE {name}")
        assert lines == [f"t{cl.n} NO [CANNOT] mailbox name is not valid modified UTF-7"]
        assert await cl.status(f"RENAME INBOX {name}") == "NO"
        assert await cl.status(f"SUBSCRIBE {name}") == "NO"
        assert await cl.status("SELECT INBOX") == "OK"  # the connection is fine

    run(tmp_path, body)


def test_recursivematch_childinfo_only_for_inferiors_that_match_no_pattern(
    tmp_path: Path,
) -> None:
    """imaptest listext, RFC 5258 §4: CHILDINFO when a subscribed inferior is not listed itself."""

    async def body(env: Env) -> None:
        env.account()
        cl = env.client()
        await cl.login()
        for name in ("t/a/x", "t/b/b", "t/b/c", "t/c/c"):
            await cl.ok(f"CREATE {name}")
            await cl.ok(f"SUBSCRIBE {name}")
        await cl.ok("UNSUBSCRIBE t/b/b")
        lines = await cl.ok('LIST (SUBSCRIBED RECURSIVEMATCH) "" (t/a t/a/x)')
        assert lines[:-1] == ['* LIST (\\HasNoChildren \\Subscribed) "/" t/a/x']
        lines = await cl.ok('LIST (SUBSCRIBED RECURSIVEMATCH) "" (t/a)')
        assert lines[:-1] == ['* LIST (\\HasChildren) "/" t/a ("CHILDINFO" ("SUBSCRIBED"))']
        lines = await cl.ok('LIST (SUBSCRIBED RECURSIVEMATCH) "" t*c')  # t/c is not listed
        assert lines[:-1] == [
            '* LIST (\\HasNoChildren \\Subscribed) "/" t/b/c',
            '* LIST (\\HasNoChildren \\Subscribed) "/" t/c/c',
        ]
        lines = await cl.ok('LIST (SUBSCRIBED RECURSIVEMATCH) "" t/%')
        assert '* LIST (\\HasChildren) "/" t/b ("CHILDINFO" ("SUBSCRIBED"))' in lines

    run(tmp_path, body)


def test_logout_sends_no_pending_updates(tmp_path: Path) -> None:
    """imaptest expunge2: after LOGOUT's BYE only the tagged OK follows, no FETCH or EXPUNGE."""

    async def body(env: Env) -> None:
        env.account()
        a, b = await env.two_selected()
        await a.ok("STORE 1 +FLAGS (\\Deleted)")
        await a.ok("EXPUNGE")
        await a.ok("STORE 1 +FLAGS (\\Seen)")
        assert await b.cmd("LOGOUT") == ["* BYE logging out", f"t{b.n} OK LOGOUT completed"]

    run(tmp_path, body)


def test_keywords_from_another_session_are_announced_first(tmp_path: Path) -> None:
    """imaptest store, RFC 9051 §7.3.5: FLAGS (and PERMANENTFLAGS) with a keyword new to the
    mailbox before the FETCH that shows it, also when another session set it."""

    async def body(env: Env) -> None:
        env.account()
        a, b = await env.two_selected()
        await a.ok("STORE 2 +FLAGS ($hello $world)")
        lines = await b.ok("NOOP")
        assert lines[0].startswith("* FLAGS (") and lines[0].endswith(" $hello $world)")
        assert lines[1].startswith("* OK [PERMANENTFLAGS (") and "$world \\*)]" in lines[1]
        assert lines[2] == "* 2 FETCH (UID 2 FLAGS ($hello $world))"
        await a.ok("STORE 1 +FLAGS ($hello)")
        assert (await b.ok("NOOP"))[0] == "* 1 FETCH (UID 1 FLAGS ($hello))"  # no new keyword
        data = b"Subject: kw\r\n\r\nbody\r\n"
        await a.cmd(b"APPEND INBOX ($fresh) {%d+}\r\n" % len(data) + data)
        lines = await b.ok("NOOP")
        assert lines[0].startswith("* FLAGS (") and "$fresh" in lines[0]
        assert "* 3 EXISTS" in lines

    run(tmp_path, body)


def test_a_fetch_announces_keywords_another_session_set_since_the_last_command(
    tmp_path: Path,
) -> None:
    """imaptest stress, RFC 9051 §7.3.5: a keyword another session set while this one was
    between commands is in the FETCH's own answer (from the flag array or the metadata), so it
    is announced in FLAGS before it, not only in the updates after the command. Before, the
    FETCH showed it first ("Keyword used without being in FLAGS")."""

    async def body(env: Env) -> None:
        env.account()
        a, b = await env.two_selected()
        for fetch, kw in (
            ("FETCH 1:* (FLAGS)", "$fresh"),  # answered from the flag array
            ("FETCH 1 (FLAGS INTERNALDATE)", "$newer"),  # from the metadata
            ("FETCH 1 (FLAGS BODY.PEEK[HEADER])", "$newest"),  # from the metadata and the blob
        ):
            await a.ok(f"STORE 1 +FLAGS ({kw})")
            lines = await b.ok(fetch)
            shown = next(i for i, line in enumerate(lines) if kw in line and "FETCH" in line)
            announced = [i for i, line in enumerate(lines) if line.startswith("* FLAGS (")]
            assert announced and announced[0] < shown, lines
            assert f" {kw})" in lines[announced[0]]

    run(tmp_path, body)


def test_condstore_enabling_command_reports_highestmodseq(tmp_path: Path) -> None:
    """imaptest esearch-condstore, RFC 7162 §3.1: the first CONDSTORE-enabling command in the
    selected state gets an untagged OK [HIGHESTMODSEQ]; later ones do not."""

    async def body(env: Env) -> None:
        env.account()
        cl = env.client()
        await cl.login()
        lines = await cl.ok("SELECT INBOX")
        hms = next(ln for ln in lines if "HIGHESTMODSEQ" in ln).split()[3]
        lines = await cl.ok("FETCH 1 MODSEQ")
        assert lines[0] == f"* OK [HIGHESTMODSEQ {hms} highest"
        assert lines[1].startswith("* 1 FETCH (MODSEQ (")
        assert not any("HIGHESTMODSEQ" in ln for ln in await cl.ok("FETCH 1 MODSEQ"))
        cl2 = env.client()
        await cl2.login()
        await cl2.ok("SELECT INBOX")
        lines = await cl2.ok("SEARCH MODSEQ 1")
        assert lines[0].startswith("* OK [HIGHESTMODSEQ ")

    run(tmp_path, body)


def test_recent_for_imap4rev1_sessions(tmp_path: Path) -> None:
    """imaptest select, copy, search-flags; RFC 3501 §2.3.2: \\Recent belongs to the first
    session to learn of a message; EXAMINE claims nothing; IMAP4rev2 sessions have none."""

    async def body(env: Env) -> None:
        env.account()
        a, b, c = env.client(), env.client(), env.client()
        for cl in (a, b, c):
            await cl.login()
        await c.ok("ENABLE IMAP4rev2")
        lines = await c.ok("SELECT INBOX")  # IMAP4rev2: no RECENT, claims nothing
        assert not any("RECENT" in ln for ln in lines)
        assert "* STATUS INBOX (RECENT 2)" in await a.ok("STATUS INBOX (RECENT)")
        assert "* 2 RECENT" in await a.ok("EXAMINE INBOX")
        assert "* 2 RECENT" in await a.ok("EXAMINE INBOX")  # EXAMINE claims nothing
        assert "* 2 RECENT" in await a.ok("SELECT INBOX")
        assert "* STATUS INBOX (RECENT 0)" in await b.ok("STATUS INBOX (RECENT)")
        assert "* 0 RECENT" in await b.ok("SELECT INBOX")
        assert (await a.ok("FETCH 1 FLAGS"))[0] == "* 1 FETCH (FLAGS (\\Recent))"
        assert (await b.ok("FETCH 1 FLAGS"))[0] == "* 1 FETCH (FLAGS ())"
        await a.ok("STORE 1 +FLAGS.SILENT (\\Seen)")
        assert (await a.ok("SEARCH RECENT"))[0] == "* SEARCH 1 2"
        assert (await a.ok("SEARCH NEW"))[0] == "* SEARCH 2"
        assert (await a.ok("SEARCH OLD"))[0] == "* SEARCH"
        assert (await b.ok("SEARCH OLD"))[0] == "* SEARCH 1 2"
        assert (await b.ok("SEARCH RECENT"))[0] == "* SEARCH"
        # COPY: the copies are recent for the session selecting the target that hears first.
        await b.ok("CREATE Target")
        await b.ok("SELECT Target")
        await a.ok("COPY 1:2 Target")
        lines = await b.ok("NOOP")
        assert lines[:2] == ["* 2 EXISTS", "* 2 RECENT"]
        lines = await b.ok("FETCH 1:2 FLAGS")
        assert lines[:2] == ["* 1 FETCH (FLAGS (\\Recent \\Seen))", "* 2 FETCH (FLAGS (\\Recent))"]
        # IMAP4rev2 enabled while selected: \\Recent is gone.
        await a.ok("ENABLE IMAP4rev2")
        assert (await a.ok("FETCH 2 FLAGS"))[0] == "* 2 FETCH (FLAGS ())"
        # A mailbox deleted and created again starts afresh.
        await b.ok("UNSELECT")
        await b.ok("DELETE Target")
        await b.ok("CREATE Target")
        await a.ok("COPY 1 Target")
        assert "* STATUS Target (RECENT 1)" in await b.ok("STATUS Target (RECENT)")

    run(tmp_path, body)


def test_search_body_uses_the_full_text_index(tmp_path: Path) -> None:
    """SEARCH BODY/TEXT asks the store's index (`search_text_uids`) and trusts its answer;
    None (e.g. a needle under three characters) falls back to scanning."""

    async def body(env: Env) -> None:
        env.account()
        calls: list[tuple[int, str, str]] = []

        def fake(mailbox_id: int, key: str, needle: str) -> set[int] | None:
            calls.append((mailbox_id, key, needle))
            return {2} if len(needle) >= 3 else None

        env.store.search_text_uids = fake  # type: ignore[method-assign]
        cl = env.client()
        await cl.login()
        await cl.ok("SELECT INBOX")
        assert (await cl.ok("SEARCH BODY nowhere"))[0] == "* SEARCH 2"
        assert (await cl.ok("SEARCH TEXT Hello"))[0] == "* SEARCH 2"
        assert (await cl.ok("SEARCH BODY He"))[0] == "* SEARCH 1 2"  # scanned
        assert [c[1:] for c in calls] == [("BODY", "nowhere"), ("TEXT", "Hello"), ("BODY", "He")]

    run(tmp_path, body)


def test_uidvalidity_of_a_recreated_mailbox_differs(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        env.account()
        cl = env.client()
        await cl.login()
        await cl.ok("CREATE Zz")
        before = (await cl.ok("STATUS Zz (UIDVALIDITY)"))[0]
        await cl.ok("DELETE Zz")
        await cl.ok("CREATE Zz")
        assert (await cl.ok("STATUS Zz (UIDVALIDITY)"))[0] != before

    run(tmp_path, body)


def test_qresync_needs_positive_values_and_search_takes_numbers_beyond_exists(
    tmp_path: Path,
) -> None:
    async def body(env: Env) -> None:
        env.account(messages=2)
        cl = env.client()
        await cl.login()
        await cl.ok("ENABLE QRESYNC")
        lines = await cl.ok("SELECT INBOX")
        validity = next(ln for ln in lines if "UIDVALIDITY" in ln).split()[3].rstrip("]")
        # RFC 7162 §7: mod-sequence-value is 1 or more, uidvalidity is nz-number.
        for bad in (f"{validity} 0", "0 1", f"{validity} 0 1:2", f"{validity} 00"):
            lines = await cl.cmd(f"SELECT INBOX (QRESYNC ({bad}))")
            assert lines[-1].startswith(f"t{cl.n} BAD"), (bad, lines)
        await cl.ok(f"SELECT INBOX (QRESYNC ({validity} 1))")
        # SEARCH: a set is a search key matching the messages it names (RFC 9051 §6.4.4);
        # numbers beyond EXISTS name none (Dovecot does the same). FETCH, STORE and COPY
        # must name existing messages (RFC 9051 §9, seq-number): BAD.
        assert (await cl.ok("SEARCH 1:5"))[0] == "* SEARCH 1 2"
        assert (await cl.ok("SEARCH 5"))[0] == "* SEARCH"
        assert (await cl.ok("SEARCH 3:* ALL"))[0] == "* SEARCH 2"
        assert (await cl.ok("SEARCH 2,7 UNSEEN"))[0] == "* SEARCH 2"
        assert (await cl.ok("UID SEARCH 1:5"))[0] == "* SEARCH 1 2"
        for cmd in ("FETCH 1:5 FLAGS", "STORE 5 +FLAGS (\\Seen)", "COPY 3 INBOX"):
            assert (await cl.cmd(cmd))[-1].startswith(f"t{cl.n} BAD"), cmd
        assert len(await cl.ok("UID FETCH 2:9 FLAGS")) == 2
        # Mod-sequence 0 where it is harmless, as Dovecot: everything changed since then.
        assert len(await cl.ok("FETCH 1:2 (FLAGS) (CHANGEDSINCE 0)")) == 3
        assert (await cl.ok("SEARCH MODSEQ 0"))[0].startswith("* SEARCH 1 2 (MODSEQ ")

    run(tmp_path, body)


def test_select_of_a_large_mailbox_that_changed_sees_every_change(tmp_path: Path) -> None:
    # A cached listing of a large mailbox is patched with the changes since its MODSEQ when
    # another session SELECTs after a change: flags, expunges and new messages must all show,
    # exactly as when every row is read again.
    from postfach.store.api import Flag
    from postfach.store.sqlite import AppendItem

    async def body(env: Env) -> None:
        acc = env.account(messages=0)
        mbox = env.store.get_mailbox(acc.id, INBOX)
        assert mbox is not None
        data = message(1)
        items = [
            AppendItem(env.store.stage(data, _structure(data)), Flag.SEEN, (), 1700000000)
            for _ in range(1200)
        ]
        env.store.append(mbox.id, items)
        first = env.client()
        await first.login()
        await first.ok("SELECT INBOX")  # listed and cached; stays selected

        def no_full_read(mailbox_id: int) -> Any:
            raise AssertionError("the changed mailbox was read again in full")

        env.store.list_message_rows = no_full_read  # type: ignore[method-assign]
        await first.ok("UID STORE 5 -FLAGS (\\Seen)")
        await first.ok("UID STORE 7 +FLAGS (\\Deleted Work)")
        await first.ok("UID STORE 3:4 +FLAGS (\\Deleted)")
        await first.ok("UID EXPUNGE 3:4")
        env.deliver("alice@example.org", message(2))
        await settle()
        second = env.client()
        await second.login()
        lines = await second.ok("SELECT INBOX")
        assert "* 1199 EXISTS" in lines
        assert any(line.startswith("* FLAGS (") and "Work" in line for line in lines)
        assert (await second.ok("SEARCH UNSEEN"))[0] == "* SEARCH 3 1199"  # UIDs 5 and 1201
        assert (await second.ok("SEARCH DELETED"))[0] == "* SEARCH 5"  # UID 7
        fetched = (await second.ok("FETCH 5 (UID FLAGS)"))[0]
        assert fetched == "* 5 FETCH (UID 7 FLAGS (\\Seen \\Deleted Work))"
        assert (await second.ok("UID FETCH 1:2 (FLAGS)"))[:2] == [
            "* 1 FETCH (UID 1 FLAGS (\\Seen))",
            "* 2 FETCH (UID 2 FLAGS (\\Seen))",
        ]

    run(tmp_path, body)
