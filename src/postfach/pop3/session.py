"""POP3 command semantics (services ring): RFC 1939, RFC 2449, RFC 5034, RFC 2595.

A ``Pop3Session`` is one client connection's conversation, without sockets: the adapter feeds it
bytes (``receive_data``) and writes the ``Reply`` objects ``next_reply`` returns until it returns
None. Mail comes from a ``Pop3Backend`` (authentication and maildrop locking) and the
``Maildrop`` it opens; both are Protocols so the store can implement them however it likes.

Rules worth knowing:

* Deletions happen only on QUIT in TRANSACTION state (the UPDATE state), all at once, through
  ``Maildrop.commit``. A dropped connection commits nothing; ``close()`` always releases the lock.
* Plaintext logins (USER/PASS, AUTH PLAIN/LOGIN) are refused with ``-ERR [AUTH]`` unless TLS is
  active, or the settings allow them (everywhere, or on loopback only); CAPA follows suit.
* A command raising an unexpected exception is logged with its stack and answered with
  ``-ERR internal error``; the session carries on. ``max_errors`` consecutive ``-ERR`` replies
  end the connection, as do ``max_auth_failures`` failed logins.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from postfach.auth.sasl import MECHANISMS, SaslError, SaslExchange, is_cancel, start_exchange
from postfach.errors import (
    DiskFull,
    LoginLockedOut,
    MailboxInUse,
    NotFound,
    Pop3Err,
    TooManySessions,
)
from postfach.pop3.protocol import (
    ALLOWED,
    COMMANDS,
    NEED_DATA,
    Command,
    LineTooLong,
    Pop3Connection,
    SaslResponse,
    State,
    err,
    multiline_parts,
    ok,
    top_of_message,
)

__all__ = [
    "Maildrop",
    "MaildropEntry",
    "Pop3Backend",
    "Pop3Session",
    "Pop3Settings",
    "Reply",
    "is_loopback_address",
]

log = logging.getLogger("postfach.pop3")

_NUMBER: Final = re.compile(r"[0-9]{1,10}")
_PLAINTEXT_REFUSED: Final = "plaintext authentication is not allowed without TLS; use STLS first"


# ---- the backend contract -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MaildropEntry:
    uidl: str  # unique per account, never changes; 1-70 printable ASCII characters (RFC 1939)
    size: int  # exact octets RETR sends before dot-stuffing (message stored CRLF-normalised)


class Maildrop(Protocol):
    """An account's maildrop, locked for one session from PASS/AUTH until ``release``."""

    @property
    def entries(self) -> Sequence[MaildropEntry]:
        """Snapshot at login (RFC 1939: the maildrop as of PASS); index i is message i + 1."""
        ...

    async def read(self, index: int) -> bytes:
        """Message ``index`` (0-based), CRLF-normalised."""
        ...

    async def commit(self, deleted: Collection[int]) -> None:
        """UPDATE state: expunge these 0-based indexes, all at once (called even when empty)."""
        ...

    async def release(self) -> None:
        """Drop the maildrop lock. Always called once, also after a commit or a disconnect."""
        ...


class Pop3Backend(Protocol):
    async def authenticate(self, username: str, password: str, remote_ip: str) -> str | None:
        """The canonical account name, or None. Applies the failed-login delay itself and
        raises ``postfach.errors.LoginLockedOut`` while the address is locked out."""
        ...

    async def open_maildrop(self, account: str) -> Maildrop:
        """Lock and snapshot the account's maildrop; raises ``postfach.errors.MailboxInUse``."""
        ...


# ---- settings and replies -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pop3Settings:
    hostname: str = "localhost"
    #: STLS can be offered (the server adapter sets this from whether it has an SSL context).
    tls_available: bool = False
    #: Allow USER/PASS and AUTH PLAIN/LOGIN without TLS from anywhere (tests, trusted networks).
    allow_plaintext: bool = False
    #: Allow them without TLS when the client connects from a loopback address.
    allow_plaintext_on_loopback: bool = False
    #: Seconds advertised as LOGIN-DELAY (RFC 2449); enforcing it is the backend's business.
    login_delay: int = 0
    #: Seconds of idleness before autologout (RFC 1939: at least 10 minutes); the server applies it.
    autologout: float = 600.0
    #: Consecutive -ERR replies after which the connection is closed.
    max_errors: int = 20
    #: Failed logins in one connection after which it is closed.
    max_auth_failures: int = 5
    implementation: str = "postfach"

    def __post_init__(self) -> None:
        if self.max_errors < 1 or self.max_auth_failures < 1:
            raise ValueError("max_errors and max_auth_failures must be at least 1")
        if self.autologout <= 0:
            raise ValueError("autologout must be positive")
        if self.login_delay < 0:
            raise ValueError("login_delay must not be negative")
        if not self.hostname or any(c.isspace() for c in self.hostname):
            raise ValueError("hostname must be one non-empty word")


@dataclass(frozen=True, slots=True)
class Reply:
    """What to send, as a few chunks to be written in order, and what to do afterwards."""

    chunks: tuple[bytes, ...]
    close: bool = False  # close the connection once the chunks are sent
    start_tls: bool = False  # begin the TLS handshake once the chunks are sent (STLS)

    @property
    def is_error(self) -> bool:
        return bool(self.chunks) and self.chunks[0].startswith(b"-ERR")

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


def is_loopback_address(ip: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback; False for anything unparsable."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def _reply(data: bytes, *, close: bool = False) -> Reply:
    return Reply((data,), close=close)


# ---- the session ----------------------------------------------------------------------------


class Pop3Session:
    def __init__(
        self,
        backend: Pop3Backend,
        settings: Pop3Settings,
        *,
        remote_ip: str = "",
        is_loopback: bool = False,
        tls_active: bool = False,
        conn_id: str = "-",
    ) -> None:
        self._backend = backend
        self._settings = settings
        self._remote_ip = remote_ip
        self._is_loopback = is_loopback
        self._tls_active = tls_active
        self._conn_id = conn_id
        self._conn = Pop3Connection()
        self._state = State.AUTHORIZATION
        self._user: str | None = None  # set by USER, consumed by the very next command
        self._sasl: SaslExchange | None = None
        self._account: str | None = None
        self._maildrop: Maildrop | None = None
        self._entries: tuple[MaildropEntry, ...] = ()
        self._deleted: set[int] = set()
        self._errors = 0
        self._auth_failures = 0
        self._closing = False
        self._awaiting_tls = False
        self._handlers: dict[str, Callable[[Command, str | None], Awaitable[Reply]]] = {
            "USER": self._cmd_user,
            "PASS": self._cmd_pass,
            "AUTH": self._cmd_auth,
            "STLS": self._cmd_stls,
            "CAPA": self._cmd_capa,
            "QUIT": self._cmd_quit,
            "STAT": self._cmd_stat,
            "LIST": self._cmd_list,
            "RETR": self._cmd_retr,
            "DELE": self._cmd_dele,
            "NOOP": self._cmd_noop,
            "RSET": self._cmd_rset,
            "TOP": self._cmd_top,
            "UIDL": self._cmd_uidl,
        }
        assert set(self._handlers) == COMMANDS

    # ---- public interface --------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def account(self) -> str | None:
        return self._account

    @property
    def tls_active(self) -> bool:
        return self._tls_active

    @property
    def closing(self) -> bool:
        """A reply with ``close`` was returned; nothing more will be processed."""
        return self._closing

    @property
    def plaintext_allowed(self) -> bool:
        s = self._settings
        return (
            self._tls_active
            or s.allow_plaintext
            or (self._is_loopback and s.allow_plaintext_on_loopback)
        )

    def greeting(self) -> bytes:
        return ok(f"{self._settings.hostname} POP3 ready")

    def shutdown_reply(self) -> bytes:
        """The line to send when the server stops: no UPDATE state, so DELEs are not applied
        (RFC 1939 §6: only QUIT in TRANSACTION enters UPDATE)."""
        self._closing = True
        return err("server shutting down, try again later", "SYS/TEMP")

    def autologout_reply(self) -> bytes:
        """The line to send before closing an idle connection (no UPDATE state, RFC 1939)."""
        self._closing = True
        return err("autologout: idle for too long")

    def command_timeout_reply(self) -> bytes:
        """The line to send before closing a connection whose command did not arrive in time."""
        self._closing = True
        return err("command not completed in time")

    @property
    def buffered(self) -> int:
        """Octets of a command line that has been started but not completed."""
        return self._conn.line_octets

    def receive_data(self, data: bytes) -> None:
        self._conn.receive_data(data)

    async def next_reply(self) -> Reply | None:
        """Process the next complete line; None when more data is needed (or nothing may run)."""
        if self._closing or self._awaiting_tls:
            return None
        event = self._conn.next_event()
        if event is NEED_DATA:
            return None
        return await self.handle(event)

    async def handle(self, event: Command | SaslResponse | LineTooLong) -> Reply:
        try:
            reply = await self._dispatch(event)
        except Pop3Err as exc:
            reply = _reply(exc.reply())
        except Exception:
            name = event.name if isinstance(event, Command) else type(event).__name__
            log.exception("conn=%s event=internal-error cmd=%.20r", self._conn_id, name)
            reply = _reply(err("internal error"))
        if reply.is_error:
            self._errors += 1
            if self._errors >= self._settings.max_errors and not reply.close:
                log.info("conn=%s event=too-many-errors count=%d", self._conn_id, self._errors)
                reply = _reply(err("too many errors, closing connection"), close=True)
        elif reply.chunks and reply.chunks[0].startswith(b"+OK"):
            self._errors = 0  # a SASL challenge ("+ ...") is neutral: it neither counts nor resets
        if reply.close:
            self._closing = True
        return reply

    def tls_started(self) -> None:
        """The TLS handshake after STLS succeeded: forget everything said in plaintext."""
        self._tls_active = True
        self._awaiting_tls = False
        self._conn.discard_buffer()
        self._user = None
        self._sasl = None

    async def close(self) -> None:
        """The connection is gone (or going): release the maildrop without committing."""
        self._closing = True
        self._sasl = None
        await self._release()

    # ---- dispatch ----------------------------------------------------------------------------

    async def _dispatch(self, event: Command | SaslResponse | LineTooLong) -> Reply:
        pending_user, self._user = self._user, None
        if isinstance(event, LineTooLong):
            self._sasl = None
            log.debug("conn=%s event=line-too-long octets=%d", self._conn_id, event.octets)
            raise Pop3Err("line too long")
        if isinstance(event, SaslResponse):
            return await self._sasl_response(event)
        self._log_command(event)
        if event.name not in COMMANDS:
            raise Pop3Err("unknown command")
        if event.name not in ALLOWED[self._state]:
            raise Pop3Err(f"{event.name} not allowed in {self._state.value} state")
        return await self._handlers[event.name](event, pending_user)

    def _log_command(self, cmd: Command) -> None:
        if not log.isEnabledFor(logging.DEBUG):
            return
        if cmd.name not in COMMANDS:
            log.debug("conn=%s cmd=unknown keyword=%.20r", self._conn_id, cmd.name)
        elif cmd.name == "PASS":
            log.debug("conn=%s cmd=PASS", self._conn_id)
        elif cmd.name == "AUTH":
            mech = cmd.args[0] if cmd.args else ""
            log.debug("conn=%s cmd=AUTH mech=%.20r", self._conn_id, mech)
        else:
            log.debug("conn=%s cmd=%s args=%.80r", self._conn_id, cmd.name, " ".join(cmd.args))

    # ---- helpers -----------------------------------------------------------------------------

    def _live(self) -> list[int]:
        return [i for i in range(len(self._entries)) if i not in self._deleted]

    def _summary(self) -> str:
        live = self._live()
        size = sum(self._entries[i].size for i in live)
        return f"{len(live)} messages ({size} octets)"

    def _index(self, arg: str) -> int:
        """A message number argument -> 0-based index of a message that is not deleted."""
        if not _NUMBER.fullmatch(arg):
            raise Pop3Err("invalid message number")
        number = int(arg)
        if not 1 <= number <= len(self._entries):
            raise Pop3Err(f"no such message, maildrop has {len(self._entries)} messages")
        if number - 1 in self._deleted:
            raise Pop3Err(f"message {number} already deleted")
        return number - 1

    def _maildrop_or_fail(self) -> Maildrop:
        if self._maildrop is None:  # TRANSACTION always has one; be safe anyway
            raise Pop3Err("no maildrop open")
        return self._maildrop

    @staticmethod
    def _no_args(cmd: Command) -> None:
        if cmd.args:
            raise Pop3Err(f"{cmd.name} takes no arguments")

    async def _release(self) -> None:
        maildrop, self._maildrop = self._maildrop, None
        if maildrop is None:
            return
        try:
            await maildrop.release()
        except Exception:
            log.exception("conn=%s event=release-failed account=%r", self._conn_id, self._account)

    # ---- AUTHORIZATION -----------------------------------------------------------------------

    async def _cmd_user(self, cmd: Command, pending_user: str | None) -> Reply:
        if not self.plaintext_allowed:
            raise Pop3Err(_PLAINTEXT_REFUSED, "AUTH")
        if len(cmd.args) != 1:
            raise Pop3Err("USER needs exactly one argument, the user name")
        self._user = cmd.args[0]
        return _reply(ok("send PASS"))

    async def _cmd_pass(self, cmd: Command, pending_user: str | None) -> Reply:
        if not self.plaintext_allowed:
            raise Pop3Err(_PLAINTEXT_REFUSED, "AUTH")
        if pending_user is None:
            raise Pop3Err("PASS must directly follow a successful USER")
        if not cmd.tail:
            raise Pop3Err("PASS needs the password as argument")
        return await self._login(pending_user, cmd.tail, "", "USER")

    async def _cmd_auth(self, cmd: Command, pending_user: str | None) -> Reply:
        if not cmd.args:
            mechs = MECHANISMS if self.plaintext_allowed else ()
            body = "".join(f"{m}\r\n" for m in mechs).encode()
            return Reply(tuple(multiline_parts("SASL mechanisms follow", body)))
        if len(cmd.args) > 2:
            raise Pop3Err("AUTH takes a mechanism and an optional initial response")
        mech = cmd.args[0].upper()
        if mech not in MECHANISMS:
            raise Pop3Err("unsupported authentication mechanism")
        if not self.plaintext_allowed:
            raise Pop3Err(_PLAINTEXT_REFUSED, "AUTH")
        try:
            exchange = start_exchange(mech, cmd.args[1] if len(cmd.args) == 2 else None)
        except SaslError as exc:
            log.debug("conn=%s event=sasl-malformed mech=%s reason=%r", self._conn_id, mech, exc)
            raise Pop3Err(f"malformed {mech} initial response") from None
        return await self._sasl_step(exchange)

    async def _sasl_step(self, exchange: SaslExchange) -> Reply:
        challenge = exchange.challenge
        if challenge is not None:
            self._sasl = exchange
            self._conn.expect_sasl_response()
            return _reply(f"+ {challenge}\r\n".encode("ascii"))
        creds = exchange.credentials()
        return await self._login(
            creds.authcid, creds.password, creds.authzid, f"AUTH-{exchange.mechanism}"
        )

    async def _sasl_response(self, event: SaslResponse) -> Reply:
        exchange, self._sasl = self._sasl, None
        if exchange is None:
            raise Pop3Err("unexpected SASL response")
        if is_cancel(event.line):
            raise Pop3Err("authentication cancelled")
        try:
            exchange.respond(event.line.strip())
        except SaslError as exc:
            log.debug(
                "conn=%s event=sasl-malformed mech=%s reason=%r",
                self._conn_id,
                exchange.mechanism,
                exc,
            )
            raise Pop3Err(f"malformed {exchange.mechanism} response") from None
        return await self._sasl_step(exchange)

    async def _login(self, username: str, password: str, authzid: str, method: str) -> Reply:
        try:
            account = await self._backend.authenticate(username, password, self._remote_ip)
        except LoginLockedOut:
            self._auth_failures += 1
            log.info("conn=%s event=login result=locked-out method=%s", self._conn_id, method)
            text = "too many failed logins; try again later"
            if self._auth_failures >= self._settings.max_auth_failures:
                return _reply(err(text, "SYS/TEMP"), close=True)
            raise Pop3Err(text, "SYS/TEMP") from None  # RFC 3206: not the credentials' fault
        # An authzid other than the account itself is refused (compared without case, as IMAP
        # and submission do: "ALICE@example.org" is alice).
        foreign = authzid and authzid.lower() not in (username.strip().lower(), account or "")
        if account is None or foreign:
            self._auth_failures += 1
            log.info(
                "conn=%s event=login result=fail method=%s user=%r",
                self._conn_id,
                method,
                username,
            )
            if self._auth_failures >= self._settings.max_auth_failures:
                return _reply(err("authentication failed, closing connection", "AUTH"), close=True)
            raise Pop3Err("authentication failed", "AUTH")
        try:
            maildrop = await self._backend.open_maildrop(account)
        except TooManySessions:
            log.info("conn=%s event=login result=session-limit account=%r", self._conn_id, account)
            # RFC 2449 IN-USE: the credentials are right; the account is busy elsewhere.
            raise Pop3Err("too many sessions for this account, try again later", "IN-USE") from None
        except MailboxInUse:
            log.info("conn=%s event=login result=in-use account=%r", self._conn_id, account)
            raise Pop3Err("maildrop is locked by another session", "IN-USE") from None
        if self._closing:  # the connection went away while the lock was being taken
            await maildrop.release()
            raise Pop3Err("connection closing")
        self._maildrop = maildrop
        self._account = account
        self._entries = tuple(maildrop.entries)
        self._deleted = set()
        self._state = State.TRANSACTION
        log.info(
            "conn=%s event=login result=ok method=%s account=%r messages=%d",
            self._conn_id,
            method,
            account,
            len(self._entries),
        )
        return _reply(ok(f"{account}'s maildrop has {self._summary()}"))

    async def _cmd_stls(self, cmd: Command, pending_user: str | None) -> Reply:
        self._no_args(cmd)
        if self._tls_active:
            raise Pop3Err("TLS is already active")
        if not self._settings.tls_available:
            raise Pop3Err("TLS is not available")
        dropped = self._conn.discard_buffer()
        if dropped:  # RFC 2595 / STARTTLS command injection: nothing pipelined survives
            log.warning("conn=%s event=stls-discard octets=%d", self._conn_id, dropped)
        self._awaiting_tls = True
        return Reply((ok("begin TLS negotiation"),), start_tls=True)

    # ---- any state ---------------------------------------------------------------------------

    async def _cmd_capa(self, cmd: Command, pending_user: str | None) -> Reply:
        s = self._settings
        auth = self._state is State.AUTHORIZATION
        caps = ["TOP", "UIDL"]
        if auth and self.plaintext_allowed:
            caps += ["USER", "SASL " + " ".join(MECHANISMS)]
        caps += [
            "RESP-CODES",
            "AUTH-RESP-CODE",
            "PIPELINING",
            "EXPIRE NEVER",
            f"LOGIN-DELAY {s.login_delay}",
        ]
        if auth and s.tls_available and not self._tls_active:
            caps.append("STLS")
        caps.append(f"IMPLEMENTATION {s.implementation}")
        body = "".join(f"{c}\r\n" for c in caps).encode()
        return Reply(tuple(multiline_parts("capability list follows", body)))

    async def _cmd_quit(self, cmd: Command, pending_user: str | None) -> Reply:
        host = self._settings.hostname
        if self._state is State.AUTHORIZATION:
            return _reply(ok(f"{host} POP3 server signing off"), close=True)
        self._state = State.UPDATE
        maildrop = self._maildrop_or_fail()
        deleted = frozenset(self._deleted)
        try:
            await maildrop.commit(deleted)
        except DiskFull:
            log.warning("conn=%s event=commit-failed reason=disk-full", self._conn_id)
            return _reply(err("some deleted messages not removed", "SYS/TEMP"), close=True)
        except NotFound:  # an administrator deleted the account during the session
            log.info("conn=%s event=commit-gone account=%r", self._conn_id, self._account)
            return _reply(err("the maildrop no longer exists", "SYS/PERM"), close=True)
        except Exception:
            log.exception("conn=%s event=commit-failed account=%r", self._conn_id, self._account)
            return _reply(err("some deleted messages not removed", "SYS/TEMP"), close=True)
        finally:
            await self._release()
        log.info(
            "conn=%s event=update account=%r deleted=%d", self._conn_id, self._account, len(deleted)
        )
        left = len(self._entries) - len(deleted)
        return _reply(ok(f"{host} POP3 server signing off ({left} messages left)"), close=True)

    # ---- TRANSACTION -------------------------------------------------------------------------

    async def _cmd_stat(self, cmd: Command, pending_user: str | None) -> Reply:
        self._no_args(cmd)
        live = self._live()
        return _reply(ok(f"{len(live)} {sum(self._entries[i].size for i in live)}"))

    async def _cmd_list(self, cmd: Command, pending_user: str | None) -> Reply:
        if len(cmd.args) > 1:
            raise Pop3Err("LIST takes at most one argument")
        if cmd.args:
            i = self._index(cmd.args[0])
            return _reply(ok(f"{i + 1} {self._entries[i].size}"))
        body = "".join(f"{i + 1} {self._entries[i].size}\r\n" for i in self._live()).encode()
        return Reply(tuple(multiline_parts(self._summary(), body)))

    async def _cmd_uidl(self, cmd: Command, pending_user: str | None) -> Reply:
        if len(cmd.args) > 1:
            raise Pop3Err("UIDL takes at most one argument")
        if cmd.args:
            i = self._index(cmd.args[0])
            return _reply(ok(f"{i + 1} {self._entries[i].uidl}"))
        body = "".join(f"{i + 1} {self._entries[i].uidl}\r\n" for i in self._live()).encode()
        return Reply(tuple(multiline_parts("unique-id listing follows", body)))

    async def _cmd_retr(self, cmd: Command, pending_user: str | None) -> Reply:
        if len(cmd.args) != 1:
            raise Pop3Err("RETR needs exactly one argument, the message number")
        i = self._index(cmd.args[0])
        data = await self._maildrop_or_fail().read(i)
        if len(data) != self._entries[i].size:
            log.warning(
                "conn=%s event=size-mismatch account=%r message=%d listed=%d actual=%d",
                self._conn_id,
                self._account,
                i + 1,
                self._entries[i].size,
                len(data),
            )
        return Reply(tuple(multiline_parts(f"{len(data)} octets", data)))

    async def _cmd_top(self, cmd: Command, pending_user: str | None) -> Reply:
        if len(cmd.args) != 2:
            raise Pop3Err("TOP needs two arguments, message number and line count")
        i = self._index(cmd.args[0])
        if not _NUMBER.fullmatch(cmd.args[1]):
            raise Pop3Err("invalid line count")
        data = await self._maildrop_or_fail().read(i)
        return Reply(
            tuple(multiline_parts("top of message follows", top_of_message(data, int(cmd.args[1]))))
        )

    async def _cmd_dele(self, cmd: Command, pending_user: str | None) -> Reply:
        if len(cmd.args) != 1:
            raise Pop3Err("DELE needs exactly one argument, the message number")
        i = self._index(cmd.args[0])
        self._deleted.add(i)
        return _reply(ok(f"message {i + 1} deleted"))

    async def _cmd_noop(self, cmd: Command, pending_user: str | None) -> Reply:
        self._no_args(cmd)
        return _reply(ok())

    async def _cmd_rset(self, cmd: Command, pending_user: str | None) -> Reply:
        self._no_args(cmd)
        self._deleted.clear()
        return _reply(ok(f"maildrop has {self._summary()}"))
