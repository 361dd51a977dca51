"""``postfach sync`` keeps IMAP keywords in step with the Maildir's ``dovecot-keywords`` letters.

The other client changing the server is imapclient; the devices are `test_sync.Device`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_sync import ALICE, PROFILES, Device, Other, deliver

from postfach.client.sync.names import KEYWORD_FILE, Keywords, split_filename
from support import RunningServer

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=list(PROFILES))
def profile(request: pytest.FixtureRequest) -> tuple[str, ...]:
    return PROFILES[request.param]


@pytest.fixture
def alice(server: RunningServer) -> RunningServer:
    server.add_user(ALICE)
    return server


@pytest.fixture
def other(alice: RunningServer) -> Iterator[Other]:
    o = Other(alice)
    yield o
    o.close()


def table(dev: Device, folder: str = "INBOX") -> Keywords:
    return Keywords.parse((dev.path(folder) / KEYWORD_FILE).read_text())


def local_keywords(dev: Device, subject: str, folder: str = "INBOX") -> set[str]:
    """The keywords a Dovecot or neomutt reading this Maildir would show."""
    p = dev.files(folder)[subject]
    letters = split_filename(p.name)[1]
    t = table(dev, folder)
    return {n for c in letters if (n := t.name(c)) is not None}


def server_keywords(other: Other, subject: str, folder: str = "INBOX") -> set[str]:
    uid = other.uid(folder, subject)
    flags = other.c.get_flags([uid])[uid]
    return {f.decode() for f in flags if not f.startswith(b"\\")}


def set_local_letters(dev: Device, subject: str, letters: str, folder: str = "INBOX") -> None:
    p = dev.files(folder)[subject]
    unique, _ = split_filename(p.name)
    os.rename(p, dev.path(folder) / "cur" / f"{unique}:2,{letters}")


def test_keywords_both_ways(
    alice: RunningServer, other: Other, tmp_path: Path, profile: tuple[str, ...]
) -> None:
    deliver(alice, "one", "two")
    other.add_flags("INBOX", "one", [b"$Forwarded", b"Work", b"\\Seen"])
    laptop = Device(alice, tmp_path / "laptop", profile)
    phone = Device(alice, tmp_path / "phone", profile)
    laptop.sync()
    # Server → Maildir: letters in the file name, names in dovecot-keywords.
    assert local_keywords(laptop, "one") == {"$Forwarded", "Work"}
    assert laptop.messages()["INBOX"]["one"] == "S"
    assert local_keywords(laptop, "two") == set()
    # Maildir → server: the laptop's mail program tags "two" $Junk (a new letter) and drops Work.
    t = table(laptop)
    t.assign("$Junk")
    (laptop.path("INBOX") / KEYWORD_FILE).write_text(t.format())
    junk, work, fwd = t.letter("$Junk"), t.letter("Work"), t.letter("$Forwarded")
    assert junk and work and fwd
    set_local_letters(laptop, "two", junk)
    set_local_letters(laptop, "one", "S" + fwd)
    r = laptop.sync()
    assert r.folders["INBOX"].flags_server == 2
    assert server_keywords(other, "one") == {"$Forwarded"}
    assert server_keywords(other, "two") == {"$Junk"}
    # The second device gets the same keywords (its own letters, its own table).
    phone.sync()
    assert local_keywords(phone, "one") == {"$Forwarded"}
    assert local_keywords(phone, "two") == {"$Junk"}
    # Conflicting changes merge per keyword, like flags: the server adds Work to "two", the
    # phone removes $Junk from it.
    other.add_flags("INBOX", "two", [b"Work"])
    set_local_letters(phone, "two", "")
    phone.sync()
    assert server_keywords(other, "two") == {"Work"}
    assert local_keywords(phone, "two") == {"Work"}
    # Nothing changed: a resync changes nothing.
    r = phone.sync()
    assert r.folders["INBOX"].changes == 0


def test_upload_carries_keywords(alice: RunningServer, other: Other, tmp_path: Path) -> None:
    laptop = Device(alice, tmp_path / "laptop")
    laptop.sync()
    (laptop.path("Sent") / KEYWORD_FILE).write_text("0 $Forwarded\n1 Project\n")
    laptop.write("Sent", "my reply", flags="Sab")
    laptop.sync()
    assert server_keywords(other, "my reply", "Sent") == {"$Forwarded", "Project"}


def test_more_than_26_keywords_stay_on_the_server(
    alice: RunningServer, other: Other, tmp_path: Path
) -> None:
    deliver(alice, "tagged")
    names = [f"tag{i:02d}" for i in range(30)]
    other.add_flags("INBOX", "tagged", [n.encode() for n in names])
    laptop = Device(alice, tmp_path / "laptop")
    laptop.sync()
    got = local_keywords(laptop, "tagged")
    assert len(got) == 26 and got < set(names)
    assert len(table(laptop).by_index) == 26
    # A local change to a mapped keyword reaches the server; the 4 unmapped ones are kept there.
    first = sorted(got)[0]
    t = table(laptop)
    letters = "".join(sorted(c for n in got - {first} if (c := t.letter(n))))
    set_local_letters(laptop, "tagged", letters)
    laptop.sync()
    assert server_keywords(other, "tagged") == set(names) - {first}
    r = laptop.sync()
    assert r.folders["INBOX"].changes == 0
