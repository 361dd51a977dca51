"""``postfach demo``: the source document's story, played on a throwaway server (adapter).

A temporary data directory, a postfach server on ephemeral loopback ports in a background
thread, two devices (a phone and a home PC, each a local Maildir) using the real client code —
``postfach fetch`` for POP3, ``postfach sync`` for IMAP — and senders over SMTP and submission.
Each step prints what happened; `run_demo` returns the facts, which the test checks.

1. POP3, both devices download and delete: the first to log in gets the mail, the other none.
2. POP3, the phone leaves mail on the server (``keep``), the home PC downloads and deletes:
   the phone sees new mail on the way, the home PC ends up with everything.
3. POP3, both leave mail on the server: the mailbox fills up to its quota; the fetch client
   warns; the next sender gets the "mailbox full" bounce (5.2.2).
4. IMAP: after cleaning up, both devices sync the same mailbox; what the phone sends lands in
   Sent, and the home PC's Sent shows the same message.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import shutil
import smtplib
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from rich.console import Console
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table

from postfach.app import App
from postfach.auth.passwords import hash_password
from postfach.client.config import AccountConfig
from postfach.client.fetch import FetchReport, fetch_account
from postfach.client.imap import ImapClient
from postfach.client.policy import Policy, human_size
from postfach.client.statefile import StateFile
from postfach.client.sync.engine import Syncer, SyncOptions
from postfach.client.sync.maildir import Maildir
from postfach.client.sync.names import dir_for_folder
from postfach.client.sync.state import SyncState
from postfach.client.targets import MaildirTarget
from postfach.config import load_config
from postfach.quota import format_size
from postfach.store.sqlite import SqliteMailstore

__all__ = ["DemoResult", "run_demo"]

ALICE: Final = "alice@example.org"
BOB: Final = "bob@example.org"
PASSWORD: Final = "demo password, thrown away afterwards"
QUOTA: Final = 48 * 1024
_ENV: Final = {
    "POSTFACH_SMTP": "127.0.0.1:0", "POSTFACH_LMTP": "off", "POSTFACH_POP3": "127.0.0.1:0",
    "POSTFACH_POP3S": "off", "POSTFACH_SUBMISSION": "127.0.0.1:0",
    "POSTFACH_SUBMISSIONS": "off", "POSTFACH_IMAP": "127.0.0.1:0", "POSTFACH_IMAPS": "off",
    "POSTFACH_HTTP": "off", "POSTFACH_HOSTNAME": "mail.example.org",
}  # fmt: skip

TEXT: Final[dict[str, dict[str, str]]] = {
    "en": {
        "title": "postfach demo: POP3 and IMAP with two devices",
        "setup": "A throwaway server on 127.0.0.1, account {alice} with a {quota} quota.",
        "s1": "1. POP3, both devices download and delete",
        "s1a": "Three messages arrive. The phone checks mail first, then the home PC.",
        "s1b": "Only the first device got the mail: the two devices never hold the same mail.",
        "s2": '2. POP3, the phone leaves mail on the server ("keep"), the home PC deletes',
        "s2a": "Four messages arrive. On the way, the phone fetches them and leaves them there.",
        "s2b": "At home, the PC fetches everything and deletes it from the server.",
        "s2c": "The phone saw the new mail on the way, and the home PC has the complete mail.",
        "s3": "3. POP3, both devices leave mail on the server",
        "s3a": "Mail keeps arriving; nobody deletes anything on the server.",
        "s3b": "The mailbox is full. A friend writes once more:",
        "s3c": "The friend's mail is refused, and the friend gets this bounce:",
        "s4": "4. IMAP: both devices see the same mailbox",
        "s4a": "The home PC cleans up (downloads and deletes, as in step 2). Then both devices"
               " switch to IMAP and keep a local copy that is synced at every access.",
        "s4b": "Two messages arrive; both devices sync.",
        "s4c": "The phone answers a message; its mail program puts the copy into Sent and syncs.",
        "s4d": "The home PC syncs: the same mailbox, the same Sent folder, the reply included.",
        "device": "device", "has": "messages", "server": "on the server", "quota": "quota",
        "warning": "warning from postfach fetch", "phone": "phone", "home-pc": "home PC",
        "end": "Done. The temporary server and all its files are gone.",
    },
    "de": {
        "title": "postfach demo: POP3 und IMAP mit zwei Geräten",
        "setup": "Ein Wegwerf-Server auf 127.0.0.1, Konto {alice} mit {quota} Postfachgröße.",
        "s1": "1. POP3, beide Geräte holen ab und löschen",
        "s1a": "Drei E-Mails kommen an. Zuerst ruft das Handy ab, dann der Heim-PC.",
        "s1b": "Nur das erste Gerät hat die E-Mails: der Datenbestand ist immer unterschiedlich.",
        "s2": "2. POP3, das Handy belässt E-Mails auf dem Server, der Heim-PC löscht",
        "s2a": "Vier E-Mails kommen an. Unterwegs ruft das Handy sie ab und belässt sie dort.",
        "s2b": "Zu Hause holt der PC alles ab und löscht es anschließend auf dem Server.",
        "s2c": "Unterwegs aktuelle E-Mails, zu Hause immer der komplette E-Mailbestand.",
        "s3": "3. POP3, beide Geräte belassen E-Mails auf dem Server",
        "s3a": "Es kommen weiter E-Mails an; auf dem Server wird nie etwas gelöscht.",
        "s3b": "Die maximale Postfachgröße ist erreicht. Eine Freundin schreibt noch einmal:",
        "s3c": "Ihre E-Mail wird abgewiesen, und sie erhält diese Nachricht, daß das Postfach"
               " voll ist:",
        "s4": "4. IMAP: beide Geräte sehen dasselbe Postfach",
        "s4a": "Der Heim-PC räumt auf (holt ab und löscht, wie in Schritt 2). Dann wechseln"
               " beide Geräte zu IMAP, mit lokaler Kopie, die bei jedem Zugriff abgeglichen wird.",
        "s4b": "Zwei E-Mails kommen an; beide Geräte gleichen ab.",
        "s4c": "Das Handy beantwortet eine E-Mail; die Kopie landet in Gesendet und wird"
               " abgeglichen.",
        "s4d": "Der Heim-PC gleicht ab: dasselbe Postfach, derselbe Gesendet-Ordner samt Antwort.",
        "device": "Gerät", "has": "E-Mails", "server": "auf dem Server", "quota": "Postfach",
        "warning": "Warnung von postfach fetch", "phone": "Handy", "home-pc": "Heim-PC",
        "end": "Fertig. Der Wegwerf-Server und alle seine Dateien sind gelöscht.",
    },
}  # fmt: skip


@dataclass
class DemoResult:
    """The story's facts (what the test checks)."""

    s1_phone: int = 0
    s1_home: int = 0
    s2_phone: int = 0
    s2_home: int = 0
    s2_sent: int = 0
    s2_server_after: int = 0
    s3_server: int = 0
    s3_used: int = 0
    quota: int = QUOTA
    s3_smtp_reply: str = ""
    s3_bounce: str = ""
    warnings: list[str] = field(default_factory=list)
    imap_inbox: dict[str, list[str]] = field(default_factory=dict)  # device -> subjects
    imap_sent: dict[str, list[str]] = field(default_factory=dict)
    data_dir: str = ""


class _Server:
    def __init__(self, data: Path) -> None:
        self.app = App(load_config(data, env=_ENV))
        self.loop: asyncio.AbstractEventLoop | None = None
        ready = threading.Event()
        error: list[BaseException] = []

        def main() -> None:
            async def go() -> None:
                try:
                    await self.app.start()
                except BaseException as exc:
                    error.append(exc)
                    ready.set()
                    return
                self.loop = asyncio.get_running_loop()
                ready.set()
                await self.app.serve_forever()

            asyncio.run(go())

        self.thread = threading.Thread(target=main, name="postfach-demo", daemon=True)
        self.thread.start()
        if not ready.wait(60):
            raise RuntimeError("the demo server did not start")
        if error:
            raise error[0]

    @property
    def store(self) -> SqliteMailstore:
        assert self.app.store is not None
        return self.app.store

    def port(self, name: str) -> int:
        return self.app.addresses[name][1]

    def stop(self) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.app.request_stop)
        self.thread.join(timeout=60)


def _mail(n: int, subject: str, sender: str = "friend@remote.example", size: int = 3000) -> bytes:
    body = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 2 + "\r\n") * (
        size // 120
    )
    return (
        f"From: {sender}\r\nTo: {ALICE}\r\nSubject: {subject}\r\n"
        f"Message-ID: <demo.{n}.{time.time_ns()}@remote.example>\r\n"
        f"Date: Mon, 01 Jun 2026 10:{n % 60:02d}:00 +0000\r\n\r\n{body}"
    ).encode()


class _Story:
    def __init__(self, root: Path, console: Console, lang: str, pause: Callable[[], None]):
        self.root = root
        self.c = console
        self.t = TEXT[lang]
        self.pause = pause
        self.result = DemoResult(data_dir=str(root / "server"))
        self.srv = _Server(root / "server")
        self.pw = root / "password"
        self.pw.write_text(PASSWORD + "\n")
        self.pw.chmod(0o600)
        self.counter = 0
        self.warned: set[str] = set()
        store = self.srv.store
        store.add_domain("example.org")
        store.add_account(ALICE, hash_password(PASSWORD), QUOTA, 0)
        store.add_account(BOB, hash_password(PASSWORD), 0, 0)

    # ---- helpers ---------------------------------------------------------------------------

    def say(self, key: str, **kw: str) -> None:
        self.c.print(self.t[key].format(**kw))

    def heading(self, key: str) -> None:
        self.c.print()
        self.c.rule(f"[bold]{self.t[key]}")

    def deliver(self, subjects: list[str]) -> None:
        with smtplib.SMTP("127.0.0.1", self.srv.port("smtp"), timeout=30) as s:
            for subj in subjects:
                self.counter += 1
                s.sendmail("friend@remote.example", [ALICE], _mail(self.counter, subj))
        self.c.print("  [green]→[/] " + ", ".join(f"“{s}”" for s in subjects))

    def pop3(self, device: str, policy: Policy) -> FetchReport:
        account = AccountConfig(
            name=device, host="127.0.0.1", user=ALICE, policy=policy, target_kind="maildir",
            target=str(self.root / device / "Maildir"), port=self.srv.port("pop3"), tls="none",
            password_file=str(self.pw), warn_after_runs=2,
        )  # fmt: skip
        state = self.root / device / "fetch-state"
        state.mkdir(parents=True, exist_ok=True)
        target = MaildirTarget(Path(account.target))
        report = fetch_account(account, target, StateFile(state, device))
        for w in report.warnings:
            self.result.warnings.append(w)
            if device not in self.warned:  # once per device: the demo repeats the same runs
                self.warned.add(device)
                self.c.print(Panel(f"{self.t[device]}: {w}", title=self.t["warning"],
                                   border_style="yellow"))  # fmt: skip
        return report

    def local_count(self, device: str, folder: str = "INBOX") -> int:
        d = self.root / device / "Maildir" / dir_for_folder(folder)
        return sum(len(list((d / sub).iterdir())) for sub in ("new", "cur") if (d / sub).is_dir())

    def subjects(self, device: str, folder: str) -> list[str]:
        d = self.root / device / "Maildir" / dir_for_folder(folder)
        out = []
        for sub in ("new", "cur"):
            if (d / sub).is_dir():
                for p in (d / sub).iterdir():
                    msg = email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
                    out.append(str(msg["Subject"]))
        return sorted(out)

    def server_state(self) -> tuple[int, int]:
        acc = self.srv.store.get_account(ALICE)
        assert acc is not None
        return acc.used_messages, acc.used_bytes

    def show(self, devices: list[str]) -> None:
        t = Table(show_header=True, header_style="bold")
        t.add_column(self.t["device"])
        t.add_column(self.t["has"], justify="right")
        for d in devices:
            t.add_row(self.t[d], str(self.local_count(d)))
        msgs, used = self.server_state()
        t.add_row(f"[dim]{self.t['server']}[/]", str(msgs))
        self.c.print(t)
        bar = ProgressBar(total=QUOTA, completed=min(used, QUOTA), width=40,
                          complete_style="red" if used >= QUOTA * 0.9 else "green")  # fmt: skip
        self.c.print(bar, f" {self.t['quota']}: {human_size(used)} / {human_size(QUOTA)}")

    def reset_devices(self, *devices: str) -> None:
        for d in devices:
            shutil.rmtree(self.root / d, ignore_errors=True)

    # ---- the story -------------------------------------------------------------------------

    def run(self) -> DemoResult:
        self.c.print(Panel(self.t["title"], style="bold"))
        self.say("setup", alice=ALICE, quota=format_size(QUOTA))
        self.step1()
        self.pause()
        self.step2()
        self.pause()
        self.step3()
        self.pause()
        self.step4()
        return self.result

    def step1(self) -> None:
        self.heading("s1")
        self.say("s1a")
        self.deliver(["Hello", "Dinner on Friday?", "Photos"])
        self.pop3("phone", Policy.DELETE)
        self.pop3("home-pc", Policy.DELETE)
        self.show(["phone", "home-pc"])
        self.result.s1_phone = self.local_count("phone")
        self.result.s1_home = self.local_count("home-pc")
        self.say("s1b")
        self.reset_devices("phone", "home-pc")

    def step2(self) -> None:
        self.heading("s2")
        self.say("s2a")
        self.deliver(["Train at 8", "Invoice", "Re: Photos", "Tickets"])
        self.pop3("phone", Policy.KEEP)
        self.show(["phone", "home-pc"])
        self.say("s2b")
        self.pop3("home-pc", Policy.DELETE)
        self.pop3("phone", Policy.KEEP)
        self.show(["phone", "home-pc"])
        self.result.s2_sent = 4
        self.result.s2_phone = self.local_count("phone")
        self.result.s2_home = self.local_count("home-pc")
        self.result.s2_server_after = self.server_state()[0]
        self.say("s2c")

    def step3(self) -> None:
        self.heading("s3")
        self.say("s3a")
        n = 0
        while True:
            _msgs, used = self.server_state()
            if used + 3600 > QUOTA:
                break
            n += 1
            self.deliver([f"Newsletter {n}"])
            self.pop3("phone", Policy.KEEP)
            self.pop3("home-pc", Policy.KEEP)
        self.show(["phone", "home-pc"])
        self.result.s3_server, self.result.s3_used = self.server_state()
        self.say("s3b")
        # A friend on another server: refused during the SMTP dialogue.
        try:
            with smtplib.SMTP("127.0.0.1", self.srv.port("smtp"), timeout=30) as s:
                s.sendmail("friend@remote.example", [ALICE], _mail(999, "Are you there?"))
            reply = "250 accepted"
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = exc.recipients[ALICE]
            reply = f"{code} {text.decode('utf-8', 'replace')}"
        except smtplib.SMTPResponseException as exc:
            err = exc.smtp_error
            said = err.decode("utf-8", "replace") if isinstance(err, bytes) else err
            reply = f"{exc.smtp_code} {said}"
        self.result.s3_smtp_reply = reply
        self.c.print(f"  SMTP: [red]{reply}[/]")
        # Bob on the same server submits: he gets a bounce message in his INBOX.
        with smtplib.SMTP("127.0.0.1", self.srv.port("submission"), timeout=30) as s:
            s.login(BOB, PASSWORD)
            s.sendmail(BOB, [ALICE], _mail(1000, "Are you there?", sender=BOB))
        self.result.s3_bounce = self._bounce_text()
        self.say("s3c")
        self.c.print(Panel(self.result.s3_bounce, border_style="red"))

    def _bounce_text(self) -> str:
        store = self.srv.store
        acc = store.get_account(BOB)
        assert acc is not None
        box = store.get_mailbox(acc.id, "INBOX")
        assert box is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            msgs = store.list_messages(box.id)
            if msgs:
                msg = email.message_from_bytes(store.read_blob(msgs[-1].blob),
                                               policy=email.policy.default)  # fmt: skip
                lines = [f"Subject: {msg['Subject']}"]
                for part in msg.walk():
                    if part.get_content_type() == "text/plain":
                        lines += [ln for ln in part.get_content().splitlines() if ln.strip()][:6]
                    if part.get_content_type() == "message/delivery-status":
                        raw = part.as_bytes().decode("utf-8", "replace")
                        lines += [ln.strip() for ln in raw.splitlines()
                                  if ln.lower().startswith("status:")]  # fmt: skip
                return "\n".join(lines)
            time.sleep(0.1)
        return ""

    def imap_sync(self, device: str) -> None:
        client = ImapClient("127.0.0.1", self.srv.port("imap"), tls="none")
        client.connect()
        client.login(ALICE, PASSWORD)
        state = SyncState(self.root / device / "sync-state.db")
        syncer = Syncer(client, Maildir(self.root / device / "Maildir"), state, SyncOptions())
        try:
            syncer.run()
        finally:
            syncer.close()
            client.logout()
            state.close()

    def step4(self) -> None:
        self.heading("s4")
        self.say("s4a")
        self.pop3("home-pc", Policy.DELETE)
        self.reset_devices("phone", "home-pc")
        self.show(["phone", "home-pc"])
        self.say("s4b")
        self.deliver(["Meeting notes", "Holiday plans"])  # the second one from Bob
        for d in ("phone", "home-pc"):
            self.imap_sync(d)
        self.say("s4c")
        reply = _mail(2000, "Re: Holiday plans", sender=ALICE).replace(
            f"To: {ALICE}".encode(), f"To: {BOB}".encode())  # fmt: skip
        with smtplib.SMTP("127.0.0.1", self.srv.port("submission"), timeout=30) as s:
            s.login(ALICE, PASSWORD)
            s.sendmail(ALICE, [BOB], reply)
        sent = self.root / "phone" / "Maildir" / dir_for_folder("Sent")
        for sub in ("cur", "new", "tmp"):
            (sent / sub).mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns()}.demo.phone:2,S"
        (sent / "tmp" / name).write_bytes(reply.replace(b"\r\n", b"\n"))
        (sent / "tmp" / name).rename(sent / "cur" / name)
        self.imap_sync("phone")
        self.say("s4d")
        self.imap_sync("home-pc")
        t = Table(show_header=True, header_style="bold")
        t.add_column(self.t["device"])
        t.add_column("INBOX")
        t.add_column("Sent")
        for d in ("phone", "home-pc"):
            self.result.imap_inbox[d] = self.subjects(d, "INBOX")
            self.result.imap_sent[d] = self.subjects(d, "Sent")
            t.add_row(self.t[d], "\n".join(self.result.imap_inbox[d]),
                      "\n".join(self.result.imap_sent[d]))  # fmt: skip
        self.c.print(t)
        self.show(["phone", "home-pc"])

    def close(self) -> None:
        self.srv.stop()


def run_demo(
    console: Console | None = None, lang: str = "en", pause: Callable[[], None] | None = None
) -> DemoResult:
    """Play the story; everything it made is removed before it returns."""
    console = console or Console()
    with tempfile.TemporaryDirectory(prefix="postfach-demo-") as tmp:
        story = _Story(Path(tmp), console, lang, pause or (lambda: None))
        try:
            result = story.run()
        finally:
            story.close()
    console.print()
    console.print(TEXT[lang]["end"])
    return result
