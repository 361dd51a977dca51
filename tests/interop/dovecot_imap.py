"""A private Dovecot IMAP server on a loopback port (passwd-file, Maildir), for the migrate and
keyword tests. Its files live in a fresh directory under /tmp that the unprivileged mail user
(``nobody``) can reach; the system's Dovecot is untouched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

UID = GID = 65534  # nobody: Dovecot refuses uid 0 for mail


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DovecotImap:
    port: int
    user: str
    password: str
    home: Path  # the user's Maildir
    root: Path


def chown_tree(path: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(path):
        os.chown(dirpath, UID, GID)
        for n in filenames:
            os.chown(os.path.join(dirpath, n), UID, GID)


@contextlib.contextmanager
def dovecot_imap(
    *, courier_layout: bool = False, maildir: Path | None = None, password: str = "secret"
) -> Iterator[DovecotImap]:
    """``courier_layout``: every folder under ``INBOX.`` (namespace prefix ``INBOX.``, ``.``
    delimiter), ``Drafts`` with the ``\\Drafts`` special-use attribute. ``maildir``: serve this
    existing Maildir (it is chowned to the mail user)."""
    if shutil.which("dovecot") is None:
        import pytest

        pytest.skip("dovecot is not installed")
    root = Path(tempfile.mkdtemp(prefix="postfach-dovecot-imap-"))
    root.chmod(0o755)
    port = free_port()
    home = maildir if maildir is not None else root / "mail" / "alice"
    for sub in ("run", "state"):
        (root / sub).mkdir()
    for sub in ("cur", "new", "tmp"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    chown_tree(home)
    p = home.parent
    while p != p.parent and p != Path("/tmp"):
        p.chmod(p.stat().st_mode | 0o711)
        p = p.parent
    (root / "users").write_text(f"alice:{{PLAIN}}{password}:{UID}:{GID}::{home}::\n")
    prefix = "INBOX." if courier_layout else ""
    (root / "dovecot.conf").write_text(f"""\
instance_name = postfach-migrate-{os.getpid()}-{port}
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = 1
mail_location = maildir:{home}:INDEX={root}/index/%u
namespace inbox {{
  inbox = yes
  separator = .
  prefix = {prefix}
  mailbox Drafts {{
    special_use = \\Drafts
  }}
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {root}/users
}}
userdb {{
  driver = passwd-file
  args = {root}/users
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
""")
    (root / "index").mkdir()
    os.chown(root / "index", UID, GID)
    out = open(root / "dovecot.out", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        ["dovecot", "-F", "-c", str(root / "dovecot.conf")], stdout=out, stderr=out
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                    if s.recv(100).startswith(b"* OK"):
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (root / "dovecot.out").read_text()
                with contextlib.suppress(OSError):
                    log += (root / "dovecot.log").read_text()
                raise RuntimeError("dovecot did not start: " + log)
            time.sleep(0.1)
        yield DovecotImap(port, "alice", password, home, root)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()
        shutil.rmtree(root, ignore_errors=True)
