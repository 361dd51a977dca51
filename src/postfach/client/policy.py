"""What to download and what to delete on the server, and when to warn (pure core).

The source document's two POP3 set-ups: the home PC downloads and deletes (``delete``); the phone
leaves mail on the server (``keep``) so the home PC still gets everything later. Two more for
people with one device: ``keep-days`` (delete N days after the first download) and, for a
Maildir, ``delete-when-deleted-locally`` (the server copy goes once the local file is gone or
marked trashed).

Its warning: if *every* client leaves mail on the server, nothing is ever deleted there, the
mailbox fills up and senders get "mailbox full" bounces. ``growth_warning`` notices that from the
run history: the maildrop grew on each of the last N runs while no message disappeared from it.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from postfach.client.state import Known, RunRecord

__all__ = [
    "DAY",
    "Plan",
    "Policy",
    "ServerMessage",
    "growth_warning",
    "human_size",
    "make_plan",
    "quota_warning",
]

DAY: Final = 86400
#: Warn when the maildrop holds this share of a known server quota.
QUOTA_WARN_SHARE: Final = 0.8


class Policy(enum.Enum):
    DELETE = "delete"
    KEEP = "keep"
    KEEP_DAYS = "keep-days"
    DELETE_WHEN_DELETED_LOCALLY = "delete-when-deleted-locally"

    @property
    def leaves_mail_on_server(self) -> bool:
        return self is not Policy.DELETE

    @property
    def needs_uidl(self) -> bool:
        """Every policy but ``delete`` must recognise messages again on the next run."""
        return self is not Policy.DELETE


@dataclass(frozen=True, slots=True)
class ServerMessage:
    number: int  # message number in this session (RFC 1939)
    size: int  # octets as LIST reports them
    uidl: str | None  # None when the server has no UIDL


@dataclass(frozen=True, slots=True)
class Plan:
    download: tuple[ServerMessage, ...]  # in server order
    delete: tuple[ServerMessage, ...]  # stored on an earlier run and due for deletion now
    delete_downloaded: bool  # delete each newly downloaded message once it is stored
    kept: int  # known messages left on the server

    @property
    def download_octets(self) -> int:
        return sum(m.size for m in self.download)


def make_plan(
    policy: Policy,
    keep_days: int,
    listing: Sequence[ServerMessage],
    known: Mapping[str, Known],
    now: int,
    present_locally: Collection[str] | None = None,
) -> Plan:
    """Decide the run. ``present_locally`` (Maildir unique names not deleted or trashed) is
    needed for ``delete-when-deleted-locally`` only."""
    download: list[ServerMessage] = []
    old: list[tuple[ServerMessage, Known]] = []
    for m in listing:
        k = known.get(m.uidl) if m.uidl is not None else None
        if k is None:
            download.append(m)
        else:
            old.append((m, k))
    if policy is Policy.DELETE:
        delete = [m for m, _ in old]
    elif policy is Policy.KEEP:
        delete = []
    elif policy is Policy.KEEP_DAYS:
        delete = [m for m, k in old if now - k.first_seen >= keep_days * DAY]
    else:
        if present_locally is None:
            raise ValueError("delete-when-deleted-locally needs the local message names")
        delete = [m for m, k in old if k.local is not None and k.local not in present_locally]
    delete_downloaded = policy is Policy.DELETE or (policy is Policy.KEEP_DAYS and keep_days == 0)
    return Plan(tuple(download), tuple(delete), delete_downloaded, len(old) - len(delete))


def human_size(n: int) -> str:
    for unit, f in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= f:
            return f"{n / f:.1f}{unit}"
    return f"{n}B"


def growth_warning(history: Sequence[RunRecord], runs: int) -> str | None:
    """The source document's warning, when the last ``runs`` runs each found the maildrop
    larger than the run before, and no message was deleted there in between, by us or by any
    other client. ``runs`` <= 0 turns the warning off."""
    if runs <= 0 or len(history) < runs + 1:
        return None
    recent = history[-(runs + 1) :]
    for prev, cur in itertools.pairwise(recent):
        if cur.octets <= prev.octets or cur.vanished or prev.deleted:
            return None
    last = recent[-1]
    if last.deleted:
        return None
    return (
        f"mail is left on the server, and the server mailbox grew on each of the last {runs}"
        f" runs (now {last.messages} messages, {human_size(last.octets)}) while no message was"
        " deleted there. If no other client deletes mail from it (like a home PC that downloads"
        " and deletes), it will fill up and senders will get bounces saying the mailbox is"
        ' full. Let one client delete: policy = "delete" or "keep-days".'
    )


def quota_warning(octets: int, quota: int) -> str | None:
    """When the maildrop holds at least 80% of a server quota the user told us about."""
    if quota <= 0 or octets < quota * QUOTA_WARN_SHARE:
        return None
    return (
        f"the server mailbox holds {human_size(octets)} of its {human_size(quota)} quota"
        f" ({100 * octets // quota}%). When it is full, senders get bounces; delete mail on the"
        ' server (policy = "delete" or "keep-days").'
    )
