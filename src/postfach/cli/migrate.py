"""``postfach migrate``: copy a whole remote IMAP account into a postfach account (adapter)."""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from postfach.cli.sync import SyncError, connect, load_config, read_password
from postfach.client.config import parse_fingerprint
from postfach.client.errors import FetchConfigError
from postfach.client.imap import ImapError
from postfach.client.migrate.run import (
    FolderWork,
    MigrateOptions,
    MigrateReport,
    Migrator,
    quota_problem,
)
from postfach.client.migrate.state import MigrateState, MigrateStateError
from postfach.client.parse import ProtocolError
from postfach.client.policy import human_size
from postfach.client.sync.account import SyncAccount, SyncConfigError
from postfach.store.sqlite import SqliteMailstore

__all__ = ["migrate_command", "parse_source"]

STATE_FILE = "migrate.db"


def fail(message: str) -> NoReturn:
    click.echo(f"postfach: error: {message}", err=True)
    sys.exit(1)


def parse_source(url: str, tls: str | None) -> tuple[str, int, str, str]:
    """``imaps://user@host[:port]`` → (host, port, user, tls). ``imap://`` means STARTTLS
    unless ``tls`` says otherwise. The user may be percent-encoded (``alice%40example.org``)."""
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("imap", "imaps"):
        raise click.BadParameter("use imaps://USER@HOST[:PORT] or imap://USER@HOST[:PORT]")
    if u.password is not None:
        raise click.BadParameter(
            "passwords do not belong on the command line; use --password-file or --password-command"
        )
    if not u.hostname:
        raise click.BadParameter("no host in the URL")
    if u.path not in ("", "/") or u.query or u.fragment:
        raise click.BadParameter("the URL names an account, not a folder: USER@HOST[:PORT]")
    mode = tls or ("tls" if u.scheme == "imaps" else "starttls")
    try:
        port = u.port or (993 if mode == "tls" else 143)
    except ValueError:
        raise click.BadParameter("the port must be a number from 1 to 65535") from None
    user = urllib.parse.unquote(u.username or "")
    return u.hostname, port, user, mode


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fail(f"another postfach migrate is running ({path})")
        yield
    finally:
        os.close(fd)


def folder_table(report: MigrateReport) -> Table:
    t = Table(title="Folders", title_justify="left")
    for col in (
        "remote",
        "→ local",
        "how",
        "messages",
        "to copy",
        "copied before",
        "already there",
    ):
        t.add_column(col, justify="right" if col[0] in "mtca" else "left")
    for f in report.folders:
        if f.local is None:
            t.add_row(f.remote, "—", f"skipped: {f.map.why}", "", "", "", "")
            continue
        how = f.map.why + (", UIDVALIDITY changed" if f.uidvalidity_changed else "")
        if f.error:
            how = f"error: {f.error}"
        t.add_row(
            f.remote, f.local, how, str(f.remote_messages), str(len(f.plan.copy)),
            str(f.plan.known), str(len(f.plan.duplicates)),
        )  # fmt: skip
    return t


def summary(report: MigrateReport, seconds: float, dry_run: bool) -> list[str]:
    folders = [f for f in report.folders if f.local is not None and not f.error]
    created = sum(f.created for f in folders)
    rate = report.copied / seconds if seconds > 0 else 0.0
    brate = report.copied_bytes / seconds if seconds > 0 else 0.0
    lines = []
    if dry_run:
        lines.append(
            f"dry run: would copy {report.to_copy} messages ({human_size(report.to_copy_bytes)})"
            f" in {len(folders)} folders; nothing was written"
        )
    else:
        lines.append(
            f"migrated {len(folders)} folders ({created} created), {report.copied} messages"
            f" ({human_size(report.copied_bytes)}) in {seconds:.1f} s"
            f" ({rate:.0f} messages/s, {human_size(int(brate))}/s)"
        )
    lines.append(
        f"skipped: {report.known} copied by an earlier run, {report.duplicates} already there"
        f" (same Message-ID and size), {len(report.skipped_folders)} folders not copied"
    )
    for f in report.skipped_folders:
        lines.append(f"  {f.remote}: {f.map.why}")
    if report.subscribed:
        lines.append("subscribed: " + ", ".join(report.subscribed))
    for f in report.folders:
        if f.uidvalidity_changed:
            lines.append(
                f"  {f.remote}: UIDVALIDITY changed; messages matched again by Message-ID and size"
            )
        if f.error:
            lines.append(f"  {f.remote}: error: {f.error}")
    return lines


@contextmanager
def _copy_progress(
    console: Console, total_bytes: int, total_messages: int, quiet: bool
) -> Iterator[Callable[[FolderWork, int, int], None] | None]:
    if quiet or not console.is_terminal or total_messages == 0:
        yield None
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description:<24}"),
        BarColumn(),
        TextColumn("{task.fields[done]}/{task.fields[of]} messages"),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as p:
        task = p.add_task("copying", total=total_bytes, done=0, of=total_messages)
        done = 0

        def step(work: FolderWork, n: int, size: int) -> None:
            nonlocal done
            done += n
            p.update(task, advance=size, description=work.remote[:24], done=done)

        yield step


@click.command("migrate")
@click.option(
    "--from",
    "source",
    metavar="URL",
    help="The remote account: imaps://USER@HOST[:PORT] (or imap:// for STARTTLS).",
)
@click.option(
    "--sync-account",
    metavar="NAME",
    help="Instead of --from and the password options: an account of sync.toml.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="With --sync-account: the sync.toml to read (default ~/.config/postfach/sync.toml).",
)
@click.option("--to", "target", required=True, metavar="ADDRESS", help="The postfach account.")
@click.option(
    "--password-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="File whose first line is the remote password (chmod 600).",
)
@click.option("--password-command", help="Command that prints the remote password.")
@click.option(
    "--fingerprint", help="Pin the remote certificate (SHA256:...), for self-signed ones."
)
@click.option(
    "--ca-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Verify the remote certificate against this CA instead of the system's.",
)
@click.option(
    "--tls",
    type=click.Choice(["tls", "starttls", "none"]),
    help="Override the URL: none only for a server on this machine.",
)
@click.option("--timeout", type=click.FloatRange(min=1), default=120.0, show_default=True)
@click.option("--dry-run", is_flag=True, help="Show what would be copied; write nothing.")
@click.option("-q", "--quiet", is_flag=True, help="Only the summary, no tables or progress.")
@click.option("-v", "--verbose", is_flag=True, help="Log every IMAP command (debug level).")
@click.pass_obj
def migrate_command(
    obj: Any, source: str | None, sync_account: str | None, config_file: Path | None,
    target: str, password_file: Path | None,
    password_command: str | None, fingerprint: str | None, ca_file: Path | None,
    tls: str | None, timeout: float, dry_run: bool, quiet: bool, verbose: bool,
) -> None:  # fmt: skip
    """Copy every folder of a remote IMAP account into a postfach account.

    Folders keep their names ("/" between levels); Sent, Drafts, Trash, Junk and Archive go
    into the account's own special folders. Flags, keywords, dates and subscriptions are
    kept; the remote account is only read. Run it again at any time (also after an
    interruption): only messages that are new on the remote side are copied. If the
    messages to copy do not fit the account's quota, nothing is copied.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    if sync_account is not None:
        if source or password_file or password_command or fingerprint or ca_file or tls:
            fail("--sync-account takes the server, TLS and password from sync.toml; drop"
                 " --from, --password-*, --fingerprint, --ca-file and --tls")  # fmt: skip
        try:
            account = load_config(config_file).account(sync_account)
        except SyncConfigError as exc:
            fail(str(exc))
    elif source is None:
        fail("give --from imaps://USER@HOST (or --sync-account NAME)")
    else:
        account = _account_from_options(
            source, password_file, password_command, fingerprint, ca_file, tls, timeout
        )
    store = obj.store()
    assert isinstance(store, SqliteMailstore)
    acc = store.get_account(target)
    if acc is None:
        fail(f"no account {target.lower()} (create it first: postfach user add {target.lower()})")
    data_dir: Path = obj.data_dir
    console = Console()
    err = Console(stderr=True)
    try:
        password = read_password(account)
    except SyncError as exc:
        fail(str(exc))
    with _locked(data_dir / (STATE_FILE + ".lock")):
        state_path = data_dir / STATE_FILE
        if dry_run and not state_path.exists():
            state_path = Path(":memory:")
        try:
            state = MigrateState(state_path, account.server, acc.name)
        except MigrateStateError as exc:
            fail(str(exc))
        try:
            code = _run(store, acc.name, account, password, state, dry_run, quiet, console, err)
        except KeyboardInterrupt:
            click.echo("postfach: migrate interrupted; run it again to go on", err=True)
            sys.exit(130)
        finally:
            state.close()
    sys.exit(code)


def _account_from_options(
    source: str, password_file: Path | None, password_command: str | None,
    fingerprint: str | None, ca_file: Path | None, tls: str | None, timeout: float,
) -> SyncAccount:  # fmt: skip
    try:
        host, port, user, mode = parse_source(source, tls)
    except click.BadParameter as exc:
        fail(f"--from: {exc.message}")
    if not user:
        fail("--from: no user in the URL (imaps://USER@HOST)")
    if (password_file is None) == (password_command is None):
        fail("give exactly one of --password-file or --password-command")
    pin = None
    if fingerprint is not None:
        if mode == "none":
            fail("--fingerprint needs TLS")
        try:
            pin = parse_fingerprint(fingerprint)
        except FetchConfigError as exc:
            fail(str(exc))
    return SyncAccount(
        name="migrate", host=host, user=user, maildir="", port=port, tls=mode,
        fingerprint=pin, ca_file=str(ca_file) if ca_file else None,
        password_command=password_command,
        password_file=str(password_file) if password_file else None, timeout=timeout,
    )  # fmt: skip


def _run(
    store: SqliteMailstore, target: str, account: SyncAccount, password: str,
    state: MigrateState, dry_run: bool, quiet: bool, console: Console, err: Console,
) -> int:  # fmt: skip
    started = time.monotonic()
    try:
        client = connect(account, password)
    except (ImapError, ProtocolError, OSError) as exc:
        fail(f"{account.host}: {exc}")
    acc = store.get_account(target)
    assert acc is not None
    migrator = Migrator(client, store, acc, state, MigrateOptions(dry_run=dry_run))
    try:
        with err.status("reading the remote folders ...") if err.is_terminal and not quiet \
                else _nothing() as status:  # fmt: skip

            def surveying(name: str) -> None:
                if status is not None:
                    status.update(f"reading {name} ...")

            report = migrator.survey(surveying)
        if not quiet:
            console.print(folder_table(report))
        acc = store.get_account(target)
        assert acc is not None
        problem = quota_problem(acc, report.to_copy_bytes, report.to_copy)
        if problem:
            click.echo(
                f"postfach: error: quota: {problem}. Nothing was copied. Raise the quota first"
                f" (postfach user quota {acc.name} SIZE), migrate, and set it back afterwards.",
                err=True,
            )
            return 1
        if not dry_run:
            started = time.monotonic()
            with _copy_progress(err, report.to_copy_bytes, report.to_copy, quiet) as step:
                migrator.copy(report, step)
    except (ImapError, ProtocolError, OSError) as exc:
        fail(f"{account.host}: {exc} (what was copied is recorded; run again to go on)")
    finally:
        migrator.close()
        client.logout()
    for line in summary(report, time.monotonic() - started, dry_run):
        click.echo(line)
    if report.stopped:
        click.echo(f"postfach: error: {report.stopped}; run again after raising it", err=True)
        return 1
    return 1 if any(f.error for f in report.folders) else 0


@contextmanager
def _nothing() -> Iterator[None]:
    yield None
