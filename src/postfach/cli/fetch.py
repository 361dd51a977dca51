"""``postfach fetch``: download mail from POP3 accounts (adapter; see postfach.client.fetch)."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from postfach.client.config import AccountConfig, FetchConfig, parse_config, parse_fingerprint
from postfach.client.errors import FetchConfigError, FetchError
from postfach.client.fetch import FetchReport, fetch_account
from postfach.client.policy import human_size
from postfach.client.statefile import StateFile
from postfach.client.targets import MaildirTarget, MboxTarget, StoreTarget, Target
from postfach.errors import StoreError
from postfach.store.sqlite import SqliteMailstore

__all__ = ["fetch"]


def fail(message: str) -> NoReturn:
    click.echo(f"postfach: error: {message}", err=True)
    sys.exit(1)


def _expand(path: str) -> Path:
    return Path(os.path.expanduser(os.path.expandvars(path)))


def default_config_path(env: dict[str, str]) -> Path:
    base = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "postfach" / "fetch.toml"


def default_state_dir(env: dict[str, str]) -> Path:
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "postfach" / "fetch"


class _RichProgress:
    """A progress bar on stderr for one account's download."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TextColumn("{task.fields[count]}"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self._task: TaskID | None = None
        self._done = 0
        self._total = 0

    def start(self, account: str, messages: int, octets: int) -> None:
        if not messages:
            return
        self._done, self._total = 0, messages
        self._progress.start()
        self._task = self._progress.add_task(account, total=octets, count=f"0/{messages}")

    def advance(self, octets: int) -> None:
        if self._task is not None:
            self._done += 1
            self._progress.update(self._task, advance=octets, count=f"{self._done}/{self._total}")

    def finish(self) -> None:
        if self._task is not None:
            self._progress.stop()
            self._task = None


def _target(account: AccountConfig, obj: Any) -> Target:
    if account.target_kind == "maildir":
        return MaildirTarget(_expand(account.target))
    if account.target_kind == "mbox":
        return MboxTarget(_expand(account.target))
    store = getattr(obj, "store", None)
    if store is None:
        raise FetchError("a postfach target needs the data directory (--data)")
    opened = store()
    assert isinstance(opened, SqliteMailstore)
    return StoreTarget(opened, account.target)


def _summary(account: AccountConfig, target: Target, r: FetchReport) -> str:
    if r.dry_run:
        return (
            f"{account.name} (dry run): {r.server_messages} messages on the server;"
            f" would download {r.planned_download} ({human_size(r.planned_download_octets)})"
            f" into {target.description}, delete {r.planned_delete} on the server,"
            f" leave {r.kept + (0 if r.planned_delete else r.planned_download)} there"
        )
    left = r.server_messages - r.deleted
    recovered = f", {r.recovered} recorded from an interrupted run" if r.recovered else ""
    return (
        f"{account.name}: {r.downloaded} new messages ({human_size(r.downloaded_octets)})"
        f" stored in {target.description}{recovered}; {r.deleted} deleted on the server,"
        f" {left} left there"
    )


def load_config(config_file: Path | None) -> FetchConfig:
    path = config_file or default_config_path(dict(os.environ))
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise FetchConfigError(
            f"no config file {path} (see postfach fetch --help for an example)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FetchConfigError(f"cannot read {path}: {exc}") from None
    return parse_config(text, str(path))


EPILOG = """\b
Example ~/.config/postfach/fetch.toml:
  [account.home]                  # the home PC: download and delete
  host = "pop.example.org"
  user = "alice@example.org"
  password_command = "pass show mail/alice"
  policy = "delete"
  maildir = "~/Mail/INBOX"
\b
  [account.phone]                 # leave mail on the server
  host = "pop.example.org"
  tls = "starttls"                # "tls" (default), "starttls" or "none"
  fingerprint = "SHA256:AB:CD:..." # pin a self-signed certificate
  user = "alice@example.org"
  password_file = "~/.config/postfach/alice.pw"
  policy = "keep-days"            # keep | keep-days | delete |
  keep_days = 14                  # delete-when-deleted-locally
  mbox = "~/mbox"                 # or postfach = "alice@localhost"
"""


@click.command("fetch", epilog=EPILOG)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Accounts file (default ~/.config/postfach/fetch.toml).",
)
@click.option("--account", "names", multiple=True, help="Only this account (repeatable).")
@click.option("--fingerprint", help="Pin the server certificate, SHA256:... (one account).")
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="UIDL state directory (default ~/.local/state/postfach/fetch).",
)
@click.option("-q", "--quiet", is_flag=True, help="Print only warnings and errors (for cron).")
@click.option(
    "-n", "--dry-run", is_flag=True, help="Log in, show what would happen, change nothing."
)
@click.pass_obj
def fetch(
    obj: Any,
    config_file: Path | None,
    names: tuple[str, ...],
    fingerprint: str | None,
    state_dir: Path | None,
    quiet: bool,
    dry_run: bool,
) -> None:
    """Download mail from POP3 accounts into a Maildir, an mbox or a postfach account.

    Each account has a policy: delete (download and delete: the home PC), keep (leave mail on
    the server: the phone), keep-days (delete N days after the first download) or
    delete-when-deleted-locally (Maildir: delete on the server once the local file is gone).
    Nothing is deleted on the server before it is safely stored; a crash or Ctrl-C never
    loses a message and never stores one twice.
    """
    try:
        cfg = load_config(config_file)
        accounts = [cfg.account(n) for n in names] if names else list(cfg.accounts)
        if fingerprint is not None:
            pin = parse_fingerprint(fingerprint)
            if len(accounts) != 1:
                raise FetchConfigError("--fingerprint needs exactly one account (--account NAME)")
            if accounts[0].tls == "none":
                raise FetchConfigError(
                    f'--fingerprint: account {accounts[0].name!r} has tls = "none"'
                )
            accounts[0] = dataclasses.replace(accounts[0], fingerprint=pin)
    except FetchConfigError as exc:
        fail(str(exc))
    directory = state_dir or (
        _expand(cfg.state_dir) if cfg.state_dir else default_state_dir(dict(os.environ))
    )
    err = Console(stderr=True)
    show_progress = not quiet and err.is_terminal
    failed = 0
    for account in accounts:
        try:
            target = _target(account, obj)
            report = fetch_account(
                account,
                target,
                StateFile(directory, account.name),
                expand=_expand,
                dry_run=dry_run,
                progress=_RichProgress(err) if show_progress else None,
            )
        except FetchError as exc:
            click.echo(f"postfach: error: {account.name}: {exc}", err=True)
            failed += 1
            continue
        except (StoreError, OSError) as exc:  # still one line, and the next account runs
            click.echo(f"postfach: error: {account.name}: {exc}", err=True)
            failed += 1
            continue
        for warning in report.warnings:
            click.echo(f"postfach: warning: {account.name}: {warning}", err=True)
        if not quiet:
            click.echo(_summary(account, target, report))
    if failed:
        sys.exit(1)
