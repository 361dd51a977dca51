"""A small blocking IMAP client for ``postfach sync`` (adapter; RFC 9051, RFC 3501).

Blocking, one socket, one command at a time: a sync is a sequence of dependent steps, and the
one place that needs waiting with a timeout (IDLE, RFC 2177) is served by the socket timeout.
Responses are read whole (lines and literals) and parsed by `postfach.client.parse`; every
untagged response of a command goes to the caller in arrival order, or to a callback as it
arrives (so a large ``UID FETCH`` streams into files instead of piling up in memory).

Extensions used when the server offers them: LITERAL+/LITERAL- (RFC 7888), SASL-IR (RFC 4959),
ENABLE (RFC 5161), CONDSTORE/QRESYNC (RFC 7162), UIDPLUS (RFC 4315), MULTIAPPEND (RFC 3502),
LIST-STATUS (RFC 5819), OBJECTID (RFC 8474), IDLE (RFC 2177). ``ignore`` hides capabilities
from the caller, which is how tests exercise the fallbacks against a server that has them all.

TLS: ``tls`` (implicit, port 993), ``starttls`` (RFC 9051 §6.2.1: the capabilities are asked for
again afterwards, never trusted from before) or ``none``. A ``fingerprint`` (SHA-256 of the
server certificate, DER) replaces CA verification: pinning, for self-signed certificates.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from postfach.client.parse import (
    Continue,
    Data,
    ProtocolError,
    Response,
    Tagged,
    Token,
    Untagged,
    literal_size,
    parse_response,
)
from postfach.imap.utf7 import decode_mutf7, encode_mutf7

__all__ = [
    "CommandFailed",
    "ConnectionLost",
    "ImapClient",
    "ImapError",
    "Literal",
    "Result",
    "astring",
    "quote",
]

log = logging.getLogger("postfach.client.imap")

MAX_LINE: Final = 1 << 20  # a response line longer than this is a broken server
MAX_LITERAL: Final = 1 << 30
_SAFE_QUOTED: Final = re.compile(rb"[^\x00\r\n\x80-\xff]*")
_ATOM: Final = re.compile(rb"[!#$&'+,\-./0-9:;<=>?@A-Z^_`a-z|~]+")


class ImapError(Exception):
    """Talking to the IMAP server failed; ``str()`` is one line for the user."""


class ConnectionLost(ImapError):
    """The connection closed or timed out."""


class CommandFailed(ImapError):
    """A command was answered NO or BAD."""

    def __init__(self, command: str, status: str, code: str | None, text: str) -> None:
        super().__init__(f"{command}: {status} {f'[{code}] ' if code else ''}{text}".strip())
        self.command = command
        self.status = status
        self.code = code
        self.text = text


@dataclass(frozen=True, slots=True)
class Literal:
    """Command argument sent as a literal (``{n}``, or ``{n+}`` when the server allows)."""

    data: bytes
    binary: bool = False  # literal8 ~{n} (RFC 3516)


Part = bytes | Literal


@dataclass(slots=True)
class Result:
    status: str
    code: str | None
    code_args: list[Token]
    text: str
    untagged: list[Data | Untagged] = field(default_factory=list)

    def data(self, name: str) -> list[Data]:
        return [r for r in self.untagged if isinstance(r, Data) and r.name == name]


def quote(s: str | bytes) -> Part:
    """A quoted string, or a literal when the octets cannot be quoted."""
    b = s.encode("utf-8") if isinstance(s, str) else s
    if _SAFE_QUOTED.fullmatch(b):
        return b'"' + b.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return Literal(b)


def astring(s: str | bytes) -> Part:
    b = s.encode("utf-8") if isinstance(s, str) else s
    if _ATOM.fullmatch(b) and b.upper() != b"NIL":
        return b
    return quote(b)


class ImapClient:
    """One IMAP connection. Not thread-safe.

    ``connect()`` reads the greeting (and does STARTTLS); ``login()``; then ``command()`` or
    the helpers. ``commands_sent`` counts commands (what the sync tests assert on) and
    ``sent`` keeps the first word(s) of each for diagnostics.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: str = "tls",
        fingerprint: bytes | None = None,
        ca_file: str | None = None,
        timeout: float = 60.0,
        ignore: Iterable[str] = (),
    ) -> None:
        if tls not in ("tls", "starttls", "none"):
            raise ValueError(f"tls must be tls, starttls or none, not {tls!r}")
        self.host = host
        self.port = port
        self.tls = tls
        self.fingerprint = fingerprint
        self.ca_file = ca_file
        self.timeout = timeout
        self.ignore = frozenset(c.upper() for c in ignore)
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._tag = 0
        self._caps: frozenset[str] = frozenset()
        self.enabled: set[str] = set()
        self.delimiter = "/"
        self.selected: str | None = None
        self.commands_sent = 0
        self.sent: list[str] = []
        self._idle_tag = ""
        self._idle_early: list[Data | Untagged] = []

    # ---- connection ----------------------------------------------------------------------

    def connect(self) -> None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as exc:
            raise ConnectionLost(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        self._sock = sock
        if self.tls == "tls":
            self._wrap()
        greeting = self._read()
        if isinstance(greeting, Untagged) and greeting.status == "BYE":
            raise ImapError(f"server refused the connection: {greeting.text}")
        if not isinstance(greeting, Untagged) or greeting.status not in ("OK", "PREAUTH"):
            raise ImapError(f"unexpected greeting from {self.host}: {greeting!r:.80}")
        self._caps_from(greeting.code, greeting.code_args)
        if self.tls == "starttls":
            if not self._caps:
                self.capability()
            if "STARTTLS" not in self._caps:
                raise ImapError(f"{self.host} does not offer STARTTLS")
            self.check(b"STARTTLS")
            self._buf.clear()  # nothing the server sent before the handshake counts
            self._wrap()
            self._caps = frozenset()
        if not self._caps:
            self.capability()

    def _wrap(self) -> None:
        import ssl  # here: a plaintext connection (a local server, a tunnel) need not load it

        assert self._sock is not None
        if self.fingerprint is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE  # the pin below replaces CA verification
        else:
            ctx = ssl.create_default_context(cafile=self.ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            tls = ctx.wrap_socket(self._sock, server_hostname=self.host)
        except (ssl.SSLError, OSError) as exc:
            raise ImapError(f"TLS with {self.host} failed: {exc}") from None
        if self.fingerprint is not None:
            der = tls.getpeercert(binary_form=True) or b""
            got = hashlib.sha256(der).digest()
            if not hmac.compare_digest(got, self.fingerprint):
                tls.close()
                raise ImapError(
                    f"certificate of {self.host} does not match the pinned fingerprint"
                    f" (it is SHA256:{got.hex(':').upper()})"
                )
        self._sock = tls

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def logout(self) -> None:
        if self._sock is None:
            return
        try:
            self.command(b"LOGOUT")
        except ImapError:
            pass
        finally:
            self.close()

    def __enter__(self) -> ImapClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.logout()

    # ---- capabilities --------------------------------------------------------------------

    @property
    def capabilities(self) -> frozenset[str]:
        return self._caps - self.ignore

    def has(self, cap: str) -> bool:
        return cap.upper() in self.capabilities

    def _caps_from(self, code: str | None, args: Sequence[Token]) -> None:
        if code == "CAPABILITY":
            self._caps = frozenset(a.upper() for a in args if isinstance(a, str))

    def capability(self) -> frozenset[str]:
        res = self.check(b"CAPABILITY")
        for d in res.data("CAPABILITY"):
            self._caps = frozenset(a.upper() for a in d.args if isinstance(a, str))
        return self.capabilities

    # ---- authentication ------------------------------------------------------------------

    def login(self, user: str, password: str) -> None:
        """AUTHENTICATE PLAIN (with SASL-IR when offered), else LOGIN. Never logged."""
        if self.has("LOGINDISABLED") and self.tls == "none":
            raise ImapError(f"{self.host} refuses to log in without TLS (LOGINDISABLED)")
        if self.has("AUTH=PLAIN"):
            token = base64.b64encode(f"\0{user}\0{password}".encode()).decode("ascii")
            if self.has("SASL-IR"):
                res = self._run([f"AUTHENTICATE PLAIN {token}".encode()], "AUTHENTICATE")
            else:
                res = self._run([b"AUTHENTICATE PLAIN"], "AUTHENTICATE", sasl=token.encode())
        else:
            res = self._run([b"LOGIN ", astring(user), b" ", astring(password)], "LOGIN")
        if res.status != "OK":
            raise CommandFailed("login", res.status, res.code, res.text)
        if res.code == "CAPABILITY":
            self._caps_from(res.code, res.code_args)
        else:
            self.capability()

    # ---- commands ------------------------------------------------------------------------

    def command(
        self,
        *parts: Part,
        on_data: Callable[[Data], None] | None = None,
    ) -> Result:
        """Send one command (its parts joined as given) and read up to its tagged reply.

        Untagged responses land in ``Result.untagged``; with ``on_data`` every ``Data``
        response goes to the callback instead (status responses still land in the result).
        """
        return self._run(list(parts), _name_of(parts), on_data=on_data)

    def check(self, *parts: Part, on_data: Callable[[Data], None] | None = None) -> Result:
        """``command`` that raises CommandFailed unless the answer is OK."""
        res = self._run(list(parts), _name_of(parts), on_data=on_data)
        if res.status != "OK":
            raise CommandFailed(_name_of(parts), res.status, res.code, res.text)
        return res

    def _run(
        self,
        parts: list[Part],
        name: str,
        *,
        on_data: Callable[[Data], None] | None = None,
        sasl: bytes | None = None,
    ) -> Result:
        self._tag += 1
        tag = f"s{self._tag}"
        self.commands_sent += 1
        self.sent.append(name)
        log.debug("imap command=%s", name)
        out: list[Data | Untagged] = []
        pending = bytearray(tag.encode() + b" ")
        nonsync = self.has("LITERAL+")
        nonsync_small = self.has("LITERAL-")
        for part in parts:
            if isinstance(part, bytes):
                pending += part
                continue
            size = len(part.data)
            plus = nonsync or (nonsync_small and size <= 4096)
            pending += b"%s{%d%s}\r\n" % (b"~" if part.binary else b"", size, b"+" if plus else b"")
            if not plus:
                self._send(bytes(pending))
                pending.clear()
                done = self._until_continue(tag, out, on_data)
                if done is not None:
                    return done
            pending += part.data
        pending += b"\r\n"
        self._send(bytes(pending))
        if sasl is not None:
            done = self._until_continue(tag, out, on_data)
            if done is not None:
                return done
            self._send(sasl + b"\r\n")
        return self._until_tagged(tag, out, on_data)

    def _until_continue(
        self, tag: str, out: list[Data | Untagged], on_data: Callable[[Data], None] | None
    ) -> Result | None:
        """Read until ``+`` (None) or the tagged reply, when the server refused (a Result)."""
        while True:
            resp = self._read()
            if isinstance(resp, Continue):
                return None
            if isinstance(resp, Tagged):
                if resp.tag != tag:
                    raise ImapError(f"unexpected tag {resp.tag!r}")
                return Result(resp.status, resp.code, resp.code_args, resp.text, out)
            self._untagged(resp, out, on_data)

    def _until_tagged(
        self, tag: str, out: list[Data | Untagged], on_data: Callable[[Data], None] | None
    ) -> Result:
        while True:
            resp = self._read()
            if isinstance(resp, Tagged):
                if resp.tag != tag:
                    raise ImapError(f"unexpected tag {resp.tag!r}")
                if resp.code == "CAPABILITY":
                    self._caps_from(resp.code, resp.code_args)
                return Result(resp.status, resp.code, resp.code_args, resp.text, out)
            if isinstance(resp, Continue):
                raise ImapError("unexpected continuation request")
            self._untagged(resp, out, on_data)

    def _untagged(
        self,
        resp: Data | Untagged,
        out: list[Data | Untagged],
        on_data: Callable[[Data], None] | None,
    ) -> None:
        if isinstance(resp, Untagged):
            if resp.status == "BYE":
                self.close()
                raise ConnectionLost(f"server closed the connection: {resp.text}")
            if resp.code == "CAPABILITY":
                self._caps_from(resp.code, resp.code_args)
            out.append(resp)
            return
        if on_data is not None:
            on_data(resp)
        else:
            out.append(resp)

    # ---- reading -------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        if self._sock is None:
            raise ConnectionLost("not connected")
        try:
            self._sock.sendall(data)
        except OSError as exc:
            self.close()
            raise ConnectionLost(f"connection to {self.host} lost: {exc}") from None

    def _fill(self) -> None:
        if self._sock is None:
            raise ConnectionLost("not connected")
        try:
            chunk = self._sock.recv(1 << 18)
        except TimeoutError:
            raise
        except OSError as exc:
            self.close()
            raise ConnectionLost(f"connection to {self.host} lost: {exc}") from None
        if not chunk:
            self.close()
            raise ConnectionLost(f"{self.host} closed the connection")
        self._buf += chunk

    def _line(self) -> bytes:
        start = 0
        while True:
            i = self._buf.find(b"\n", start)
            if i >= 0:
                line = bytes(self._buf[: i - 1 if i and self._buf[i - 1] == 0x0D else i])
                del self._buf[: i + 1]
                return line
            start = len(self._buf)
            if start > MAX_LINE:
                raise ProtocolError("response line too long")
            self._fill()

    def _exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._fill()
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def _read(self) -> Response:
        segments: list[bytes] = []
        literals: list[bytes] = []
        while True:
            line = self._line()
            segments.append(line)
            size = literal_size(line)
            if size is None:
                break
            if size > MAX_LITERAL:
                raise ProtocolError("literal too large")
            literals.append(self._exact(size))
        return parse_response(segments, literals)

    def wait(self, timeout: float) -> list[Data | Untagged]:
        """Responses that arrive within ``timeout`` seconds (used while IDLE); [] if none.

        Returns as soon as at least one whole response is there (and whatever else is
        already buffered).
        """
        if self._sock is None:
            raise ConnectionLost("not connected")
        self._sock.settimeout(timeout)
        out: list[Data | Untagged] = []
        try:
            if not self._buf:
                self._fill()
        except TimeoutError:
            return out
        finally:
            self._sock.settimeout(self.timeout)
        while True:
            resp = self._read()
            if isinstance(resp, Tagged | Continue):
                raise ImapError(f"unexpected response while waiting: {resp!r:.60}")
            self._untagged(resp, out, None)
            if b"\n" not in self._buf:
                return out

    # ---- IDLE (RFC 2177) -----------------------------------------------------------------

    def idle_start(self) -> None:
        self._tag += 1
        self._idle_tag = f"s{self._tag}"
        self.commands_sent += 1
        self.sent.append("IDLE")
        self._send(self._idle_tag.encode() + b" IDLE\r\n")
        out: list[Data | Untagged] = []
        done = self._until_continue(self._idle_tag, out, None)
        self._idle_early = out
        if done is not None:
            raise CommandFailed("IDLE", done.status, done.code, done.text)

    def idle_done(self) -> list[Data | Untagged]:
        self._send(b"DONE\r\n")
        out = list(self._idle_early)
        self._idle_early = []
        res = self._until_tagged(self._idle_tag, out, None)
        if res.status != "OK":
            raise CommandFailed("IDLE", res.status, res.code, res.text)
        return out

    # ---- mailbox names ---------------------------------------------------------------------

    def encode_name(self, name: str) -> Part:
        """A mailbox name for a command: modified UTF-7 unless UTF8=ACCEPT is enabled."""
        if name.upper() == "INBOX":
            return b"INBOX"
        if "UTF8=ACCEPT" in self.enabled:
            return quote(name)
        return quote(encode_mutf7(name))

    def decode_name(self, tok: Token) -> str:
        raw = tok.decode("utf-8", "replace") if isinstance(tok, bytes) else str(tok or "")
        if raw.upper() == "INBOX":
            return "INBOX"
        if "UTF8=ACCEPT" in self.enabled:
            return raw
        try:
            return decode_mutf7(raw)
        except ValueError:
            return raw


def _name_of(parts: Sequence[Part]) -> str:
    """The command name for logs and errors, e.g. ``UID FETCH`` (never an argument)."""
    first = parts[0] if parts and isinstance(parts[0], bytes) else b""
    words = first.split(b" ", 2)
    name = words[0].decode("ascii", "replace").upper()
    if name == "UID" and len(words) > 1:
        name += " " + words[1].decode("ascii", "replace").upper()
    return name
