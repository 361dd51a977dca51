"""IMAP command semantics (services ring): RFC 9051 (IMAP4rev2) and RFC 3501 (IMAP4rev1).

An `ImapSession` is one client connection's conversation, without sockets: the adapter
(`postfach.imap.server`) feeds it the bytes it reads (`feed`) and gives it an `Output` to write
to. The session frames (`postfach.imap.wire`), parses (`postfach.imap.parser`), checks the
command against the state table below, runs it against the store and writes the responses.

Rules worth knowing (read before changing anything here):

* **States** (RFC 9051 §3): NOT_AUTHENTICATED → AUTHENTICATED ⇄ SELECTED → LOGOUT. ``ALLOWED``
  says which commands each state accepts; any other gets ``BAD [CLIENTBUG]``.
* **Replies are exceptions**: a handler returns the text (and code) of its tagged OK, or raises
  `ImapNo` / `ImapBad`. Anything else it raises is a bug: logged with its stack and answered
  ``NO [SERVERBUG]``; the connection and the stored mail survive it.
* **Concurrency** (DESIGN.md, "The store"): the session subscribes to its account's changes in
  the hub at login. The store publishes a commit's changes on the event loop *before* it
  resolves the futures of the same commit, so when a write of ours returns, our own mailbox view
  already holds the resulting changes. The view (`postfach.imap.view`) turns them into untagged
  responses only where RFC 9051 §7.5.1 allows: never EXPUNGE during FETCH, STORE or SEARCH by
  sequence number, nor when no command is in progress (except in IDLE).
* **IDLE** (RFC 9051 §6.3.13): changes arriving while idling are written from the event loop
  right away (`_idle_flush`, scheduled with ``call_soon`` so one commit's changes go out
  together).
* **\\Recent** (RFC 3501 §2.3.2) exists for IMAP4rev1 sessions only (RFC 9051 dropped it): the
  first session to learn of a message claims it (`postfach.imap.view.RecentClaims`, one per
  server in `ImapBackend`); EXAMINE and IMAP4rev2 sessions claim nothing.
* **Isolation**: every store call uses this session's account id; mailboxes are looked up by
  (account id, name), and a mailbox id is only ever one the lookup returned. No command of one
  account can reach another account's mail.
* **Logging**: one ``key=value`` line per event with the connection id; never a password, never
  SASL data, never message contents.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import enum
import ipaddress
import logging
import re
import time
import unicodedata
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeVar

from postfach import __version__ as _VERSION
from postfach.auth.sasl import SaslError, SaslExchange, encode_base64, is_cancel, start_exchange
from postfach.errors import (
    AlreadyExists,
    DiskFull,
    LoginLockedOut,
    NotFound,
    OverQuota,
    StoreError,
)
from postfach.imap import commands as c
from postfach.imap.fetch import (
    UnknownCte,
    base64_nul_parts,
    fetch_plan,
    fetch_response,
    flags_lines,
    format_flags,
    implies_seen,
    meta_only,
    meta_response,
    needs_data,
)
from postfach.imap.listing import Listing, ListingCache
from postfach.imap.parser import ParseError, parse_command, parse_done
from postfach.imap.response import (
    continuation,
    mailbox_name,
    parse_date_time,
    quoted,
    tagged,
    untagged,
    untagged_status,
)
from postfach.imap.search import (
    SearchContext,
    UnknownSearchKey,
    esearch_response,
    flag_predicate,
    index_narrowing,
    saved_result,
    search,
    search_response,
    uses_modseq,
)
from postfach.imap.sequence import (
    MAX_NUMBER,
    contains,
    format_sequence_set,
    ranges_of,
    resolve,
    sequence_numbers_valid,
)
from postfach.imap.view import RecentClaims, View
from postfach.imap.wire import (
    NEED_DATA,
    IdleLine,
    ImapFramer,
    LineTooLong,
    LiteralTooLarge,
    NeedContinuation,
    SaslResponse,
    tag_of,
)
from postfach.mime.stored import Parsed, load_parsed, parse_for_storage
from postfach.store.api import (
    INBOX,
    Account,
    AccountDeleted,
    Change,
    ChangesLost,
    Flag,
    Mailbox,
    MailboxesChanged,
    MessageMeta,
)
from postfach.store.hub import Hub
from postfach.store.sqlite import AppendItem, SqliteMailstore, StagedBlob

__all__ = [
    "ALLOWED",
    "ImapBackend",
    "ImapBad",
    "ImapNo",
    "ImapResult",
    "ImapSession",
    "ImapSettings",
    "Output",
    "State",
    "is_loopback_address",
]

log = logging.getLogger("postfach.imap")

T = TypeVar("T")

DELIMITER: Final = "/"
# Mailbox names: limits on the whole name and on each level of the hierarchy.
MAX_NAME: Final = 1000
MAX_LEVEL: Final = 255
MAX_LEVELS: Final = 32
# Work above this many octets goes to a thread instead of running on the event loop.
_OFFLOAD_OCTETS: Final = 256 * 1024
# A SEARCH over more messages than this runs in a thread.
_SEARCH_ON_LOOP_MAX: Final = 2000
_EVERYTHING: Final = c.SequenceSet(((1, None),))


# ---- errors: the wire reply -------------------------------------------------------------------


class ImapResult(Exception):
    """A tagged reply other than OK: raised by handlers, written in one place (`_reply`)."""

    status = "NO"

    def __init__(self, code: str | None, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


class ImapNo(ImapResult):
    status = "NO"


class ImapBad(ImapResult):
    status = "BAD"


# ---- the contract with the adapter and the services --------------------------------------


class Output(Protocol):
    """Where the session writes. Implemented by the server's connection."""

    def write(self, data: bytes) -> None:
        """Queue bytes for the client (dropped silently once the connection is gone)."""
        ...

    async def drain(self) -> None:
        """Wait while the client is not reading; raises ConnectionError once it is gone."""
        ...

    async def start_tls(self) -> None:
        """Begin the TLS handshake now (STARTTLS); pipelined plaintext is thrown away."""
        ...

    def end(self) -> None:
        """The session has said BYE on its own (its account was deleted): stop waiting for
        the client's next command."""
        ...


Authenticate = Callable[[str, str, str], Awaitable[str | None]]


@dataclass(slots=True)
class ImapBackend:
    """What the session works with: the store, the change hub and the password check.

    ``authenticate(user, password, remote_ip)`` returns the account name or None and applies
    the failed-login delay itself (`postfach.auth.passwords.Authenticator.authenticate`).
    ``recent``: which messages are \\Recent, shared by every session of the server (one
    backend per server).
    """

    store: SqliteMailstore
    hub: Hub
    authenticate: Authenticate
    recent: RecentClaims = field(default_factory=RecentClaims)
    #: mailbox listings shared by the sessions that select the same unchanged mailbox
    listings: ListingCache = field(default_factory=ListingCache)


@dataclass(frozen=True, slots=True)
class ImapSettings:
    hostname: str = "localhost"
    #: STARTTLS can be offered (the server adapter sets this from whether it has an SSL context).
    tls_available: bool = False
    #: Allow LOGIN and AUTHENTICATE PLAIN/LOGIN without TLS from anywhere (tests, trusted LANs).
    allow_plaintext: bool = False
    #: Allow them without TLS when the client connects from a loopback address.
    allow_plaintext_on_loopback: bool = False
    #: RFC 9051 §5.4: at least 30 minutes once authenticated; a short one before login.
    autologout_authenticated: float = 30 * 60.0
    autologout_unauthenticated: float = 60.0
    #: APPENDLIMIT (RFC 7889) and the largest literal accepted.
    max_message_size: int = 50 * 1024 * 1024
    #: Longest command line (between literals) accepted (RFC 7162 §4 asks for 8192 at least).
    max_line: int = 64 * 1024
    #: BAD replies without an OK in between after which the connection is closed.
    max_errors: int = 20
    #: Failed logins in one connection after which it is closed.
    max_auth_failures: int = 5
    #: ``* OK [ALERT]`` at login when the account uses more than this share of its quota.
    quota_alert: float = 0.9
    implementation: str = "postfach"

    def __post_init__(self) -> None:
        if self.max_errors < 1 or self.max_auth_failures < 1:
            raise ValueError("max_errors and max_auth_failures must be at least 1")
        if self.autologout_authenticated <= 0 or self.autologout_unauthenticated <= 0:
            raise ValueError("autologout must be positive")
        if not self.hostname or any(ch.isspace() for ch in self.hostname):
            raise ValueError("hostname must be one non-empty word")


def is_loopback_address(ip: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback; False for anything unparsable."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


# ---- the state table (RFC 9051 §3, §6) -------------------------------------------------------


class State(enum.Enum):
    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


CommandType = type[c.Command]

#: RFC 9051 §6.1: valid in any state.
ANY: Final[frozenset[CommandType]] = frozenset({c.Capability, c.Noop, c.Logout, c.Id})
#: RFC 9051 §6.2: valid only before authentication.
NOT_AUTH_CMDS: Final[frozenset[CommandType]] = frozenset({c.StartTls, c.Authenticate, c.Login})
#: RFC 9051 §6.3: valid once authenticated (also with a mailbox selected).
AUTH_CMDS: Final[frozenset[CommandType]] = frozenset(
    {
        c.Enable, c.Select, c.Create, c.Delete, c.Rename, c.Subscribe, c.Unsubscribe, c.List,
        c.Lsub, c.Namespace, c.Status, c.Append, c.Idle, c.GetQuota, c.GetQuotaRoot, c.SetQuota,
    }
)  # fmt: skip
#: RFC 9051 §6.4: valid only with a mailbox selected.
SELECTED_CMDS: Final[frozenset[CommandType]] = frozenset(
    {
        c.Check, c.Close, c.Unselect, c.Expunge, c.Search, c.Fetch, c.Store, c.Copy, c.Move,
        c.Replace,
    }
)  # fmt: skip

ALLOWED: Final[dict[State, frozenset[CommandType]]] = {
    State.NOT_AUTHENTICATED: ANY | NOT_AUTH_CMDS,
    State.AUTHENTICATED: ANY | AUTH_CMDS,
    State.SELECTED: ANY | AUTH_CMDS | SELECTED_CMDS,
    State.LOGOUT: frozenset(),
}

# Capabilities that are always on offer once the greeting is out (RFC 9051 §7.2.2 and the
# extensions' RFCs). AUTH=, STARTTLS, LOGINDISABLED and APPENDLIMIT= are added per session.
EXTENSIONS: Final = (
    "ENABLE",  # RFC 5161
    "ID",  # RFC 2971
    "SASL-IR",  # RFC 4959
    "LITERAL+",  # RFC 7888
    "IDLE",  # RFC 2177
    "NAMESPACE",  # RFC 2342
    "UNSELECT",  # RFC 3691
    "UIDPLUS",  # RFC 4315
    "MOVE",  # RFC 6851
    "CHILDREN",  # RFC 3348
    "LIST-EXTENDED",  # RFC 5258
    "LIST-STATUS",  # RFC 5819
    "SPECIAL-USE",  # RFC 6154
    "CREATE-SPECIAL-USE",  # RFC 6154
    "ESEARCH",  # RFC 4731
    "SEARCHRES",  # RFC 5182
    "WITHIN",  # RFC 5032
    "BINARY",  # RFC 3516
    "MULTIAPPEND",  # RFC 3502
    "CONDSTORE",  # RFC 7162
    "QRESYNC",  # RFC 7162
    "QUOTA",  # RFC 9208
    "QUOTA=RES-STORAGE",
    "QUOTA=RES-MESSAGE",
    "STATUS=SIZE",  # RFC 8438
    "UTF8=ACCEPT",  # RFC 6855
    "SAVEDATE",  # RFC 8514
    "PREVIEW",  # RFC 8970
    "REPLACE",  # RFC 8508
    "OBJECTID",  # RFC 8474
)

#: ENABLE-able extensions (RFC 5161 and each extension's RFC).
DISK_FULL_TEXT: Final = "not enough disk space on the server; try again later"
ENABLEABLE: Final = frozenset({"IMAP4REV2", "CONDSTORE", "QRESYNC", "UTF8=ACCEPT"})

SYSTEM_FLAGS: Final = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
#: Keywords every mailbox offers in FLAGS (RFC 9051 §2.3.2: $Forwarded, $MDNSent, $Junk ...).
STANDARD_KEYWORDS: Final = ("$Forwarded", "$MDNSent", "$Junk", "$NotJunk", "$Phishing")

SPECIAL_USES: Final = frozenset(
    {"\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash"}
)
_SPECIAL_USE_BY_LOWER: Final = {s.lower(): s for s in SPECIAL_USES}


def _kib(octets: int) -> int:
    return (octets + 1023) // 1024


# ---- the session ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Selected:
    """The mailbox this session has selected, and how."""

    mailbox: Mailbox
    readonly: bool
    view: View
    keywords: list[str] = field(default_factory=list)  # as announced in FLAGS
    metas: dict[int, MessageMeta] = field(default_factory=dict)  # see `_metas`
    gone: bool = False  # deleted by some session


@dataclass(frozen=True, slots=True)
class _Ok:
    """What a handler returns: the tagged OK's code and text, or ``pending`` for no reply yet."""

    text: str = "completed"
    code: str | None = None
    pending: bool = False


_PENDING: Final = _Ok(pending=True)


class ImapSession:
    def __init__(
        self,
        backend: ImapBackend,
        settings: ImapSettings,
        out: Output,
        *,
        remote_ip: str = "",
        is_loopback: bool = False,
        tls_active: bool = False,
        conn_id: str = "-",
    ) -> None:
        self._backend = backend
        self._store = backend.store
        self._settings = settings
        self._out = out
        self._remote_ip = remote_ip
        self._is_loopback = is_loopback
        self._tls_active = tls_active
        self._conn_id = conn_id
        self._framer = ImapFramer(
            max_line=settings.max_line,
            max_literal=settings.max_message_size,
        )
        self._state = State.NOT_AUTHENTICATED
        self._account_id = 0
        self._account_name: str | None = None
        self._subscribed = False  # to the hub, for the account's changes
        self._selected: _Selected | None = None
        self._enabled: frozenset[str] = frozenset()  # replaced, not changed: shared while empty
        self._saved: list[int] | None = None  # SEARCHRES "$" as UIDs (RFC 5182)
        self._sasl: SaslExchange | None = None
        self._sasl_tag = ""
        self._idle_tag: str | None = None
        self._idle_scheduled = False
        self._errors = 0
        self._auth_failures = 0
        self._closing = False
        self._feeding = False  # commands are being run (`feed`)
        # account deleted (or its state lost) while a command ran: BYE when it is answered
        self._account_gone: tuple[str, str] | None = None
        self._session_account: int | None = None  # holds a place in hub.sessions
        self._account_checked = 0.0  # time.monotonic() of the last look at the account's row
        self.close_reason = "logout"

    # ---- public interface --------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def account(self) -> str | None:
        return self._account_name

    @property
    def closing(self) -> bool:
        """The connection is to be closed once what was written has gone out."""
        return self._closing

    @property
    def idling(self) -> bool:
        return self._idle_tag is not None

    @property
    def enabled(self) -> frozenset[str]:
        return self._enabled

    @property
    def autologout(self) -> float:
        """Seconds of client silence after which the server logs the client out."""
        s = self._settings
        if self._state in (State.AUTHENTICATED, State.SELECTED):
            return s.autologout_authenticated
        return s.autologout_unauthenticated

    @property
    def plaintext_allowed(self) -> bool:
        s = self._settings
        return (
            self._tls_active
            or s.allow_plaintext
            or (self._is_loopback and s.allow_plaintext_on_loopback)
        )

    def greet(self) -> None:
        """RFC 9051 §7.1.1: the greeting, with the capabilities (saves a round trip)."""
        caps = " ".join(self._capabilities())
        self._write(f"* OK [CAPABILITY {caps}] {self._settings.hostname} IMAP server ready")

    def autologout_bye(self) -> None:
        """RFC 9051 §5.4, §7.1.5: the client was silent for too long."""
        self._write("* BYE Autologout; idle for too long")
        self._closing = True
        self.close_reason = "autologout"

    def command_timeout_bye(self) -> None:
        """A started command did not arrive in time (a client sending a byte now and then)."""
        self._write("* BYE Command not completed in time")
        self._closing = True
        self.close_reason = "command-timeout"

    @property
    def buffered(self) -> int:
        """Octets of a command that has been started but not completed (a refused literal
        still being thrown away counts with what is left of it)."""
        return self._framer.buffered + self._framer.discarding

    def shutdown_bye(self) -> None:
        """The server is stopping (RFC 9051 §7.1.5)."""
        if not self._closing:
            self._write("* BYE Server shutting down")
            self._closing = True

    async def feed(self, data: bytes) -> None:
        """Take bytes from the client and run every command they complete."""
        self._framer.receive_data(data)
        self._feeding = True
        try:
            await self._feed_commands()
        finally:
            self._feeding = False
        if self._account_gone is not None:
            self._end_deleted()

    async def _feed_commands(self) -> None:
        handled = 0
        while not self._closing:
            event = self._framer.next_event()
            if event is NEED_DATA:
                break
            handled += 1
            if handled % 64 == 0:  # a long pipeline must not starve other connections
                await asyncio.sleep(0)
            try:
                await self._event(event)
            except (ConnectionError, asyncio.CancelledError):
                raise
            except Exception:  # a bug outside any command handler: say so, carry on
                log.exception("conn=%s event=internal-error", self._conn_id)
                self._out.write(untagged_status("NO", "SERVERBUG", "internal error"))
            if self._framer.buffered == 0:
                continue
            await self._out.drain()

    async def close(self) -> None:
        """The connection is gone or going: stop listening to the hub."""
        self._closing = True
        self._state = State.LOGOUT
        self._idle_tag = None
        if self._subscribed:
            self._backend.hub.unsubscribe(self._account_id, self._on_change)
            self._subscribed = False
        if self._session_account is not None:
            self._backend.hub.sessions.release(self._session_account)
            self._session_account = None

    # ---- writing -----------------------------------------------------------------------------

    def _write(self, line: str | bytes) -> None:
        """One untagged/continuation line without its CRLF (text must hold no literal)."""
        data = line.encode("utf-8") if isinstance(line, str) else line
        self._out.write(data + b"\r\n")

    def _untagged(self, text: str | bytes) -> None:
        self._out.write(untagged(text))

    def _tagged(self, tag: str, status: str, code: str | None, text: str) -> None:
        self._out.write(tagged(tag, status, code, text))

    @property
    def _utf8(self) -> bool:
        """Mailbox names travel as UTF-8 (RFC 9051 §5.1, RFC 6855), not modified UTF-7."""
        return "IMAP4REV2" in self._enabled or "UTF8=ACCEPT" in self._enabled

    @property
    def _rev2(self) -> bool:
        return "IMAP4REV2" in self._enabled

    @property
    def _condstore(self) -> bool:
        return "CONDSTORE" in self._enabled or "QRESYNC" in self._enabled

    @property
    def _qresync(self) -> bool:
        return "QRESYNC" in self._enabled

    def _name_out(self, name: str) -> bytes:
        """A mailbox name for a response: UTF-8 for rev2/UTF8=ACCEPT, else modified UTF-7."""
        return mailbox_name(name, self._utf8)

    def _capabilities(self) -> list[str]:
        caps = ["IMAP4rev1", "IMAP4rev2"]
        if self._state is State.NOT_AUTHENTICATED:
            if self._settings.tls_available and not self._tls_active:
                caps.append("STARTTLS")
            if self.plaintext_allowed:
                caps += ["AUTH=PLAIN", "AUTH=LOGIN"]
            else:
                caps.append("LOGINDISABLED")
        caps += EXTENSIONS
        caps.append(f"APPENDLIMIT={self._settings.max_message_size}")
        return caps

    # ---- events from the framer --------------------------------------------------------------

    async def _event(
        self, event: bytes | NeedContinuation | LineTooLong | LiteralTooLarge | SaslResponse
        | IdleLine,
    ) -> None:  # fmt: skip
        if isinstance(event, bytes):
            await self._command_bytes(event)
        elif isinstance(event, NeedContinuation):
            # RFC 9051 §7.5: the command continues; the literal follows.
            self._write(f"+ {event.text}")
        elif isinstance(event, LineTooLong):
            log.info("conn=%s event=line-too-long", self._conn_id)
            self._error(event.tag, ImapBad("TOOBIG", "line too long"))
        elif isinstance(event, LiteralTooLarge):
            log.info("conn=%s event=literal-too-large octets=%d", self._conn_id, event.size)
            if event.synchronizing:  # RFC 7889: the client sent nothing; the command is over
                self._error(event.tag, ImapNo("TOOBIG", "literal larger than APPENDLIMIT"))
            else:  # RFC 7888 §4: a non-synchronising literal over the limit
                self._error(event.tag, ImapBad("TOOBIG", "literal larger than APPENDLIMIT"))
                if self._framer.discarding > 4 * self._settings.max_line:
                    # Reading megabytes only to throw them away: hang up instead.
                    self._bye("literal too large, closing connection", "too-big")
        elif isinstance(event, SaslResponse):
            await self._sasl_response(event)
        else:
            await self._idle_line(event)

    def _bye(self, text: str, reason: str) -> None:
        self._write(f"* BYE {text}")
        self._closing = True
        self.close_reason = reason

    def _error(self, tag: str, exc: ImapResult) -> None:
        """Write a tagged NO/BAD and close the connection after too many BADs."""
        self._tagged(tag, exc.status, exc.code, exc.text)
        if isinstance(exc, ImapBad):
            self._errors += 1
            if self._errors >= self._settings.max_errors and not self._closing:
                log.info("conn=%s event=too-many-errors count=%d", self._conn_id, self._errors)
                self._bye("Too many invalid commands", "too-many-errors")

    async def _command_bytes(self, data: bytes) -> None:
        try:
            cmd = parse_command(data, utf8_enabled=self._utf8)
        except ParseError as exc:
            log.debug("conn=%s event=parse-error text=%.80r", self._conn_id, exc.text)
            self._flush_updates(expunge=False)
            self._error(exc.tag or "*", ImapBad(exc.code, exc.text))
            return
        except Exception:  # a parser bug: the client's command may well be fine
            log.exception("conn=%s event=parser-error", self._conn_id)
            self._tagged(tag_of(data), "NO", "SERVERBUG", "internal error; the incident was logged")
            return
        await self._run(cmd)

    async def _run(self, cmd: c.Command) -> None:
        self._log_command(cmd)
        try:
            if type(cmd) not in ALLOWED[self._state]:
                raise ImapBad(
                    "CLIENTBUG", f"{_command_name(cmd)} not allowed in {self._state.value} state"
                )
            if self._state in (State.AUTHENTICATED, State.SELECTED) and type(cmd) is not c.Logout:
                # Hear first what other processes committed before this command arrived (the
                # store's change feed), so that no command misses a change another worker's
                # client was already told of.
                self._store.sync_feed()
                await self._backend.hub.settled()
                self._account_exists()  # an administrator deleted the account meanwhile: BYE
            result = await getattr(self, _HANDLERS[type(cmd)])(cmd)
        except ImapResult as exc:
            self._flush_updates(expunge=_expunge_allowed(cmd))
            self._error(cmd.tag, exc)
            if isinstance(cmd, (c.Login, c.Authenticate)):
                self._after_login_failure()
            return
        except (ConnectionError, asyncio.CancelledError):
            raise
        except DiskFull:
            # RFC 5530 has no code for a full disk; OVERQUOTA (what Dovecot answers too) tells
            # the client that the data did not fit, and the text that this is temporary.
            log.warning("conn=%s event=disk-full cmd=%s", self._conn_id, type(cmd).__name__.upper())
            self._flush_updates(expunge=False)
            self._tagged(cmd.tag, "NO", "OVERQUOTA", DISK_FULL_TEXT)
            return
        except Exception:
            log.exception(
                "conn=%s event=internal-error cmd=%s", self._conn_id, type(cmd).__name__.upper()
            )
            self._flush_updates(expunge=False)
            self._tagged(cmd.tag, "NO", "SERVERBUG", "internal error; the incident was logged")
            return
        if result.pending:
            return
        self._errors = 0
        if self._state is not State.LOGOUT:  # nothing after the BYE but the tagged OK
            self._flush_updates(expunge=_expunge_allowed(cmd))
        self._tagged(cmd.tag, "OK", result.code, result.text)

    def _log_command(self, cmd: c.Command) -> None:
        if not log.isEnabledFor(logging.DEBUG):
            return
        if isinstance(cmd, c.Login):
            log.debug("conn=%s cmd=LOGIN user=%.64r", self._conn_id, cmd.username)
        elif isinstance(cmd, c.Authenticate):
            log.debug("conn=%s cmd=AUTHENTICATE mech=%.20r", self._conn_id, cmd.mechanism)
        elif isinstance(cmd, (c.Append, c.Replace)):
            log.debug("conn=%s cmd=%s", self._conn_id, _command_name(cmd))
        else:
            log.debug("conn=%s cmd=%s args=%.120r", self._conn_id, _command_name(cmd), cmd)

    # ---- helpers for handlers ----------------------------------------------------------------

    def _account_exists(self) -> None:
        """BYE if an administrator deleted the account meanwhile. The hub tells every session
        of the account at once (`_on_change`, also for ``postfach user del`` in another
        process); this look at the store is the fallback, made at most once a second so that
        it does not cost a query per command."""
        now = time.monotonic()
        if self._account_gone or now - self._account_checked >= _ACCOUNT_RECHECK:
            self._account()
            self._account_checked = now

    def _account(self) -> Account:
        acc = self._store.get_account_by_id(self._account_id)
        if acc is None or acc.name != self._account_name:  # deleted by an administrator
            self._bye("account no longer exists", "account-deleted")
            raise ImapNo("UNAVAILABLE", "account no longer exists")
        return acc

    @staticmethod
    def _normalise(name: str) -> str:
        """RFC 9051 §5.1: NFC, and INBOX (and its prefix) in any case means INBOX."""
        if isinstance(name, c.UndecodableName):
            return name
        name = unicodedata.normalize("NFC", name)
        # ASCII case only: "\u0131nbox".upper() is "INBOX" in Python, but not in IMAP.
        if name.isascii() and name.upper() == INBOX:
            return INBOX
        if name[:6].isascii() and name[:6].upper() == INBOX + DELIMITER:
            return INBOX + name[5:]
        return name

    @staticmethod
    def _name_problem(name: str) -> str | None:
        """Why ``name`` cannot be a mailbox name here, or None (RFC 9051 §5.1)."""
        if isinstance(name, c.UndecodableName):
            return "mailbox name is not valid modified UTF-7"
        if not name:
            return "empty mailbox name"
        if len(name) > MAX_NAME:
            return "mailbox name too long"
        if any(ord(ch) < 0x20 or ch == "\x7f" or 0x80 <= ord(ch) < 0xA0 for ch in name):
            return "control characters in mailbox name"
        if "*" in name or "%" in name:
            return "wildcards in mailbox name"
        levels = name.split(DELIMITER)
        if len(levels) > MAX_LEVELS:
            return "mailbox hierarchy too deep"
        for level in levels:
            if not level:
                return "empty level in mailbox name"
            if level in (".", ".."):
                return "mailbox name levels . and .. are not allowed"
            if len(level) > MAX_LEVEL:
                return "mailbox name level too long"
        return None

    def _new_name(self, raw: str) -> str:
        """A name for CREATE/RENAME/SUBSCRIBE: normalised and checked, else NO [CANNOT]."""
        name = self._normalise(raw)
        problem = self._name_problem(name)
        if problem is not None:
            raise ImapNo("CANNOT", problem)
        return name

    def _mailbox(self, raw: str, *, trycreate: bool = False) -> Mailbox:
        """An existing mailbox of this account, else NO [NONEXISTENT] (or [TRYCREATE])."""
        name = self._normalise(raw)
        mbox = None if self._name_problem(name) else self._store.get_mailbox(self._account_id, name)
        if mbox is None or mbox.account_id != self._account_id:
            if trycreate:  # RFC 9051 §6.3.12, §6.4.7: the client may CREATE and retry
                raise ImapNo("TRYCREATE", "no such mailbox")
            raise ImapNo("NONEXISTENT", "no such mailbox")
        return mbox

    @staticmethod
    def _mailbox_id(mbox: Mailbox) -> str:
        """RFC 8474 MAILBOXID: stable across renames, never reused (row id + UIDVALIDITY)."""
        return f"F{mbox.id}x{mbox.uidvalidity}"

    @staticmethod
    async def _offload(size: int, fn: Callable[..., T], *args: Any) -> T:
        """Run fn on the loop when the work is small, else in a thread (DESIGN.md "Runtime")."""
        return fn(*args) if size <= _OFFLOAD_OCTETS else await asyncio.to_thread(fn, *args)

    def _parse_flags(self, names: Sequence[str]) -> tuple[Flag, tuple[str, ...]]:
        """System flags and keywords from a flag list; BAD for unknown ``\\`` flags."""
        flags = Flag.NONE
        keywords: list[str] = []
        for name in names:
            if name.startswith("\\"):
                try:
                    flags |= Flag.from_names([name])
                except KeyError:
                    raise ImapBad(None, f"invalid system flag {name}") from None
            else:
                keywords.append(name)
        return flags, tuple(keywords)

    # ---- any state (RFC 9051 §6.1) -----------------------------------------------------------

    async def _cmd_capability(self, cmd: c.Capability) -> _Ok:
        """RFC 9051 §6.1.1."""
        self._untagged("CAPABILITY " + " ".join(self._capabilities()))
        return _Ok("CAPABILITY completed")

    async def _cmd_noop(self, cmd: c.Noop) -> _Ok:
        """RFC 9051 §6.1.2: nothing, but pending updates go out (`_run`)."""
        return _Ok("NOOP completed")

    async def _cmd_logout(self, cmd: c.Logout) -> _Ok:
        """RFC 9051 §6.1.3: BYE first, then the tagged OK, then close."""
        self._untagged("BYE logging out")
        self._state = State.LOGOUT
        self._closing = True
        self.close_reason = "logout"
        return _Ok("LOGOUT completed")

    async def _cmd_id(self, cmd: c.Id) -> _Ok:
        """RFC 2971: log what the client says it is, say what we are."""
        if cmd.params:
            about = " ".join(
                f"{k[:20]}={(v or '')[:40]!r}"
                for k, v in cmd.params[:8]
                if k.lower() in ("name", "version", "vendor", "os")
            )
            log.info("conn=%s event=client-id %s", self._conn_id, about)
        ident = (
            quoted("name") + b" " + quoted(self._settings.implementation) + b" "
            + quoted("version") + b" " + quoted(_VERSION)
        )  # fmt: skip
        self._untagged(b"ID (" + ident + b")")
        return _Ok("ID completed")

    # ---- not authenticated (RFC 9051 §6.2) ---------------------------------------------------

    async def _cmd_starttls(self, cmd: c.StartTls) -> _Ok:
        """RFC 9051 §6.2.1. Everything the client pipelined after STARTTLS is dropped."""
        if self._tls_active:
            raise ImapBad(None, "TLS is already active")
        if not self._settings.tls_available:
            raise ImapBad(None, "TLS is not available")
        dropped = self._framer.discard_buffer()
        if dropped:  # RFC 9051 §6.2.1 / STARTTLS command injection
            log.warning("conn=%s event=starttls-discard octets=%d", self._conn_id, dropped)
        self._tagged(cmd.tag, "OK", None, "Begin TLS negotiation now")
        await self._out.start_tls()
        self._tls_active = True
        self._framer.discard_buffer()
        return _PENDING

    async def _cmd_login(self, cmd: c.Login) -> _Ok:
        """RFC 9051 §6.2.3; refused without TLS (LOGINDISABLED) unless the settings allow it."""
        if not self.plaintext_allowed:
            raise ImapNo("PRIVACYREQUIRED", "LOGIN is disabled without TLS; use STARTTLS first")
        return await self._login(cmd.username, cmd.password, "", "LOGIN")

    async def _cmd_authenticate(self, cmd: c.Authenticate) -> _Ok:
        """RFC 9051 §6.2.2 with SASL-IR (RFC 4959): PLAIN (RFC 4616) and LOGIN."""
        mech = cmd.mechanism.upper()
        if mech not in ("PLAIN", "LOGIN"):
            raise ImapNo("CANNOT", f"unsupported authentication mechanism {mech[:20]}")
        if not self.plaintext_allowed:
            raise ImapNo("PRIVACYREQUIRED", "plaintext authentication needs TLS; use STARTTLS")
        initial = None
        if cmd.initial is not None:
            initial = encode_base64(cmd.initial) if cmd.initial else "="
        try:
            exchange = start_exchange(mech, initial)
        except SaslError:
            raise ImapBad(None, f"malformed {mech} initial response") from None
        return await self._sasl_step(cmd.tag, exchange)

    async def _sasl_step(self, tag: str, exchange: SaslExchange) -> _Ok:
        challenge = exchange.challenge
        if challenge is not None:
            self._sasl, self._sasl_tag = exchange, tag
            self._framer.expect_sasl_response(tag)
            self._out.write(continuation(challenge))
            return _PENDING
        creds = exchange.credentials()
        return await self._login(
            creds.authcid, creds.password, creds.authzid, f"AUTHENTICATE-{exchange.mechanism}"
        )

    async def _sasl_response(self, event: SaslResponse) -> None:
        """The client's answer to a ``+`` challenge of AUTHENTICATE."""
        exchange, tag = self._sasl, self._sasl_tag
        self._sasl = None
        if exchange is None:  # cannot happen: the framer only yields these when asked
            return
        cmd = c.Authenticate(tag, exchange.mechanism, None)
        try:
            if is_cancel(event.text):  # RFC 9051 §6.2.2: "*" cancels, answered with BAD
                raise ImapBad(None, "authentication cancelled")
            try:
                exchange.respond(event.text.strip())
            except SaslError:
                raise ImapBad(None, f"malformed {exchange.mechanism} response") from None
            result = await self._sasl_step(tag, exchange)
        except ImapResult as exc:
            self._error(tag, exc)
            self._after_login_failure()
            return
        except Exception:
            log.exception("conn=%s event=internal-error cmd=AUTHENTICATE", self._conn_id)
            self._tagged(tag, "NO", "SERVERBUG", "internal error; the incident was logged")
            return
        if not result.pending:
            self._errors = 0
            self._flush_updates(expunge=_expunge_allowed(cmd))
            self._tagged(tag, "OK", result.code, result.text)

    def _after_login_failure(self) -> None:
        if self._auth_failures >= self._settings.max_auth_failures and not self._closing:
            self._bye("Too many authentication failures", "auth-failures")

    async def _login(self, username: str, password: str, authzid: str, method: str) -> _Ok:
        try:
            account = await self._backend.authenticate(username, password, self._remote_ip)
        except LoginLockedOut:
            self._auth_failures += 1
            log.info("conn=%s event=login result=locked-out method=%s", self._conn_id, method)
            # RFC 5530: a temporary refusal; the client keeps its password and retries later.
            raise ImapNo("UNAVAILABLE", "too many failed logins; try again later") from None
        acc = self._store.get_account(account) if account is not None else None
        foreign = (
            acc is not None and authzid and authzid.lower() not in (username.lower(), acc.name)
        )
        if acc is None or foreign:
            self._auth_failures += 1
            log.info(
                "conn=%s event=login result=%s method=%s user=%.64r",
                self._conn_id,
                "not-authorized" if foreign else "fail",
                method,
                username,
            )
            if foreign:  # RFC 9051 §7.1: valid credentials, but not for that identity
                raise ImapNo("AUTHORIZATIONFAILED", "not authorized to act as that user")
            raise ImapNo("AUTHENTICATIONFAILED", "invalid credentials")
        if not self._backend.hub.sessions.acquire(acc.id):
            log.info("conn=%s event=login result=session-limit account=%r", self._conn_id, acc.name)
            # RFC 5530: the credentials are right, the account has too many sessions open.
            raise ImapNo("LIMIT", "too many sessions for this account; try again later")
        self._session_account = acc.id
        self._account_id = acc.id
        self._account_name = acc.name
        self._backend.hub.subscribe(acc.id, self._on_change)
        self._subscribed = True
        self._state = State.AUTHENTICATED
        log.info(
            "conn=%s event=login result=ok method=%s account=%r tls=%s",
            self._conn_id,
            method,
            acc.name,
            "yes" if self._tls_active else "no",
        )
        self._quota_alert(acc)
        caps = " ".join(self._capabilities())
        return _Ok(f"{acc.name} authenticated", f"CAPABILITY {caps}")

    def _quota_alert(self, acc: Account) -> None:
        """``* OK [ALERT]`` when the account is nearly full (RFC 9051 §7.1: ALERT)."""
        shares = []
        if acc.quota_bytes:
            shares.append(acc.used_bytes / acc.quota_bytes)
        if acc.quota_messages:
            shares.append(acc.used_messages / acc.quota_messages)
        if shares and max(shares) > self._settings.quota_alert:
            pct = min(int(max(shares) * 100), 999)
            self._out.write(
                untagged_status("OK", "ALERT", f"Your mailbox is {pct}% full; delete some messages")
            )

    # ---- authenticated (RFC 9051 §6.3) -------------------------------------------------------

    async def _cmd_enable(self, cmd: c.Enable) -> _Ok:
        """RFC 5161 / RFC 9051 §6.3.1: IMAP4rev2, CONDSTORE, QRESYNC (RFC 7162), UTF8=ACCEPT."""
        names = {"IMAP4REV2": "IMAP4rev2", "CONDSTORE": "CONDSTORE", "QRESYNC": "QRESYNC",
                 "UTF8=ACCEPT": "UTF8=ACCEPT"}  # fmt: skip
        newly: list[str] = []
        for cap in cmd.capabilities:
            cap = cap.upper()
            wanted = [cap] if cap != "QRESYNC" else ["CONDSTORE", "QRESYNC"]  # RFC 7162 §3.2.3
            for w in wanted:
                if w in ENABLEABLE and w not in self._enabled:
                    self._enabled |= {w}
                    newly.append(names[w])
        self._sync_view()
        self._untagged(" ".join(["ENABLED", *newly]))
        return _Ok("ENABLE completed")

    def _condstore_enabling(self) -> None:
        """RFC 7162 §3.1: a CONDSTORE-enabling command (FETCH MODSEQ, CHANGEDSINCE, STORE
        UNCHANGEDSINCE, SEARCH MODSEQ, STATUS HIGHESTMODSEQ). Issued while a mailbox is selected,
        it is answered with an untagged ``OK [HIGHESTMODSEQ n]`` the first time."""
        if self._condstore:
            return
        self._enabled |= {"CONDSTORE"}
        self._sync_view()
        sel = self._selected
        if sel is not None:
            hms = sel.view.highestmodseq
            self._out.write(untagged_status("OK", f"HIGHESTMODSEQ {hms}", "highest"))

    def _sync_view(self) -> None:
        """CONDSTORE/QRESYNC (MODSEQ) or IMAP4rev2 (no \\Recent) enabled while selected."""
        if self._selected is not None:
            self._selected.view.condstore = self._condstore
            self._selected.view.qresync = self._qresync
            if self._rev2:  # RFC 9051 §2.3.2: no \Recent in IMAP4rev2
                self._selected.view.drop_recent()

    async def _cmd_namespace(self, cmd: c.Namespace) -> _Ok:
        """RFC 2342 / RFC 9051 §6.3.10: one personal namespace, no others."""
        self._untagged('NAMESPACE (("" "/")) NIL NIL')
        return _Ok("NAMESPACE completed")

    async def _cmd_create(self, cmd: c.Create) -> _Ok:
        """RFC 9051 §6.3.4, RFC 6154 §3 (CREATE-SPECIAL-USE), RFC 8474 §4 (MAILBOXID)."""
        name = self._new_name(_without_trailing_delimiter(cmd.mailbox))
        special: str | None = None
        for use in cmd.special_use:
            canonical = _SPECIAL_USE_BY_LOWER.get(use.lower())
            if canonical is None:
                raise ImapNo("USEATTR", f"unsupported special use {use[:20]}")
            if special is not None and special != canonical:
                raise ImapNo("USEATTR", "only one special use per mailbox")
            special = canonical
        existing = {m.name for m in self._store.list_mailboxes(self._account_id)}
        if name in existing:
            raise ImapNo("ALREADYEXISTS", "mailbox exists already")
        levels = name.split(DELIMITER)
        try:
            for i in range(1, len(levels)):  # RFC 9051 §6.3.4: create the superior names
                parent = DELIMITER.join(levels[:i])
                if parent not in existing:
                    await self._store.acreate_mailbox(self._account_id, parent, None)
            await self._store.acreate_mailbox(self._account_id, name, special)
        except AlreadyExists:
            raise ImapNo("ALREADYEXISTS", "mailbox exists already") from None
        mbox = self._store.get_mailbox(self._account_id, name)
        code = f"MAILBOXID ({self._mailbox_id(mbox)})" if mbox is not None else None
        return _Ok("CREATE completed", code)

    async def _cmd_delete(self, cmd: c.Delete) -> _Ok:
        """RFC 9051 §6.3.5: the messages go; inferior names and subscriptions stay."""
        name = self._normalise(cmd.mailbox)
        if name == INBOX:
            raise ImapNo("CANNOT", "INBOX cannot be deleted")
        mbox = self._mailbox(name)
        try:
            await self._store.adelete_mailbox(self._account_id, mbox.name)
        except NotFound:
            raise ImapNo("NONEXISTENT", "no such mailbox") from None
        except StoreError as exc:
            raise ImapNo("CANNOT", str(exc)) from None
        self._backend.recent.forget((mbox.id, mbox.uidvalidity))
        return _Ok("DELETE completed")

    async def _cmd_rename(self, cmd: c.Rename) -> _Ok:
        """RFC 9051 §6.3.6: inferior names move too; renaming INBOX moves its messages."""
        old = self._normalise(cmd.old)
        new = self._new_name(_without_trailing_delimiter(cmd.new))
        src = self._mailbox(old)
        if new == INBOX or new == src.name:
            raise ImapNo("ALREADYEXISTS", "mailbox exists already")
        if new.startswith(src.name + DELIMITER):
            raise ImapNo("CANNOT", "a mailbox cannot be moved below itself")
        existing = {m.name for m in self._store.list_mailboxes(self._account_id)}
        if new in existing:
            raise ImapNo("ALREADYEXISTS", "mailbox exists already")
        levels = new.split(DELIMITER)
        try:
            for i in range(1, len(levels)):
                parent = DELIMITER.join(levels[:i])
                if parent not in existing and not (src.name + DELIMITER).startswith(
                    parent + DELIMITER
                ):
                    await self._store.acreate_mailbox(self._account_id, parent, None)
            await self._store.arename_mailbox(self._account_id, src.name, new)
        except AlreadyExists:
            raise ImapNo("ALREADYEXISTS", "mailbox exists already") from None
        except NotFound:
            raise ImapNo("NONEXISTENT", "no such mailbox") from None
        except StoreError as exc:
            raise ImapNo("CANNOT", str(exc)) from None
        return _Ok("RENAME completed")

    async def _cmd_subscribe(self, cmd: c.Subscribe) -> _Ok:
        """RFC 9051 §6.3.7: names need not exist (and stay when the mailbox goes)."""
        name = self._new_name(cmd.mailbox)
        await self._store.aset_subscribed(self._account_id, name, True)
        return _Ok("SUBSCRIBE completed")

    async def _cmd_unsubscribe(self, cmd: c.Unsubscribe) -> _Ok:
        """RFC 9051 §6.3.8."""
        name = self._normalise(cmd.mailbox)
        await self._store.aset_subscribed(self._account_id, name, False)
        return _Ok("UNSUBSCRIBE completed")

    # ---- LIST, LSUB, STATUS ------------------------------------------------------------------

    @staticmethod
    def _pattern(reference: str, pattern: str) -> re.Pattern[str]:
        """RFC 9051 §6.3.9: reference + pattern; ``*`` any levels, ``%`` within one level.

        INBOX is case-insensitive, so a pattern starting with it (any case) matches INBOX. A
        reference or pattern that is not valid modified UTF-7 matches nothing.
        """
        if isinstance(reference, c.UndecodableName) or isinstance(pattern, c.UndecodableName):
            return _NOTHING
        full = unicodedata.normalize("NFC", reference + pattern)
        head = full[:5]
        if head.isascii() and head.upper() == INBOX and (len(full) == 5 or full[5] == DELIMITER):
            full = INBOX + full[5:]
        rx = "".join(".*" if ch == "*" else "[^/]*" if ch == "%" else re.escape(ch) for ch in full)
        return re.compile(rx, re.DOTALL)

    def _list_line(self, kind: str, name: str, attrs: Sequence[str], extra: bytes = b"") -> bytes:
        return f'{kind} ({" ".join(attrs)}) "{DELIMITER}" '.encode() + self._name_out(name) + extra

    async def _cmd_list(self, cmd: c.List) -> _Ok:
        """RFC 9051 §6.3.9 with LIST-EXTENDED (RFC 5258), LIST-STATUS (RFC 5819), SPECIAL-USE
        (RFC 6154 §2) and CHILDREN (RFC 3348)."""
        selection = {s.upper() for s in cmd.selection}
        returns = {r.upper() for r in cmd.return_opts}
        if "RECURSIVEMATCH" in selection and not selection - {"RECURSIVEMATCH", "REMOTE"}:
            raise ImapBad(None, "RECURSIVEMATCH needs another selection option")  # RFC 5258 §3
        if cmd.status_items:
            self._check_status_items(cmd.status_items)
        if not cmd.extended and len(cmd.patterns) == 1 and cmd.patterns[0] == "":
            # RFC 9051 §6.3.9: the hierarchy delimiter and the root name.
            self._untagged(f'LIST (\\Noselect) "{DELIMITER}" ""')
            return _Ok("LIST completed")
        rev1_plain = not cmd.extended and not self._rev2
        mailboxes = {m.name: m for m in self._store.list_mailboxes(self._account_id)}
        want_subscribed = "SUBSCRIBED" in selection or "SUBSCRIBED" in returns
        subscribed = set(self._store.list_subscriptions(self._account_id)) if want_subscribed \
            else set()  # fmt: skip
        patterns = [self._pattern(cmd.reference, p) for p in cmd.patterns if p != ""]

        def matches(name: str) -> bool:
            return any(p.fullmatch(name) for p in patterns)

        def parents(name: str) -> list[str]:
            levels = name.split(DELIMITER)
            return [DELIMITER.join(levels[:i]) for i in range(1, len(levels))]

        # Every name that exists or is implied by an existing (or subscribed) inferior name.
        implied: set[str] = set()
        for name in list(mailboxes) + (list(subscribed) if "SUBSCRIBED" in selection else []):
            implied.update(parents(name))
        all_names = set(mailboxes) | implied
        children: set[str] = set()
        for name in mailboxes:
            children.update(parents(name))

        if "SUBSCRIBED" in selection:
            candidates = {n for n in subscribed if matches(n)}
        elif "SPECIAL-USE" in selection:
            candidates = {n for n, m in mailboxes.items() if m.special_use and matches(n)}
        else:
            candidates = {n for n in all_names if matches(n)}
        childinfo: set[str] = set()
        if "RECURSIVEMATCH" in selection and "SUBSCRIBED" in selection:
            # RFC 5258 §4 (CHILDINFO): a name that matches a pattern, with a subscribed inferior
            # that matches none (an inferior that matches is listed itself; imaptest listext).
            for name in subscribed:
                if matches(name):
                    continue
                for parent in parents(name):
                    if matches(parent):
                        childinfo.add(parent)
            candidates |= childinfo

        for name in sorted(candidates, key=lambda n: (n != INBOX, n)):
            mbox = mailboxes.get(name)
            attrs: list[str] = []
            if mbox is None:
                attrs.append("\\Noselect" if rev1_plain else "\\NonExistent")
            attrs.append("\\HasChildren" if name in children else "\\HasNoChildren")
            if name in subscribed and want_subscribed:
                attrs.append("\\Subscribed")
            if mbox is not None and mbox.special_use:
                attrs.append(mbox.special_use)
            extra = b""
            if name in childinfo:
                extra = b' ("CHILDINFO" ("SUBSCRIBED"))'
            self._untagged(self._list_line("LIST", name, attrs, extra))
            if cmd.status_items and mbox is not None:  # RFC 5819: after its LIST response
                self._untagged(self._status_response(mbox, cmd.status_items))
        return _Ok("LIST completed")

    async def _cmd_lsub(self, cmd: c.Lsub) -> _Ok:
        """RFC 3501 §6.3.9 (IMAP4rev1 only): subscribed names; ``%`` shows unsubscribed
        parents of subscribed names as \\Noselect."""
        if cmd.pattern == "":
            self._untagged(f'LSUB (\\Noselect) "{DELIMITER}" ""')
            return _Ok("LSUB completed")
        pattern = self._pattern(cmd.reference, cmd.pattern)
        subscribed = set(self._store.list_subscriptions(self._account_id))
        mailboxes = {m.name for m in self._store.list_mailboxes(self._account_id)}
        found: dict[str, list[str]] = {}
        for name in subscribed:
            if pattern.fullmatch(name):
                found[name] = [] if name in mailboxes else ["\\Noselect"]
            elif cmd.pattern.endswith("%"):
                levels = name.split(DELIMITER)
                for i in range(1, len(levels)):
                    parent = DELIMITER.join(levels[:i])
                    if pattern.fullmatch(parent) and parent not in subscribed:
                        found.setdefault(parent, ["\\Noselect"])
        for name in sorted(found, key=lambda n: (n != INBOX, n)):
            self._untagged(self._list_line("LSUB", name, found[name]))
        return _Ok("LSUB completed")

    _STATUS_ITEMS: Final = frozenset(
        {"MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "DELETED", "SIZE", "RECENT",
         "HIGHESTMODSEQ", "APPENDLIMIT", "MAILBOXID", "DELETED-STORAGE"}
    )  # fmt: skip

    def _check_status_items(self, items: Sequence[str]) -> None:
        for item in items:
            if item.upper() not in self._STATUS_ITEMS:
                raise ImapBad(None, f"unknown STATUS item {item[:20]}")

    def _status_response(self, mbox: Mailbox, items: Sequence[str]) -> bytes:
        """``STATUS name (MESSAGES n ...)`` (RFC 9051 §7.3.4)."""
        wanted = [i.upper() for i in items]
        counts = None
        if {"UNSEEN", "DELETED", "DELETED-STORAGE", "SIZE"} & set(wanted):
            counts = self._store.mailbox_counts(mbox.id)
        values: list[str] = []
        for item in dict.fromkeys(wanted):
            if item == "MESSAGES":
                values.append(f"MESSAGES {mbox.messages}")
            elif item == "UIDNEXT":
                values.append(f"UIDNEXT {mbox.uidnext}")
            elif item == "UIDVALIDITY":
                values.append(f"UIDVALIDITY {mbox.uidvalidity}")
            elif item == "UNSEEN":
                assert counts is not None
                values.append(f"UNSEEN {counts.unseen}")
            elif item == "DELETED":  # RFC 9051 §6.3.11
                assert counts is not None
                values.append(f"DELETED {counts.deleted}")
            elif item == "DELETED-STORAGE":  # RFC 9208 §4.2.1: in units of 1024 octets
                assert counts is not None
                values.append(f"DELETED-STORAGE {_kib(counts.deleted_size)}")
            elif item == "SIZE":  # RFC 8438
                assert counts is not None
                values.append(f"SIZE {counts.size}")
            elif item == "RECENT":  # RFC 3501 §6.3.10
                values.append(f"RECENT {self._recent_count(mbox)}")
            elif item == "HIGHESTMODSEQ":  # RFC 7162 §3.1.6
                values.append(f"HIGHESTMODSEQ {mbox.highestmodseq}")
            elif item == "APPENDLIMIT":  # RFC 7889 §4
                values.append(f"APPENDLIMIT {self._settings.max_message_size}")
            elif item == "MAILBOXID":  # RFC 8474 §4
                values.append(f"MAILBOXID ({self._mailbox_id(mbox)})")
        return b"STATUS " + self._name_out(mbox.name) + f" ({' '.join(values)})".encode()

    def _recent_count(self, mbox: Mailbox) -> int:
        """Messages no session has claimed as \\Recent yet (RFC 3501 §2.3.2, `RecentClaims`)."""
        claimed = self._backend.recent.claimed((mbox.id, mbox.uidvalidity))
        if claimed >= mbox.uidnext - 1:
            return 0
        if claimed == 0:
            return mbox.messages
        return sum(1 for m in self._store.list_messages(mbox.id) if m.uid > claimed)

    async def _cmd_status(self, cmd: c.Status) -> _Ok:
        """RFC 9051 §6.3.11 (+ SIZE RFC 8438, HIGHESTMODSEQ RFC 7162, MAILBOXID RFC 8474)."""
        self._check_status_items(cmd.items)
        mbox = self._mailbox(cmd.mailbox)
        if any(i.upper() == "HIGHESTMODSEQ" for i in cmd.items):
            self._condstore_enabling()
        self._untagged(self._status_response(mbox, cmd.items))
        return _Ok("STATUS completed")

    # ---- APPEND ------------------------------------------------------------------------------

    async def _stage(self, msg: c.AppendMessage) -> AppendItem:
        """Parse (once, on the exact octets) and stage one message to append."""
        if not msg.data:
            raise ImapNo("CANNOT", "empty message")
        if not msg.binary and b"\x00" in msg.data:  # RFC 9051 §4.3: CHAR8 excludes NUL
            raise ImapBad(None, "NUL octet in a literal; send it as literal8 (BINARY)")
        if len(msg.data) > self._settings.max_message_size:
            raise ImapNo("TOOBIG", "message larger than APPENDLIMIT")
        flags, keywords = self._parse_flags(msg.flags)
        if msg.internal_date is not None:
            try:
                date = parse_date_time(msg.internal_date)
            except ValueError:
                raise ImapBad(None, "invalid date-time") from None
        else:
            date = int(time.time())
        data = msg.data
        size = len(data)
        if msg.binary and b"\x00" in data:  # RFC 3516 §4.4: see `base64_nul_parts`
            data = await self._offload(size, base64_nul_parts, data)
        structure = await self._offload(size, parse_for_storage, data)
        blob = await self._offload(size, self._store.stage, data, structure)
        return AppendItem(blob, flags, keywords, date)

    async def _append(self, mbox: Mailbox, messages: Sequence[c.AppendMessage]) -> list[int]:
        """Store all messages or none (RFC 3502); their UIDs. OverQuota → NO [OVERQUOTA]."""
        staged: list[AppendItem] = []
        try:
            for msg in messages:
                staged.append(await self._stage(msg))
            metas = await self._store.aappend(mbox.id, staged)
        except OverQuota as exc:
            raise ImapNo("OVERQUOTA", f"quota exceeded ({exc.resource.lower()})") from None
        except NotFound:
            raise ImapNo("TRYCREATE", "no such mailbox") from None
        except BaseException:
            for item in staged:
                self._discard(item.blob)
            raise
        return [m.uid for m in metas]

    def _discard(self, blob: StagedBlob) -> None:
        try:
            self._store.discard(blob)
        except OSError:
            log.warning("conn=%s event=discard-failed", self._conn_id)

    async def _cmd_append(self, cmd: c.Append) -> _Ok:
        """RFC 9051 §6.3.12, MULTIAPPEND (RFC 3502), APPENDUID (RFC 4315 §3), BINARY literal8
        (RFC 3516 §4.4). The octets are stored exactly as sent, except that parts holding NUL
        (only possible in a literal8) are stored base64-encoded (`base64_nul_parts`)."""
        mbox = self._mailbox(cmd.mailbox, trycreate=True)
        uids = await self._append(mbox, cmd.messages)
        log.info(
            "conn=%s event=append mailbox_id=%d count=%d octets=%d",
            self._conn_id,
            mbox.id,
            len(uids),
            sum(len(m.data) for m in cmd.messages),
        )
        return _Ok("APPEND completed", f"APPENDUID {mbox.uidvalidity} {format_sequence_set(uids)}")

    # ---- IDLE --------------------------------------------------------------------------------

    async def _cmd_idle(self, cmd: c.Idle) -> _Ok:
        """RFC 9051 §6.3.13 / RFC 2177: updates go out as they happen until DONE."""
        self._idle_tag = cmd.tag
        self._framer.expect_idle_done(cmd.tag)
        self._out.write(continuation("idling"))
        self._flush_updates(expunge=True)
        return _PENDING

    async def _idle_line(self, event: IdleLine) -> None:
        tag, self._idle_tag = self._idle_tag, None
        if tag is None:
            return
        self._flush_updates(expunge=True)
        try:
            parse_done(event.line)
        except ParseError:  # RFC 9051 §6.3.13: anything else ends IDLE with BAD
            self._error(tag, ImapBad(None, "expected DONE"))
            return
        self._errors = 0
        self._tagged(tag, "OK", None, "IDLE terminated")

    def _idle_flush(self) -> None:
        self._idle_scheduled = False
        if self._idle_tag is not None and not self._closing:
            self._flush_updates(expunge=True)

    # ---- QUOTA (RFC 9208) --------------------------------------------------------------------

    def _quota_response(self, acc: Account) -> str:
        resources = []
        if acc.quota_bytes:  # RFC 9208 §5.1: STORAGE in units of 1024 octets
            resources.append(f"STORAGE {_kib(acc.used_bytes)} {_kib(acc.quota_bytes)}")
        if acc.quota_messages:
            resources.append(f"MESSAGE {acc.used_messages} {acc.quota_messages}")
        return f'QUOTA "" ({" ".join(resources)})'

    async def _cmd_getquota(self, cmd: c.GetQuota) -> _Ok:
        """RFC 9208 §4.2: one quota root per account, named ""."""
        if cmd.root != "":
            raise ImapNo("NONEXISTENT", "no such quota root")
        self._untagged(self._quota_response(self._account()))
        return _Ok("GETQUOTA completed")

    async def _cmd_getquotaroot(self, cmd: c.GetQuotaRoot) -> _Ok:
        """RFC 9208 §4.3."""
        mbox = self._mailbox(cmd.mailbox)
        self._untagged(b"QUOTAROOT " + self._name_out(mbox.name) + b' ""')
        self._untagged(self._quota_response(self._account()))
        return _Ok("GETQUOTAROOT completed")

    async def _cmd_setquota(self, cmd: c.SetQuota) -> _Ok:
        """RFC 9208 §4.1: only administrators set quotas (``postfach account quota``)."""
        raise ImapNo("NOPERM", "quotas are set by the administrator")

    # ---- changes from the hub ----------------------------------------------------------------

    def _on_change(self, change: Change) -> None:
        """Every committed change of this account, on the event loop (see module docstring)."""
        if isinstance(change, (AccountDeleted, ChangesLost)):
            # BYE now, unless a command's response is being written (it must not be cut in
            # two): then when it is done (`feed`). IDLE has no response in progress.
            # ChangesLost: this process missed changes made by another one (the store's change
            # feed), so what the view holds may be wrong; the client resyncs on reconnecting.
            if self._account_gone is None or isinstance(change, AccountDeleted):
                self._account_gone = (
                    ("account no longer exists", "account-deleted")
                    if isinstance(change, AccountDeleted)
                    else ("mailbox state lost, please reconnect", "state-lost")
                )
            if not self._feeding or self._idle_tag is not None:
                self._end_deleted()
            return
        sel = self._selected
        if sel is None:
            return
        if isinstance(change, MailboxesChanged):
            if self._store.get_mailbox_by_id(sel.mailbox.id) is None:
                sel.gone = True
            return
        sel.view.apply(change)
        if self._idle_tag is not None and not self._idle_scheduled and sel.view.has_pending:
            self._idle_scheduled = True
            asyncio.get_running_loop().call_soon(self._idle_flush)

    def _end_deleted(self) -> None:
        """RFC 9051 §7.1.5: the account was deleted by an administrator, or this session's
        state was lost (`ChangesLost`): BYE and close."""
        if not self._closing and self._account_gone is not None:
            text, reason = self._account_gone
            log.info("conn=%s event=%s account=%r", self._conn_id, reason, self._account_name)
            self._bye(text, reason)
            self._out.end()

    def _flush_updates(self, *, expunge: bool) -> None:
        """Untagged updates of the selected mailbox, where RFC 9051 §7.5.1 allows them."""
        sel = self._selected
        if sel is None:
            return
        # RFC 9051 §7.3.5: a keyword new to the mailbox (set by another session, or on a new
        # message) is announced in FLAGS before a FETCH shows it.
        self._announce_keywords(sel, sel.view.pending_keywords())
        for line in sel.view.pending_updates(expunge):
            self._out.write(line)

    # ---- selecting (RFC 9051 §6.3.2, §6.3.3, §6.4.2, RFC 3691) -------------------------------

    def _sel(self, *, writable: bool = False) -> _Selected:
        sel = self._selected
        if sel is None:  # the state table prevents this
            raise ImapBad("CLIENTBUG", "no mailbox selected")
        if sel.gone:
            raise ImapNo("NONEXISTENT", "the selected mailbox was deleted")
        if writable and sel.readonly:
            raise ImapNo("CANNOT", "mailbox is read-only (EXAMINE)")
        return sel

    def _deselect(self) -> None:
        self._selected = None
        if self._state is State.SELECTED:
            self._state = State.AUTHENTICATED

    def _mailbox_attrs(self, mbox: Mailbox) -> list[str]:
        names = self._store.list_mailboxes(self._account_id)
        prefix = mbox.name + DELIMITER
        attrs = ["\\HasChildren" if any(m.name.startswith(prefix) for m in names)
                 else "\\HasNoChildren"]  # fmt: skip
        if mbox.special_use:
            attrs.append(mbox.special_use)
        return attrs

    async def _cmd_select(self, cmd: c.Select) -> _Ok:
        """SELECT and EXAMINE (RFC 9051 §6.3.2, §6.3.3) with CONDSTORE and QRESYNC
        (RFC 7162 §3.1.8, §3.2.5)."""
        previous = self._selected  # its listing stays cached while the new one is looked up
        if self._selected is not None:
            # A SELECT closes the mailbox selected before (no expunge), even if it fails.
            self._deselect()
            self._out.write(untagged_status("OK", "CLOSED", "previous mailbox closed"))
        if cmd.qresync is not None and not self._qresync:
            raise ImapBad("CLIENTBUG", "QRESYNC must be enabled first")  # RFC 7162 §3.2.5
        if cmd.condstore:
            self._enabled |= {"CONDSTORE"}
        mbox = self._mailbox(cmd.mailbox)
        listing = self._listing(mbox)
        del previous
        recent, claim = self._recent_at_select(mbox, listing, cmd.readonly)
        view = View(
            mbox.id,
            mbox.uidvalidity,
            listing,
            listing.highestmodseq,
            condstore=self._condstore,
            qresync=self._qresync,
            recent=recent,
            claim=claim,
        )
        keywords = sorted(listing.all_keywords() - set(STANDARD_KEYWORDS))
        flags = " ".join([*SYSTEM_FLAGS, *STANDARD_KEYWORDS, *keywords])
        self._untagged(f"FLAGS ({flags})")
        self._untagged(f"{view.exists} EXISTS")
        if not self._rev2:
            self._untagged(f"{view.recent} RECENT")
            unseen = view.unseen_first
            if unseen is not None:
                self._out.write(untagged_status("OK", f"UNSEEN {unseen}", "first unseen"))
        permanent = "" if cmd.readonly else f"{flags} \\*"
        self._out.write(untagged_status("OK", f"PERMANENTFLAGS ({permanent})", "flags"))
        self._out.write(untagged_status("OK", f"UIDVALIDITY {mbox.uidvalidity}", "UIDs valid"))
        self._out.write(untagged_status("OK", f"UIDNEXT {mbox.uidnext}", "predicted next UID"))
        self._out.write(
            untagged_status("OK", f"HIGHESTMODSEQ {view.highestmodseq}", "highest")
        )  # RFC 7162 §3.1.2.1
        self._out.write(untagged_status("OK", f"MAILBOXID ({self._mailbox_id(mbox)})", "id"))
        if self._rev2:  # RFC 9051 §6.3.2: a LIST response with the mailbox name
            self._untagged(self._list_line("LIST", mbox.name, self._mailbox_attrs(mbox)))
        if cmd.qresync is not None and cmd.qresync.uidvalidity == mbox.uidvalidity:
            self._qresync_select(cmd.qresync, view, mbox)
        self._selected = _Selected(mbox, cmd.readonly, view, [*STANDARD_KEYWORDS, *keywords])
        self._state = State.SELECTED
        log.debug(
            "conn=%s event=select mailbox_id=%d readonly=%s messages=%d",
            self._conn_id,
            mbox.id,
            cmd.readonly,
            view.exists,
        )
        code = "READ-ONLY" if cmd.readonly else "READ-WRITE"
        return _Ok("EXAMINE completed" if cmd.readonly else "SELECT completed", code)

    def _listing(self, mbox: Mailbox) -> Listing:
        """The mailbox's messages as of now: shared with the other sessions that selected it
        while it has not changed (`postfach.imap.listing`), else read afresh."""
        cache = self._backend.listings
        listing = cache.get(mbox.id, mbox.uidvalidity, mbox.highestmodseq)
        if listing is not None:
            return listing
        older = cache.latest(mbox.id, mbox.uidvalidity)
        if older is not None and len(older) >= _PATCH_LISTING_MIN:
            # A large mailbox that changed since it was listed: read only the changes since
            # (100,000 messages: a few ms instead of ~0.3 s for every row again).
            highestmodseq, rows, gone = self._store.message_rows_since(mbox.id, older.highestmodseq)
            if len(rows) + len(gone) <= len(older) // 4:
                with contextlib.suppress(ValueError):  # not a plain patch: read afresh
                    listing = older.patched(highestmodseq, rows, gone)
        if listing is None:
            highestmodseq, rows = self._store.list_message_rows(mbox.id)
            listing = Listing(mbox.id, mbox.uidvalidity, highestmodseq, rows)
        cache.put(listing)
        return listing

    def _recent_at_select(
        self, mbox: Mailbox, listing: Listing, readonly: bool
    ) -> tuple[list[int], Callable[[int], bool] | None]:
        """The messages \\Recent in this session at SELECT, and how the view decides for new
        ones (RFC 3501 §2.3.2). SELECT claims them; EXAMINE shows what is unclaimed and claims
        nothing (§6.3.2). IMAP4rev2 has no \\Recent (RFC 9051 §2.3.2): nothing, no claims."""
        if self._rev2:
            return [], None
        claims = self._backend.recent
        key = (mbox.id, mbox.uidvalidity)
        uids = listing.uids
        # SELECT claims what was unclaimed in the same step (other workers claim too).
        claimed = claims.claimed(key) if readonly or not uids else claims.claim_upto(key, uids[-1])
        recent = list(uids[bisect.bisect_right(uids, claimed) :])
        return recent, _RecentClaim(claims, mbox.id, mbox.uidvalidity, claim=not readonly)

    def _qresync_select(self, params: c.QresyncParams, view: View, mbox: Mailbox) -> None:
        """RFC 7162 §3.2.5.1: what changed since the client's MODSEQ, as VANISHED (EARLIER)
        and FETCH responses."""
        changed, vanished = self._store.changes_since(mbox.id, params.modseq)
        if params.known_uids is not None:
            known = resolve(params.known_uids, MAX_NUMBER)
            vanished = [u for u in vanished if contains(known, u)]
        if vanished:
            self._untagged(f"VANISHED (EARLIER) {format_sequence_set(vanished)}")
        for meta in changed:
            seq = view.seq_of(meta.uid)
            if seq is None:
                continue
            flags = format_flags(meta.flags, meta.keywords, meta.uid in view.recent_uids)
            self._out.write(
                b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))\r\n"
                % (seq, meta.uid, flags, meta.modseq)
            )

    async def _cmd_close(self, cmd: c.Close) -> _Ok:
        """RFC 9051 §6.4.2: expunge \\Deleted messages silently (unless read-only), deselect."""
        sel = self._selected
        uids = self._deleted_uids(sel.view) if sel is not None else []
        self._deselect()  # first, so the expunges below are not reported
        if sel is not None and uids and not sel.readonly and not sel.gone:
            await self._store.aexpunge(sel.mailbox.id, uids)
        return _Ok("CLOSE completed")

    async def _cmd_unselect(self, cmd: c.Unselect) -> _Ok:
        """RFC 3691 / RFC 9051 §6.4.2 (UNSELECT): deselect without expunging."""
        self._deselect()
        return _Ok("UNSELECT completed")

    async def _cmd_check(self, cmd: c.Check) -> _Ok:
        """RFC 3501 §6.4.1: a checkpoint; every write is durable already, so a NOOP."""
        self._sel()
        return _Ok("CHECK completed")

    # ---- EXPUNGE (RFC 9051 §6.4.3, UID EXPUNGE RFC 4315 §2.1) --------------------------------

    async def _cmd_expunge(self, cmd: c.Expunge) -> _Ok:
        sel = self._sel(writable=True)
        view = sel.view
        # UID EXPUNGE: only those of the set (RFC 4315 §2.1)
        among = None if cmd.uids is None else view.uids_for(cmd.uids, True)
        uids = self._deleted_uids(view, among)
        if uids:
            await self._store.aexpunge(sel.mailbox.id, uids)
        self._flush_updates(expunge=True)
        code = f"HIGHESTMODSEQ {view.highestmodseq}" if self._condstore else None
        return _Ok("EXPUNGE completed", code)

    # ---- FETCH (RFC 9051 §6.4.5, RFC 3516 BINARY, RFC 7162 CHANGEDSINCE/VANISHED) ------------

    def _check_sequence(self, sel: _Selected, seqset: c.SequenceSet, uid: bool) -> None:
        if not uid and not sequence_numbers_valid(seqset, sel.view.exists):
            raise ImapBad(None, "invalid message sequence number")

    @staticmethod
    def _all_uids(view: View) -> list[int]:
        """Every UID the client has a sequence number for, pending changes folded in."""
        return view.uids_for(_EVERYTHING, False)

    def _deleted_uids(self, view: View, among: list[int] | None = None) -> list[int]:
        """The known messages flagged \\Deleted (RFC 9051 §6.4.3), by the latest flags;
        ``among``: only these UIDs (UID EXPUNGE, RFC 4315 §2.1)."""
        if among is not None and len(among) <= _FEW:
            out = []
            for uid in among:
                flags = view.flags_of(uid)
                if flags is not None and flags[0] & Flag.DELETED and not view.is_expunged(uid):
                    out.append(uid)
            return out
        bits = view.flag_bits()  # -1 (expunged meanwhile) has the bit set: test >= 0 too
        deleted = int(Flag.DELETED)
        found = [u for u, b in zip(view.uids, bits, strict=True) if b & deleted and b >= 0]
        if among is not None:
            wanted = set(among)
            found = [u for u in found if u in wanted]
        return found

    def _metas(self, sel: _Selected, uids: Sequence[int]) -> dict[int, MessageMeta]:
        """Metadata of these messages; missing ones were expunged meanwhile.

        What never changes (size, dates, blob) comes from the listing shared since SELECT
        (`postfach.imap.listing`); messages added since are read in one query and kept in
        ``sel.metas``; flags, keywords and MODSEQ come from the view, which holds the latest
        state the store published.
        """
        cache, view = sel.metas, sel.view
        listing = view.listing
        index, listed, n = listing.index, listing.uids, len(listing)
        out: dict[int, MessageMeta] = {}
        missing: list[int] = []
        i = -1
        for uid in uids:
            i += 1  # ascending UIDs: usually the next one in the listing
            if i >= n or listed[i] != uid:
                i = index(uid)
            if i >= 0:
                out[uid] = listing.meta(i)
            elif uid in cache:
                out[uid] = cache[uid]
            else:
                missing.append(uid)
                i = -1 if not n or uid < listed[0] else n - 1
        if missing:
            for m in self._store.get_messages(sel.mailbox.id, missing):
                cache[m.uid] = out[m.uid] = m
            out = {u: out[u] for u in uids if u in out}  # ascending again
        changed = view.changed_state
        for uid, meta in out.items():
            state = changed(uid)
            if state is not None and state[2] > meta.modseq:
                out[uid] = dataclasses.replace(
                    meta, flags=state[0], keywords=state[1], modseq=state[2]
                )
        return out

    def _structure(self, meta: MessageMeta, data: Callable[[], bytes]) -> Parsed:
        text = self._store.blob_structure(meta.blob)
        if text is None:  # stored before structures were kept: parse now
            text = parse_for_storage(data())
        return load_parsed(text)

    async def _cmd_fetch(self, cmd: c.Fetch) -> _Ok:
        sel = self._sel()
        view = sel.view
        self._check_sequence(sel, cmd.sequence, cmd.uid)
        if cmd.vanished and not self._qresync:
            raise ImapBad("CLIENTBUG", "VANISHED needs QRESYNC enabled")  # RFC 7162 §3.2.6
        items = cmd.items
        names = {i.name for i in items if isinstance(i, c.FetchAttr)}
        if cmd.changedsince is not None or "MODSEQ" in names:
            self._condstore_enabling()
            if "MODSEQ" not in names:
                items = (*items, c.FetchAttr("MODSEQ"))
        uids = view.uids_for(cmd.sequence, cmd.uid)
        if cmd.vanished and cmd.changedsince is not None:  # RFC 7162 §3.2.6
            ranges = ranges_of(uids) if not cmd.uid else resolve(cmd.sequence, MAX_NUMBER)
            _changed, gone = self._store.changes_since(sel.mailbox.id, cmd.changedsince)
            gone = [u for u in gone if contains(ranges, u) and view.seq_of(u) is None]
            if gone:
                self._untagged(f"VANISHED (EARLIER) {format_sequence_set(gone)}")
        live = [u for u in uids if not view.is_expunged(u)] if view.expunges_pending else uids
        issued = len(live) != len(uids)
        lines = None
        if cmd.changedsince is None and meta_only(items):  # meta_only: nothing implies \Seen
            plan = fetch_plan(items, uid=cmd.uid, condstore=self._condstore)
            lines = flags_lines(plan)
        if lines is not None:  # FETCH 1:* (FLAGS): from the view's flag array
            if await self._fetch_flags(view, live, lines):
                issued = True
            if issued:
                raise ImapNo("EXPUNGEISSUED", "some of the requested messages no longer exist")
            return _Ok("FETCH completed")
        metas = self._metas(sel, live)
        seen_now: set[int] = set()
        if not sel.readonly and implies_seen(items):
            unseen = [u for u, m in metas.items() if not m.flags & Flag.SEEN]
            if unseen:  # RFC 9051 §6.4.5: BODY[] sets \Seen; store first, show the new flags
                result = await self._store.astore_flags(
                    sel.mailbox.id, unseen, "add", Flag.SEEN, ()
                )
                for changed in result.changed:
                    metas[changed.uid] = changed
                    seen_now.add(changed.uid)
        # The metadata has the changes other sessions made since this one's last command.
        self._announce_keywords(sel, {k for m in metas.values() for k in m.keywords})
        reported: list[MessageMeta] = []
        # Items answered from metadata alone (FLAGS, UID, sizes, dates, ...): no per-message
        # coroutine; the connection batches the writes, a drain every _FETCH_BATCH messages.
        quick = meta_only(items)
        plans = {
            changed: fetch_plan(
                items, uid=cmd.uid, flags_changed=changed, condstore=self._condstore
            )
            for changed in (False, True)
        } if quick else {}  # fmt: skip
        recent_uids = view.recent_uids
        written = last = 0  # last: the sequence number answered before (a search hint)
        try:
            for uid in live:
                meta = metas.get(uid)
                if meta is None:
                    issued = True
                    continue
                if cmd.changedsince is not None and meta.modseq <= cmd.changedsince:
                    continue
                seq = view.seq_of(uid, hint=last)
                if seq is None:
                    continue
                last = seq
                if quick:
                    self._out.write(
                        meta_response(seq, meta, plans[uid in seen_now], uid in recent_uids)
                    )
                    written += 1
                    if written % _FETCH_BATCH == 0:
                        await self._out.drain()
                elif not await self._fetch_one(seq, meta, items, cmd.uid, uid in seen_now, sel):
                    issued = True
                    continue
                if uid in seen_now:
                    reported.append(meta)
        finally:
            if reported:
                view.reported(reported)
        if issued:  # RFC 2180 §4.1.2 / RFC 9051 §7.1 EXPUNGEISSUED
            raise ImapNo("EXPUNGEISSUED", "some of the requested messages no longer exist")
        return _Ok("FETCH completed")

    async def _fetch_flags(
        self,
        view: View,
        live: Sequence[int],
        lines: Callable[[int, int, int, tuple[str, ...], bool], bytes],
    ) -> bool:
        """FETCH responses of FLAGS (and UID) for these UIDs (ascending, known to the client)
        from the view's flag array; True when some were expunged meanwhile (left out)."""
        bits = view.flag_bits()  # first: it folds pending changes in
        known = view.uids
        keywords = view.keywords_by_uid()
        # Folded in just now: a keyword another session set since this one's last command is
        # announced before the FETCH that shows it (RFC 9051 §7.3.5), not after the command.
        self._announce_keywords(self._sel(), set().union(*keywords.values()))
        recent = view.recent_uids
        n = len(known)
        issued = False
        chunk: list[bytes] = []
        i = 0
        for uid in live:
            if i >= n or known[i] != uid:  # ascending: usually the next one
                i = bisect.bisect_left(known, uid)
                if i >= n or known[i] != uid:
                    issued = True
                    continue
            b = bits[i]
            i += 1
            if b < 0:
                issued = True
                continue
            chunk.append(lines(i, uid, b, keywords.get(uid, ()), uid in recent))
            if len(chunk) == _FETCH_BATCH:  # one write per batch, then let the client read
                self._out.write(b"".join(chunk))
                chunk.clear()
                await self._out.drain()
        if chunk:
            self._out.write(b"".join(chunk))
        return issued

    async def _fetch_one(
        self, seq: int, meta: MessageMeta, items: Sequence[c.FetchItem], uid: bool,
        flags_changed: bool, sel: _Selected,
    ) -> bool:  # fmt: skip
        """Write one FETCH response; False when the message's data is gone (expunged)."""
        store = self._store
        preloaded: list[bytes] = []
        if meta.size > _OFFLOAD_OCTETS and needs_data(items):
            try:
                preloaded.append(await asyncio.to_thread(store.read_blob, meta.blob))
            except (NotFound, FileNotFoundError):
                return False

        def data() -> bytes:
            if not preloaded:
                preloaded.append(store.read_blob(meta.blob))
            return preloaded[0]

        try:
            response = fetch_response(
                seq,
                meta,
                items,
                parsed=lambda: self._structure(meta, data),
                data=data,
                uid=uid,
                condstore=self._condstore,
                flags_changed=flags_changed,
                readonly=sel.readonly,
                imap4rev2=self._rev2,
                recent=meta.uid in sel.view.recent_uids,
            )
        except (NotFound, FileNotFoundError):
            return False
        except UnknownCte as exc:
            raise ImapNo("UNKNOWN-CTE", f"cannot decode {exc.encoding[:30]}") from None
        for chunk in response.chunks:
            self._out.write(chunk)
        await self._out.drain()
        return True

    # ---- STORE (RFC 9051 §6.4.6, RFC 7162 §3.1.3 UNCHANGEDSINCE) -----------------------------

    async def _cmd_store(self, cmd: c.Store) -> _Ok:
        sel = self._sel(writable=True)
        view = sel.view
        self._check_sequence(sel, cmd.sequence, cmd.uid)
        if cmd.unchangedsince is not None:
            self._condstore_enabling()
        flags, keywords = self._parse_flags(cmd.flags)
        uids = view.uids_for(cmd.sequence, cmd.uid)
        live = [u for u in uids if not view.is_expunged(u)]
        result = await self._store.astore_flags(
            sel.mailbox.id, live, cmd.mode, flags, keywords, cmd.unchangedsince
        )
        changed = {m.uid: m for m in result.changed}
        failed = set(result.failed)
        states: list[_FlagState | MessageMeta] = list(result.changed)
        if not cmd.silent:  # every message of the set gets a FETCH FLAGS (RFC 9051 §6.4.6)
            for u in live:
                if u in changed or u in failed:
                    continue
                fl = view.flags_of(u)
                ms = view.modseq_of(u)
                if fl is not None and ms is not None:
                    states.append(_FlagState(u, fl[0], fl[1], ms))
        view.stored(states, silent=cmd.silent)
        new_keywords = {k for m in result.changed for k in m.keywords}
        self._announce_keywords(sel, new_keywords)
        if failed:  # RFC 7162 §3.1.3: MODIFIED lists UIDs (UID STORE) or sequence numbers
            shown = sorted(failed) if cmd.uid else [
                s for u in failed if (s := view.seq_of(u)) is not None
            ]  # fmt: skip
            return _Ok("conditional STORE failed", f"MODIFIED {format_sequence_set(shown)}")
        return _Ok("STORE completed")

    def _announce_keywords(self, sel: _Selected, keywords: set[str]) -> None:
        """New keywords in the mailbox: a new FLAGS response (RFC 9051 §7.3.5)."""
        if not keywords:  # the usual case, after every command
            return
        lower = {k.lower() for k in sel.keywords}
        new = [k for k in sorted(keywords) if k.lower() not in lower]
        if not new:
            return
        sel.keywords.extend(new)
        flags = " ".join([*SYSTEM_FLAGS, *sel.keywords])
        self._untagged(f"FLAGS ({flags})")
        if not sel.readonly:
            self._out.write(untagged_status("OK", f"PERMANENTFLAGS ({flags} \\*)", "flags"))

    # ---- COPY, MOVE (RFC 9051 §6.4.7, §6.4.8; RFC 6851; COPYUID RFC 4315 §3) ----------------

    async def _copy_or_move(self, cmd: c.Copy | c.Move, move: bool) -> _Ok:
        sel = self._sel(writable=move)
        view = sel.view
        self._check_sequence(sel, cmd.sequence, cmd.uid)
        dst = self._mailbox(cmd.mailbox, trycreate=True)
        uids = [u for u in view.uids_for(cmd.sequence, cmd.uid) if not view.is_expunged(u)]
        verb = "MOVE" if move else "COPY"
        if not uids:
            return _Ok(f"{verb} completed (no messages)")
        try:
            if move:
                pairs = await self._store.amove_messages(sel.mailbox.id, uids, dst.id)
            else:
                pairs = await self._store.acopy_messages(sel.mailbox.id, uids, dst.id)
        except OverQuota as exc:
            raise ImapNo("OVERQUOTA", f"quota exceeded ({exc.resource.lower()})") from None
        except NotFound:
            raise ImapNo("TRYCREATE", "no such mailbox") from None
        if not pairs:
            raise ImapNo("EXPUNGEISSUED", "the messages were expunged meanwhile")
        code = (
            f"COPYUID {dst.uidvalidity} {format_sequence_set(p[0] for p in pairs)} "
            f"{format_sequence_set(p[1] for p in pairs)}"
        )
        if move:  # RFC 6851 §4.3: COPYUID in an untagged OK before the expunges
            self._out.write(untagged_status("OK", code, "moved"))
            self._flush_updates(expunge=True)
            return _Ok("MOVE completed")
        return _Ok("COPY completed", code)

    async def _cmd_copy(self, cmd: c.Copy) -> _Ok:
        return await self._copy_or_move(cmd, False)

    async def _cmd_move(self, cmd: c.Move) -> _Ok:
        return await self._copy_or_move(cmd, True)

    # ---- REPLACE (RFC 8508) ------------------------------------------------------------------

    async def _cmd_replace(self, cmd: c.Replace) -> _Ok:
        sel = self._sel(writable=True)
        view = sel.view
        if cmd.uid:
            old = cmd.number if view.seq_of(cmd.number) is not None else None
        else:
            if not 1 <= cmd.number <= view.exists:
                raise ImapBad(None, "invalid message sequence number")
            old = view.uid_of(cmd.number)
        if old is None or view.is_expunged(old):
            raise ImapNo("NONEXISTENT", "no such message")
        dst = self._mailbox(cmd.mailbox, trycreate=True)
        uids = await self._append(dst, [cmd.message])
        # RFC 8508 §3.4: APPENDUID in an untagged OK, then the expunge of the old message.
        self._out.write(
            untagged_status("OK", f"APPENDUID {dst.uidvalidity} {uids[0]}", "replacement")
        )
        await self._store.aexpunge(sel.mailbox.id, [old])
        self._flush_updates(expunge=True)
        return _Ok("REPLACE completed")

    # ---- SEARCH (RFC 9051 §6.4.4, ESEARCH RFC 4731, SEARCHRES RFC 5182, RFC 7162 MODSEQ) -----

    async def _cmd_search(self, cmd: c.Search) -> _Ok:
        sel = self._sel()
        view = sel.view
        opts = None if cmd.return_opts is None else [o.upper() for o in cmd.return_opts]
        save = opts is not None and "SAVE" in opts
        try:
            if cmd.charset is not None and cmd.charset.upper() not in ("US-ASCII", "UTF-8"):
                raise ImapNo("BADCHARSET (US-ASCII UTF-8)", "unsupported charset")
            with_modseq = uses_modseq(cmd.criteria)
            if with_modseq:
                self._condstore_enabling()
            by_flags = None if with_modseq else flag_predicate(cmd.criteria)
            modseqs = None
            if by_flags is not None:  # SEARCH UNSEEN and the like: a scan of the flags
                all_bits = view.flag_bits()  # first: it folds pending changes in
                pairs = [
                    (seq, uid)
                    for seq, (uid, bits) in enumerate(zip(view.uids, all_bits, strict=True), 1)
                    if bits >= 0 and by_flags(bits)
                ]
                uids = [uid for _seq, uid in pairs]
                numbers = uids if cmd.uid else [seq for seq, _uid in pairs]
            else:
                found = await self._search(sel, cmd.criteria)
                uids = [m.uid for _seq, m in found]
                numbers = uids if cmd.uid else [seq for seq, _m in found]
                modseqs = [m.modseq for _seq, m in found] if with_modseq else None
        except BaseException:
            if save:  # RFC 5182 §2.1: a failed SAVE leaves $ empty
                view.saved = []
            raise
        if opts is None and not self._rev2:
            top = max(modseqs) if modseqs else None
            self._out.write(search_response(numbers, top))
        else:
            response = esearch_response(cmd.tag, cmd.uid, numbers, opts or (), modseqs)
            if response is not None:
                self._out.write(response)
            if save:
                view.saved = saved_result(uids, opts or ())
        return _Ok("SEARCH completed")

    async def _search(self, sel: _Selected, key: c.SearchKey) -> list[tuple[int, MessageMeta]]:
        view = sel.view
        store = self._store
        uids = self._all_uids(view)
        mailbox_id = view.mailbox_id
        hits: set[int] | None = None
        narrowing = index_narrowing(key)
        if narrowing is not None:
            # Every match must be among the index's hits for this BODY/TEXT key (SEARCH TEXT
            # "word" and any AND with it): look only at those messages, not at the mailbox
            # (100,000 messages: the metadata and a predicate call for each were most of it).
            if len(uids) > _SEARCH_ON_LOOP_MAX:
                hits = await asyncio.to_thread(store.search_text_uids, mailbox_id, *narrowing)
            else:
                hits = store.search_text_uids(mailbox_id, *narrowing)
        if hits is not None:
            pairs = sorted((s, u) for u in hits if (s := view.seq_of(u)) is not None)
            live = [u for _s, u in pairs if not view.is_expunged(u)]
            metas = self._metas(sel, live)
            messages = [(seq, metas[uid]) for seq, uid in pairs if uid in metas]
        else:
            metas = self._metas(sel, [u for u in uids if not view.is_expunged(u)])
            messages = [(seq, metas[uid]) for seq, uid in enumerate(uids, 1) if uid in metas]
        known_hits = {narrowing: hits} if narrowing is not None else {}

        def text_index(key: str, needle: str) -> set[int] | None:
            if (key, needle) in known_hits:  # asked already (None: the index cannot answer)
                return known_hits[(key, needle)]
            return store.search_text_uids(mailbox_id, key, needle)

        def data(meta: MessageMeta) -> bytes:
            try:
                return store.read_blob(meta.blob)
            except (NotFound, FileNotFoundError):  # expunged meanwhile: matches no text
                return b""

        ctx = SearchContext(
            now=int(time.time()),
            max_seq=view.exists,
            max_uid=view.max_uid,
            saved=list(view.saved),
            recent=frozenset(view.recent_uids),
            parsed=lambda m: self._structure(m, lambda: data(m)),
            data=data,
            text_index=text_index,
        )
        try:
            if len(messages) > _SEARCH_ON_LOOP_MAX:
                return await asyncio.to_thread(search, key, messages, ctx)
            return search(key, messages, ctx)
        except UnknownSearchKey as exc:
            raise ImapBad(None, str(exc)) from None


#: the handler of each command type (a method name: one table for all sessions)
_HANDLERS: Final[dict[CommandType, str]] = {
    c.Capability: "_cmd_capability",
    c.Noop: "_cmd_noop",
    c.Logout: "_cmd_logout",
    c.Id: "_cmd_id",
    c.StartTls: "_cmd_starttls",
    c.Authenticate: "_cmd_authenticate",
    c.Login: "_cmd_login",
    c.Enable: "_cmd_enable",
    c.Select: "_cmd_select",
    c.Create: "_cmd_create",
    c.Delete: "_cmd_delete",
    c.Rename: "_cmd_rename",
    c.Subscribe: "_cmd_subscribe",
    c.Unsubscribe: "_cmd_unsubscribe",
    c.List: "_cmd_list",
    c.Lsub: "_cmd_lsub",
    c.Namespace: "_cmd_namespace",
    c.Status: "_cmd_status",
    c.Append: "_cmd_append",
    c.Idle: "_cmd_idle",
    c.GetQuota: "_cmd_getquota",
    c.GetQuotaRoot: "_cmd_getquotaroot",
    c.SetQuota: "_cmd_setquota",
    c.Check: "_cmd_check",
    c.Close: "_cmd_close",
    c.Unselect: "_cmd_unselect",
    c.Expunge: "_cmd_expunge",
    c.Search: "_cmd_search",
    c.Fetch: "_cmd_fetch",
    c.Store: "_cmd_store",
    c.Copy: "_cmd_copy",
    c.Move: "_cmd_move",
    c.Replace: "_cmd_replace",
}
assert set(_HANDLERS) == set().union(*ALLOWED.values())


_FETCH_BATCH: Final = 512  # meta-only FETCH responses written between two drains
_PATCH_LISTING_MIN: Final = 1000  # a cached listing this large is patched, not read again
_FEW: Final = 64  # up to this many UIDs, look each one up rather than scan the mailbox
_ACCOUNT_RECHECK: Final = 1.0  # seconds between two looks at the account's row (`_run`)


class _RecentClaim:
    """How a view decides whether a new message is \\Recent in its session (RFC 3501 §2.3.2):
    SELECT claims it, EXAMINE only looks (``claim=False``). A small object rather than a
    closure: every selected IMAP4rev1 session keeps one."""

    __slots__ = ("_claim", "_claims", "_mailbox_id", "_uidvalidity")

    def __init__(
        self, claims: RecentClaims, mailbox_id: int, uidvalidity: int, *, claim: bool
    ) -> None:
        self._claims = claims
        self._mailbox_id = mailbox_id
        self._uidvalidity = uidvalidity
        self._claim = claim

    def __call__(self, uid: int) -> bool:
        key = (self._mailbox_id, self._uidvalidity)
        if self._claim:
            return self._claims.claim(key, uid)
        return uid > self._claims.claimed(key)


@dataclass(frozen=True, slots=True)
class _FlagState:
    uid: int
    flags: Flag
    keywords: tuple[str, ...]
    modseq: int


_NOTHING: Final = re.compile(r"(?!)")  # a pattern that matches no name


def _without_trailing_delimiter(name: str) -> str:
    """A CREATE/RENAME name without its trailing ``/`` (RFC 9051 §6.3.4)."""
    if isinstance(name, c.UndecodableName):
        return name
    return name.rstrip(DELIMITER) or name


def _command_name(cmd: c.Command) -> str:
    """The command as the client wrote it, for replies and logs (``UID FETCH``, ``EXAMINE``)."""
    name = type(cmd).__name__.upper()
    if isinstance(cmd, c.Select) and cmd.readonly:
        return "EXAMINE"
    if isinstance(cmd, c.Expunge) and cmd.uids is not None:
        return "UID EXPUNGE"
    if getattr(cmd, "uid", False) is True:
        return "UID " + name
    return name


def _expunge_allowed(cmd: c.Command) -> bool:
    """RFC 9051 §7.5.1: no EXPUNGE while answering FETCH, STORE or SEARCH (UID versions may)."""
    return not (isinstance(cmd, (c.Fetch, c.Store, c.Search)) and not cmd.uid)
