"""Real IMAP programs against a real server: mbsync (two devices), curl and neomutt on loopback.

The mbsync tests play the source document's story "the same mailbox on the phone and the
laptop, Sent folder synchronised on all devices": two independent mbsync set-ups ("phone" over
STARTTLS, "laptop" over implicit TLS), each syncing every folder two-way with its own Maildir.
What one device does locally must reach the server (checked in the store) and then the other
device, and a sync with nothing to do must change nothing anywhere.
"""

from __future__ import annotations

import re
import smtplib
import socket
import sqlite3
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from imap_clients import (
    CHANGING_COMMANDS,
    Mbsync,
    Neomutt,
    ServerProcess,
    header,
    imap_login,
    mailbox_names,
    maildir_folder,
    messages,
    requires,
    server_state,
    server_subjects,
    tree_snapshot,
    wait_for,
    without_tuid,
    write_maildir,
)
from interop_clients import ALICE, Result, curl, foreign_cert, stored, usage

from postfach.store.api import Flag
from support import PASSWORD, RunningServer, message

pytestmark = pytest.mark.interop

CREDENTIALS = f"{ALICE}:{PASSWORD}"
DEFAULT_FOLDERS = {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"}


def deliver(server: RunningServer, *subjects: str) -> None:
    for s in subjects:
        assert server.send([ALICE], message(s, body=f"This is {s}.\r\n")) == {}


def synced(device: Mbsync) -> Result:
    r = device.sync()
    assert r.returncode == 0, r
    assert "rror" not in r.output, r  # "Error"/"error": mbsync can exit 0 after a box failed
    return r


# ---- 1. mbsync: two devices, one account -----------------------------------------------------


@pytest.fixture
def devices(server: RunningServer, tmp_path: Path) -> tuple[Mbsync, Mbsync]:
    server.add_user(ALICE)
    phone = Mbsync(server, tmp_path / "phone", tls="starttls")
    laptop = Mbsync(server, tmp_path / "laptop", tls="imaps")
    return phone, laptop


@requires("mbsync")
def test_mbsync_delivered_mail_reaches_both_devices(
    server: RunningServer, devices: tuple[Mbsync, Mbsync]
) -> None:
    phone, laptop = devices
    deliver(server, "first", "second")

    p = synced(phone)
    assert ">>> 1 STARTTLS" in p and "Connection is now encrypted" in p, p
    assert p.index("Connection is now encrypted") < p.index("LOGIN <user> <pass>"), p
    lap = synced(laptop)
    assert ">>> 1 STARTTLS" not in lap, lap  # implicit TLS: nothing to upgrade
    assert f":{server.port('imaps')})" in lap, lap

    for dev in (phone, laptop):
        assert dev.folders() == DEFAULT_FOLDERS
        # Byte for byte (the Maildir has LF line ends and mbsync's X-TUID header).
        local = sorted(m.wire_bytes() for m in dev.messages("INBOX"))
        assert local == sorted(stored(server))
        assert dev.subjects("INBOX") == {"first": "", "second": ""}
        assert dev.subjects("Sent") == {}

    # Later mail arrives on each device with its next sync, and only that message is fetched.
    deliver(server, "third")
    for dev in (phone, laptop):
        r = synced(dev)
        assert r.output.count("BODY.PEEK[]") == 1, r
        assert set(dev.subjects("INBOX")) == {"first", "second", "third"}


@requires("mbsync")
def test_mbsync_resync_with_nothing_changed_changes_nothing(
    server: RunningServer, devices: tuple[Mbsync, Mbsync]
) -> None:
    phone, laptop = devices
    deliver(server, "steady 1", "steady 2")
    write_maildir(phone.folder("Sent"), message("sent before"), flags="S")
    for dev in (phone, laptop, phone):
        synced(dev)

    before = (tree_snapshot(phone.maildir), tree_snapshot(laptop.maildir), server_state(server))
    for dev in (phone, laptop):
        r = synced(dev)
        assert not CHANGING_COMMANDS.search(r.output), r
    after = (tree_snapshot(phone.maildir), tree_snapshot(laptop.maildir), server_state(server))
    assert after == before


@requires("mbsync")
def test_mbsync_sent_on_the_phone_appears_in_the_laptops_sent(
    server: RunningServer, devices: tuple[Mbsync, Mbsync]
) -> None:
    phone, laptop = devices
    synced(phone)
    synced(laptop)

    # The phone's mail program saves what it sent into its local Sent Maildir, read.
    sent = (
        b"From: Alice <alice@example.org>\r\nTo: bob@remote.example\r\n"
        b"Subject: sent from the phone\r\nMessage-ID: <phone-1@example.org>\r\n"
        b"Date: Thu, 01 Jan 2026 12:00:00 +0000\r\n\r\nSee you at eight.\r\n"
    )
    written = write_maildir(phone.folder("Sent"), sent, flags="S")
    r = synced(phone)
    assert re.search(r'>>> \d+ APPEND "Sent" \(\\Seen\) \{\d+\+?\}', r.output), r
    assert "[APPENDUID " in r.output, r

    on_server = messages(server, "Sent")
    assert len(on_server) == 1
    uploaded = server.store.read_blob(on_server[0].blob)
    assert b"\r\nX-TUID: " in uploaded  # mbsync's own tag, the only difference allowed
    assert without_tuid(uploaded) == sent
    assert on_server[0].flags == Flag.SEEN
    assert messages(server, "INBOX") == []
    # The phone's file now carries the server UID (it is paired, not uploaded again).
    assert not written.path.exists()
    assert [m.uid for m in phone.messages("Sent")] == [on_server[0].uid]

    synced(laptop)
    got = laptop.messages("Sent")
    assert [m.wire_bytes() for m in got] == [sent]
    assert [m.flags for m in got] == ["S"]
    assert laptop.subjects("INBOX") == {}

    r = synced(phone)  # the phone does not upload it a second time
    assert not CHANGING_COMMANDS.search(r.output), r
    assert len(messages(server, "Sent")) == 1


@requires("mbsync")
def test_mbsync_flags_travel_both_ways(
    server: RunningServer, devices: tuple[Mbsync, Mbsync]
) -> None:
    phone, laptop = devices
    deliver(server, "read on laptop", "answered on phone", "flagged on server")
    synced(phone)
    synced(laptop)

    # Laptop -> server -> phone: read on the laptop (the mail program renames the file).
    laptop.by_subject("INBOX", "read on laptop").set_flags("S")
    # Phone -> server -> laptop: replied to on the phone.
    phone.by_subject("INBOX", "answered on phone").set_flags("RS")
    synced(laptop)
    synced(phone)
    assert server_subjects(server, "INBOX") == {
        "read on laptop": Flag.SEEN,
        "answered on phone": Flag.SEEN | Flag.ANSWERED,
        "flagged on server": Flag(0),
    }
    assert phone.subjects("INBOX")["read on laptop"] == "S"
    synced(laptop)
    assert laptop.subjects("INBOX")["answered on phone"] == "RS"

    # Server -> both: a third client (webmail, say) flags a message.
    uid = next(
        m.uid
        for m in messages(server, "INBOX")
        if header(server.store.read_blob(m.blob), "Subject") == "flagged on server"
    )
    with imap_login(server) as imap:
        imap.select("INBOX")
        typ, data = imap.uid("STORE", str(uid), "+FLAGS", r"(\Flagged)")
        assert typ == "OK", data
    synced(phone)
    synced(laptop)
    want = {"read on laptop": "S", "answered on phone": "RS", "flagged on server": "F"}
    assert phone.subjects("INBOX") == want
    assert laptop.subjects("INBOX") == want

    # Unflag on the phone: the flag is removed everywhere.
    phone.by_subject("INBOX", "flagged on server").set_flags("")
    synced(phone)
    synced(laptop)
    assert server_subjects(server, "INBOX")["flagged on server"] == Flag(0)
    assert laptop.subjects("INBOX")["flagged on server"] == ""


@requires("mbsync")
def test_mbsync_deletions_travel(server: RunningServer, devices: tuple[Mbsync, Mbsync]) -> None:
    phone, laptop = devices
    deliver(server, "keep me", "deleted on phone", "trashed on laptop")
    synced(phone)
    synced(laptop)
    assert usage(server)[0] == 3

    # The phone's mail program removes the file outright.
    phone.by_subject("INBOX", "deleted on phone").path.unlink()
    r = synced(phone)
    assert re.search(r">>> \d+ UID STORE \d+ \+FLAGS.SILENT \(\\Deleted\)", r.output), r
    assert set(server_subjects(server, "INBOX")) == {"keep me", "trashed on laptop"}

    # The laptop's marks one \Deleted (Maildir T); mbsync's Expunge removes it on both sides.
    laptop.by_subject("INBOX", "trashed on laptop").set_flags("ST")
    synced(laptop)
    assert set(server_subjects(server, "INBOX")) == {"keep me"}
    assert set(laptop.subjects("INBOX")) == {"keep me"}  # including the phone's deletion

    synced(phone)
    assert set(phone.subjects("INBOX")) == {"keep me"}
    keep = stored(server)
    assert len(keep) == 1
    assert usage(server) == (1, len(keep[0]))  # the quota got its bytes back


@requires("mbsync")
def test_mbsync_new_local_folder_reaches_the_server_and_the_other_device(
    server: RunningServer, devices: tuple[Mbsync, Mbsync]
) -> None:
    phone, laptop = devices
    synced(phone)
    synced(laptop)

    # The phone's mail program creates "Projects" and a subfolder "Projects/2026".
    maildir_folder(phone.folder("Projects"))
    write_maildir(phone.folder("Projects"), message("project plan"), flags="S")
    write_maildir(phone.folder("Projects/2026"), message("kick-off"))
    r = synced(phone)
    assert "CREATE" in r.output, r

    assert mailbox_names(server) == DEFAULT_FOLDERS | {"Projects", "Projects/2026"}
    assert server_subjects(server, "Projects") == {"project plan": Flag.SEEN}
    assert server_subjects(server, "Projects/2026") == {"kick-off": Flag(0)}
    with imap_login(server) as imap:
        typ, data = imap.list('""', "Projects*")
        assert typ == "OK", data
        assert sorted(data) == [
            b'(\\HasChildren) "/" Projects',
            b'(\\HasNoChildren) "/" Projects/2026',
        ]

    synced(laptop)
    assert laptop.folders() == DEFAULT_FOLDERS | {"Projects", "Projects/2026"}
    assert laptop.subjects("Projects") == {"project plan": "S"}
    assert laptop.subjects("Projects/2026") == {"kick-off": ""}

    # The other way round: a folder made on the server (by another client) reaches both.
    with imap_login(server) as imap:
        typ, data = imap.create("Lists/postfach")
        assert typ == "OK", data
    assert {"Lists", "Lists/postfach"} <= mailbox_names(server)  # the parent came with it
    for dev in (phone, laptop):
        synced(dev)
        assert dev.folders() == DEFAULT_FOLDERS | {
            "Projects", "Projects/2026", "Lists", "Lists/postfach",
        }  # fmt: skip


@requires("mbsync")
def test_mbsync_refuses_a_certificate_it_was_not_given(
    server: RunningServer, tmp_path: Path
) -> None:
    server.add_user(ALICE)
    deliver(server, "secret")
    for tls in ("starttls", "imaps"):
        stranger = Mbsync(server, tmp_path / tls, tls=tls, cert=foreign_cert(tmp_path))
        r = stranger.sync()
        assert r.returncode != 0, r
        assert "certificate" in r.output.lower(), r
        assert "LOGIN <user>" not in r.output, r  # the password never went out
        assert not stranger.folder("INBOX").exists() or stranger.messages("INBOX") == []


# ---- 2. curl ---------------------------------------------------------------------------------


@pytest.fixture
def imap_url(server: RunningServer) -> str:
    server.add_user(ALICE)
    return f"imap://127.0.0.1:{server.port('imap')}"


@requires("curl")
def test_curl_lists_mailboxes(server: RunningServer, imap_url: str, tmp_path: Path) -> None:
    r = curl(tmp_path, "-u", CREDENTIALS, f"{imap_url}/")
    assert r.returncode == 0, r
    assert r.output.splitlines() == [
        '* LIST (\\HasNoChildren) "/" INBOX',
        '* LIST (\\HasNoChildren \\Archive) "/" Archive',
        '* LIST (\\HasNoChildren \\Drafts) "/" Drafts',
        '* LIST (\\HasNoChildren \\Junk) "/" Junk',
        '* LIST (\\HasNoChildren \\Sent) "/" Sent',
        '* LIST (\\HasNoChildren \\Trash) "/" Trash',
    ], r
    inbox = curl(tmp_path, "-u", CREDENTIALS, f"{imap_url}/INBOX")  # LIST "INBOX" *
    assert inbox.returncode == 0, inbox
    assert inbox.output == '* LIST (\\HasNoChildren) "/" INBOX\r\n', inbox


TRICKY_BODY = (
    ".a line starting with a dot\r\n"
    "8-bit: Gr\u00fc\u00dfe aus K\u00f6ln\r\n"
    "trailing spaces   \r\n"
    "\r\n"
    "end\r\n"
)


@requires("curl")
def test_curl_fetches_by_uid_byte_exact(
    server: RunningServer, imap_url: str, tmp_path: Path
) -> None:
    server.send([ALICE], message("tricky", body=TRICKY_BODY))
    deliver(server, "plain second")
    on_server = stored(server)
    out = tmp_path / "1.eml"
    r = curl(tmp_path, "-u", CREDENTIALS, "-o", str(out), f"{imap_url}/INBOX;UID=1")
    assert r.returncode == 0, r
    assert out.read_bytes() == on_server[0]
    assert on_server[0].endswith(TRICKY_BODY.encode())

    body = curl(tmp_path, "-u", CREDENTIALS, f"{imap_url}/INBOX;UID=2;SECTION=TEXT")
    assert body.returncode == 0, body
    assert body.output == "This is plain second.\r\n", body
    # curl's FETCH is BODY[], not BODY.PEEK[]: the message is \Seen now.
    assert [m.flags & Flag.SEEN for m in messages(server, "INBOX")] == [Flag.SEEN, Flag.SEEN]


@requires("curl")
def test_curl_imaps_with_cacert(server: RunningServer, tmp_path: Path) -> None:
    server.add_user(ALICE)
    deliver(server, "over imaps")
    url = f"imaps://127.0.0.1:{server.port('imaps')}/INBOX;UID=1"
    untrusted = curl(tmp_path, "-u", CREDENTIALS, url)
    assert untrusted.returncode == 60, untrusted  # CURLE_PEER_FAILED_VERIFICATION

    out = tmp_path / "1.eml"
    cacert = str(server.app.config.cert_path)
    r = curl(tmp_path, "--cacert", cacert, "-u", CREDENTIALS, "-o", str(out), url)
    assert r.returncode == 0, r
    assert out.read_bytes() == stored(server)[0]


@requires("curl")
def test_curl_ssl_reqd_uses_starttls(server: RunningServer, imap_url: str, tmp_path: Path) -> None:
    deliver(server, "over starttls")
    out = tmp_path / "1.eml"
    cacert = str(server.app.config.cert_path)
    r = curl(
        tmp_path, "-v", "--max-time", "8", "--ssl-reqd", "--cacert", cacert,
        "-u", CREDENTIALS, "-o", str(out), f"{imap_url}/INBOX;UID=1",
    )  # fmt: skip
    assert r.returncode == 0, r
    assert re.search(r"> A\d+ STARTTLS\s+< A\d+ OK ", r.output), r
    assert "SSL certificate verify ok" in r.output, r
    handshake = r.output.index("SSL connection using")
    assert handshake < r.output.index("> A004 AUTHENTICATE PLAIN "), r
    # After the handshake curl asks again; STARTTLS is no longer offered (RFC 9051 6.2.1).
    caps = re.findall(r"< \* CAPABILITY (.*)", r.output[handshake:])
    assert caps and "STARTTLS" not in caps[0].split() and "AUTH=PLAIN" in caps[0].split(), r
    assert out.read_bytes() == stored(server)[0]

    # Without --cacert curl cannot check the self-signed certificate and gives up.
    bad = curl(tmp_path, "--ssl-reqd", "-u", CREDENTIALS, f"{imap_url}/INBOX;UID=1")
    assert bad.returncode == 60, bad


@requires("curl")
def test_curl_custom_search_and_store(server: RunningServer, imap_url: str, tmp_path: Path) -> None:
    deliver(server, "one", "two", "three")
    unseen = curl(tmp_path, "-u", CREDENTIALS, "-X", "SEARCH UNSEEN", f"{imap_url}/INBOX")
    assert unseen.returncode == 0, unseen
    assert unseen.output == "* SEARCH 1 2 3\r\n", unseen

    store = curl(tmp_path, "-u", CREDENTIALS, "-X", r"STORE 2 +FLAGS \Seen", f"{imap_url}/INBOX")
    assert store.returncode == 0, store
    assert re.fullmatch(r"\* 2 FETCH \((UID 2 )?FLAGS \(\\Seen\)\)\r\n", store.output), store
    assert [m.flags for m in messages(server, "INBOX")] == [Flag(0), Flag.SEEN, Flag(0)]

    again = curl(tmp_path, "-u", CREDENTIALS, "-X", "SEARCH UNSEEN", f"{imap_url}/INBOX")
    assert again.output == "* SEARCH 1 3\r\n", again
    seen = curl(tmp_path, "-u", CREDENTIALS, "-X", "UID SEARCH SEEN", f"{imap_url}/INBOX")
    assert seen.output == "* SEARCH 2\r\n", seen


@requires("curl")
def test_curl_upload_appends_to_sent(server: RunningServer, imap_url: str, tmp_path: Path) -> None:
    data = (
        b"From: Alice <alice@example.org>\r\nTo: bob@remote.example\r\n"
        b"Subject: uploaded by curl\r\n\r\nA copy for the Sent folder.\r\n"
    )
    src = tmp_path / "sent.eml"
    src.write_bytes(data)
    r = curl(tmp_path, "-v", "-u", CREDENTIALS, "-T", str(src), f"{imap_url}/Sent")
    assert r.returncode == 0, r
    assert "APPEND Sent" in r.output, r
    on_server = messages(server, "Sent")
    assert len(on_server) == 1
    assert server.store.read_blob(on_server[0].blob) == data
    assert messages(server, "INBOX") == []
    assert usage(server) == (1, len(data))


# ---- 3. neomutt in tmux ----------------------------------------------------------------------


@pytest.fixture
def neomutt(server: RunningServer, tmp_path: Path) -> Iterator[list[Neomutt]]:
    made: list[Neomutt] = []
    yield made
    for n in made:
        n.stop()


@requires("neomutt")
@requires("tmux")
@pytest.mark.parametrize("tls", ["none", "imaps"])
def test_neomutt_shows_the_index_and_a_message(
    server: RunningServer, tmp_path: Path, neomutt: list[Neomutt], tls: str
) -> None:
    server.add_user(ALICE)
    server.send([ALICE], message("lunch on friday", body="Shall we try the new place?\r\n"))
    server.send([ALICE], message("minutes of the meeting", body="Nothing was decided.\r\n"))
    mutt = Neomutt(server, tmp_path / "neomutt", tls=tls)
    neomutt.append(mutt)
    mutt.start()

    index = mutt.wait_screen(
        lambda s: "lunch on friday" in s and "minutes of the meeting" in s, "the index"
    )
    assert "STATUS" in index and "2 msgs" in index, index
    rows = [line for line in index.splitlines() if "Sender" in line]
    assert len(rows) == 2 and "lunch on friday" in rows[0], index
    assert all(" N " in row for row in rows), index  # both unread

    mutt.keys("Enter")  # open the first message in the pager
    pager = mutt.wait_text("Shall we try the new place?")
    assert "Subject: lunch on friday" in pager, pager
    mutt.keys("q")  # back to the index
    mutt.wait_screen(lambda s: "STATUS" in s and "minutes of the meeting" in s, "the index again")
    mutt.keys("q")  # quit (quit=yes: no question); neomutt writes the \Seen back
    assert mutt.wait_exit() == 0, mutt.screen() + mutt.log.read_text()
    assert mutt.log.read_text() == ""

    flags = server_subjects(server, "INBOX")
    assert flags["lunch on friday"] & Flag.SEEN
    assert not flags["minutes of the meeting"] & Flag.SEEN


def index_row(n: int, flags: str, subj: str) -> Callable[[str], bool]:
    """A predicate on the screen: index line ``n`` shows ``flags`` (the %Z column) and subj."""
    row = re.compile(rf"(?m)^\s*{n} {re.escape(flags)}\s+\S+ Sender\s+{re.escape(subj)}\s*$")
    return lambda screen: row.search(screen) is not None


@requires("neomutt")
@requires("tmux")
def test_neomutt_flag_delete_and_save_reach_the_server(
    server: RunningServer, tmp_path: Path, neomutt: list[Neomutt]
) -> None:
    server.add_user(ALICE)
    deliver(server, "one", "two", "three", "four")
    mutt = Neomutt(server, tmp_path / "neomutt")
    neomutt.append(mutt)
    mutt.start()
    mutt.wait_screen(index_row(4, "N", "four"), "the index")

    mutt.keys("F")  # flag "one" (resolve=no: the cursor stays put)
    mutt.wait_screen(index_row(1, "N !", "one"), "one flagged")
    mutt.keys("j", "d")  # delete "two"
    mutt.wait_screen(index_row(2, "ND", "two"), "two marked deleted")
    mutt.keys("j", "s")  # save "three" to Archive: copied there, marked deleted here
    mutt.wait_text("Save to mailbox")
    mutt.keys("C-u", "=Archive", "Enter")
    mutt.wait_screen(index_row(3, "ND", "three"), "three saved")
    mutt.keys("$")  # sync-mailbox: flags go up, deleted messages are expunged
    mutt.wait_text("STATUS +INBOX 2 msgs")
    wait_for(
        lambda: server_subjects(server, "INBOX") == {"one": Flag.FLAGGED, "four": Flag(0)},
        "the server to have INBOX {one: flagged, four}",
    )
    assert server_subjects(server, "Archive") == {"three": Flag(0)}
    assert usage(server)[0] == 3

    mutt.keys("c")  # change-folder
    mutt.wait_text("Open mailbox")
    mutt.keys("C-u", "=Archive", "Enter")
    mutt.wait_screen(
        lambda s: "STATUS +Archive 1 msgs" in s and index_row(1, "N", "three")(s), "Archive"
    )
    mutt.keys("q")
    assert mutt.wait_exit() == 0, mutt.screen() + mutt.log.read_text()
    assert mutt.log.read_text() == ""


# ---- 4. server bugs found on the way --------------------------------------------------------


def smtp_until_data_sent(port: int, data: bytes) -> socket.socket:
    """A raw SMTP client that sends one message up to and including the final dot, and does
    not read the reply to it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    f = sock.makefile("rb")

    def reply() -> bytes:
        while True:
            line = f.readline()
            if line[3:4] != b"-":
                return line

    assert reply().startswith(b"220")
    for cmd, code in (
        (b"EHLO client.example", b"250"),
        (b"MAIL FROM:<sender@remote.example>", b"250"),
        (f"RCPT TO:<{ALICE}>".encode(), b"250"),
        (b"DATA", b"354"),
    ):
        sock.sendall(cmd + b"\r\n")
        got = reply()
        assert got.startswith(code), (cmd, got)
    sock.sendall(data + b".\r\n")
    return sock


@requires("curl")
def test_a_client_hanging_up_during_delivery_does_not_stop_all_writes(tmp_path: Path) -> None:
    # The server runs in a child process: with the bug, its shutdown would wait out the
    # indexer (itself stuck on a write) for 30 s; the child is simply killed instead.
    with ServerProcess(tmp_path / "data") as srv:
        with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as s:
            assert s.sendmail("sender@remote.example", [ALICE], message("before")) == {}

        # The window is the few milliseconds a delivery spends in the writer's queue and
        # batch (a slow disk widens it). It opens naturally too: an SMTP client that half-
        # closes right after its final dot kills the writer within a few dozen tries. To make
        # it deterministic, another connection holds the database's write lock meanwhile.
        lock = sqlite3.connect(srv.db, isolation_level=None, timeout=10)
        lock.execute("BEGIN IMMEDIATE")
        try:
            sock = smtp_until_data_sent(srv.port("smtp"), message("hung up"))
            time.sleep(1.0)  # the delivery reaches adeliver and waits for the writer
            sock.shutdown(socket.SHUT_WR)  # EOF: aiosmtpd cancels the handler
            time.sleep(0.5)
            sock.close()
        finally:
            lock.execute("ROLLBACK")
            lock.close()

        url = f"imap://127.0.0.1:{srv.port('imap')}/INBOX"
        r = curl(
            tmp_path, "--max-time", "3", "-u", CREDENTIALS,
            "-X", r"STORE 1 +FLAGS \Flagged", url,
        )  # fmt: skip
        assert r.returncode == 0, f"{r}\n--- server stderr ---\n{srv.output()}"
        assert "\\Flagged" in r.output, r
        with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=5) as s:
            assert s.sendmail("sender@remote.example", [ALICE], message("after")) == {}


def _line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def test_imap_command_in_the_same_segment_as_the_tls_finished_is_answered(
    server: RunningServer,
) -> None:
    with socket.create_connection(("127.0.0.1", server.port("imap")), timeout=3) as sock:
        assert _line(sock).startswith(b"* OK")
        sock.sendall(b"a0 STARTTLS\r\n")
        assert _line(sock).startswith(b"a0 OK")

        ctx = ssl.create_default_context(cafile=str(server.app.config.cert_path))
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        # The client's Finished is still in `outgoing`: add the first command, send both at once
        # (what curl does whenever the scheduler lets both reach the server in one read).
        tls.write(b"a1 CAPABILITY\r\n")
        sock.sendall(outgoing.read())

        reply = b""
        while b"\r\na1 " not in b"\r\n" + reply:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                pytest.fail(f"no reply to the first command under TLS in 3 s; got {reply!r}")
            assert data, f"server closed the connection; got {reply!r}"
            incoming.write(data)
            try:
                while True:
                    reply += tls.read(65536)
            except ssl.SSLWantReadError:
                pass
    assert b"a1 OK" in reply, reply
    caps = reply.split(b"\r\n")[0].split()
    assert caps[:2] == [b"*", b"CAPABILITY"] and b"STARTTLS" not in caps, reply
