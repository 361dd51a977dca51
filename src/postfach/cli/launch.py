"""The ``postfach`` command's entry point: routes ``postfach sync`` past the admin CLI.

``postfach sync`` runs from cron or a mail program's "check mail" button, often every minute,
and a resync with nothing changed is a handful of IMAP commands: importing the admin CLI (the
server's configuration, the store, TLS certificate tools, rich) would cost several times the
sync itself. So ``postfach sync ...`` (the subcommand first, no global option before it) goes
straight to `postfach.cli.sync`, with the same process settings the admin CLI gives it (umask
077, the invoking user); everything else, ``postfach --data DIR sync`` included, goes through
`postfach.cli.main`.

When the sync is over, the process ends without the interpreter's clean-up (freeing every
module and object one by one, a fifth of a short run): by then the state database is closed,
the writer threads are joined and every file is fsynced, so only the output streams and the
log handlers are left to flush, and they are.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    if sys.argv[1:2] != ["sync"]:
        from postfach.cli.main import main as admin_main

        admin_main()
        return
    os.umask(0o077)  # as `postfach.cli.main` does: the mail and the state are the user's
    from postfach.cli.sync import sync_command

    try:
        sync_command(args=sys.argv[2:], prog_name="postfach sync")
        status: object = 0
    except SystemExit as exc:  # click ends every run with one
        status = exc.code
    os._exit(_flushed(status))


def _flushed(status: object) -> int:
    """Flush what is buffered; the exit status ``sys.exit(status)`` would give."""
    import logging

    if status is not None and not isinstance(status, int):
        print(status, file=sys.stderr)
        status = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (``| head``) or a closed stream
            status = status or 1
    return status or 0


if __name__ == "__main__":
    main()
