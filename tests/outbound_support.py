"""Test peers for outbound mail: an SMTP sink on loopback and a resolver that never asks DNS."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from postfach.smtp.client import NoRecords, NoSuchDomain
from postfach.tls import ensure_self_signed, server_context


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    mail_options: list[str]
    tls: bool
    auth: Any


@dataclass
class PeerHandler:
    """Replies are scripted per recipient (a list used up front to back; then 250)."""

    rcpt_replies: dict[str, list[str]] = field(default_factory=dict)
    data_replies: list[str] = field(default_factory=list)
    data_delay: float = 0.0
    messages: list[Received] = field(default_factory=list)
    active: int = 0
    max_active: int = 0
    hide_extensions: set[str] = field(default_factory=set)  # e.g. {"8BITMIME"}: a 7-bit server
    ehlos: int = 0

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        self.ehlos += 1
        session.host_name = hostname
        return [r for r in responses if r[4:].split(" ")[0].upper() not in self.hide_extensions]

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        script = self.rcpt_replies.get(address.lower())
        if script:
            return script.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.data_delay:
                await asyncio.sleep(self.data_delay)
            if self.data_replies:
                return self.data_replies.pop(0)
            self.messages.append(
                Received(
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    envelope.original_content or b"",
                    list(envelope.mail_options),
                    session.ssl is not None,
                    session.auth_data,
                )
            )
            return "250 2.0.0 queued as 1234"
        finally:
            self.active -= 1


class RefusingStartTls(SMTP):
    """Offers STARTTLS and then refuses it with a reply (a server whose TLS setup is broken)."""

    refusal = "454 4.7.0 TLS not available due to local problem"

    async def smtp_STARTTLS(self, arg: str) -> None:
        await self.push(self.refusal)


class Peer:
    """An aiosmtpd server in its own thread and loop, on 127.0.0.1 and an ephemeral port."""

    def __init__(
        self,
        directory: Path,
        *,
        credentials: tuple[str, str] | None = None,
        tls: bool = True,
        tls_context: ssl.SSLContext | None = None,
        smtputf8: bool = False,
        starttls_refusal: str | None = None,
    ) -> None:
        self.handler = PeerHandler()
        self._refusal = starttls_refusal
        cert, key = directory / "peer-cert.pem", directory / "peer-key.pem"
        ensure_self_signed(cert, key, "peer.test")
        self.cert = cert
        self._tls = tls_context or (server_context(cert, key) if tls else None)
        self._smtputf8 = smtputf8
        self._credentials = credentials
        self.loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(10)

    def _authenticator(self, server: Any, session: Any, env: Any, mech: str, data: Any) -> Any:
        ok = self._credentials is not None and (
            data.login.decode(), data.password.decode()
        ) == self._credentials  # fmt: skip
        return AuthResult(success=ok, auth_data=data.login.decode() if ok else None)

    def _factory(self) -> SMTP:
        cls: type[SMTP] = SMTP
        if self._refusal is not None:
            cls = type("Refusing", (RefusingStartTls,), {"refusal": self._refusal})
        return cls(
            self.handler,
            hostname="peer.test",
            decode_data=False,
            tls_context=self._tls,
            authenticator=self._authenticator if self._credentials else None,
            auth_required=self._credentials is not None,
            auth_require_tls=self._credentials is not None,
            enable_SMTPUTF8=self._smtputf8,
        )

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self._server = self.loop.run_until_complete(
            self.loop.create_server(self._factory, "127.0.0.1", 0)
        )
        ready.set()
        self.loop.run_forever()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages

    def stop(self) -> None:
        def close() -> None:
            if self._server is not None:
                self._server.close()
            self.loop.stop()

        self.loop.call_soon_threadsafe(close)
        self._thread.join(10)


class FakeResolver:
    """MX and address records from a table; a domain missing from ``mx`` has no MX."""

    def __init__(
        self,
        mx: dict[str, list[tuple[int, str]] | Exception] | None = None,
        addresses: dict[str, list[str]] | None = None,
    ) -> None:
        self.mx_table = mx or {}
        self.addr_table = addresses or {}
        self.asked: list[str] = []

    async def mx(self, domain: str) -> list[tuple[int, str]]:
        self.asked.append(domain)
        entry = self.mx_table.get(domain)
        if entry is None:
            raise NoRecords(domain)
        if isinstance(entry, Exception):
            raise entry
        return entry

    async def addresses(self, host: str) -> list[str]:
        if host not in self.addr_table:
            raise NoSuchDomain(host)
        return self.addr_table[host]


def wait_for(pred: Callable[[], object], timeout: float = 15, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not met within {timeout}s")


class PostfixPeer:
    """A private Postfix instance on a loopback port, as a remote MX (Debian ``postfix``).

    Its configuration, queue and mailboxes live in a fresh directory under /tmp (Postfix's own
    processes run as the ``postfix`` user and must reach them; pytest's tmp_path is root-only).
    It does no DNS, accepts mail for ``remote.test`` addresses listed in ``users`` (Maildir
    under ``mail/<user>/``) and refuses any other (550 5.1.1) and all relaying (554 5.7.1).

    With ``relay_to`` ({domain: port}) it is also a sending MTA: clients on 127.0.0.1 (its
    ``mynetworks``) may relay, and mail for each listed domain goes to ``[127.0.0.1]:port``
    (no MX lookup), using the peer's STARTTLS when offered. Its bounces for such mail land in
    the local sender's Maildir. ``main_cf`` lines are appended to its main.cf (later lines win).
    """

    def __init__(
        self,
        users: list[str],
        port: int,
        *,
        relay_to: dict[str, int] | None = None,
        main_cf: str = "",
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="postfach-postfix-", dir="/tmp"))
        self.dir.chmod(0o755)
        self.port = port
        conf, queue, data, mail = (self.dir / n for n in ("conf", "queue", "data", "mail"))
        for d in (conf, queue, data, mail):
            d.mkdir()
        pf, nobody = pwd.getpwnam("postfix"), pwd.getpwnam("nobody")
        os.chown(data, pf.pw_uid, pf.pw_gid)
        os.chown(mail, nobody.pw_uid, nobody.pw_gid)
        relaying = (
            _relay_settings(relay_to) if relay_to
            else "mynetworks =\nsmtpd_relay_restrictions = reject_unauth_destination\n"
        )  # fmt: skip
        mailboxes = ", ".join(f"{u}={u.partition('@')[0]}/" for u in users)
        (conf / "main.cf").write_text(
            "compatibility_level = 3.6\n"
            f"queue_directory = {queue}\ndata_directory = {data}\n"
            "mail_owner = postfix\nsetgid_group = postdrop\n"
            "myhostname = mx.remote.test\nmydestination =\n"
            "inet_interfaces = 127.0.0.1\ninet_protocols = ipv4\n"
            "smtp_dns_support_level = disabled\nsmtpd_peername_lookup = no\n"
            "virtual_mailbox_domains = remote.test\n"
            f"virtual_mailbox_base = {mail}\n"
            f"virtual_mailbox_maps = inline:{{ {mailboxes} }}\n"
            f"virtual_uid_maps = static:{nobody.pw_uid}\n"
            f"virtual_gid_maps = static:{nobody.pw_gid}\n"
            + relaying
            + f"maillog_file_prefixes = {self.dir}\nmaillog_file = {self.dir}/maillog\n"
            "smtputf8_enable = yes\n"
            f"smtpd_tls_cert_file = {conf}/cert.pem\nsmtpd_tls_key_file = {conf}/key.pem\n"
            "smtpd_tls_security_level = may\n"
            + main_cf
        )  # fmt: skip
        ensure_self_signed(conf / "cert.pem", conf / "key.pem", "mx.remote.test")
        # /etc/postfix/master.cf is made by the package's postinst; the .dist copy always ships.
        source = next(
            p for p in (Path("/etc/postfix/master.cf"), Path("/usr/share/postfix/master.cf.dist"))
            if p.exists()
        )  # fmt: skip
        master = source.read_text().splitlines()
        (conf / "master.cf").write_text(
            "\n".join(
                f"127.0.0.1:{port} inet n - n - - smtpd" if line.startswith("smtp      inet")
                else line
                for line in master
            ) + "\n"
        )  # fmt: skip
        self.mail = mail
        self._postfix("start")

    def _postfix(self, command: str) -> None:
        r = subprocess.run(
            ["postfix", "-c", str(self.dir / "conf"), command],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if r.returncode != 0:
            log = (self.dir / "maillog").read_text() if (self.dir / "maillog").exists() else ""
            raise RuntimeError(f"postfix {command} failed: {r.stderr}\n{log[-2000:]}")

    def queue(self) -> list[dict[str, Any]]:
        """The messages Postfix holds (``postqueue -j``: queue_name, recipients with reasons)."""
        r = subprocess.run(
            ["postqueue", "-c", str(self.dir / "conf"), "-j"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]

    def flush(self) -> None:
        """Retry the deferred mail now (``postqueue -f``), as an operator would."""
        subprocess.run(
            ["postqueue", "-c", str(self.dir / "conf"), "-f"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip

    def maildir(self, user: str) -> list[bytes]:
        new = self.mail / user.partition("@")[0] / "new"
        return [p.read_bytes() for p in sorted(new.iterdir())] if new.exists() else []

    def log(self) -> str:
        path = self.dir / "maillog"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        try:
            self._postfix("stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def _relay_settings(relay_to: dict[str, int]) -> str:
    routes = ", ".join(f"{d}=smtp:[127.0.0.1]:{port}" for d, port in relay_to.items())
    return (
        "mynetworks = 127.0.0.1/32\n"
        "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n"
        f"transport_maps = inline:{{ {routes} }}\n"
        "smtp_tls_security_level = may\nsmtp_tls_loglevel = 1\n"
    )


def free_port() -> int:
    """A loopback port that was free a moment ago (for servers that cannot bind port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
