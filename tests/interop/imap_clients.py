"""Drivers for the real IMAP programs: mbsync (isync), curl and neomutt (inside tmux).

Like ``interop_clients``: config files in the test's tmp_path, HOME there too, a clean
environment, a timeout on every run, and a transcript that an assertion message shows in full.
"""

from __future__ import annotations

import hashlib
import imaplib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from interop_clients import ALICE, Result, crlf, run

from postfach.store.api import Flag, MessageMeta
from support import PASSWORD, RunningServer

PACKAGES = {"mbsync": "isync", "curl": "curl", "neomutt": "neomutt", "tmux": "tmux"}


def requires(program: str) -> pytest.MarkDecorator:
    """Skip the test, saying which Debian package to install, when the program is missing."""
    return pytest.mark.skipif(
        shutil.which(program) is None,
        reason=f"{program} is not installed (Debian package {PACKAGES.get(program, program)})",
    )


# ---- the server side -------------------------------------------------------------------------


def messages(srv: RunningServer, mailbox: str, user: str = ALICE) -> list[MessageMeta]:
    acc = srv.store.get_account(user)
    assert acc is not None
    box = srv.store.get_mailbox(acc.id, mailbox)
    assert box is not None, f"no mailbox {mailbox!r} on the server"
    return srv.store.list_messages(box.id)


def mailbox_names(srv: RunningServer, user: str = ALICE) -> set[str]:
    acc = srv.store.get_account(user)
    assert acc is not None
    return {b.name for b in srv.store.list_mailboxes(acc.id)}


def header(msg: bytes, name: str) -> str:
    prefix = name.lower().encode() + b":"
    for line in msg.replace(b"\r\n", b"\n").split(b"\n"):
        if not line:
            break
        if line.lower().startswith(prefix):
            return line[len(prefix) :].strip().decode()
    raise AssertionError(f"no {name} in {msg[:300]!r}")


def server_subjects(srv: RunningServer, mailbox: str, user: str = ALICE) -> dict[str, Flag]:
    """Subject -> system flags of every message in one server mailbox."""
    return {
        header(srv.store.read_blob(m.blob), "Subject"): m.flags
        for m in messages(srv, mailbox, user)
    }


def server_state(srv: RunningServer, user: str = ALICE) -> dict[str, object]:
    """Everything a sync could change on the server, per mailbox: UIDVALIDITY, UIDNEXT,
    HIGHESTMODSEQ and every message's (uid, modseq, flags, keywords, blob)."""
    acc = srv.store.get_account(user)
    assert acc is not None
    return {
        b.name: (
            b.uidvalidity,
            b.uidnext,
            b.highestmodseq,
            [
                (m.uid, m.modseq, int(m.flags), m.keywords, m.blob)
                for m in srv.store.list_messages(b.id)
            ],
        )
        for b in srv.store.list_mailboxes(acc.id)
    }


def imap_login(srv: RunningServer, user: str = ALICE) -> imaplib.IMAP4:
    """A plaintext imaplib session on loopback (allowed there), logged in."""
    conn = imaplib.IMAP4("127.0.0.1", srv.port("imap"), timeout=10)
    conn.login(user, PASSWORD)
    return conn


def wait_for(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def without_tuid(data: bytes) -> bytes:
    """The message without the ``X-TUID`` header that mbsync puts at the end of the header of
    every message it copies, in either direction (its "temporary UID", to find the copy again
    should the target not report a UID)."""
    return re.sub(rb"(?m)^X-TUID: [A-Za-z0-9+/]{12}\r?\n", b"", data, count=1)


# ---- Maildir ---------------------------------------------------------------------------------

_counter = 0


@dataclass(frozen=True)
class MaildirMessage:
    path: Path

    @property
    def flags(self) -> str:
        """The Maildir info flags ("FS" ...) of a message, "" for a file without ``:2,``."""
        name = self.path.name
        return name.split(":2,", 1)[1] if ":2," in name else ""

    @property
    def uid(self) -> int | None:
        m = re.search(r",U=(\d+)", self.path.name)
        return int(m.group(1)) if m else None

    def wire_bytes(self) -> bytes:
        """The message with CRLF line ends (as on the wire) and without mbsync's X-TUID."""
        return without_tuid(crlf(self.path.read_bytes()))

    @property
    def subject(self) -> str:
        return header(self.path.read_bytes(), "Subject")

    def set_flags(self, flags: str) -> MaildirMessage:
        """Rename the file to carry exactly ``flags``, as a mail program does (into cur/)."""
        base = self.path.name.split(":2,", 1)[0]
        new = self.path.parent.parent / "cur" / f"{base}:2,{''.join(sorted(flags))}"
        self.path.rename(new)
        return MaildirMessage(new)


def maildir_folder(path: Path) -> Path:
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path


def maildir_messages(folder: Path) -> list[MaildirMessage]:
    return sorted(
        (MaildirMessage(p) for sub in ("cur", "new") for p in (folder / sub).glob("*")),
        key=lambda m: m.path.name,
    )


def maildir_subjects(folder: Path) -> dict[str, str]:
    """Subject -> Maildir flags of every message in one folder."""
    return {m.subject: m.flags for m in maildir_messages(folder)}


def write_maildir(folder: Path, data: bytes, flags: str = "") -> MaildirMessage:
    """Deliver a message into a Maildir folder the way a local mail program would (tmp, then
    rename into cur with its flags), with LF line ends as on disk."""
    global _counter
    _counter += 1
    maildir_folder(folder)
    base = f"{int(time.time())}.P{os.getpid()}Q{_counter}.device"
    tmp = folder / "tmp" / base
    tmp.write_bytes(data.replace(b"\r\n", b"\n"))
    final = folder / "cur" / f"{base}:2,{flags}"
    tmp.rename(final)
    return MaildirMessage(final)


def tree_snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under root (names carry the Maildir flags)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ---- mbsync ----------------------------------------------------------------------------------

# mbsync's own words (isync 1.4 calls it SSLType; 1.5 renamed it TLSType and keeps the old name).
TLS_TYPES = {"starttls": "STARTTLS", "imaps": "IMAPS"}

# IMAP commands that change the server; a sync with nothing to do sends none of them.
CHANGING_COMMANDS = re.compile(
    r">>> \d+ (UID STORE|STORE|APPEND|UID EXPUNGE|EXPUNGE|CREATE|DELETE|RENAME|UID MOVE|UID COPY)"
)


@dataclass
class Mbsync:
    """One device: an mbsync config syncing every folder of the account two-way with its own
    tree of Maildirs (``SubFolders Verbatim``: folder ``a/b`` is ``Maildir/a/b``)."""

    srv: RunningServer
    home: Path
    tls: str = "starttls"  # starttls | imaps
    cert: Path | None = None  # CertificateFile; the server's own by default
    user: str = ALICE
    password: str = PASSWORD
    maildir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.maildir = self.home / "Maildir"
        self.maildir.mkdir(exist_ok=True)
        self.rc = self.home / "mbsyncrc"
        self.rc.write_text(self._config())
        self.rc.chmod(0o600)

    def _config(self) -> str:
        port = self.srv.port("imap" if self.tls == "starttls" else "imaps")
        cert = self.cert or self.srv.app.config.cert_path
        return (
            "IMAPAccount server\n"
            "Host 127.0.0.1\n"
            f"Port {port}\n"
            f"User {self.user}\n"
            # mbsync's own quoting is "..."; the shell sees echo 'correct horse'.
            f'PassCmd "echo {shlex.quote(self.password)}"\n'
            f"SSLType {TLS_TYPES[self.tls]}\n"
            "SSLVersions TLSv1.2 TLSv1.3\n"
            f"CertificateFile {cert}\n"
            "AuthMechs LOGIN\n"
            "Timeout 20\n"
            "\n"
            "IMAPStore far\n"
            "Account server\n"
            "\n"
            "MaildirStore near\n"
            f"Path {self.maildir}/\n"
            f"Inbox {self.maildir}/INBOX\n"
            "SubFolders Verbatim\n"
            "\n"
            "Channel account\n"
            "Far :far:\n"
            "Near :near:\n"
            "Patterns *\n"
            "Create Both\n"
            "Expunge Both\n"
            "SyncState *\n"
        )

    def sync(self) -> Result:
        # -V: what it does per folder; -Dn: the IMAP conversation (LOGIN arguments are masked).
        return run(["mbsync", "-V", "-Dn", "-c", str(self.rc), "-a"], self.home)

    def folder(self, name: str) -> Path:
        return self.maildir / name

    def messages(self, folder: str) -> list[MaildirMessage]:
        return maildir_messages(self.folder(folder))

    def subjects(self, folder: str) -> dict[str, str]:
        return maildir_subjects(self.folder(folder))

    def by_subject(self, folder: str, subj: str) -> MaildirMessage:
        found = [m for m in self.messages(folder) if m.subject == subj]
        assert len(found) == 1, f"{len(found)} copies of {subj!r} in {self.folder(folder)}"
        return found[0]

    def folders(self) -> set[str]:
        """Every Maildir folder under the tree (a directory with cur/new/tmp)."""
        return {
            str(p.parent.relative_to(self.maildir))
            for p in self.maildir.rglob("cur")
            if (p.parent / "new").is_dir()
        }


# ---- neomutt in tmux -------------------------------------------------------------------------


@dataclass
class Neomutt:
    """neomutt on a 200x50 tmux screen of its own (private tmux socket), driven by keys and
    read with ``capture-pane``."""

    srv: RunningServer
    home: Path
    tls: str = "none"  # none (plaintext on loopback) | imaps
    user: str = ALICE
    password: str = PASSWORD
    socket: Path = field(init=False)
    started: bool = field(init=False, default=False)
    _sockdir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        # A socket path must stay under ~100 bytes; pytest's tmp_path can be longer.
        self._sockdir = Path(tempfile.mkdtemp(prefix="postfach-tmux-"))
        self.socket = self._sockdir / "sock"
        self.rc = self.home / "muttrc"
        self.rc.write_text(self._config())
        self.rc.chmod(0o600)
        self.exit_file = self.home / "neomutt.exit"
        self.log = self.home / "neomutt.log"

    def _config(self) -> str:
        user = self.user.replace("@", "%40")
        if self.tls == "imaps":
            url = f"imaps://{user}@127.0.0.1:{self.srv.port('imaps')}/"
            tls = (
                f'set certificate_file = "{self.home / "certificates"}"\n'
                "set ssl_verify_host = yes\n"
            )
            (self.home / "certificates").write_bytes(self.srv.app.config.cert_path.read_bytes())
        else:
            url = f"imap://{user}@127.0.0.1:{self.srv.port('imap')}/"
            tls = "set ssl_starttls = no\nset ssl_force_tls = no\n"
        return (
            f'set folder = "{url}"\n'
            'set spoolfile = "+INBOX"\n'
            f'set imap_pass = "{self.password}"\n'
            f"{tls}"
            'set header_cache = ""\n'
            'set message_cachedir = ""\n'
            "set imap_passive = yes\n"
            "set mail_check = 60\n"
            "set timeout = 60\n"
            "set sort = mailbox-order\n"
            "set wait_key = no\n"
            "set quit = yes\n"
            "set move = no\n"
            "set resolve = no\n"  # the cursor stays on the message a key acted on
            "set confirmappend = no\n"
            "set delete = yes\n"  # sync-mailbox expunges without asking
            "set help = no\n"
            "set pager_stop = yes\n"
            "set pager_index_lines = 0\n"
            "set date_format = '%Y-%m-%d'\n"
            'set index_format = "%4C %Z %D %-15.15L %s"\n'
            'set status_format = "STATUS %f %m msgs"\n'
        )

    def _tmux(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home)}
        return subprocess.run(
            ["tmux", "-S", str(self.socket), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=10,
            check=False,
        )

    def start(self) -> None:
        env = {
            "HOME": str(self.home),
            "TERM": "screen",  # what tmux emulates
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "TZ": "UTC",
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        }
        inner = (
            "exec env -i "
            + " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
            + f" sh -c {shlex.quote(self._program())}"
        )
        r = self._tmux("new-session", "-d", "-x", "200", "-y", "50", inner)
        assert r.returncode == 0, f"tmux new-session failed: {r.stdout}{r.stderr}"
        # Keep the pane after neomutt exits, so that its last screen can still be read.
        self._tmux("set-option", "-t", "0", "remain-on-exit", "on")
        self.started = True

    def _program(self) -> str:
        argv = shlex.join(["neomutt", "-n", "-F", str(self.rc)])
        # neomutt's exit status lands in a file: the pane alone cannot tell a crash from a quit.
        return (
            f"{argv} 2>{shlex.quote(str(self.log))}; echo $? > {shlex.quote(str(self.exit_file))}"
        )

    def screen(self) -> str:
        r = self._tmux("capture-pane", "-p", "-t", "0")
        return r.stdout

    def keys(self, *keys: str) -> None:
        r = self._tmux("send-keys", "-t", "0", *keys)
        assert r.returncode == 0, f"tmux send-keys failed: {r.stdout}{r.stderr}"

    def wait_screen(self, predicate: Callable[[str], bool], what: str, timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if predicate(text):
                return text
            if time.monotonic() > deadline:
                pytest.fail(f"neomutt: timed out after {timeout}s waiting for {what}:\n{text}")
            time.sleep(0.1)

    def wait_text(self, text: str, timeout: float = 15) -> str:
        return self.wait_screen(lambda s: text in s, repr(text), timeout)

    def wait_exit(self, timeout: float = 15) -> int:
        wait_for(self.exit_file.exists, "neomutt to exit", timeout)
        wait_for(lambda: self.exit_file.read_text().strip() != "", "neomutt's exit status")
        return int(self.exit_file.read_text())

    def stop(self) -> None:
        """End this test's own tmux server (and with it neomutt), by its private socket."""
        if self.started:
            self._tmux("kill-server")
            self.started = False
        shutil.rmtree(self._sockdir, ignore_errors=True)


# ---- a server in a child process -------------------------------------------------------------

_SERVE = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from support import start_server
srv = start_server(Path(sys.argv[1]))
srv.add_user(sys.argv[3])
ports = {name: srv.port(name) for name in ("smtp", "imap", "imaps")}
print(json.dumps({"db": str(srv.store.db_path), **ports}), flush=True)
sys.stdin.read()  # serve until the test closes stdin
srv.stop()
"""


class ServerProcess:
    """``start_server`` in a child process, for tests that may leave the server wedged: the
    child is killed (by its own Popen handle) instead of the test waiting out the in-process
    server's shutdown timeouts."""

    def __init__(self, data: Path, user: str = ALICE) -> None:
        tests = str(Path(__file__).resolve().parent.parent)
        data.mkdir(parents=True, exist_ok=True)
        self.log = data.parent / f"{data.name}.log"
        with open(self.log, "wb") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _SERVE, str(data), tests, user],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()  # the one line it prints, or nothing if it died
        if not first.startswith(b"{"):
            self.proc.kill()
            self.proc.wait(timeout=5)
            raise RuntimeError(f"server did not start: {first!r}\n{self.output()}")
        info = json.loads(first)
        self.db = Path(info["db"])
        self.ports: dict[str, int] = {k: v for k, v in info.items() if k != "db"}

    def port(self, name: str) -> int:
        return self.ports[name]

    def output(self) -> str:
        """What the server wrote to stderr so far (tracebacks from its threads, say)."""
        return self.log.read_text("utf-8", "replace")

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=3)  # a healthy server is gone in well under a second
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.returncode is None:
            self.stop()
