"""``postfach demo`` plays the source document's story; its facts are checked here."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from postfach.cli.main import cli
from postfach.demo import run_demo

pytestmark = pytest.mark.timeout(180)


def test_the_story_and_its_facts() -> None:
    out = io.StringIO()
    r = run_demo(Console(file=out, width=100))
    text = out.getvalue()
    # 1. Both delete: only the first device has the mail.
    assert (r.s1_phone, r.s1_home) == (3, 0)
    # 2. The phone keeps, the home PC deletes: the phone saw the 4 new ones, the home PC has
    # everything, the server is empty again.
    assert r.s2_phone == 4 and r.s2_home == r.s2_sent == 4 and r.s2_server_after == 0
    # 3. Both keep: the mailbox fills to the quota, fetch warns, the next sender bounces.
    assert r.s3_used <= r.quota and r.s3_used > r.quota * 0.9
    assert any("left on the server" in w for w in r.warnings)
    assert r.s3_smtp_reply.startswith("552 5.2.2") and "full" in r.s3_smtp_reply.lower()
    assert "5.2.2" in r.s3_bounce and "full" in r.s3_bounce.lower()
    # 4. IMAP: both devices see the same mailbox and the same Sent folder with the reply.
    assert r.imap_inbox["phone"] == r.imap_inbox["home-pc"] == ["Holiday plans", "Meeting notes"]
    assert r.imap_sent["phone"] == r.imap_sent["home-pc"] == ["Re: Holiday plans"]
    for heading in ("1. POP3", "2. POP3", "3. POP3", "4. IMAP", "552 5.2.2", "Done."):
        assert heading in text
    # Nothing is left behind.
    assert not Path(r.data_dir).exists()


def test_command_in_german_exits_0() -> None:
    res = CliRunner().invoke(cli, ["demo", "--lang", "de"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "Handy" in res.output and "Heim-PC" in res.output
    assert "Postfach voll" in res.output or "5.2.2" in res.output
    assert "Fertig." in res.output
