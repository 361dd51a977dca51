"""Maildir names, flags and idents for postfach sync (postfach.client.sync.names)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postfach.client.sync.names import (
    Keywords,
    crlf_size,
    dir_for_folder,
    flags_from_imap,
    flags_of,
    folder_for_dir,
    ident,
    imap_flag_list,
    message_id,
    split_filename,
    to_crlf,
    to_lf,
    with_flags,
)


@pytest.mark.parametrize(
    ("name", "directory"),
    [("Sent", ".Sent"), ("Work/2024", ".Work.2024"), ("v1.2", ".v1%2E2"), ("100%", ".100%25"),
     ("Entwürfe", ".Entwürfe"), ("INBOX/Sub", ".INBOX.Sub")],
)  # fmt: skip
def test_folder_directories(name: str, directory: str) -> None:
    assert dir_for_folder(name) == directory
    assert folder_for_dir(directory) == name


def test_inbox_and_non_folders() -> None:
    assert dir_for_folder("INBOX") == ""
    for d in ("cur", ".", "..", ".a..b", ".inbox", ". "[:1]):
        assert folder_for_dir(d) is None
    with pytest.raises(ValueError):
        dir_for_folder("a//b")


level = st.text(st.characters(blacklist_characters="/", blacklist_categories=["Cs"]), min_size=1)


@given(st.lists(level, min_size=1, max_size=3).map("/".join))
def test_folder_names_round_trip(name: str) -> None:
    if name.upper() == "INBOX":
        return
    d = dir_for_folder(name)
    assert "/" not in d and d.startswith(".")
    assert folder_for_dir(d) == name


def test_file_names_and_flags() -> None:
    assert split_filename("123.M1P2.host:2,FRS") == ("123.M1P2.host", "FRS")
    assert split_filename("123.M1P2.host") == ("123.M1P2.host", "")
    assert split_filename("123.host:1,experimental") == ("123.host", "")
    assert flags_of("PRSabc") == frozenset("RS")
    # Other letters (passed, Dovecot keywords) stay; the synced ones are replaced; ASCII order.
    assert with_flags("u", "PSa", frozenset("TF")) == "u:2,FPTa"
    assert with_flags("u", "", frozenset()) == "u:2,"


def test_imap_flags() -> None:
    # Keywords are synced by name (``dovecot-keywords``); \\Recent and non-atoms are not.
    assert flags_from_imap(["\\Seen", "\\ANSWERED", "$Forwarded", "\\Recent", b"x"]) == {
        "R", "S", "$Forwarded"
    }  # fmt: skip
    # A one-letter keyword that reads like a system flag letter stays on the server.
    assert flags_from_imap(["S", "Work"]) == {"Work"}
    assert imap_flag_list(frozenset({"S", "$Junk", "Work"})) == b"(\\Seen $Junk Work)"
    assert imap_flag_list(frozenset("TDS")) == b"(\\Draft \\Seen \\Deleted)"
    assert imap_flag_list(frozenset()) == b"()"


@given(st.binary(max_size=200).map(lambda b: b.replace(b"\r", b"")))
def test_line_ends(lf_text: bytes) -> None:
    wire = to_crlf(lf_text)
    assert crlf_size(lf_text) == len(wire)
    assert to_lf(wire) == lf_text
    assert to_crlf(wire) == wire


def test_ident_is_the_same_on_both_sides() -> None:
    wire = b"From: a\r\nMessage-ID:\r\n  <x@y>\r\nSubject: s\r\n\r\nbody\r\nMessage-ID: <no>\r\n"
    local = to_lf(wire)
    fetched = b"Message-ID:\r\n  <x@y>\r\n\r\n"  # what HEADER.FIELDS (MESSAGE-ID) returns
    assert message_id(wire) == message_id(local) == message_id(fetched) == "<x@y>"
    assert ident(len(wire), message_id(fetched)) == ident(crlf_size(local), message_id(local))
    assert message_id(b"Subject: x\r\n\r\nMessage-ID: <body>\r\n") == ""


def test_dovecot_keywords_table() -> None:
    table = Keywords.parse("0 $Forwarded\n1 Work\nbroken line\n27 TooFar\n3 $Junk\n")
    assert table.letter("$forwarded") == "a" and table.letter("WORK") == "b"
    assert table.letter("$Junk") == "d" and table.letter("TooFar") is None
    assert table.flags_of_letters("FSabz") == {"F", "S", "$Forwarded", "Work"}
    # Letters of the table are replaced, unknown letters and P are kept.
    assert table.filename("u", "PSaz", frozenset({"F", "Work"})) == "u:2,FPbz"
    assert table.assign("new") and table.letter("new") == "c"  # the first free letter
    assert table.format() == "0 $Forwarded\n1 Work\n2 new\n3 $Junk\n"
    for i in range(22):
        assert table.assign(f"k{i}")
    assert not table.assign("one-too-many") and table.letter("one-too-many") is None
    assert table.assign("WORK")  # already there, in any case
