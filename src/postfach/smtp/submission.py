"""Message submission (RFC 6409) on port 587 with STARTTLS and 465 with implicit TLS (RFC 8314):
aiosmtpd hooks translated into an `Outbound` transaction (adapter).

What this listener adds to aiosmtpd:

* AUTH PLAIN and LOGIN (RFC 4954) checked against the account database by the shared
  `Authenticator` (argon2id in a thread, throttled), decoded by ``auth/sasl.py``. AUTH needs
  TLS (``538 5.7.11``) except from a loopback peer when the configuration allows plaintext
  there; MAIL, RCPT and DATA need AUTH (``530 5.7.0``): no relaying for anyone else.
* RFC 3461 DSN parameters. aiosmtpd upper-cases parameters and refuses those it does not know,
  but ENVID and ORCPT are case-sensitive xtext; so ``RET``/``ENVID`` (MAIL) and
  ``NOTIFY``/``ORCPT`` (RCPT) are taken out of the command line before aiosmtpd parses it,
  validated here and handed to the transaction. The RFC 4954 ``AUTH=`` MAIL parameter is
  accepted and ignored.
* EHLO advertises SIZE, 8BITMIME, SMTPUTF8 (aiosmtpd), PIPELINING, CHUNKING
  (`postfach.smtp.data`), DSN and ENHANCEDSTATUSCODES, and every reply carries an enhanced
  status code (the mixin shared with the MX listener).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session, syntax

from postfach.auth.sasl import SaslError, decode_base64, parse_plain
from postfach.dsn import RET_VALUES, parse_notify, parse_orcpt, xtext_decode
from postfach.errors import LoginLockedOut, SmtpError
from postfach.limits import Limits
from postfach.outbound import Outbound, SubmitTxn
from postfach.smtp.address import FastAddressSMTP
from postfach.smtp.data import BlockDataSMTP
from postfach.smtp.graceful import GracefulSMTP
from postfach.smtp.handler import EHLO_LAST, S451_LOCAL_ERROR, S503_MAIL_FIRST, _EnhancedCodes
from postfach.smtp.limits import ConnectionLimits, LimitedSMTP

log = logging.getLogger(__name__)

S235_AUTH_OK = "235 2.7.0 Authentication successful"
S250_QUEUED = "250 2.0.0 OK: message accepted for delivery"
S501_BAD_PARAM = "501 5.5.4 Syntax error in parameters"

AuthenticateFn = Callable[[str, str, str], Awaitable[str | None]]


def split_params(arg: str, names: set[str]) -> tuple[str, dict[str, str]] | None:
    """Take the ``NAME=value`` parameters in ``names`` out of a MAIL/RCPT argument.

    Returns the argument without them (for aiosmtpd) and the values as sent (case kept), or
    None when a parameter is repeated or has no value.
    """
    head, sep, rest = arg.partition(":")
    if not sep:
        return arg, {}
    rest = rest.lstrip()
    end = 0
    if rest.startswith("<"):
        quoted = escaped = False
        for i, c in enumerate(rest):
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                quoted = not quoted
            elif c == ">" and not quoted:
                end = i + 1
                break
        else:
            return arg, {}
    else:
        end = len(rest.split(" ", 1)[0])
    address, params = rest[:end], rest[end:].split()
    kept: list[str] = []
    found: dict[str, str] = {}
    for p in params:
        key, eq, value = p.partition("=")
        if key.upper() in names:
            if key.upper() in found or not eq or not value:
                return None
            found[key.upper()] = value
        else:
            kept.append(p)
    return " ".join([f"{head}:{address}", *kept]), found


def _is_loopback(peer: Any) -> bool:
    try:
        host = peer[0] if isinstance(peer, tuple) else str(peer)
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except (ValueError, IndexError, TypeError):
        return False


class SubmissionSession(Session):
    """aiosmtpd's session without its legacy ``login_data`` property. aiosmtpd 1.4 itself
    writes ``login_data`` after every successful `AuthResult` (the current API), and that
    property's setter logs a deprecation warning each time; we keep the account in
    ``auth_data`` and never read ``login_data``."""

    login_data: Any = None


class SubmissionSMTP(GracefulSMTP, _EnhancedCodes, LimitedSMTP, BlockDataSMTP, FastAddressSMTP):
    """aiosmtpd's SMTP with our AUTH mechanisms, DSN parameters and TLS policy."""

    def __init__(
        self,
        handler: SubmissionHandler,
        *,
        authenticate: AuthenticateFn,
        implicit_tls: bool,
        plaintext_auth_on_loopback: bool,
        plaintext_auth: bool = False,
        **kwargs: Any,
    ) -> None:
        self._authenticate_fn = authenticate
        self._implicit_tls = implicit_tls
        self._plaintext_on_loopback = plaintext_auth_on_loopback
        self._plaintext_anywhere = plaintext_auth
        self.dsn_mail: dict[str, str] = {}
        self.dsn_rcpt: dict[str, str] = {}
        tls_context = kwargs.pop("tls_context", None)
        # AUTH needs TLS unless the connection's policy says otherwise (`connection_made`);
        # constructed with both True, as aiosmtpd logs a warning for every protocol made
        # with AUTH required and TLS not.
        super().__init__(
            handler,
            auth_required=True,
            auth_require_tls=True,
            tls_context=None if implicit_tls else tls_context,  # no STARTTLS inside TLS
            **kwargs,
        )

    def _create_session(self) -> Session:
        return SubmissionSession(self.loop)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self._original_transport is None and getattr(self, "transport", None) is None
        super().connection_made(transport)
        if self._implicit_tls:
            # aiosmtpd knows TLS only from its own STARTTLS: on 465 the whole connection is TLS.
            self._auth_require_tls = False
        elif first:
            peer = transport.get_extra_info("peername")
            if self._plaintext_anywhere or (self._plaintext_on_loopback and _is_loopback(peer)):
                self._auth_require_tls = False

    @property
    def encrypted(self) -> bool:
        return self._implicit_tls or self._tls_protocol is not None

    async def _check(self, username: str, password: str) -> AuthResult:
        assert self.session is not None
        peer = self.session.peer
        ip = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        try:
            account = await self._authenticate_fn(username, password, ip)
        except LoginLockedOut:
            # RFC 4954 §6: a temporary failure; the client retries later with the same password.
            await self.push("454 4.7.0 Too many failed logins; try again later")
            return AuthResult(success=False, handled=True)
        if account is None:
            return AuthResult(success=False, handled=False)
        log.info("event=auth_ok user=%s ip=%s service=submission", account, ip)
        return AuthResult(success=True, auth_data=account)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        """RFC 4616, initial response or after an empty challenge."""
        if len(args) == 1:
            raw = await self.challenge_auth("")
            if not isinstance(raw, bytes):
                return AuthResult(success=False, handled=True)
        else:
            try:
                raw = decode_base64(args[1])
            except SaslError:
                await self.push("501 5.5.2 Cannot decode response")
                return AuthResult(success=False, handled=True)
        try:
            authzid, authcid, password = parse_plain(raw)
        except SaslError:
            await self.push("501 5.5.2 Malformed PLAIN response")
            return AuthResult(success=False, handled=True)
        if authzid and authzid.lower() != authcid.lower():
            await self.push("535 5.7.8 Acting as another user is not supported")
            return AuthResult(success=False, handled=True)
        return await self._check(authcid, password)

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            login = await self.challenge_auth(self.AuthLoginUsernameChallenge)
            if not isinstance(login, bytes):
                return AuthResult(success=False, handled=True)
        else:
            try:
                login = decode_base64(args[1])
            except SaslError:
                await self.push("501 5.5.2 Cannot decode response")
                return AuthResult(success=False, handled=True)
        password = await self.challenge_auth(self.AuthLoginPasswordChallenge)
        if not isinstance(password, bytes):
            return AuthResult(success=False, handled=True)
        try:
            return await self._check(login.decode("utf-8"), password.decode("utf-8"))
        except UnicodeDecodeError:
            await self.push("501 5.5.2 Credentials are not UTF-8")
            return AuthResult(success=False, handled=True)

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        self.dsn_mail = {}
        if arg is not None and self.session is not None and self.session.extended_smtp:
            split = split_params(arg, {"RET", "ENVID", "AUTH"})
            if split is None:
                await self.push(S501_BAD_PARAM)
                return
            arg, found = split
            found.pop("AUTH", None)  # RFC 4954 §5: we trust only our own AUTH
            if "RET" in found:
                found["RET"] = found["RET"].upper()
                if found["RET"] not in RET_VALUES:
                    await self.push("501 5.5.4 RET must be FULL or HDRS")
                    return
            if "ENVID" in found:
                try:
                    found["ENVID"] = xtext_decode(found["ENVID"])
                except ValueError:
                    await self.push("501 5.5.4 ENVID is not xtext")
                    return
                if len(found["ENVID"]) > 100:  # RFC 3461 §4.4
                    await self.push("501 5.5.4 ENVID too long")
                    return
            self.dsn_mail = found
        await super().smtp_MAIL(arg)

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        self.dsn_rcpt = {}
        if arg is not None and self.session is not None and self.session.extended_smtp:
            split = split_params(arg, {"NOTIFY", "ORCPT"})
            if split is None:
                await self.push(S501_BAD_PARAM)
                return
            arg, found = split
            try:
                if "NOTIFY" in found:
                    found["NOTIFY"] = parse_notify(found["NOTIFY"])
                if "ORCPT" in found:
                    found["ORCPT"] = parse_orcpt(found["ORCPT"])
            except ValueError as exc:
                await self.push(f"501 5.5.4 {exc}")
                return
            self.dsn_rcpt = found
        await super().smtp_RCPT(arg)


def _txn(envelope: Envelope) -> SubmitTxn | None:
    txn: SubmitTxn | None = getattr(envelope, "postfach_submit", None)
    return txn


class SubmissionHandler:
    def __init__(self, outbound: Outbound) -> None:
        self.outbound = outbound

    async def handle_EHLO(
        self,
        server: SubmissionSMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", "250-CHUNKING", "250-DSN", EHLO_LAST]

    async def handle_MAIL(
        self,
        server: SubmissionSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        account: object = session.auth_data
        if not isinstance(account, str):
            return "530 5.7.0 Authentication required"
        declared: int | None = None
        for opt in mail_options:
            key, _, value = opt.partition("=")
            if key.upper() == "SIZE" and value.isdigit():
                declared = int(value)
        peer = session.peer
        peer_ip = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        try:
            txn = self.outbound.start(
                account,
                address,
                helo=session.host_name or "",
                peer_ip=peer_ip,
                protocol="ESMTPSA" if server.encrypted else "ESMTPA",  # RFC 3848
                declared_size=declared,
                envid=server.dsn_mail.get("ENVID"),
                ret=server.dsn_mail.get("RET"),
            )
        except SmtpError as exc:
            log.info("event=sender_refused account=%s from=<%s>", account, address[:200])
            return exc.reply()
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        envelope.postfach_submit = txn  # type: ignore[attr-defined]
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(
        self,
        server: SubmissionSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        txn = _txn(envelope)
        if txn is None:
            return S503_MAIL_FIRST
        notify = server.dsn_rcpt.get("NOTIFY")
        orcpt = server.dsn_rcpt.get("ORCPT")
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, txn.add_rcpt, address, notify, orcpt
            )
        except SmtpError as exc:
            log.info("event=rcpt_refused rcpt=<%s> reply=%r", address[:200], exc.reply())
            return exc.reply()
        except Exception:
            log.exception("event=rcpt_failed rcpt=<%s>", address[:200])
            return S451_LOCAL_ERROR
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        txn = _txn(envelope)
        if txn is None or not txn.count:
            return "503 5.5.1 Error: need RCPT command"
        data: bytes = envelope.original_content or b""
        try:
            await txn.submit(data)
        except SmtpError as exc:
            log.info("event=data_refused reply=%r", exc.reply())
            return exc.reply()
        except Exception:
            log.exception("event=submit_failed")
            return S451_LOCAL_ERROR
        return S250_QUEUED


def make_submission_factory(
    outbound: Outbound,
    authenticate: AuthenticateFn,
    *,
    hostname: str,
    tls_context: ssl.SSLContext,
    data_size_limit: int,
    implicit_tls: bool,
    plaintext_auth_on_loopback: bool,
    plaintext_auth: bool = False,
    timeout: float = 300,
    limits: Limits | None = None,
) -> Callable[[], SubmissionSMTP]:
    """A protocol factory for ``loop.create_server``, also for implicit TLS (without ``ssl=``:
    the protocol starts TLS itself once the connection is admitted)."""
    handler = SubmissionHandler(outbound)
    shared = ConnectionLimits(limits, tls_context if implicit_tls else None)

    def factory() -> SubmissionSMTP:
        return SubmissionSMTP(
            handler,
            authenticate=authenticate,
            implicit_tls=implicit_tls,
            plaintext_auth_on_loopback=plaintext_auth_on_loopback,
            plaintext_auth=plaintext_auth,
            hostname=hostname,
            ident="postfach ESMTP submission",
            data_size_limit=data_size_limit,
            enable_SMTPUTF8=True,
            decode_data=False,
            tls_context=tls_context,
            timeout=timeout,
            connection_limits=shared,
        )

    return factory
