"""``postfach import`` and ``postfach export``: mbox and Maildir in and out of an account."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

from postfach.client.policy import human_size
from postfach.store.sqlite import SqliteMailstore
from postfach.transfer import TransferError, detect_format, export_mailbox, import_mailbox

__all__ = ["export_command", "import_command"]

FORMAT = click.Choice(["mbox", "maildir"])


def fail(message: str) -> NoReturn:
    click.echo(f"postfach: error: {message}", err=True)
    sys.exit(1)


def _store(obj: Any) -> SqliteMailstore:
    opener = getattr(obj, "store", None)
    if opener is None:
        fail("no data directory (use --data)")
    store = opener()
    assert isinstance(store, SqliteMailstore)
    return store


@contextmanager
def _progress(total: int, label: str) -> Iterator[Callable[[int], None] | None]:
    console = Console(stderr=True)
    if not console.is_terminal or total <= 0:
        yield None
        return
    with Progress(
        TextColumn(label), BarColumn(), DownloadColumn(), console=console, transient=True
    ) as p:
        task = p.add_task(label, total=total)
        yield lambda n: p.update(task, advance=n)


@click.command("import")
@click.argument("account")
@click.argument("source", type=click.Path(path_type=Path, exists=True))
@click.option("--mailbox", default="INBOX", show_default=True, help="Created if missing.")
@click.option("--format", "fmt", type=FORMAT, help="Default: a directory is a Maildir.")
@click.pass_obj
def import_command(obj: Any, account: str, source: Path, mailbox: str, fmt: str | None) -> None:
    """Import an mbox file or a Maildir folder into ACCOUNT, keeping flags and dates.

    Messages already in the mailbox (same bytes) are skipped, so an interrupted import can be
    run again.
    """
    store = _store(obj)
    try:
        kind = detect_format(source, fmt, exporting=False)
        size = source.stat().st_size if kind == "mbox" else 0
        with _progress(size, f"import {source.name}") as progress:
            r = import_mailbox(store, account, mailbox, source, kind, progress)
    except TransferError as exc:
        fail(str(exc))
    skipped = f", {r.skipped} already there" if r.skipped else ""
    click.echo(
        f"imported {r.messages} messages ({human_size(r.octets)}) from {kind} {source}"
        f" into {account.lower()}/{mailbox}{skipped}"
    )


@click.command("export")
@click.argument("account")
@click.argument("dest")
@click.option("--mailbox", default="INBOX", show_default=True)
@click.option(
    "--format", "fmt", type=FORMAT, help="Default: mbox, or Maildir for a directory (or DEST/)."
)
@click.option("--append", is_flag=True, help="Add to an existing mbox file.")
@click.pass_obj
def export_command(
    obj: Any, account: str, dest: str, mailbox: str, fmt: str | None, append: bool
) -> None:
    """Export a mailbox of ACCOUNT to an mbox file or a Maildir folder, with flags and dates.

    DEST is written as a Maildir if it is a directory or ends with "/", else as an mbox file.
    """
    store = _store(obj)
    if fmt is None and dest.endswith("/"):
        fmt = "maildir"
    path = Path(dest)
    try:
        kind = detect_format(path, fmt, exporting=True)
        r = export_mailbox(store, account, mailbox, path, kind, append=append)
    except TransferError as exc:
        fail(str(exc))
    click.echo(
        f"exported {r.messages} messages ({human_size(r.octets)}) from"
        f" {account.lower()}/{mailbox} to {kind} {path}"
    )
