"""Helpers for the fetch tests: POP3 servers to fetch from (postfach, Dovecot, a scripted fake),
config files, and readers for what landed locally."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from click.testing import CliRunner, Result

from postfach.cli.main import cli
from postfach.mailfile import split_mbox
from postfach.mime.structure import normalize_crlf
from postfach.store.api import INBOX, Flag
from postfach.store.sqlite import AppendItem, SqliteMailstore
from support import PASSWORD, RunningServer, message

ALICE = "alice@example.org"
_MID = re.compile(rb"(?im)^Message-ID:[ \t]*<([^>]+)>")


def mid(data: bytes) -> str:
    m = _MID.search(data)
    assert m, data[:200]
    return m.group(1).decode()


def messages(prefix: str, n: int, size: int = 0) -> list[bytes]:
    return [message(f"{prefix}{i}", size=size) for i in range(n)]


def ids(prefix: str, n: int) -> list[str]:
    return sorted(f"{prefix}{i}@remote.example" for i in range(n))


# ---- servers --------------------------------------------------------------------------------


@dataclass
class Pop3Box:
    """A POP3 account to fetch from, and ways to fill and count it from outside."""

    kind: str
    port: int
    user: str
    put: Callable[[list[bytes]], None]
    count: Callable[[], int]
    password: str = PASSWORD
    host: str = "127.0.0.1"
    tls_port: int | None = None
    cert: Path | None = None


def postfach_box(srv: RunningServer, user: str = ALICE) -> Pop3Box:
    if srv.store.get_account(user) is None:
        srv.add_user(user)
    acc = srv.store.get_account(user)
    assert acc is not None
    inbox = srv.store.get_mailbox(acc.id, INBOX)
    assert inbox is not None
    store = srv.store

    def put(datas: list[bytes]) -> None:
        items = []
        for d in datas:
            data = normalize_crlf(d)
            items.append(AppendItem(store.stage(data), Flag.NONE, (), int(time.time())))
        store.append(inbox.id, items)

    return Pop3Box(
        "postfach",
        srv.port("pop3"),
        user,
        put,
        lambda: len(store.list_messages(inbox.id)),
        tls_port=srv.port("pop3s"),
        cert=srv.data / "tls" / "cert.pem",
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def dovecot_box() -> Iterator[Pop3Box]:
    """A private Dovecot (POP3 only, passwd-file, Maildir) on a loopback port.

    Its files live in a fresh directory under /tmp that the unprivileged mail user can reach
    (pytest's tmp_path is private to root); the mail belongs to ``nobody``.
    """
    root = Path(tempfile.mkdtemp(prefix="postfach-dovecot-"))
    root.chmod(0o755)
    port = free_port()
    uid, gid = 65534, 65534
    mail = root / "mail"
    home = mail / "alice"
    for sub in ("run", "state"):
        (root / sub).mkdir()
    for sub in ("cur", "new", "tmp"):
        (home / sub).mkdir(parents=True)
    for p in (mail, home, *(home / s for s in ("cur", "new", "tmp"))):
        os.chown(p, uid, gid)
    (root / "users").write_text(f"alice:{{PLAIN}}{PASSWORD}:{uid}:{gid}::{home}::\n")
    (root / "dovecot.conf").write_text(f"""\
instance_name = postfach-fetch-{os.getpid()}-{port}
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = 1
mail_location = maildir:{mail}/%u
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {root}/users
}}
userdb {{
  driver = passwd-file
  args = {root}/users
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port}
  }}
}}
""")
    out = open(root / "dovecot.out", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        ["dovecot", "-F", "-c", str(root / "dovecot.conf")], stdout=out, stderr=out
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                    if s.recv(100).startswith(b"+OK"):
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("dovecot did not start: " + (root / "dovecot.out").read_text())
            time.sleep(0.1)
        counter = iter(range(1, 1 << 30))

        def put(datas: list[bytes]) -> None:
            for d in datas:
                name = f"{int(time.time())}.M{next(counter)}P{os.getpid()}.test"
                tmp = home / "tmp" / name
                tmp.write_bytes(d.replace(b"\r\n", b"\n"))
                os.chown(tmp, uid, gid)
                os.rename(tmp, home / "new" / name)

        def count() -> int:
            return len(os.listdir(home / "new")) + len(os.listdir(home / "cur"))

        yield Pop3Box("dovecot", port, "alice", put, count)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()
        shutil.rmtree(root, ignore_errors=True)


class FakePop3:
    """A scripted POP3 server on 127.0.0.1 for what real servers will not do on request:
    no UIDL, a connection cut in the middle of RETR, no reply to QUIT.

    Deletions apply at QUIT, as RFC 1939 says; a cut connection deletes nothing.
    """

    def __init__(self, datas: list[bytes], *, uidl: bool = True, pipelining: bool = True) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._next = 0
        self.add(datas)
        self.uidl = uidl
        self.pipelining = pipelining
        self.cut_in_retr: int | None = None  # message number whose RETR is cut (once)
        self.cut_before_quit = False  # close without answering QUIT (once)
        self.sasl_only = False  # refuse USER, offer and require AUTH PLAIN
        self.logins: list[str] = []
        self.commands: list[str] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)  # so close() does not wait for a connection that never comes
        self.port = self.sock.getsockname()[1]
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def add(self, datas: list[bytes]) -> None:
        for d in datas:
            self.messages.append((f"u{self._next}", normalize_crlf(d)))
            self._next += 1

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        self._thread.join(5)

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(30)
            with conn, contextlib.suppress(OSError):
                self._session(conn)

    def _session(self, conn: socket.socket) -> None:
        f = conn.makefile("rb")
        snapshot = list(self.messages)
        deleted: set[int] = set()

        def send(data: bytes) -> None:
            conn.sendall(data)

        send(b"+OK fake POP3 ready\r\n")
        for raw in f:
            line = raw.decode().strip()
            self.commands.append(line)
            cmd, *args = line.split()
            cmd = cmd.upper()
            if cmd == "AUTH" and self.sasl_only:
                send(b"+ \r\n")
                self.logins.append(base64.b64decode(f.readline().strip()).decode())
                send(b"+OK welcome\r\n")
            elif cmd == "USER" and self.sasl_only:
                send(b"-ERR use AUTH\r\n")
            elif cmd == "CAPA":
                caps = ["SASL PLAIN"] if self.sasl_only else ["USER"]
                caps += ["TOP"] + (["UIDL"] if self.uidl else [])
                caps += ["PIPELINING"] if self.pipelining else []
                send(b"+OK\r\n" + "".join(c + "\r\n" for c in caps).encode() + b".\r\n")
            elif cmd in ("USER", "PASS", "NOOP", "RSET"):
                send(b"+OK\r\n")
            elif cmd == "STAT":
                send(f"+OK {len(snapshot)} {sum(len(d) for _, d in snapshot)}\r\n".encode())
            elif cmd == "LIST":
                body = "".join(f"{i + 1} {len(d)}\r\n" for i, (_, d) in enumerate(snapshot))
                send(b"+OK\r\n" + body.encode() + b".\r\n")
            elif cmd == "UIDL" and self.uidl:
                body = "".join(f"{i + 1} {u}\r\n" for i, (u, _) in enumerate(snapshot))
                send(b"+OK\r\n" + body.encode() + b".\r\n")
            elif cmd == "RETR":
                n = int(args[0])
                data = snapshot[n - 1][1]
                if n == self.cut_in_retr:
                    self.cut_in_retr = None
                    send(b"+OK message follows\r\n" + data[: len(data) // 2])
                    conn.shutdown(socket.SHUT_RDWR)
                    return
                stuffed = data.replace(b"\r\n.", b"\r\n..")
                send(b"+OK message follows\r\n" + stuffed + b".\r\n")
            elif cmd == "DELE":
                deleted.add(int(args[0]) - 1)
                send(b"+OK deleted\r\n")
            elif cmd == "QUIT":
                if self.cut_before_quit:
                    self.cut_before_quit = False
                    conn.shutdown(socket.SHUT_RDWR)
                    return
                gone = {snapshot[i][0] for i in deleted}
                self.messages = [m for m in self.messages if m[0] not in gone]
                send(b"+OK bye\r\n")
                return
            else:
                send(b"-ERR unknown command\r\n")

    def box(self) -> Pop3Box:
        return Pop3Box("fake", self.port, "anyone", self.add, lambda: len(self.messages))


# ---- configs and runs -----------------------------------------------------------------------


@dataclass
class Setup:
    """A config file with accounts, a state directory and a password file, in tmp_path."""

    tmp: Path
    accounts: list[str] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.tmp / "fetch.toml"

    @property
    def state(self) -> Path:
        return self.tmp / "state"

    def password_file(self, password: str) -> Path:
        p = self.tmp / f"pw-{abs(hash(password))}"
        p.write_text(password + "\n")
        p.chmod(0o600)
        return p

    def add(
        self,
        name: str,
        box: Pop3Box,
        *,
        policy: str = "keep",
        target: str = "maildir",
        where: str | None = None,
        tls: str = "none",
        port: int | None = None,
        extra: str = "",
    ) -> Path | str:
        """Add an account; returns the target (a path, or the postfach account)."""
        dest: Path | str
        if target == "postfach":
            dest = where or "bob@localhost"
        else:
            dest = Path(where) if where else self.tmp / f"{name}.{target}"
        pw = self.password_file(box.password)
        self.accounts.append(
            f"[account.{name}]\nhost = \"{box.host}\"\nport = {port or box.port}\n"
            f"tls = \"{tls}\"\nuser = \"{box.user}\"\npassword_file = \"{pw}\"\n"
            f"policy = \"{policy}\"\n{target} = \"{dest}\"\n{extra}\n"
        )  # fmt: skip
        self.config.write_text(f'state_dir = "{self.state}"\n\n' + "\n".join(self.accounts))
        return dest


def run_cli(*args: str, data: Path | None = None) -> Result:
    argv = (["--data", str(data)] if data else []) + list(args)
    return CliRunner().invoke(cli, argv, catch_exceptions=False)


def fetch(setup: Setup, *args: str, data: Path | None = None) -> Result:
    return run_cli("fetch", "--config", str(setup.config), *args, data=data)


def one_error_line(r: Result) -> str:
    assert r.exit_code != 0, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("postfach: error: "), lines[0]
    return lines[0]


# ---- what landed locally --------------------------------------------------------------------


def maildir_ids(path: Path) -> list[str]:
    out = []
    for sub in ("new", "cur"):
        d = path / sub
        if d.is_dir():
            out += [mid((d / n).read_bytes()) for n in os.listdir(d)]
    return sorted(out)


def mbox_ids(path: Path) -> list[str]:
    if not path.exists():
        return []
    return sorted(mid(m.data) for m in split_mbox(path.read_bytes()))


def store_ids(store: SqliteMailstore, account: str) -> list[str]:
    acc = store.get_account(account)
    assert acc is not None
    inbox = store.get_mailbox(acc.id, INBOX)
    assert inbox is not None
    return sorted(mid(store.read_blob(m.blob)) for m in store.list_messages(inbox.id))
