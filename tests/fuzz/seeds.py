"""Seed inputs for the fuzz targets, built from material the repository already has.

* IMAP: the ``C:`` lines of ``tests/transcripts/imap/*.txt`` (one transcript is one framer
  seed, each line one parser seed) and the string constants of the IMAP parser/framer tests.
* POP3: the string constants (containing a line end) of the POP3 protocol and session tests.
* MIME: every message of ``shared/data/test.mbox`` (the first 60) and ``torture.mbox`` (all),
  plus the constants of the MIME tests.
* SASL: the string constants of the SASL tests and a few encoded PLAIN/LOGIN exchanges.

String constants are read with ``ast`` (nothing is imported or run). The framer and POP3 targets
use their first four octets to choose chunk sizes, so their seeds get a four-octet prefix.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import mailbox
from collections.abc import Iterable
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
SHARED_DATA = REPO.parent / "shared" / "data"
CHUNK_PREFIX = b"\x03\x11\x00\x3f"


def _constants(*names: str, need: bytes = b"") -> list[bytes]:
    out: list[bytes] = []
    for name in names:
        tree = ast.parse((TESTS / "unit" / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
                value = (
                    node.value
                    if isinstance(node.value, bytes)
                    else node.value.encode("utf-8", "surrogateescape")
                )
                if value and need in value and len(value) < 100_000:
                    out.append(value)
    return out


def mbox_messages(name: str, limit: int | None = None) -> list[bytes]:
    path = SHARED_DATA / name
    if not path.exists():
        raise FileNotFoundError(f"test material {path} is missing (shared/ sits beside the repo)")
    box = mailbox.mbox(str(path), create=False)
    try:
        keys = list(box.iterkeys())[:limit]
        return [box.get_bytes(key) for key in keys]
    finally:
        box.close()


def _transcripts() -> list[bytes]:
    out = []
    for path in sorted((TESTS / "transcripts" / "imap").glob("*.txt")):
        lines = [
            line[3:].encode() + b"\r\n"
            for line in path.read_text().splitlines()
            if line.startswith("C: ")
        ]
        out.append(b"".join(lines))
    return out


def _sasl_samples() -> list[bytes]:
    plain = base64.b64encode(b"\x00bob\x00secret")
    user, password = base64.b64encode(b"bob"), base64.b64encode(b"secret")
    return [
        b"\x00" + plain + b"\n",
        b"\x01" + user + b"\n" + password,
        b"\x01\n" + user + b"\n" + password,
        b"\x00=\n",
        b"bob\x00bob\x00secret",
        b"\x00bob\x00secret",
        plain,
    ]


def seeds(target: str) -> list[bytes]:
    if target == "imap_framer":
        lines = _constants("test_imap_wire.py", need=b"\n")
        return [CHUNK_PREFIX + s for s in [*_transcripts(), *lines]]
    if target == "imap_parser":
        commands = [line for t in _transcripts() for line in t.split(b"\r\n") if line]
        return [*commands, *_constants("test_imap_parser.py")]
    if target == "pop3":
        found = _constants("test_pop3_session.py", "test_pop3_protocol.py", need=b"\n")
        return [CHUNK_PREFIX + s for s in found]
    if target == "mime":
        return [
            *mbox_messages("torture.mbox"),
            *mbox_messages("test.mbox", 60),
            *_constants("test_mime_structure.py", need=b":"),
        ]
    if target == "sasl":
        return [*_sasl_samples(), *_constants("test_sasl.py")]
    raise KeyError(target)


def write_corpus(target: str, directory: Path) -> int:
    """Write the seeds of ``target`` as files into ``directory``; returns how many."""
    directory.mkdir(parents=True, exist_ok=True)
    written = set()
    for seed in _unique(seeds(target)):
        name = hashlib.sha1(seed).hexdigest()
        (directory / name).write_bytes(seed)
        written.add(name)
    return len(written)


def _unique(items: Iterable[bytes]) -> list[bytes]:
    return list(dict.fromkeys(items))
