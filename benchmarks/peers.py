"""Private Dovecot and Postfix instances in a temporary directory (the system's are untouched).

Dovecot: ``dovecot -F -c DIR/dovecot.conf``, LMTP and POP3 on loopback ports, Maildir under
``DIR/mail/<user>``, passwd-file users mapped to the unprivileged ``nobody`` uid.
Postfix: ``postfix -c DIR/conf start-fg`` with its own queue directory, an smtpd on a loopback
port, ``virtual_transport = lmtp:inet:127.0.0.1:<dovecot lmtp>``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common import DOMAIN, HOST, PASSWORD, Child, free_port, wait_for_banner

MAIL_USER = "nobody"  # Dovecot refuses uid 0 for mail; nobody owns the benchmark Maildirs


def _version(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""


def dovecot_version() -> str:
    return _version(["dovecot", "--version"])


def postfix_version() -> str:
    text = _version(["postconf", "-d", "-h", "mail_version"])
    return text


@dataclass
class Dovecot:
    """Dovecot with LMTP and POP3; the same users for every benchmark."""

    root: Path
    accounts: Sequence[str]
    mail_fsync: str = "always"
    lmtp_port: int = field(default_factory=free_port)
    pop3_port: int = field(default_factory=free_port)
    child: Child | None = None

    @property
    def mail_dir(self) -> Path:
        return self.root / "mail"

    @property
    def settings(self) -> dict[str, str]:
        """The settings that differ from Dovecot's defaults (for the report)."""
        return {
            "mail_location": "maildir:<tmp>/mail/%u",
            "mail_fsync": self.mail_fsync,
            "passdb/userdb": "passwd-file (PLAIN password, uid/gid of nobody)",
            "ssl": "no",
            "disable_plaintext_auth": "no",
            "protocols": "pop3 lmtp",
            "services": "defaults (pop3-login high-security mode, lmtp client_limit 1)",
        }

    def config(self) -> str:
        r = self.root
        return f"""\
instance_name = postfach-bench-{os.getpid()}
base_dir = {r}/run
state_dir = {r}/state
log_path = {r}/dovecot.log
info_log_path = {r}/dovecot.log
protocols = pop3 lmtp
listen = {HOST}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = 1
mail_location = maildir:{r}/mail/%u
mail_fsync = {self.mail_fsync}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {r}/users
}}
userdb {{
  driver = passwd-file
  args = {r}/users
}}
service pop3-login {{
  inet_listener pop3 {{
    address = {HOST}
    port = {self.pop3_port}
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = {HOST}
    port = {self.lmtp_port}
  }}
}}
"""

    def start(self) -> None:
        if shutil.which("dovecot") is None:
            raise RuntimeError("dovecot is not installed")
        pw = pwd.getpwnam(MAIL_USER)
        self.root.mkdir(parents=True)
        self.root.chmod(0o755)
        for sub in ("run", "state"):
            (self.root / sub).mkdir()
        self.mail_dir.mkdir()
        os.chown(self.mail_dir, pw.pw_uid, pw.pw_gid)
        users = "".join(
            f"{a}:{{PLAIN}}{PASSWORD}:{pw.pw_uid}:{pw.pw_gid}::{self.mail_dir / a}::\n"
            for a in self.accounts
        )
        (self.root / "users").write_text(users)
        (self.root / "dovecot.conf").write_text(self.config())
        self.child = Child(
            "dovecot",
            ["dovecot", "-F", "-c", str(self.root / "dovecot.conf")],
            self.root / "dovecot.out",
        )
        try:
            wait_for_banner(self.lmtp_port, 20, self.child.proc, "dovecot lmtp")
            wait_for_banner(self.pop3_port, 20, self.child.proc, "dovecot pop3")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(timeout=20)
            self.child = None

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.root / "dovecot.log").read_text().splitlines()[-15:])
        return ""


@dataclass
class Postfix:
    """Postfix accepting on a loopback port and handing everything to Dovecot's LMTP."""

    root: Path
    accounts: Sequence[str]
    lmtp_port: int
    smtp_port: int = field(default_factory=free_port)
    child: Child | None = None
    _started: bool = False

    @property
    def conf_dir(self) -> Path:
        return self.root / "conf"

    @property
    def settings(self) -> dict[str, str]:
        """The settings that differ from Postfix's defaults (for the report)."""
        return {
            "compatibility_level": "3.6",
            "virtual_mailbox_domains": DOMAIN,
            "virtual_mailbox_maps": "texthash: of the benchmark accounts",
            "virtual_transport": "lmtp:inet:127.0.0.1:<dovecot lmtp port>",
            "smtpd_peername_lookup": "no (loopback only, no DNS here)",
            "smtp_dns_support_level": "disabled",
            "master.cf": "stock services, chroot off",
            "queue durability": "default (cleanup fsyncs the queue file before 250)",
        }

    def main_cf_head(self, hostname: str) -> str:
        """What every private Postfix of the benchmarks sets first: its own directories,
        loopback only, and its name."""
        r = self.root
        return f"""\
compatibility_level = 3.6
queue_directory = {r}/spool
data_directory = {r}/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = {HOST}
inet_protocols = ipv4
myhostname = {hostname}
"""

    def main_cf(self) -> str:
        r = self.root
        return (
            self.main_cf_head("postfix.bench.localdomain")
            + f"""\
mydomain = bench.localdomain
myorigin = $myhostname
mydestination =
mynetworks = 127.0.0.0/8
relay_domains =
local_recipient_maps =
alias_maps =
alias_database =
virtual_mailbox_domains = {DOMAIN}
virtual_mailbox_maps = texthash:{r}/conf/vmailbox
virtual_transport = lmtp:inet:{HOST}:{self.lmtp_port}
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
biff = no
maillog_file_prefixes = {r}
maillog_file = {r}/maillog
"""
        )

    def master_cf(self) -> str:
        services = [
            f"{HOST}:{self.smtp_port} inet n - n - - smtpd",
            "pickup unix n - n 60 1 pickup",
            "cleanup unix n - n - 0 cleanup",
            "qmgr unix n - n 300 1 qmgr",
            "rewrite unix - - n - - trivial-rewrite",
            "bounce unix - - n - 0 bounce",
            "defer unix - - n - 0 bounce",
            "trace unix - - n - 0 bounce",
            "verify unix - - n - 1 verify",
            "flush unix n - n 1000? 0 flush",
            "proxymap unix - - n - - proxymap",
            "proxywrite unix - - n - 1 proxymap",
            "smtp unix - - n - - smtp",
            "relay unix - - n - - smtp",
            "showq unix n - n - - showq",
            "error unix - - n - - error",
            "retry unix - - n - - error",
            "discard unix - - n - - discard",
            "local unix - n n - - local",
            "virtual unix - n n - - virtual",
            "lmtp unix - - n - - lmtp",
            "anvil unix - - n - 1 anvil",
            "scache unix - - n - 1 scache",
            "postlog unix-dgram n - n - 1 postlogd",
        ]
        return "\n".join(services) + "\n"

    def _postfix(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["postfix", "-c", str(self.conf_dir), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self) -> None:
        if shutil.which("postfix") is None:
            raise RuntimeError("postfix is not installed")
        pw = pwd.getpwnam("postfix")
        self.root.mkdir(parents=True)
        self.root.chmod(0o755)
        self.conf_dir.mkdir()
        (self.root / "spool").mkdir()
        data = self.root / "data"
        data.mkdir()
        os.chown(data, pw.pw_uid, pw.pw_gid)
        (self.conf_dir / "main.cf").write_text(self.main_cf())
        (self.conf_dir / "master.cf").write_text(self.master_cf())
        (self.conf_dir / "vmailbox").write_text("".join(f"{a} ok\n" for a in self.accounts))
        # Creates the queue directories with the right owners; errors go to the maillog file.
        check = self._postfix("check")
        if check.returncode != 0:
            raise RuntimeError(f"postfix check failed: {self.log_tail() or check.stderr}")
        self.child = Child(
            "postfix",
            ["postfix", "-c", str(self.conf_dir), "start-fg"],
            self.root / "postfix.out",
        )
        self._started = True
        try:
            wait_for_banner(self.smtp_port, 30, self.child.proc, "postfix smtpd")
        except BaseException as exc:
            tail = self.log_tail()
            self.stop()
            raise RuntimeError(f"{exc}; maillog: {tail}") from None

    def stop(self) -> None:
        if self._started:
            self._started = False
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                self._postfix("stop", timeout=30)
        if self.child is not None:
            self.child.stop(timeout=20)
            self.child = None
        # master's children leave on their own once master is gone; give them a moment.
        time.sleep(0.2)

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.root / "maillog").read_text().splitlines()[-15:])
        return ""
