"""Outbound SMTP: route a domain (smarthost or MX), dial, and send one message (adapter).

The queue runner (services) hands a message and the recipients of one domain to `SmtpClient.send`
and gets one `Reply` per recipient back; it never sees sockets or DNS.

Routing (RFC 5321 §5.1): a ``[relay]`` smarthost for the domains it covers; otherwise the
domain's MX records in preference order (equal preferences shuffled), a null MX
(RFC 7505: one record ``0 .``) is a permanent failure, and a domain without MX records is its
own mail exchanger (its A/AAAA records). TLS towards an MX is opportunistic (STARTTLS when
offered, certificate not checked: RFC 7435); towards a smarthost it is what the configuration
says, checked by default. DNS is behind the `Resolver` protocol so that tests never ask the
real one.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import aiosmtplib
import dns.asyncresolver
import dns.exception
import dns.resolver

from postfach.config import RelayConfig
from postfach.dsn import xtext_encode
from postfach.mime.downconvert import eight_bit_headers, has_8bit, to_7bit
from postfach.queue.runner import Envelope, SendResult
from postfach.queue.schedule import Reply, parse_reply
from postfach.queue.store import QueuedRecipient

log = logging.getLogger(__name__)


class NoRecords(Exception):
    """The name exists but has no records of the asked type (use the implicit MX)."""


class NoSuchDomain(Exception):
    """NXDOMAIN: the destination does not exist (permanent)."""


class TemporaryDnsError(Exception):
    """SERVFAIL, timeout: try again later."""


class Resolver(Protocol):
    async def mx(self, domain: str) -> list[tuple[int, str]]:
        """``(preference, exchange)`` pairs; exchange ``"."`` is a null MX."""
        ...

    async def addresses(self, host: str) -> list[str]: ...


class DnsResolver:
    """The real resolver (dnspython), used when nothing else is injected."""

    def __init__(self, lifetime: float = 20.0) -> None:
        self._r = dns.asyncresolver.Resolver()
        self._r.lifetime = lifetime

    async def _query(self, name: str, rdtype: str) -> dns.resolver.Answer:
        try:
            return await self._r.resolve(name, rdtype)
        except dns.resolver.NXDOMAIN as exc:
            raise NoSuchDomain(name) from exc
        except dns.resolver.NoAnswer as exc:
            raise NoRecords(name) from exc
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
            raise TemporaryDnsError(f"{name}/{rdtype}: {exc}") from exc

    async def mx(self, domain: str) -> list[tuple[int, str]]:
        answer = await self._query(domain, "MX")
        return [(int(r.preference), r.exchange.to_text()) for r in answer]

    async def addresses(self, host: str) -> list[str]:
        out: list[str] = []
        for rdtype in ("AAAA", "A"):
            try:
                answer = await self._query(host, rdtype)
            except NoRecords:
                continue
            out += [r.to_text() for r in answer]
        if not out:
            raise NoRecords(host)
        return out


@dataclass(frozen=True, slots=True)
class Hop:
    """One server to try: where to connect, and the name to present for TLS."""

    host: str  # name (for TLS SNI and logs)
    address: str  # where to connect
    port: int


def _temporary(enhanced: str, text: str, remote: str = "") -> Reply:
    return Reply(451, enhanced, text, remote)


@dataclass
class SmtpClient:
    hostname: str  # our EHLO name
    relay: RelayConfig | None = None
    resolver: Resolver = field(default_factory=DnsResolver)
    mx_port: int = 25
    timeout: float = 300.0
    connect_timeout: float = 30.0
    rand: random.Random = field(default_factory=random.Random)
    _contexts: dict[bool, ssl.SSLContext] = field(default_factory=dict)  # by "verify"

    # ---- routing -------------------------------------------------------------------------------

    async def _mx_hops(self, domain: str) -> list[Hop] | Reply:
        literal = domain.startswith("[") and domain.endswith("]")
        if literal:  # RFC 5321 §4.1.3 address literal
            text = domain[1:-1]
            text = text[5:] if text.lower().startswith("ipv6:") else text
            try:
                ipaddress.ip_address(text)
            except ValueError:
                return Reply(550, "5.1.2", f"Bad destination address literal {domain}")
            return [Hop(text, text, self.mx_port)]
        try:
            records = await self.resolver.mx(domain)
            implicit = False
        except NoRecords:
            records, implicit = [(0, domain)], True
        except NoSuchDomain:
            return Reply(550, "5.1.2", f"Domain {domain} does not exist (NXDOMAIN)")
        except TemporaryDnsError as exc:
            return _temporary("4.4.3", f"DNS lookup of MX for {domain} failed: {exc}")
        if not implicit and len(records) == 1 and records[0][1].rstrip(".") == "":
            # RFC 7505 §3: a null MX; the domain accepts no mail.
            return Reply(556, "5.1.10", f"Domain {domain} accepts no mail (null MX)")
        ordered: list[str] = []
        for pref in sorted({p for p, _ in records}):
            same = [h.rstrip(".") for p, h in records if p == pref and h.rstrip(".")]
            self.rand.shuffle(same)
            ordered += same
        hops: list[Hop] = []
        failure: Reply | None = None
        for host in ordered:
            try:
                addrs = await self.resolver.addresses(host)
            except (NoRecords, NoSuchDomain):
                failure = failure or _temporary("4.4.4", f"MX host {host} has no address")
                if implicit:
                    return Reply(550, "5.1.2", f"Domain {domain} has no MX and no address")
                continue
            except TemporaryDnsError as exc:
                failure = _temporary("4.4.3", f"DNS lookup of {host} failed: {exc}")
                continue
            hops += [Hop(host, a, self.mx_port) for a in addrs]
        return hops or failure or _temporary("4.4.4", f"No usable MX host for {domain}")

    async def route(self, domain: str) -> list[Hop] | Reply:
        if self.relay is not None and self.relay.routes(domain):
            return [Hop(self.relay.host, self.relay.host, self.relay.port)]
        return await self._mx_hops(domain)

    # ---- sending -------------------------------------------------------------------------------

    def _tls_context(self, relay: bool) -> ssl.SSLContext:
        """Made once per kind: loading the CA bundle costs tens of milliseconds of CPU, which
        per attempt was most of the outbound path's time (docs/benchmarks.md)."""
        verify = relay and self.relay is not None and self.relay.verify
        ctx = self._contexts.get(verify)
        if ctx is not None:
            return ctx
        if verify and self.relay is not None:
            ctx = ssl.create_default_context(
                cafile=str(self.relay.ca_file) if self.relay.ca_file else None
            )
        else:
            # Opportunistic TLS (RFC 7435): encrypt if we can, do not check who answers, so
            # no CA bundle is needed either.
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self._contexts[verify] = ctx
        return ctx

    async def send(
        self, domain: str, envelope: Envelope, rcpts: Sequence[QueuedRecipient], message: bytes
    ) -> SendResult:
        route = await self.route(domain)
        if isinstance(route, Reply):
            return SendResult({r.id: route for r in rcpts})
        last: Reply = _temporary("4.4.1", f"No answer from any mail server for {domain}")
        for hop in route:
            try:
                try:
                    return await self._send_via(hop, envelope, rcpts, message)
                except _TlsFailed as exc:
                    # Opportunistic TLS (RFC 7435, Postfix's ``may``): a failed handshake is no
                    # reason to stop; the same host once more, in plaintext.
                    log.warning(
                        "event=outbound_tls_fallback domain=%s host=%s address=%s reason=%r",
                        domain, hop.host, hop.address, exc.reply.text[:200],
                    )  # fmt: skip
                    return await self._send_via(hop, envelope, rcpts, message, tls=False)
            except _TryNext as exc:
                last = exc.reply
                log.info(
                    "event=outbound_hop_failed domain=%s host=%s address=%s reply=%r",
                    domain, hop.host, hop.address, last.line(),
                )  # fmt: skip
        return SendResult({r.id: last for r in rcpts})

    async def _send_via(
        self,
        hop: Hop,
        env: Envelope,
        rcpts: Sequence[QueuedRecipient],
        message: bytes,
        *,
        tls: bool = True,
    ) -> SendResult:
        relay = self.relay is not None and hop.host == self.relay.host and self.relay is not None
        mode = self.relay.tls if relay and self.relay is not None else "opportunistic"
        if not tls and mode == "opportunistic":
            mode = "none"  # the plaintext retry after a failed opportunistic handshake
        ctx = self._tls_context(relay)
        client = aiosmtplib.SMTP(
            hostname=hop.address,
            port=hop.port,
            local_hostname=self.hostname,
            timeout=self.timeout,
            use_tls=mode == "tls",
            start_tls=False,
            tls_context=ctx if mode == "tls" else None,
        )
        name = hop.host
        try:
            try:
                await asyncio.wait_for(client.connect(), self.connect_timeout)
            except aiosmtplib.SMTPConnectResponseError as exc:
                reply = parse_reply(exc.code, exc.message, name)
                raise _TryNext(reply) from exc
            except (OSError, TimeoutError, aiosmtplib.SMTPException) as exc:
                raise _TryNext(
                    _temporary("4.4.1", f"Cannot connect to {name} [{hop.address}]: {exc}", name)
                ) from exc
            return await self._transaction(client, name, mode, ctx, relay, env, rcpts, message)
        finally:
            if client.is_connected:
                try:
                    await asyncio.wait_for(client.quit(), 10)
                except Exception:
                    client.close()

    async def _transaction(
        self,
        client: aiosmtplib.SMTP,
        name: str,
        mode: str,
        ctx: ssl.SSLContext,
        relay: bool,
        env: Envelope,
        rcpts: Sequence[QueuedRecipient],
        message: bytes,
    ) -> SendResult:
        try:
            await client.ehlo()
            if mode in ("starttls", "opportunistic") and client.supports_extension("starttls"):
                await self._starttls(client, name, mode, ctx)
            elif mode == "starttls":
                raise _TryNext(_temporary("4.7.0", f"{name} offers no STARTTLS", name))
            if relay and self.relay is not None and self.relay.username:
                password = ""
                if self.relay.password_file is not None:
                    password = self.relay.password_file.read_text().strip()
                await client.login(self.relay.username, password)
        except aiosmtplib.SMTPResponseException as exc:
            raise _TryNext(_from_exc(exc, name)) from exc
        except (OSError, aiosmtplib.SMTPException) as exc:
            failed = _temporary("4.4.2", f"Conversation with {name} failed: {exc}", name)
            raise _TryNext(failed) from exc

        dsn = client.supports_extension("dsn")
        utf8_addresses = not (env.sender.isascii() and all(r.address.isascii() for r in rcpts))
        eight = has_8bit(message)
        utf8_headers = eight and eight_bit_headers(message)
        if (utf8_addresses or utf8_headers) and not client.supports_extension("smtputf8"):
            # RFC 6531 §3.2 / RFC 6532: neither can be made 7-bit without changing the message.
            if utf8_addresses:
                fail = Reply(553, "5.6.7", f"{name} does not support SMTPUTF8 addresses", name)
            else:
                fail = Reply(
                    554, "5.6.9", f"{name} does not support SMTPUTF8 (UTF-8 header fields)", name
                )
            return SendResult({r.id: fail for r in rcpts})
        if eight and not client.supports_extension("8bitmime"):
            # RFC 6152 §3: convert rather than send 8-bit data to a 7-bit server. (Submission
            # already did this before DKIM signing, so a signed message never gets here 8-bit.)
            size = len(message)
            message = await asyncio.to_thread(to_7bit, message)
            eight = has_8bit(message)
            log.info(
                "event=outbound_downconverted host=%s size=%d converted_size=%d",
                name, size, len(message),
            )  # fmt: skip
        options = [f"SIZE={len(message)}"]
        if eight and client.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")
        utf8 = utf8_addresses or utf8_headers
        if utf8:
            options.append("SMTPUTF8")
        if dsn:
            if env.ret:
                options.append(f"RET={env.ret}")
            if env.envid:
                options.append(f"ENVID={xtext_encode(env.envid)}")
        encoding = "utf-8" if utf8 else "ascii"
        replies: dict[int, Reply] = {}
        try:
            try:
                await client.mail(env.sender, options=options, encoding=encoding)
            except aiosmtplib.SMTPResponseException as exc:
                reply = _from_exc(exc, name)
                await _rset(client)
                return SendResult({r.id: reply for r in rcpts})
            accepted: list[QueuedRecipient] = []
            for r in rcpts:
                ropts: list[str] = []
                if dsn and r.notify:
                    ropts.append(f"NOTIFY={r.notify}")
                if dsn and r.orcpt:
                    kind, _, addr = r.orcpt.partition(";")
                    ropts.append(f"ORCPT={kind};{xtext_encode(addr)}")
                try:
                    await client.rcpt(r.address, options=ropts, encoding=encoding)
                    accepted.append(r)
                except aiosmtplib.SMTPResponseException as exc:
                    replies[r.id] = _from_exc(exc, name)
            if not accepted:
                await _rset(client)
                return SendResult(replies)
            try:
                resp = await client.data(message)
                ok = parse_reply(resp.code, resp.message, name)
            except aiosmtplib.SMTPResponseException as exc:
                ok = _from_exc(exc, name)
            for r in accepted:
                replies[r.id] = ok
            return SendResult(replies, dsn_passed=dsn)
        except (OSError, aiosmtplib.SMTPException) as exc:
            lost = _temporary("4.4.2", f"Connection to {name} lost: {exc}", name)
            return SendResult({r.id: replies.get(r.id, lost) for r in rcpts})

    async def _starttls(
        self, client: aiosmtplib.SMTP, name: str, mode: str, ctx: ssl.SSLContext
    ) -> None:
        """RFC 3207. A reply other than 220 leaves the session in plaintext: opportunistic TLS
        goes on without it, ``tls = "starttls"`` tries the next host. A failed handshake leaves
        the connection unusable: opportunistic TLS redials in plaintext (`_TlsFailed`)."""
        try:
            await client.starttls(server_hostname=name, tls_context=ctx)
        except aiosmtplib.SMTPResponseException as exc:
            if mode == "starttls":  # required: a deferral, also after a 5xx (never a bounce)
                refused = f"{name} refused STARTTLS: {exc.code} {exc.message}"
                raise _TryNext(_temporary("4.7.0", refused, name)) from exc
            log.warning("event=outbound_starttls_refused host=%s reply=%r", name, exc.message[:200])
            return
        except (OSError, ssl.SSLError, aiosmtplib.SMTPException) as exc:
            failed = _temporary("4.7.0", f"TLS handshake with {name} failed: {exc}", name)
            if mode == "opportunistic":
                raise _TlsFailed(failed) from exc
            raise _TryNext(failed) from exc
        await client.ehlo()


class _TryNext(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.line())
        self.reply = reply


class _TlsFailed(_TryNext):
    """The STARTTLS handshake with an MX failed: redial the same host without TLS."""


def _from_exc(exc: aiosmtplib.SMTPResponseException, remote: str) -> Reply:
    code = exc.code if 200 <= exc.code < 600 else 451
    return parse_reply(code, exc.message, remote)


async def _rset(client: aiosmtplib.SMTP) -> None:
    try:
        await client.rset()
    except Exception:
        client.close()
