"""``postfach sync``: keep IMAP accounts and local Maildirs in step (adapter).

See `postfach.client.sync` for how; this module reads ``sync.toml``, the password, takes the
per-Maildir lock, and prints one summary line per account (and per changed folder).
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click

from postfach.client.credentials import parse_fingerprint
from postfach.client.errors import FetchConfigError
from postfach.client.imap import ImapClient, ImapError
from postfach.client.parse import ProtocolError
from postfach.client.password import read_password as shared_read_password
from postfach.client.sync.account import (
    SyncAccount,
    SyncConfig,
    SyncConfigError,
    default_state_path,
    parse_config,
)
from postfach.client.sync.engine import (
    Syncer,
    SyncOptions,
    SyncReport,
    WatchLimits,
    watch,
)
from postfach.client.sync.maildir import Maildir
from postfach.client.sync.plan import Mode
from postfach.client.sync.state import StateError, SyncState

__all__ = ["connect", "open_account", "sync_command"]


class SyncError(Exception):
    """One line for the user about one account."""


def fail(message: str) -> NoReturn:
    click.echo(f"postfach: error: {message}", err=True)
    sys.exit(1)


def expand(path: str) -> Path:
    return Path(os.path.expanduser(os.path.expandvars(path)))


def default_config_path(env: dict[str, str]) -> Path:
    base = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "postfach" / "sync.toml"


def load_config(config_file: Path | None) -> SyncConfig:
    path = config_file or default_config_path(dict(os.environ))
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise SyncConfigError(
            f"no config file {path} (see postfach sync --help for an example)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SyncConfigError(f"cannot read {path}: {exc}") from None
    return parse_config(text, str(path))


def read_password(account: SyncAccount) -> str:
    """``password_command`` or ``password_file``, as ``postfach fetch`` reads them."""
    return shared_read_password(account.password_command, account.password_file, expand, SyncError)


def connect(account: SyncAccount, password: str, ignore: tuple[str, ...] = ()) -> ImapClient:
    client = ImapClient(
        account.host,
        account.port,
        tls=account.tls,
        fingerprint=account.fingerprint,
        ca_file=str(expand(account.ca_file)) if account.ca_file else None,
        timeout=account.timeout,
        ignore=ignore,
    )
    try:
        client.connect()
        client.login(account.user, password)
    except BaseException:
        client.close()
        raise
    return client


@contextmanager
def open_account(account: SyncAccount) -> Iterator[tuple[Maildir, SyncState]]:
    """The Maildir and the state, under an exclusive lock (one sync per Maildir at a time)."""
    root = expand(account.maildir)
    state_path = expand(account.state or default_state_path(account.maildir))
    state_path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = state_path.with_name(state_path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SyncError(f"another postfach sync is using {root} ({lock_path})") from None
        state = SyncState(state_path)
        try:
            state.claim(account.server)
            yield Maildir(root, fsync=account.fsync), state
        finally:
            state.close()
    finally:
        os.close(fd)


def summary(account: SyncAccount, report: SyncReport) -> list[str]:
    lines = []
    changed = [f for f in report.folders.values() if f.changes or f.uidvalidity_changed]
    total = {
        "down": sum(f.downloaded for f in changed),
        "up": sum(f.uploaded for f in changed),
        "flags": sum(f.flags_local + f.flags_server for f in changed),
        "deleted": sum(f.deleted_local + f.deleted_server for f in changed),
    }
    lines.append(
        f"{account.name}: {len(report.folders)} folders, {len(changed)} changed;"
        f" {total['down']} downloaded, {total['up']} uploaded, {total['flags']} flag changes,"
        f" {total['deleted']} deleted; {report.commands} IMAP commands"
    )
    for f in changed:
        parts = [
            f"{n} {what}"
            for n, what in (
                (f.downloaded, "downloaded"), (f.uploaded, "uploaded"), (f.paired, "paired"),
                (f.flags_local, "flags set locally"), (f.flags_server, "flags set on the server"),
                (f.deleted_local, "deleted locally"), (f.deleted_server, "deleted on the server"),
            )
            if n
        ]  # fmt: skip
        if f.uidvalidity_changed:
            parts.insert(0, "UIDVALIDITY changed")
        lines.append(f"  {f.name}: " + ", ".join(parts))
    lines += [f"  {a}" for a in report.folder_actions]
    return lines


EPILOG = """\b
Example ~/.config/postfach/sync.toml:
  [account.home]
  host = "imap.example.org"
  tls = "tls"                      # "tls" (default, port 993), "starttls" or "none"
  fingerprint = "SHA256:AB:CD:..." # pin a self-signed certificate
  user = "alice@example.org"
  password_command = "pass show mail/alice"   # or password_file = "..."
  maildir = "~/Mail/alice"         # INBOX there, other folders as .Name (Maildir++)
\b
Flags are merged per flag against the last synced state: a change on either side wins over
no change, changes to different flags are all kept; deletions win over flag changes.
"""


@click.command("sync", epilog=EPILOG)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Accounts file (default ~/.config/postfach/sync.toml).",
)
@click.option("--account", "names", multiple=True, help="Only this account (repeatable).")
@click.option("--fingerprint", help="Pin the server certificate, SHA256:... (one account).")
@click.option("--pull", is_flag=True, help="One way: server to Maildir; never write the server.")
@click.option("--watch", "watch_mode", is_flag=True, help="Keep syncing: IDLE, sync on change.")
@click.option(
    "--watch-seconds",
    type=click.FloatRange(min=0, min_open=True),
    help="With --watch: stop after this many seconds (default: run until interrupted).",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="With --watch: a full sync at least this often (seconds).",
)
@click.option("-q", "--quiet", is_flag=True, help="Print only warnings and errors (for cron).")
@click.option("-v", "--verbose", is_flag=True, help="Log every IMAP command (debug level).")
@click.pass_obj
def sync_command(
    obj: Any,
    config_file: Path | None,
    names: tuple[str, ...],
    fingerprint: str | None,
    pull: bool,
    watch_mode: bool,
    watch_seconds: float | None,
    interval: float,
    quiet: bool,
    verbose: bool,
) -> None:
    """Sync every folder of IMAP accounts with local Maildirs, both ways.

    New messages, flags, deletions, new and renamed folders go both ways; a message written
    into the local Sent folder is uploaded, so every device sees it. With --pull nothing is
    written to the server. A second run with nothing changed costs one LIST command.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        cfg = load_config(config_file)
        accounts = [cfg.account(n) for n in names] if names else list(cfg.accounts)
        if fingerprint is not None:
            if len(accounts) != 1:
                raise SyncConfigError("--fingerprint needs exactly one account (--account NAME)")
            try:
                pinned = parse_fingerprint(fingerprint)
            except FetchConfigError as exc:
                raise SyncConfigError(str(exc)) from None
            accounts[0] = dataclasses.replace(accounts[0], fingerprint=pinned)
        if watch_mode and len(accounts) != 1:
            raise SyncConfigError("--watch needs exactly one account (--account NAME)")
    except SyncConfigError as exc:
        fail(str(exc))
    options = SyncOptions(mode=Mode.PULL if pull else Mode.SYNC)
    failed = 0
    for account in accounts:
        try:
            run_account(account, options, quiet, watch_mode, watch_seconds, interval)
        except (SyncError, StateError, ImapError, ProtocolError, OSError) as exc:
            click.echo(f"postfach: error: {account.name}: {exc}", err=True)
            failed += 1
        except KeyboardInterrupt:
            click.echo(f"postfach: {account.name}: interrupted", err=True)
            sys.exit(130)
    if failed:
        sys.exit(1)


def run_account(
    account: SyncAccount,
    options: SyncOptions,
    quiet: bool,
    watch_mode: bool = False,
    watch_seconds: float | None = None,
    interval: float = 300.0,
) -> None:
    password = read_password(account)

    def show(report: SyncReport) -> None:
        for line in report.conflicts:
            click.echo(f"postfach: warning: {account.name}: conflict: {line}", err=True)
        for line in report.errors:
            click.echo(f"postfach: error: {account.name}: {line}", err=True)
        if not quiet:
            for line in summary(account, report):
                click.echo(line)

    with open_account(account) as (maildir, state):
        if watch_mode:
            limits = WatchLimits(duration=watch_seconds, interval=interval)
            watch(lambda: connect(account, password), maildir, state, options, limits, show)
            return
        client = connect(account, password)
        syncer = Syncer(client, maildir, state, options)
        try:
            report = syncer.run()
        finally:
            syncer.close()
            client.logout()
        show(report)
        if report.errors:
            raise SyncError(f"{len(report.errors)} folder(s) failed")


if __name__ == "__main__":  # ``python -m postfach.cli.sync``: without the admin CLI's imports
    sync_command(prog_name="postfach sync")
