"""The pure core never touches I/O: no asyncio, sqlite3, sockets or clock reads (DESIGN.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "postfach"
CORE = [
    "errors.py", "quota.py", "dsn.py", "auth/sasl.py", "auth/throttle.py", "pop3/protocol.py",
    "imap/commands.py", "imap/wire.py", "imap/parser.py", "imap/sequence.py", "imap/response.py",
    "queue/schedule.py", "limits.py",
    "imap/utf7.py", "mailfile.py", "client/errors.py", "client/pop3.py", "client/state.py",
    "client/policy.py", "client/config.py", "client/credentials.py",
    "client/migrate/plan.py",
    *[str(p.relative_to(SRC)) for p in sorted((SRC / "mime").glob("*.py"))],
]  # fmt: skip
FORBIDDEN = {"asyncio", "sqlite3", "socket", "ssl", "selectors", "threading", "time"}


@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_no_io(module: str) -> None:
    tree = ast.parse((SRC / module).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        else:
            continue
        for name in names:
            assert name.split(".")[0] not in FORBIDDEN, f"{module} imports {name}"
