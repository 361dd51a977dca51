"""The migration's folder mapping and message planning (pure)."""

from __future__ import annotations

from collections import Counter

from postfach.client.migrate.plan import (
    RemoteFolder,
    RemoteMessage,
    canonical_name,
    dedup_key,
    map_folders,
    plan_messages,
)

LOCAL = {"\\Sent": "Sent", "\\Drafts": "Drafts", "\\Trash": "Trash", "\\Junk": "Junk",
         "\\Archive": "Archive"}  # fmt: skip


def mapping(folders: list[RemoteFolder]) -> dict[str, str | None]:
    return {m.remote.wire: m.local for m in map_folders(folders, LOCAL)}


def test_courier_layout_loses_the_inbox_prefix_and_dots_become_slashes() -> None:
    folders = [RemoteFolder(n, ".") for n in
               ("INBOX", "INBOX.Sent", "INBOX.Archive.2023", "INBOX.Kunden.Müller")]  # fmt: skip
    assert mapping(folders) == {
        "INBOX": "INBOX", "INBOX.Sent": "Sent", "INBOX.Archive.2023": "Archive/2023",
        "INBOX.Kunden.Müller": "Kunden/Müller",
    }  # fmt: skip


def test_inbox_children_are_kept_when_other_folders_are_top_level() -> None:
    folders = [RemoteFolder(n, ".") for n in ("INBOX", "INBOX.lists", "Sent")]
    assert mapping(folders) == {"INBOX": "INBOX", "INBOX.lists": "INBOX/lists", "Sent": "Sent"}


def test_special_use_attribute_wins_over_a_well_known_name() -> None:
    folders = [
        RemoteFolder("INBOX", "/"),
        RemoteFolder("Sent", "/"),  # just a name
        RemoteFolder("Gesendet", "/", frozenset({"\\Sent", "\\HasNoChildren"})),
        RemoteFolder("Deleted Items", "/"),
        RemoteFolder("Spam", "/"),
        RemoteFolder("Archiv/2020", "/"),  # not top level: keeps its name
    ]
    m = {f.remote.wire: f for f in map_folders(folders, LOCAL)}
    assert m["Gesendet"].local == "Sent" and m["Gesendet"].special_use == "\\Sent"
    assert m["Sent"].local == "Sent (2)"  # its own folder; nothing is merged by name alone
    assert m["Deleted Items"].local == "Trash" and m["Spam"].local == "Junk"
    assert m["Archiv/2020"].local == "Archiv/2020"


def test_virtual_and_noselect_folders_are_not_copied() -> None:
    folders = [
        RemoteFolder("[Gmail]", "/", frozenset({"\\Noselect"})),
        RemoteFolder("[Gmail]/All Mail", "/", frozenset({"\\All"})),
        RemoteFolder("[Gmail]/Starred", "/", frozenset({"\\Flagged"})),
        RemoteFolder("[Gmail]/Sent Mail", "/", frozenset({"\\Sent"})),
    ]
    m = {f.remote.wire: f for f in map_folders(folders, LOCAL)}
    assert m["[Gmail]"].local is None and "Noselect" in m["[Gmail]"].why
    assert m["[Gmail]/All Mail"].local is None and "virtual" in m["[Gmail]/All Mail"].why
    assert m["[Gmail]/Starred"].local is None
    assert m["[Gmail]/Sent Mail"].local == "Sent"


def test_slash_inside_a_level_stays_inside_the_level() -> None:
    assert canonical_name("INBOX.a/b.c", ".", strip_inbox=True) == "a-b/c"
    assert canonical_name("inbox", ".", strip_inbox=True) == "INBOX"


def test_plan_skips_recorded_uids_and_matches_unrecorded_local_copies_once() -> None:
    remote = [RemoteMessage(1, 100, "<a@x>"), RemoteMessage(2, 100, "<a@x>"),
              RemoteMessage(3, 50, "<b@x>"), RemoteMessage(4, 70, ""),
              RemoteMessage(5, 80, "<c@x>")]  # fmt: skip
    key_a = dedup_key("<a@x>", 100)
    # one local copy of <a@x> that no state row accounts for, one of <c@x> that is claimed
    local = Counter({key_a: 1, dedup_key("<c@x>", 80): 1})
    claimed = Counter({dedup_key("<c@x>", 80): 1})
    plan = plan_messages(remote, {3}, local, claimed)
    assert plan.known == 1
    assert [m.uid for m, _ in plan.duplicates] == [1]  # only one of the two remote copies
    assert [m.uid for m in plan.copy] == [2, 4, 5]
    assert plan.bytes == 250


def test_dedup_key_needs_a_message_id() -> None:
    assert dedup_key("", 10) == ""
    assert dedup_key(" <a@x>\r\n ", 10) == "10:<a@x>"
