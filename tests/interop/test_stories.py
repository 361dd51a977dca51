"""The source document's POP3 stories, played with real programs.

Mail arrives through swaks; the "phone" is fetchmail with ``keep`` and ``uidl`` (leaves mail on
the server, sees each message once), the "home PC" is getmail6 with ``delete = true`` (takes
everything home). A second story fills a quota-limited mailbox with two keep-clients until the
sender gets ``552 5.2.2``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from interop_clients import (
    ALICE,
    FETCHMAIL_NOMAIL,
    FETCHMAIL_OK,
    Fetchmail,
    Getmail,
    Result,
    filler_body,
    requires,
    stored,
    subject,
    swaks,
    usage,
)

from support import RunningServer

pytestmark = [
    pytest.mark.interop,
    requires("fetchmail"),
    requires("getmail"),
    requires("swaks"),
]


def mail(server: RunningServer, tmp_path: Path, subj: str, size: int = 0) -> Result:
    body = filler_body(size) if size else f"This is {subj}."
    return swaks(server, tmp_path, "--to", ALICE, "--header", f"Subject: {subj}", "--body", body)


def subjects(messages: list[bytes]) -> list[str]:
    return [subject(m) for m in messages]


def test_phone_sees_each_message_once_home_pc_takes_everything(
    server: RunningServer, tmp_path: Path, make_getmail: Callable[..., Getmail]
) -> None:
    server.add_user(ALICE)
    phone = Fetchmail(server, tmp_path / "phone", keep=True)
    home = make_getmail("home-pc", delete=True)

    for s in ("on the road 1", "on the road 2"):
        assert mail(server, tmp_path, s).returncode == 0
    r = phone.run()
    assert r.returncode == FETCHMAIL_OK, r
    assert subjects(phone.fetched()) == ["on the road 1", "on the road 2"]

    assert mail(server, tmp_path, "evening").returncode == 0
    r = phone.run()
    assert r.returncode == FETCHMAIL_OK, r
    assert subjects(phone.fetched()) == ["on the road 1", "on the road 2", "evening"]
    r = phone.run()
    assert r.returncode == FETCHMAIL_NOMAIL, r  # nothing new: the phone sees each message once

    everything = stored(server)
    assert len(everything) == 3
    r = home.run()
    assert r.returncode == 0, r
    assert sorted(home.fetched()) == sorted(everything)
    assert stored(server) == []
    assert usage(server) == (0, 0)

    r = phone.run()
    assert r.returncode == FETCHMAIL_NOMAIL, r
    # Both devices hold the same messages, byte for byte.
    assert sorted(phone.fetched()) == sorted(home.fetched())


def test_two_keep_clients_fill_the_mailbox_until_552(
    server: RunningServer, tmp_path: Path, make_getmail: Callable[..., Getmail]
) -> None:
    quota = 10_000
    server.add_user(ALICE, quota=quota)
    phone = Fetchmail(server, tmp_path / "phone", keep=True)
    tablet = make_getmail("tablet", delete=False)

    sent = 0
    while True:
        r = mail(server, tmp_path, f"n{sent}", size=1500)
        if r.returncode != 0:
            break
        sent += 1
        p = phone.run()
        assert p.returncode == FETCHMAIL_OK, p
        t = tablet.run()
        assert t.returncode == 0, t
        assert sent < 20, "the quota never refused anything"
    assert "552 5.2.2" in r.output, r
    assert sent >= 3
    used_messages, used_bytes = usage(server)
    assert used_messages == sent and used_bytes <= quota
    expected = [f"n{i}" for i in range(sent)]
    # Each keep-client saw each message exactly once.
    assert subjects(phone.fetched()) == expected
    assert sorted(subjects(tablet.fetched())) == expected
    assert sorted(phone.fetched()) == sorted(tablet.fetched()) == sorted(stored(server))

    # Somebody takes the mail home (deleting it): the mailbox takes mail again.
    home = make_getmail("home-pc", delete=True)
    h = home.run()
    assert h.returncode == 0, h
    assert len(home.fetched()) == sent
    assert usage(server) == (0, 0)
    r = mail(server, tmp_path, "after cleanup", size=1500)
    assert r.returncode == 0, r
    assert subjects(stored(server)) == ["after cleanup"]
