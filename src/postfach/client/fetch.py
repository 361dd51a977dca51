"""One account's fetch run: connect, log in, download, store, delete (adapter: sockets, TLS).

The order of events is what makes a crash or a kill harmless at any point:

1. The state's journal names the messages about to be stored (with their target tokens).
2. They are downloaded (RETR, pipelined when the server offers PIPELINING) and stored.
3. The target makes them durable (fsync), then the journal records them as stored.
4. Only after every message is recorded does DELE go out, and deletions happen at QUIT.

A failure anywhere before QUIT drops the connection without QUIT, so the server deletes nothing
(RFC 1939 section 6). A message stored but not yet recorded is recognised on the next run by
its journaled token and recorded without being stored again.

TLS is verified against the system's CAs (or ``ca_file``) and the host name, unless the account
pins the certificate's SHA-256 fingerprint. Credentials are sent only after that check.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from postfach.client.config import AccountConfig, format_fingerprint
from postfach.client.errors import FetchError, Pop3ProtocolError, Pop3ServerError
from postfach.client.password import read_password as shared_read_password
from postfach.client.policy import (
    Plan,
    Policy,
    ServerMessage,
    growth_warning,
    make_plan,
    quota_warning,
)
from postfach.client.pop3 import (
    NEED_DATA,
    Pop3ClientConnection,
    Reply,
    parse_capa,
    parse_list,
    parse_stat,
    parse_uidl,
)
from postfach.client.state import FetchState, Inflight, RunRecord, StoredRecord
from postfach.client.statefile import StateFile
from postfach.client.targets import Target

__all__ = [
    "FetchReport",
    "Progress",
    "fetch_account",
    "read_password",
    "server_fingerprint",
]

#: Pipelined RETRs in flight, and the most octets a batch is planned to hold.
WINDOW = 32
BATCH_OCTETS = 8 << 20
_RECV = 256 * 1024


class Progress(Protocol):
    def start(self, account: str, messages: int, octets: int) -> None: ...
    def advance(self, octets: int) -> None: ...
    def finish(self) -> None: ...


class _NoProgress:
    def start(self, account: str, messages: int, octets: int) -> None:
        pass

    def advance(self, octets: int) -> None:
        pass

    def finish(self) -> None:
        pass


@dataclass
class FetchReport:
    account: str
    server_messages: int = 0
    server_octets: int = 0
    downloaded: int = 0
    downloaded_octets: int = 0
    recovered: int = 0  # stored by a run that crashed before recording them; not downloaded
    deleted: int = 0
    kept: int = 0
    planned_download: int = 0
    planned_download_octets: int = 0
    planned_delete: int = 0
    dry_run: bool = False
    warnings: list[str] = field(default_factory=list)


# ---- passwords ------------------------------------------------------------------------------


def read_password(account: AccountConfig, expand: Callable[[str], Path]) -> str:
    """From ``password_command`` or ``password_file`` (`postfach.client.password`)."""
    return shared_read_password(account.password_command, account.password_file, expand, FetchError)


# ---- the connection -------------------------------------------------------------------------


class _Session:
    """A blocking POP3 client connection over the sans-IO core."""

    def __init__(self, sock: socket.socket, where: str) -> None:
        self.sock = sock
        self.where = where
        self.conn = Pop3ClientConnection()
        self.caps: dict[str, tuple[str, ...]] = {}

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def write(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise FetchError(f"{self.where}: the server stopped reading (timeout)") from None
        except OSError as exc:
            raise FetchError(f"{self.where}: connection lost: {exc.strerror or exc}") from None

    def reply(self) -> Reply:
        while True:
            event = self.conn.next_event()
            if event is not NEED_DATA:
                return event
            try:
                chunk = self.sock.recv(_RECV)
            except TimeoutError:
                raise FetchError(
                    f"{self.where}: no answer to {self.conn.awaiting} (timeout)"
                ) from None
            except OSError as exc:
                raise FetchError(
                    f"{self.where}: connection lost during {self.conn.awaiting}:"
                    f" {exc.strerror or exc}"
                ) from None
            if not chunk:
                raise FetchError(
                    f"{self.where}: the server closed the connection during {self.conn.awaiting}"
                )
            self.conn.receive_data(chunk)

    def send(self, name: str, *args: str) -> None:
        try:
            data = self.conn.send(name, *args)
        except ValueError as exc:  # CR/LF in a user name, a password over 250 octets
            raise FetchError(f"{self.where}: cannot send {name}: {exc}") from None
        self.write(data)

    def command(self, name: str, *args: str, shown: str | None = None) -> Reply:
        """Send one command; ``-ERR`` raises Pop3ServerError."""
        self.send(name, *args)
        r = self.reply()
        if not r.ok:
            raise Pop3ServerError(f"{shown or name} refused: {r.text or '-ERR'}", r.code)
        return r

    def try_command(self, name: str, *args: str) -> Reply:
        self.send(name, *args)
        return self.reply()

    def capa(self) -> None:
        r = self.try_command("CAPA")
        self.caps = parse_capa(r.body or b"") if r.ok else {}


def _context(account: AccountConfig, expand: Callable[[str], Path]) -> ssl.SSLContext:
    if account.fingerprint is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the pinned fingerprint is checked after the handshake
    else:
        cafile = str(expand(account.ca_file)) if account.ca_file else None
        try:
            ctx = ssl.create_default_context(cafile=cafile)
        except (OSError, ssl.SSLError) as exc:
            raise FetchError(f"cannot load ca_file: {exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _open(
    account: AccountConfig, ctx: ssl.SSLContext | None, where: str
) -> tuple[_Session, bytes | None]:
    """Connect, do TLS as configured, read the greeting and CAPA. Returns the session and the
    server certificate (DER) when TLS is on."""
    try:
        raw = socket.create_connection((account.host, account.port), timeout=account.timeout)
    except TimeoutError:
        raise FetchError(f"{where}: cannot connect (timeout)") from None
    except OSError as exc:
        raise FetchError(f"{where}: cannot connect: {exc.strerror or exc}") from None
    sock: socket.socket = raw
    cert: bytes | None = None
    session = _Session(sock, where)
    try:
        if account.tls == "tls":
            assert ctx is not None
            sock = session.sock = _wrap(ctx, raw, account.host, where)
            cert = sock.getpeercert(binary_form=True)
        greeting = session.reply()
        if not greeting.ok:
            raise FetchError(f"{where}: the server refused the connection: {greeting.text}")
        session.capa()
        if account.tls == "starttls":
            assert ctx is not None
            if session.caps and "STLS" not in session.caps:
                raise FetchError(f'{where}: the server does not offer STLS (tls = "starttls")')
            r = session.try_command("STLS")
            if not r.ok:
                raise FetchError(f"{where}: the server refused STLS: {r.text}")
            if session.conn.buffered:
                # Anything sent before the handshake could be an attacker's (CVE-2011-0411).
                raise Pop3ProtocolError("the server sent data after its STLS reply")
            sock = session.sock = _wrap(ctx, raw, account.host, where)
            cert = sock.getpeercert(binary_form=True)
            session.capa()  # RFC 2595 section 4: forget what was learned before TLS
    except BaseException:
        session.close()
        raise
    return session, cert


def _wrap(ctx: ssl.SSLContext, raw: socket.socket, host: str, where: str) -> ssl.SSLSocket:
    try:
        return ctx.wrap_socket(raw, server_hostname=host)
    except ssl.SSLCertVerificationError as exc:
        raise _Unverified(exc.verify_message or str(exc)) from None
    except (ssl.SSLError, OSError) as exc:
        raise FetchError(f"{where}: TLS handshake failed: {exc}") from None


class _Unverified(Exception):
    pass


def server_fingerprint(account: AccountConfig) -> str | None:
    """Connect without verifying to learn the certificate's fingerprint (for error messages:
    it is shown, never trusted)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        session, cert = _open(account, ctx, "probe")
    except (FetchError, _Unverified, OSError):
        return None
    session.close()
    return format_fingerprint(hashlib.sha256(cert).digest()) if cert else None


def _connect(account: AccountConfig, expand: Callable[[str], Path]) -> _Session:
    where = f"{account.host}:{account.port}"
    ctx = _context(account, expand) if account.tls != "none" else None
    try:
        session, cert = _open(account, ctx, where)
    except _Unverified as exc:
        seen = server_fingerprint(account)
        hint = (
            f'; its certificate is {seen}: if you trust it, set fingerprint = "{seen}"'
            if seen
            else ""
        )
        raise FetchError(f"{where}: TLS certificate not trusted ({exc}){hint}") from None
    if account.fingerprint is not None:
        digest = hashlib.sha256(cert or b"").digest()
        if not hmac.compare_digest(digest, account.fingerprint):
            session.close()
            raise FetchError(
                f"{where}: TLS certificate fingerprint mismatch: expected"
                f" {format_fingerprint(account.fingerprint)}, the server presented"
                f" {format_fingerprint(digest)}"
            )
    return session


def _login(session: _Session, account: AccountConfig, password: str) -> None:
    where = session.where
    try:
        r = session.try_command("USER", account.user)
        if r.ok:
            session.command("PASS", password, shown="PASS")
            return
        mechanisms = session.caps.get("SASL", ())
        if "PLAIN" not in (m.upper() for m in mechanisms):
            raise Pop3ServerError(f"USER refused: {r.text}", r.code)
        r = session.try_command("AUTH", "PLAIN")
        if r.continuation:
            token = base64.b64encode(f"\0{account.user}\0{password}".encode()).decode()
            session.write(session.conn.send_sasl(token))
            r = session.reply()
        if not r.ok:
            raise Pop3ServerError(f"AUTH PLAIN refused: {r.text}", r.code)
    except Pop3ServerError as exc:
        if exc.code == "IN-USE":
            raise FetchError(
                f"{where}: the mailbox is in use by another client; try again later"
            ) from None
        if exc.code in ("SYS/TEMP", "LOGIN-DELAY"):
            raise FetchError(f"{where}: the server is busy, try again later: {exc}") from None
        raise FetchError(f"{where}: login as {account.user} failed: {exc}") from None


# ---- the run --------------------------------------------------------------------------------


def fetch_account(
    account: AccountConfig,
    target: Target,
    statefile: StateFile,
    *,
    expand: Callable[[str], Path] = lambda p: Path(os.path.expanduser(p)),
    dry_run: bool = False,
    progress: Progress | None = None,
    now: Callable[[], float] = time.time,
    window: int = WINDOW,
) -> FetchReport:
    """Run one account. Raises FetchError (one line) on any failure; what was stored stays
    stored and recorded."""
    progress = progress or _NoProgress()
    report = FetchReport(account.name, dry_run=dry_run)
    with statefile:
        state = statefile.load(account.server)
        if not dry_run:
            statefile.save(state)  # fold the journal in (and drop a torn record)
        where = f"{account.host}:{account.port}"
        try:
            session = _connect(account, expand)
            try:
                _login(session, account, read_password(account, expand))
                _run(session, account, target, statefile, state, report, dry_run, progress, now,
                     max(1, window))  # fmt: skip
            finally:
                session.close()
        except Pop3ServerError as exc:
            raise FetchError(f"{where}: {exc}") from None
        except Pop3ProtocolError as exc:
            raise FetchError(f"{where}: protocol error: {exc}") from None
    return report


def _listing(session: _Session, account: AccountConfig) -> tuple[list[ServerMessage], int, int]:
    count, octets = parse_stat(session.command("STAT").text)
    sizes = parse_list(session.command("LIST").body or b"")
    r = session.try_command("UIDL")
    uidls = parse_uidl(r.body or b"") if r.ok else None
    if uidls is None and account.policy.needs_uidl:
        raise FetchError(
            f"{session.where}: the server does not support UIDL, so downloaded messages cannot be"
            f' recognised on the next run; policy "{account.policy.value}" would fetch them all'
            ' again every time. Use policy = "delete" with this server.'
        )
    listing = [
        ServerMessage(n, size, uidls.get(n) if uidls is not None else None)
        for n, size in sorted(sizes.items())
    ]
    if uidls is not None and any(m.uidl is None for m in listing):
        raise Pop3ProtocolError("UIDL and LIST disagree about the messages")
    return listing, count, octets


def _batches(messages: Sequence[ServerMessage], window: int) -> list[list[ServerMessage]]:
    out: list[list[ServerMessage]] = []
    cur: list[ServerMessage] = []
    size = 0
    for m in messages:
        if cur and (len(cur) >= window or size + m.size > BATCH_OCTETS):
            out.append(cur)
            cur, size = [], 0
        cur.append(m)
        size += m.size
    if cur:
        out.append(cur)
    return out


def _run(
    session: _Session,
    account: AccountConfig,
    target: Target,
    statefile: StateFile,
    state: FetchState,
    report: FetchReport,
    dry_run: bool,
    progress: Progress,
    now: Callable[[], float],
    window: int,
) -> None:
    listing, count, octets = _listing(session, account)
    report.server_messages, report.server_octets = count, octets
    have_uidl = all(m.uidl is not None for m in listing)
    on_server = {m.uidl for m in listing if m.uidl is not None}
    vanished = sum(1 for u in state.known if u not in on_server) if have_uidl else 0

    present: set[str] | None = None
    if account.policy is Policy.DELETE_WHEN_DELETED_LOCALLY:
        # Before open(), which would create a missing Maildir: a folder that vanished (an
        # unmounted disk, a typo) must not read as "the user deleted everything".
        present = target.present() if state.known else set()
    if not dry_run:
        target.open()
    try:
        t0 = int(now())
        plan = make_plan(account.policy, account.keep_days, listing, state.known, t0, present)
        report.planned_download = len(plan.download)
        report.planned_download_octets = plan.download_octets
        report.planned_delete = len(plan.delete) + (
            len(plan.download) if plan.delete_downloaded else 0
        )
        report.kept = plan.kept
        if dry_run:
            session.try_command("QUIT")
            return
        to_delete, shas = _download(session, target, statefile, state, plan, report, progress,
                                    now, window if "PIPELINING" in session.caps else 1)  # fmt: skip
    finally:
        target.close()

    # Everything downloaded is stored and recorded: now deletions are safe.
    deleting = [*plan.delete, *to_delete]
    deleted_ok = _delete(session, deleting, report)
    try:
        r = session.try_command("QUIT")
        confirmed, why = r.ok, r.text
    except FetchError as exc:  # everything is stored; only the deletions are in doubt
        confirmed, why = False, str(exc)
    if not confirmed and deleted_ok:
        report.warnings.append(f"the server did not finish deleting: {why}")
    if not confirmed:
        deleted_ok = []
    report.deleted = len(deleted_ok)

    gone = {m.uidl for m in deleted_ok if m.uidl is not None}
    state.known = {u: k for u, k in state.known.items() if u in on_server and u not in gone}
    for m in deleted_ok:
        sha = shas.get(m.number)
        if sha and state.unconfirmed.get(sha):
            state.unconfirmed[sha] -= 1
            if not state.unconfirmed[sha]:
                del state.unconfirmed[sha]
    state.inflight = []
    state.history.append(RunRecord(t0, count, octets, vanished, len(deleted_ok)))
    statefile.save(state)

    if account.policy.leaves_mail_on_server:
        for warning in (
            growth_warning(state.history, account.warn_after_runs),
            quota_warning(octets, account.server_quota),
        ):
            if warning:
                report.warnings.append(warning)


def _download(
    session: _Session,
    target: Target,
    statefile: StateFile,
    state: FetchState,
    plan: Plan,
    report: FetchReport,
    progress: Progress,
    now: Callable[[], float],
    window: int,
) -> tuple[list[ServerMessage], dict[int, str]]:
    """Download and store ``plan.download``; returns the messages now due for deletion and,
    without UIDL, the SHA-256 of each by message number."""
    # A crashed run's journal named these, with the tokens of wherever they may have landed.
    wanted = {m.uidl for m in plan.download}
    resume: dict[str, list[str]] = {}
    for i in state.inflight:
        if i.uidl is not None and i.uidl in wanted:
            resume.setdefault(i.uidl, []).append(i.token)
    anon = [i.token for i in state.inflight if i.uidl is None]
    unconfirmed = dict(state.unconfirmed)
    to_delete: list[ServerMessage] = []
    shas: dict[int, str] = {}
    stored: list[StoredRecord] = []

    def carried() -> list[Inflight]:
        """Old tokens not yet resolved stay in the journal until they are."""
        return [Inflight(u, t) for u, ts in resume.items() for t in ts] + [
            Inflight(None, t) for t in anon
        ]

    def already(tokens: list[str], data: bytes) -> str | None:
        for t in tokens:
            if target.contains(t, data):
                tokens.remove(t)
                return t
        return None

    # Where the token alone proves a message stored (a Maildir file appears only whole), it is
    # recorded without downloading it again.
    todo: list[ServerMessage] = []
    for m in plan.download:
        hit = next((t for t in resume.get(m.uidl or "", []) if target.stored(t)), None)
        if hit is None:
            todo.append(m)
            continue
        del resume[m.uidl or ""]
        stored.append(StoredRecord(m.uidl, int(now()), target.local_name(hit)))
        report.recovered += 1
        if plan.delete_downloaded:
            to_delete.append(m)

    progress.start(report.account, len(todo), sum(m.size for m in todo))
    try:
        for batch in _batches(todo, window):
            tokens = target.tokens(len(batch))
            upcoming = [Inflight(m.uidl, t) for m, t in zip(batch, tokens, strict=True)]
            statefile.append(state.record(stored, upcoming + carried()))
            stored = []
            session.write(b"".join(session.conn.send("RETR", str(m.number)) for m in batch))
            try:
                for m, token in zip(batch, tokens, strict=True):
                    r = session.reply()
                    if not r.ok:
                        raise Pop3ServerError(f"RETR {m.number} refused: {r.text}", r.code)
                    data = r.body or b""
                    t = int(now())
                    sha: str | None = None
                    if m.uidl is None:
                        sha = shas[m.number] = hashlib.sha256(data).hexdigest()
                        if unconfirmed.get(sha):
                            # Stored by a run whose deletions the server never confirmed.
                            unconfirmed[sha] -= 1
                            to_delete.append(m)
                            progress.advance(m.size)
                            continue
                        old = already(anon, data)
                    else:
                        old = already(resume.get(m.uidl, []), data)
                        resume.pop(m.uidl, None)
                    if old is None:
                        target.put(data, token)
                    stored.append(StoredRecord(m.uidl, t, target.local_name(old or token), sha))
                    report.downloaded += 1
                    report.downloaded_octets += len(data)
                    if plan.delete_downloaded:
                        to_delete.append(m)
                    progress.advance(m.size)
            except FetchError:
                # The server went away (or one message could not be stored): keep what
                # arrived, so the next run does not download it again.
                with contextlib.suppress(FetchError, OSError):
                    target.flush()
                    statefile.append(state.record(stored, carried()))
                raise
            target.flush()
        if stored or state.inflight:
            statefile.append(state.record(stored, carried()))
    finally:
        progress.finish()
    return to_delete, shas


def _delete(
    session: _Session, messages: Sequence[ServerMessage], report: FetchReport
) -> list[ServerMessage]:
    """DELE, pipelined; returns the messages the server accepted."""
    if not messages:
        return []
    pipelined = "PIPELINING" in session.caps
    ok: list[ServerMessage] = []
    queue = deque(messages)
    while queue:
        chunk = [queue.popleft() for _ in range(min(len(queue), 64 if pipelined else 1))]
        session.write(b"".join(session.conn.send("DELE", str(m.number)) for m in chunk))
        for m in chunk:
            r = session.reply()
            if r.ok:
                ok.append(m)
            else:
                report.warnings.append(f"DELE {m.number} refused: {r.text}")
    return ok
