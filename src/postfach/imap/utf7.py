"""Modified UTF-7 for mailbox names (pure core; RFC 3501 §5.1.3, RFC 9051 §5.1.3 and
appendix A).

Printable US-ASCII (0x20-0x7e) stands for itself, except ``&``, written ``&-``. Everything else
is UTF-16BE in modified base64 (``,`` instead of ``/``, no padding) between ``&`` and ``-``.

The decoder is strict, so ``encode_mutf7(decode_mutf7(s)) == s`` for every accepted ``s``: it
rejects non-ASCII or control octets, an unterminated shift, characters outside the modified
base64 alphabet, non-zero padding bits, a length that leaves half a UTF-16 unit, lone
surrogates, a base64 run encoding printable ASCII, and two runs back to back (``-&``), which a
correct encoder would have merged.
"""

from __future__ import annotations

import base64
import binascii
from typing import Final

__all__ = ["decode_mutf7", "encode_mutf7"]

_B64: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,")


def _printable(c: str) -> bool:
    return " " <= c <= "~"


def _encode_run(run: str) -> str:
    raw = run.encode("utf-16-be")  # lone surrogates raise UnicodeEncodeError (a ValueError)
    return "&" + base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",") + "-"


def encode_mutf7(name: str) -> str:
    """Encode a Unicode mailbox name for an IMAP4rev1 client."""
    out: list[str] = []
    run: list[str] = []
    for c in name:
        if _printable(c):
            if run:
                out.append(_encode_run("".join(run)))
                run.clear()
            out.append("&-" if c == "&" else c)
        else:
            run.append(c)
    if run:
        out.append(_encode_run("".join(run)))
    return "".join(out)


def _decode_run(b64: str) -> str:
    if not b64:
        raise ValueError("empty base64 run")  # "&-" is handled by the caller
    if any(c not in _B64 for c in b64):
        raise ValueError(f"invalid modified base64 {b64!r}")
    if len(b64) % 8 not in (0, 3, 6):
        raise ValueError(f"modified base64 {b64!r} leaves half a UTF-16 unit")
    padded = b64.replace(",", "/") + "=" * (-len(b64) % 4)
    try:
        raw = base64.b64decode(padded, validate=True)
    except binascii.Error as e:
        raise ValueError(f"invalid modified base64 {b64!r}") from e
    # Non-zero padding bits: a canonical encoder would have produced different text.
    if base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",") != b64:
        raise ValueError(f"non-canonical modified base64 {b64!r}")
    text = raw.decode("utf-16-be")  # lone surrogates raise UnicodeDecodeError (a ValueError)
    if any(_printable(c) for c in text):
        raise ValueError("modified base64 must not encode printable US-ASCII")
    return text


def decode_mutf7(name: str) -> str:
    """Decode a modified UTF-7 mailbox name; ``ValueError`` when malformed."""
    out: list[str] = []
    i, n = 0, len(name)
    after_run = False
    while i < n:
        c = name[i]
        if not _printable(c):
            raise ValueError(f"octet {ord(c):#04x} is not allowed in a modified UTF-7 name")
        if c != "&":
            out.append(c)
            i += 1
            after_run = False
            continue
        end = name.find("-", i + 1)
        if end < 0:
            raise ValueError("unterminated modified base64 run (missing '-')")
        if end == i + 1:
            out.append("&")
            after_run = False
        else:
            if after_run:
                raise ValueError("two modified base64 runs back to back")
            out.append(_decode_run(name[i + 1 : end]))
            after_run = True
        i = end + 1
    return "".join(out)
