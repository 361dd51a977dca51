"""Drivers for the real mail programs: config files in a temp dir, one subprocess per run.

Every program runs with HOME (and its own state) inside the test's tmp_path, a timeout, and
stdout+stderr merged into one transcript, so an assertion failure shows what was said on the wire.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shlex
import shutil
import ssl
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from postfach.tls import ensure_self_signed
from support import PASSWORD, RunningServer

ALICE = "alice@example.org"
TIMEOUT = 30  # seconds for one program run; a healthy run takes well under one

PACKAGES = {
    "fetchmail": "fetchmail",
    "getmail": "getmail6",
    "curl": "curl",
    "swaks": "swaks",
}


def requires(program: str) -> pytest.MarkDecorator:
    """Skip the test, saying which Debian package to install, when the program is missing."""
    return pytest.mark.skipif(
        shutil.which(program) is None,
        reason=f"{program} is not installed (Debian package {PACKAGES.get(program, program)})",
    )


class Result(str):
    """One program run. The str value is the whole transcript, so that ``assert ..., result``
    shows it in full (pytest abbreviates the repr of any other object)."""

    argv: list[str]
    returncode: int
    output: str  # stdout and stderr, interleaved as the program wrote them

    def __new__(cls, argv: list[str], returncode: int, output: str) -> Result:
        self = super().__new__(cls, f"\n$ {shlex.join(argv)}\n[exit {returncode}]\n{output}")
        self.argv = argv
        self.returncode = returncode
        self.output = output
        return self


def run(argv: list[str], home: Path, *, env: dict[str, str] | None = None) -> Result:
    clean = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C",
        "LC_ALL": "C",
        "TZ": "UTC",
        **(env or {}),
    }
    try:
        proc = subprocess.run(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=clean,
            cwd=home,
            timeout=TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode("utf-8", "replace")
        pytest.fail(f"{argv[0]} did not finish in {TIMEOUT}s:\n{out}")
    return Result(argv, proc.returncode, proc.stdout.decode("utf-8", "replace"))


# ---- the server side -------------------------------------------------------------------------


def stored(srv: RunningServer, user: str = ALICE) -> list[bytes]:
    """The account's INBOX as the store has it, oldest first."""
    acc = srv.store.get_account(user)
    assert acc is not None
    box = srv.store.get_mailbox(acc.id, "INBOX")
    assert box is not None
    return [srv.store.read_blob(m.blob) for m in srv.store.list_messages(box.id)]


def usage(srv: RunningServer, user: str = ALICE) -> tuple[int, int]:
    """(messages, bytes) charged to the account's quota."""
    acc = srv.store.get_account(user)
    assert acc is not None
    return acc.used_messages, acc.used_bytes


def subject(msg: bytes) -> str:
    for line in msg.split(b"\r\n"):
        if line.lower().startswith(b"subject:"):
            return line[8:].strip().decode()
        if not line:
            break
    raise AssertionError(f"no Subject in {msg[:300]!r}")


def crlf(data: bytes) -> bytes:
    """Local delivery writes LF line ends; the wire and the store use CRLF."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def filler_body(size: int) -> str:
    """About ``size`` bytes of body in short lines (swaks turns the newlines into CRLF)."""
    line = "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz"
    return "\n".join([line] * (size // (len(line) + 2) + 1))


def foreign_cert(tmp: Path) -> Path:
    """A self-signed certificate the server does not use, to prove clients really check."""
    cert = tmp / "foreign" / "cert.pem"
    ensure_self_signed(cert, tmp / "foreign" / "key.pem", "mx.example.org")
    return cert


def md5_fingerprint(cert: Path) -> str:
    """fetchmail's ``sslfingerprint`` format: MD5 of the DER certificate, "AB:CD:..." upper case."""
    der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    digest = hashlib.md5(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


# ---- fetchmail -------------------------------------------------------------------------------

MDA_SCRIPT = """#!/bin/sh
# One file per message, named so that lexical order is delivery order.
exec cat > "{out}/$(date +%s%N).$$"
"""


@dataclass
class Fetchmail:
    """One fetchmail installation (rc file, UID list, delivery dir) polling one account."""

    srv: RunningServer
    home: Path
    keep: bool = False
    tls: str = "none"  # none | stls | implicit | fingerprint
    cert: Path | None = None  # CA file for sslcertfile; the server's own by default
    fingerprint: str | None = None
    user: str = ALICE
    password: str = PASSWORD
    out: Path = field(init=False)

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.out = self.home / "delivered"
        self.out.mkdir(exist_ok=True)
        mda = self.home / "mda.sh"
        mda.write_text(MDA_SCRIPT.format(out=self.out))
        mda.chmod(0o755)
        self.rc = self.home / ".fetchmailrc"
        self.rc.write_text(self._config(mda))
        self.rc.chmod(0o600)  # fetchmail refuses an rc file others can read

    def _config(self, mda: Path) -> str:
        cert = self.cert or self.srv.app.config.cert_path
        checked = f'sslcertck sslcertfile "{cert}" sslcommonname "localhost"'
        port, ssl_opts = {
            # sslproto "" turns off fetchmail's opportunistic STLS.
            "none": (self.srv.port("pop3"), 'sslproto ""'),
            "stls": (self.srv.port("pop3"), f'sslproto "tls1.2+" {checked}'),
            "implicit": (self.srv.port("pop3s"), f'ssl sslproto "tls1.2+" {checked}'),
            "fingerprint": (
                self.srv.port("pop3s"),
                f'ssl no sslcertck sslfingerprint "{self.fingerprint}"',
            ),
        }[self.tls]
        keep = "keep" if self.keep else "nokeep fetchall"
        return (
            "set no bouncemail\n"
            "set invisible\n"  # no Received header of its own: fetched bytes == stored bytes
            f'poll 127.0.0.1 service "{port}" protocol pop3 uidl timeout 10 auth password\n'
            f'  user "{self.user}" there with password "{self.password}"'
            f' is "{pwd.getpwuid(os.getuid()).pw_name}" here\n'
            f"  {keep} no rewrite {ssl_opts}\n"
            f'  mda "{mda}"\n'
        )

    def run(self) -> Result:
        argv = ["fetchmail", "--nosyslog", "-v", "-f", str(self.rc), "-i", str(self.home / "ids")]
        # FETCHMAILHOME keeps the pid/lock file in here too; parallel tests do not collide.
        return run(argv, self.home, env={"FETCHMAILHOME": str(self.home)})

    def fetched(self) -> list[bytes]:
        return [crlf(p.read_bytes()) for p in sorted(self.out.iterdir())]


# fetchmail's exit codes (fetchmail(1), "EXIT CODES")
FETCHMAIL_OK = 0
FETCHMAIL_NOMAIL = 1
FETCHMAIL_SOCKET = 2


# ---- getmail6 --------------------------------------------------------------------------------


@dataclass
class Getmail:
    """One getmail6 installation (getmailrc, state dir, Maildir) for one account."""

    srv: RunningServer
    home: Path
    delete: bool
    ssl: bool = False
    ca_certs: Path | None = None  # the server's own by default (SSL only)
    user: str = ALICE
    password: str = PASSWORD
    maildir: Path = field(init=False)
    _scratch: Path | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.state = self.home / "state"
        self.state.mkdir(exist_ok=True)
        deliver_as = ""
        owner: tuple[int, int] | None = None
        if os.geteuid() == 0:
            # getmail refuses to deliver as root; its Maildir destination can drop to another
            # user, who must reach the directory (pytest's tmp dirs are 0700 root).
            nobody = pwd.getpwnam("nobody")
            self._scratch = Path(tempfile.mkdtemp(prefix="postfach-interop-"))
            self._scratch.chmod(0o755)
            self.maildir = self._scratch / "Maildir"
            deliver_as = "user = nobody\n"
            owner = (nobody.pw_uid, nobody.pw_gid)
        else:
            self.maildir = self.home / "Maildir"
        for sub in ("", "new", "cur", "tmp"):
            (self.maildir / sub).mkdir(exist_ok=True)
            if owner is not None:
                os.chown(self.maildir / sub, *owner)
        self.rc = self.home / "getmailrc"
        self.rc.write_text(self._config(deliver_as))
        self.rc.chmod(0o600)

    def _config(self, deliver_as: str) -> str:
        if self.ssl:
            kind, port = "SimplePOP3SSLRetriever", self.srv.port("pop3s")
            extra = f"ca_certs = {self.ca_certs or self.srv.app.config.cert_path}\n"
        else:
            kind, port, extra = "SimplePOP3Retriever", self.srv.port("pop3"), ""
        return (
            "[retriever]\n"
            f"type = {kind}\n"
            "server = 127.0.0.1\n"
            f"port = {port}\n"
            f"username = {self.user}\n"
            f"password = {self.password}\n"
            "timeout = 20\n"
            f"{extra}"
            "\n[destination]\n"
            "type = Maildir\n"
            f"path = {self.maildir}/\n"
            f"{deliver_as}"
            "\n[options]\n"
            f"delete = {'true' if self.delete else 'false'}\n"
            "read_all = false\n"
            # no Delivered-To / Received of its own: fetched bytes == stored bytes
            "delivered_to = false\n"
            "received = false\n"
            "verbose = 2\n"
        )

    def run(self) -> Result:
        return run(
            ["getmail", "--getmaildir", str(self.state), "--rcfile", str(self.rc)], self.home
        )

    def fetched(self) -> list[bytes]:
        """Everything delivered so far, in no particular order (Maildir names do not sort)."""
        return [crlf(p.read_bytes()) for p in (self.maildir / "new").iterdir()]

    def cleanup(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)


# ---- curl and swaks --------------------------------------------------------------------------


def curl(home: Path, *args: str) -> Result:
    # -q first: ignore any ~/.curlrc; -sS: quiet but keep the error line.
    return run(["curl", "-q", "-sS", "--max-time", "20", *args], home)


def swaks(srv: RunningServer, home: Path, *args: str) -> Result:
    return run(
        [
            "swaks",
            "--server",
            f"127.0.0.1:{srv.port('smtp')}",
            "--helo",
            "client.example",
            "--from",
            "sender@remote.example",
            "--timeout",
            "20",
            *args,
        ],
        home,
    )
