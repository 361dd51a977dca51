"""What delivery stores per message body: the MIME tree and the envelope, as one JSON text.

Parsed once at delivery (DESIGN.md "The store"); IMAP FETCH reads it back instead of parsing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from postfach.mime.structure import (
    Envelope,
    Part,
    envelope,
    envelope_from_json,
    envelope_to_json,
    from_json,
    parse,
    to_json,
)


@dataclass(frozen=True, slots=True)
class Parsed:
    part: Part
    envelope: Envelope


def parse_for_storage(message: bytes) -> str:
    """Parse a CRLF-normalised message into the JSON text the store keeps beside its bytes."""
    root = parse(message)
    return (
        f'{{"v":1,"part":{to_json(root)},"envelope":{envelope_to_json(envelope(message, root))}}}'
    )


def load_parsed(text: str) -> Parsed:
    obj = json.loads(text)
    return Parsed(
        from_json(json.dumps(obj["part"])), envelope_from_json(json.dumps(obj["envelope"]))
    )
