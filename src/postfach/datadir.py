"""Opening the data directory, shared by the server and the admin commands (adapters).

Kept apart from `postfach.app` so that a command like ``postfach user list`` or ``postfach
fetch`` does not import the whole server (IMAP, SMTP, queue) before doing its work.
"""

from __future__ import annotations

import os
from pathlib import Path

from postfach.store.sqlite import SqliteMailstore

DEFAULT_DOMAIN = "localhost"


class StartupError(RuntimeError):
    """The server cannot start; the message is one line for the user."""


def open_store(data_dir: Path, *, index_text: bool = True) -> SqliteMailstore:
    """Open (and on first use initialise) the data directory; one clear error if we cannot.

    ``index_text=False`` (the admin commands) runs no full-text indexer: a command ends as soon
    as its work is done, and the server's indexer catches up with what it stored."""
    try:
        if data_dir.exists() and not data_dir.is_dir():
            raise StartupError(f"data directory {data_dir} is not a directory")
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not os.access(data_dir, os.R_OK | os.W_OK | os.X_OK):
            raise StartupError(
                f"data directory {data_dir} is not readable and writable by uid {os.geteuid()}"
            )
        store = SqliteMailstore(data_dir, index_text=index_text)
    except StartupError:
        raise
    except OSError as exc:
        raise StartupError(f"cannot use data directory {data_dir}: {exc.strerror}") from None
    except Exception as exc:
        raise StartupError(f"cannot open the store in {data_dir}: {exc}") from None
    if not store.list_domains():
        store.add_domain(DEFAULT_DOMAIN)
    return store
