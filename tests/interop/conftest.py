"""Interop suite: a real postfach server on ephemeral loopback ports, driven by real programs.

The programs (fetchmail, getmail6, curl, swaks) come from Debian packages; a test whose program
is not installed is skipped with the reason. Everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: support.py
sys.path.insert(0, str(HERE))  # tests/interop/: interop_clients.py

from interop_clients import Getmail  # noqa: E402

from support import RunningServer, start_server  # noqa: E402


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    srv = start_server(tmp_path / "data")
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def make_getmail(server: RunningServer, tmp_path: Path) -> Iterator[Callable[..., Getmail]]:
    """``make_getmail("home", delete=True, ssl=False)``: a getmail6 set-up for the server."""
    made: list[Getmail] = []

    def make(name: str, **kwargs: Any) -> Getmail:
        g = Getmail(server, tmp_path / name, **kwargs)
        made.append(g)
        return g

    yield make
    for g in made:
        g.cleanup()  # the world-readable scratch Maildir used when running as root


#: getmail6 6.18 races with its own SIGCHLD handler when it forks a delivery child (it does so
#: for every message when run as root): the handler can run inside ``signal.signal()`` before
#: ``_ForkingBase__orig_handler`` is assigned, and getmail dies with an AttributeError (seen
#: once on a heavily loaded machine). Only that crash, recognisable in the transcript, reruns
#: the test from scratch; any other failure fails at once.
GETMAIL_RACE = "_ForkingBase__orig_handler"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE not in item.path.resolve().parents:
            continue
        # Belt and braces: the modules set ``pytestmark`` too, but nothing in this folder may
        # be collected without the marker (``-m 'not interop'`` must deselect all of it).
        item.add_marker(pytest.mark.interop)
        if "make_getmail" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.flaky(reruns=2, only_rerun=[GETMAIL_RACE]))
