"""``postfach queue list|show|retry|delete|flush``: the outbound queue from the command line.

These commands open ``queue.db`` directly (SQLite serialises them with a running server).
``retry`` and ``flush`` mark messages due and then wake a running server with SIGUSR1
(`postfach.control`), so it dials at once; without a server they are tried when it starts.
"""

from __future__ import annotations

import datetime
import email.parser
import email.policy
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from postfach.control import wake_server
from postfach.queue.store import QueuedMessage, QueueStore

console = Console()


def _data_dir() -> Path:
    root = click.get_current_context().find_root().obj
    data: Path = root.data_dir
    return data


def _store() -> QueueStore:
    return QueueStore(_data_dir())


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _subject(data: bytes | None) -> str:
    if not data:
        return ""
    head = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(data)
    return str(head.get("Subject", ""))[:60]


@click.group("queue")
def queue() -> None:
    """Inspect and steer the outbound queue."""


@queue.command("list")
def queue_list() -> None:
    """One line per queued message."""
    store = _store()
    try:
        msgs = store.messages()
        table = Table("id", "queued (UTC)", "from", "recipients", "attempts", "next (UTC)", "size")
        for m in msgs:
            nxt = min((r.next_attempt for r in m.recipients), default=None)
            table.add_row(
                str(m.id), _when(m.queued), m.sender or "<>",
                ", ".join(r.address for r in m.recipients),
                str(max((r.attempts for r in m.recipients), default=0)), _when(nxt), str(m.size),
            )  # fmt: skip
        console.print(table)
        console.print(f"{len(msgs)} message(s) queued")
    finally:
        store.close()


def _get(store: QueueStore, message_id: int) -> QueuedMessage:
    m = store.message(message_id)
    if m is None:
        click.echo(f"postfach: error: no queued message {message_id}", err=True)
        sys.exit(1)
    return m


@queue.command("show")
@click.argument("message_id", type=int)
@click.option("--raw", is_flag=True, help="Print the message itself.")
def queue_show(message_id: int, raw: bool) -> None:
    """A message's envelope and each recipient's state."""
    store = _store()
    try:
        m = _get(store, message_id)
        data = store.message_data(message_id)
        if raw:
            sys.stdout.buffer.write(data or b"")
            return
        console.print(f"message {m.id}: from <{m.sender}> size {m.size}")
        console.print(f"queued {_when(m.queued)} UTC by {m.account or 'the system'}")
        console.print(f"subject: {_subject(data)}")
        if m.envid or m.ret:
            console.print(f"ENVID={m.envid or '-'} RET={m.ret or '-'}")
        table = Table("recipient", "attempts", "last (UTC)", "next (UTC)", "last reply")
        for r in m.recipients:
            table.add_row(
                r.address, str(r.attempts), _when(r.last_attempt), _when(r.next_attempt),
                r.last_reply or "",
            )  # fmt: skip
        console.print(table)
    finally:
        store.close()


def _wake() -> None:
    pid = wake_server(_data_dir())
    if pid is None:
        console.print("no server is running: they will be tried when it starts")
    else:
        console.print(f"woke the server (pid {pid}): trying now")


@queue.command("retry")
@click.argument("message_id", type=int)
def queue_retry(message_id: int) -> None:
    """Try a message again now."""
    store = _store()
    try:
        _get(store, message_id)
        n = store.retry(message_id, time.time())
        console.print(f"message {message_id}: {n} recipient(s) due now")
    finally:
        store.close()
    _wake()


@queue.command("flush")
def queue_flush() -> None:
    """Try every queued message again now."""
    store = _store()
    try:
        n = store.retry(None, time.time())
        console.print(f"{n} recipient(s) due now")
    finally:
        store.close()
    _wake()


@queue.command("delete")
@click.argument("message_id", type=int)
def queue_delete(message_id: int) -> None:
    """Drop a message without telling its sender."""
    store = _store()
    try:
        if not store.delete(message_id):
            click.echo(f"postfach: error: no queued message {message_id}", err=True)
            sys.exit(1)
        console.print(f"deleted message {message_id}")
    finally:
        store.close()
