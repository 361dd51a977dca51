"""The Mailstore contract: what every storage backend provides (services ring).

The SQLite backend (`postfach.store.sqlite`) is the embedded default; the contract test suite in
``tests/test_store_contract.py`` is what any further backend must pass.

Concurrency: every write method commits before it returns (or before its future resolves), and
publishes the resulting `Change` events after the commit and before returning, so a caller that
answers a client afterwards never answers before the data is durable, and every other session has
already been told.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

INBOX = "INBOX"

# Special-use folders every account gets (RFC 6154), name -> attribute.
DEFAULT_MAILBOXES: tuple[tuple[str, str | None], ...] = (
    (INBOX, None),
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
    ("Archive", "\\Archive"),
)


class Flag(enum.IntFlag):
    """IMAP system flags as a bit set (keywords are stored separately)."""

    NONE = 0
    SEEN = 1
    ANSWERED = 2
    FLAGGED = 4
    DELETED = 8
    DRAFT = 16

    @classmethod
    def from_names(cls, names: Sequence[str]) -> Flag:
        out = cls(0)
        for n in names:
            out |= _FLAG_BY_NAME[n.lower()]
        return out

    def names(self) -> list[str]:
        return [name for bit, name in _NAME_BY_FLAG if self & bit]


_NAME_BY_FLAG = (
    (Flag.SEEN, "\\Seen"),
    (Flag.ANSWERED, "\\Answered"),
    (Flag.FLAGGED, "\\Flagged"),
    (Flag.DELETED, "\\Deleted"),
    (Flag.DRAFT, "\\Draft"),
)
_FLAG_BY_NAME = {name.lower(): bit for bit, name in _NAME_BY_FLAG}


@dataclass(frozen=True, slots=True)
class Domain:
    name: str


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    name: str  # full address, lower case: "alice@example.org"
    quota_bytes: int  # 0 = unlimited
    quota_messages: int  # 0 = unlimited
    used_bytes: int
    used_messages: int
    sent_copy: str = "off"  # "auto": submitted messages are copied to Sent

    @property
    def domain(self) -> str:
        return self.name.rpartition("@")[2]

    def would_exceed(self, size: int, count: int = 1) -> str | None:
        """The exceeded resource ("STORAGE"/"MESSAGE") if adding this would go over, else None."""
        if self.quota_bytes and self.used_bytes + size > self.quota_bytes:
            return "STORAGE"
        if self.quota_messages and self.used_messages + count > self.quota_messages:
            return "MESSAGE"
        return None

    @property
    def is_full(self) -> bool:
        """No further message of any size fits."""
        return bool(
            (self.quota_bytes and self.used_bytes >= self.quota_bytes)
            or (self.quota_messages and self.used_messages >= self.quota_messages)
        )


@dataclass(frozen=True, slots=True)
class Alias:
    address: str  # "info@example.org", or "@example.org" for a catch-all
    targets: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Mailbox:
    id: int
    account_id: int
    name: str
    special_use: str | None
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    subscribed: bool
    messages: int = 0


@dataclass(frozen=True, slots=True)
class MessageMeta:
    id: int
    mailbox_id: int
    uid: int
    modseq: int
    flags: Flag
    keywords: tuple[str, ...]
    internal_date: int  # unix seconds
    save_date: int
    size: int
    blob: str  # sha256 hex


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """Outcome for one recipient of a delivery: a stored message or a refusal."""

    account: str
    message: MessageMeta | None = None
    over_quota: str | None = None  # "STORAGE" / "MESSAGE" when refused for quota


@dataclass(frozen=True, slots=True)
class CheckReport:
    """What `postfach check` found: each entry names an account or blob and the drift."""

    quota_drift: list[str] = field(default_factory=list)
    blob_drift: list[str] = field(default_factory=list)
    repaired: bool = False

    @property
    def clean(self) -> bool:
        return not self.quota_drift and not self.blob_drift


# ---- change events, published after every commit -------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    account_id: int


@dataclass(frozen=True, slots=True)
class MessageAdded(Change):
    mailbox_id: int
    uid: int
    modseq: int
    flags: Flag
    keywords: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MessagesExpunged(Change):
    mailbox_id: int
    uids: tuple[int, ...]
    modseq: int


@dataclass(frozen=True, slots=True)
class FlagsChanged(Change):
    mailbox_id: int
    uid: int
    modseq: int
    flags: Flag
    keywords: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MailboxesChanged(Change):
    """A mailbox was created, deleted or renamed; sessions re-read the list."""


@dataclass(frozen=True, slots=True)
class AccountDeleted(Change):
    """The account is gone (``postfach user del``): its sessions end now."""


#: `ChangesLost.account_id` when every account may be affected.
ALL_ACCOUNTS = 0


@dataclass(frozen=True, slots=True)
class ChangesLost(Change):
    """Changes made by another process may have been missed (this process fell behind the
    store's change feed further than it keeps them): what the sessions of the account (of every
    account with `ALL_ACCOUNTS`) hold may be stale, so they end and the clients resync."""


Publisher = Callable[[list[Change]], None]
