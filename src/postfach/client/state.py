"""What ``postfach fetch`` remembers per account between runs (pure core).

The state is a snapshot plus a journal of records appended during a run (see
``postfach.client.statefile`` for how both reach the disk):

* ``known``: every UIDL already stored locally, with when it was first downloaded (for
  ``keep-days``) and, for a Maildir, the file's unique name (for ``delete-when-deleted-locally``).
* ``inflight``: the messages being stored right now, each with a token chosen *before* its bytes
  were written (a Maildir file name, an mbox offset, a postfach UIDNEXT). After a crash the next
  run downloads such a message again and asks the target whether the token shows it was stored
  already; so a message is never lost (nothing is deleted on the server before it is recorded)
  and never stored twice.
* ``unconfirmed``: for servers without UIDL (``delete`` policy only), the SHA-256 of messages
  stored whose deletion the server has not yet confirmed at QUIT; a message with the same bytes
  seen again is deleted, not stored a second time.
* ``history``: one record per completed run (maildrop size, deletions) for the
  "the server mailbox keeps growing" warning.

Journal records carry the snapshot's ``generation``; records of an older generation (left behind
by a crash between writing a snapshot and emptying the journal) are ignored on replay.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["HISTORY_MAX", "FetchState", "Inflight", "Known", "RunRecord", "StoredRecord"]

VERSION: Final = 1
#: Run records kept for the growth warning.
HISTORY_MAX: Final = 50


@dataclass(slots=True)
class Known:
    first_seen: int  # unix seconds of the first download
    local: str | None = None  # the Maildir unique name, when the target is a Maildir


@dataclass(frozen=True, slots=True)
class Inflight:
    uidl: str | None
    token: str


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """One message stored by this run: its UIDL (None without UIDL), time, local name, hash."""

    uidl: str | None
    first_seen: int
    local: str | None
    sha256: str | None = None  # only without UIDL (the "unconfirmed" list)


@dataclass(frozen=True, slots=True)
class RunRecord:
    time: int
    messages: int  # in the maildrop at the start of the run
    octets: int
    vanished: int  # known messages someone else removed from the server since the last run
    deleted: int  # messages this run deleted on the server


@dataclass(slots=True)
class FetchState:
    server: str  # "user@host": whose UIDLs these are
    known: dict[str, Known] = field(default_factory=dict)
    inflight: list[Inflight] = field(default_factory=list)
    unconfirmed: dict[str, int] = field(default_factory=dict)
    history: list[RunRecord] = field(default_factory=list)
    generation: int = 0

    # ---- journal records --------------------------------------------------------------------

    def record(self, stored: Sequence[StoredRecord], inflight: Sequence[Inflight]) -> str:
        """Apply "these are stored, these are next" and return it as one journal line."""
        rec = {
            "g": self.generation,
            "stored": [[s.uidl, s.first_seen, s.local, s.sha256] for s in stored],
            "inflight": [[i.uidl, i.token] for i in inflight],
        }
        self.apply(rec)
        return json.dumps(rec, separators=(",", ":")) + "\n"

    def apply(self, rec: Mapping[str, Any]) -> None:
        for uidl, first_seen, local, sha in rec["stored"]:
            if uidl is not None:
                self.known[str(uidl)] = Known(int(first_seen), local)
            if sha is not None:
                self.unconfirmed[str(sha)] = self.unconfirmed.get(str(sha), 0) + 1
        self.inflight = [Inflight(u, str(t)) for u, t in rec["inflight"]]

    def replay(self, journal: bytes) -> int:
        """Apply the journal's complete records of this generation; returns how many.

        A torn last line (a crash while appending) is ignored; anything else unreadable is a
        ValueError.
        """
        lines = journal.split(b"\n")
        complete, torn = lines[:-1], lines[-1]
        del torn  # no trailing newline: the append did not finish
        applied = 0
        for line in complete:
            if not line.strip():
                continue
            rec = json.loads(line)
            if not isinstance(rec, dict) or "stored" not in rec or "inflight" not in rec:
                raise ValueError("unknown record in the state journal")
            if rec.get("g") != self.generation:
                continue
            self.apply(rec)
            applied += 1
        return applied

    def forget_inflight(self, tokens: Iterable[Inflight]) -> None:
        drop = set(tokens)
        self.inflight = [i for i in self.inflight if i not in drop]

    # ---- snapshot ---------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": VERSION,
                "server": self.server,
                "generation": self.generation,
                "known": {u: [k.first_seen, k.local] for u, k in self.known.items()},
                "inflight": [[i.uidl, i.token] for i in self.inflight],
                "unconfirmed": self.unconfirmed,
                "history": [
                    [r.time, r.messages, r.octets, r.vanished, r.deleted]
                    for r in self.history[-HISTORY_MAX:]
                ],
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> FetchState:
        """Raises ValueError for anything that is not a state file of this version."""
        try:
            obj = json.loads(text)
            if not isinstance(obj, dict) or obj.get("version") != VERSION:
                raise ValueError(f"not a version {VERSION} state file")
            return cls(
                server=str(obj["server"]),
                known={str(u): Known(int(v[0]), v[1]) for u, v in obj["known"].items()},
                inflight=[Inflight(u, str(t)) for u, t in obj["inflight"]],
                unconfirmed={str(k): int(v) for k, v in obj["unconfirmed"].items()},
                history=[RunRecord(*(int(x) for x in r)) for r in obj["history"]],
                generation=int(obj["generation"]),
            )
        except (KeyError, TypeError, AttributeError, IndexError) as exc:
            raise ValueError(f"malformed state file ({exc.__class__.__name__}: {exc})") from None
