"""The ``postfach`` command line (click + rich).

Admin commands open the same store as a running server and take effect at once: the server reads
accounts, aliases and quotas from the database on every RCPT and login.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.table import Table

from postfach import __version__
from postfach.auth.passwords import hash_password
from postfach.config import Config, ConfigError, default_data_dir, load_config
from postfach.control import wake_server
from postfach.datadir import StartupError, open_store
from postfach.errors import StoreError
from postfach.quota import format_size, parse_size
from postfach.store.sqlite import SqliteMailstore
from postfach.tls import fingerprint

console = Console()


def fail(message: str) -> NoReturn:
    click.echo(f"postfach: error: {message}", err=True)
    sys.exit(1)


class _LazyGroup(click.Group):
    """Subcommands named in ``lazy`` ("name" -> "module:attribute") are imported when used, so
    `postfach sync` from cron does not first import the server, DNS and DKIM libraries."""

    lazy: dict[str, str] = {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = self.lazy.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module, _, attr = target.partition(":")
        command = getattr(importlib.import_module(module), attr)
        assert isinstance(command, click.Command)
        return command


class _DomainGroup(_LazyGroup):
    lazy = {"dkim": "postfach.cli.dkim:domain_dkim"}


class _Group(_LazyGroup):
    """Turns the errors users cause into one line and exit status 1."""

    lazy = {
        "demo": "postfach.cli.demo:demo_command",
        "fetch": "postfach.cli.fetch:fetch",
        "import": "postfach.cli.transfer:import_command",
        "migrate": "postfach.cli.migrate:migrate_command",
        "export": "postfach.cli.transfer:export_command",
        "queue": "postfach.cli.queue:queue",
        "sync": "postfach.cli.sync:sync_command",
    }

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (StoreError, ConfigError, StartupError) as exc:
            fail(str(exc))
        except PermissionError as exc:
            fail(f"permission denied: {exc.filename}")


#: commands that keep the invoking user: `serve` binds first and drops to [server] user itself;
#: `fetch` and `sync` work on the user's own files
_OWN_USER_COMMANDS = {"serve", "fetch", "sync", None}


#: True when the command line is this process's own (`main`); process-wide settings (umask,
#: switching user) are then ours to change, not when click is invoked in-process (tests)
_own_process = False


def _process_settings(command: str | None, data: Path | None) -> None:
    os.umask(0o077)  # mail, keys and the database are for the server's user only
    if command not in _OWN_USER_COMMANDS:
        # As root, work as the data directory's owner (the user `serve` drops to), so that no
        # database journal, blob directory or key is left that the server cannot open.
        from postfach.privileges import become_data_owner

        become_data_owner(data or default_data_dir(_env()))


class _Ctx:
    def __init__(self, data: Path | None) -> None:
        self.data = data
        self._store: SqliteMailstore | None = None

    @property
    def data_dir(self) -> Path:
        return self.data or default_data_dir(_env())

    def store(self) -> SqliteMailstore:
        if self._store is None:
            # No indexer: the server's catches up (a command must not end waiting for it).
            self._store = open_store(self.data_dir, index_text=False)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def _env() -> dict[str, str]:
    return dict(os.environ)


def _size_option(value: str | None, what: str) -> int | None:
    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError as exc:
        fail(f"{what}: {exc}")


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        password = line.rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not password:
        fail("the password must not be empty")
    return password


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--data",
    # No checks here: the data directory's problems are reported in one line by open_store.
    type=click.Path(path_type=Path, readable=False),
    envvar="POSTFACH_DATA",
    help="Data directory (default $XDG_DATA_HOME/postfach).",
)
@click.version_option(__version__, prog_name="postfach")
@click.pass_context
def cli(ctx: click.Context, data: Path | None) -> None:
    """postfach: a complete mail system (SMTP, POP3, IMAP) in one package."""
    if _own_process:
        _process_settings(ctx.invoked_subcommand, data)
    obj = _Ctx(data)
    ctx.obj = obj
    ctx.call_on_close(obj.close)


# ---- serve ----------------------------------------------------------------------------------


@cli.command()
@click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("-v", "--verbose", is_flag=True, help="Log every event (debug level).")
@click.pass_obj
def serve(obj: _Ctx, config_file: Path | None, verbose: bool) -> None:
    """Run the server (SMTP, submission, POP3, IMAP) until SIGTERM or Ctrl-C.

    SIGHUP reloads the TLS certificate and key (new connections use them)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's chatty logger
    cfg = load_config(obj.data, config_file=config_file)
    first_run = not (cfg.data_dir / "postfach.db").exists()

    def reload() -> Config:
        return load_config(obj.data, config_file=config_file)

    if cfg.workers > 1:
        from postfach.supervisor import Supervisor  # worker processes (postfach.supervisor)

        def banner(addresses: dict[str, tuple[str, int]], no_accounts: bool) -> None:
            _banner(cfg, addresses, first_run or no_accounts, workers=cfg.workers)

        code = Supervisor(cfg, reload, banner).run()
        if code:
            sys.exit(code)
        return
    asyncio.run(_serve(cfg, first_run, reload))


def _banner(
    cfg: Config, addresses: dict[str, tuple[str, int]], no_accounts: bool, workers: int = 1
) -> None:
    out = Console(stderr=False)
    out.print(f"postfach {__version__} serving mail for [bold]{cfg.hostname}[/bold]")
    out.print(f"data directory: {cfg.data_dir}")
    out.print(f"certificate: {cfg.cert_path} (SHA256 {fingerprint(cfg.cert_path)})")
    if workers > 1:
        out.print(f"worker processes: {workers}")
    for name, (host, port) in addresses.items():
        shown = f"[{host}]" if ":" in host else host
        out.print(f"  {name:<12} {shown}:{port}")
    if no_accounts:
        out.print(
            "\nNo accounts yet. Next, in another terminal:\n"
            f"  postfach --data {cfg.data_dir} user add alice@localhost --quota 50M"
        )
    sys.stdout.flush()


async def _serve(cfg: Config, first_run: bool, reload: Callable[[], Config]) -> None:
    from postfach.app import App  # the whole server: imported only by `serve`

    app = App(cfg, config_loader=reload)
    await app.start()
    assert app.store is not None
    _banner(cfg, app.addresses, first_run or not app.store.list_accounts())
    await app.serve_forever()


# ---- domains --------------------------------------------------------------------------------


@cli.group(cls=_DomainGroup)
def domain() -> None:
    """Manage the domains this server receives mail for."""


@domain.command("add")
@click.argument("name")
@click.pass_obj
def domain_add(obj: _Ctx, name: str) -> None:
    """Add a local domain."""
    if ("." not in name and name.lower() != "localhost") or "@" in name or " " in name:
        fail(f"not a domain name: {name!r}")
    obj.store().add_domain(name)
    name = name.lower()
    console.print(f"added domain {name}")
    # RFC 5321 §4.5.1: postmaster@ every domain must be accepted; without a route of its own
    # it reaches the server's postmaster (docs/conformance.md, "postmaster").
    console.print(
        f"mail to postmaster@{name} goes to the server's postmaster; to choose: "
        f"postfach alias add postmaster@{name} ADDRESS"
    )


@domain.command("list")
@click.pass_obj
def domain_list(obj: _Ctx) -> None:
    """List local domains."""
    store = obj.store()
    table = Table("domain", "accounts")
    for d in store.list_domains():
        table.add_row(d.name, str(len(store.list_accounts(d.name))))
    console.print(table)


@domain.command("del")
@click.argument("name")
@click.pass_obj
def domain_del(obj: _Ctx, name: str) -> None:
    """Delete a domain that has no accounts left."""
    obj.store().delete_domain(name)
    console.print(f"deleted domain {name.lower()}")


# ---- users ----------------------------------------------------------------------------------


@cli.group()
def user() -> None:
    """Manage accounts (mailboxes)."""


@user.command("add")
@click.argument("address")
@click.option("--quota", help="Mailbox size limit, e.g. 50M or 2G (default: unlimited).")
@click.option("--max-messages", type=click.IntRange(min=0), default=0, help="0 = unlimited.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.pass_obj
def user_add(
    obj: _Ctx, address: str, quota: str | None, max_messages: int, password_stdin: bool
) -> None:
    """Add an account, e.g. alice@example.org."""
    limit = _size_option(quota, "--quota")
    store = obj.store()
    if "@" not in address:
        fail(f"not an address: {address!r} (use user@domain)")
    if store.get_account(address) is not None:
        fail(f"account {address.lower()} exists already")
    password = _read_password(password_stdin)
    acc = store.add_account(address, hash_password(password), limit or 0, max_messages)
    console.print(f"added {acc.name} (quota {format_size(acc.quota_bytes)})")


@user.command("list")
@click.option("--domain", "domain_name", help="Only this domain.")
@click.pass_obj
def user_list(obj: _Ctx, domain_name: str | None) -> None:
    """List accounts with their quota usage."""
    table = Table("account", "used", "quota", "messages", "use")
    for a in obj.store().list_accounts(domain_name):
        pct = f"{100 * a.used_bytes / a.quota_bytes:.0f}%" if a.quota_bytes else "-"
        msgs = f"{a.used_messages}" + (f"/{a.quota_messages}" if a.quota_messages else "")
        table.add_row(a.name, format_size(a.used_bytes) if a.used_bytes else "0",
                      format_size(a.quota_bytes), msgs, pct)  # fmt: skip
    console.print(table)


@user.command("del")
@click.argument("address")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def user_del(obj: _Ctx, address: str, yes: bool) -> None:
    """Delete an account and all its mail."""
    store = obj.store()
    acc = store.get_account(address)
    if acc is None:
        fail(f"no account {address.lower()}")
    if not yes and sys.stdin.isatty():
        click.confirm(f"Delete {acc.name} and its {acc.used_messages} messages?", abort=True)
    store.delete_account(address)
    console.print(f"deleted {acc.name}")
    wake_server(obj.data_dir)  # a running server ends the account's sessions now


@user.command("set")
@click.argument("address")
@click.argument("key")
@click.argument("value")
@click.pass_obj
def user_set(obj: _Ctx, address: str, key: str, value: str) -> None:
    """Change an account setting, e.g. `sent_copy auto` (copy submitted mail to Sent)."""
    acc = obj.store().set_account_setting(address, key, value)
    console.print(f"{acc.name}: {key} = {value}")


@user.command("passwd")
@click.argument("address")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.pass_obj
def user_passwd(obj: _Ctx, address: str, password_stdin: bool) -> None:
    """Set an account's password."""
    store = obj.store()
    if store.get_account(address) is None:
        fail(f"no account {address.lower()}")
    store.set_password(address, hash_password(_read_password(password_stdin)))
    console.print(f"password changed for {address.lower()}")


@user.command("quota")
@click.argument("address")
@click.argument("size", required=False)
@click.option("--max-messages", type=click.IntRange(min=0), help="0 = unlimited.")
@click.pass_obj
def user_quota(obj: _Ctx, address: str, size: str | None, max_messages: int | None) -> None:
    """Show or set an account's quota (SIZE like 50M, or unlimited)."""
    store = obj.store()
    acc = store.get_account(address)
    if acc is None:
        fail(f"no account {address.lower()}")
    if size is not None or max_messages is not None:
        limit = _size_option(size, "SIZE")
        acc = store.set_quota(
            address,
            acc.quota_bytes if limit is None else limit,
            acc.quota_messages if max_messages is None else max_messages,
        )
    console.print(
        f"{acc.name}: {acc.used_bytes} bytes in {acc.used_messages} messages;"
        f" quota {format_size(acc.quota_bytes)}"
        + (f", at most {acc.quota_messages} messages" if acc.quota_messages else "")
    )


# ---- aliases --------------------------------------------------------------------------------


@cli.group()
def alias() -> None:
    """Manage aliases (info@example.org -> alice@example.org, or @example.org catch-all)."""


@alias.command("add")
@click.argument("address")
@click.argument("target")
@click.pass_obj
def alias_add(obj: _Ctx, address: str, target: str) -> None:
    """Deliver mail for ADDRESS (or @domain: catch-all) to TARGET."""
    obj.store().add_alias(address, target)
    console.print(f"{address.lower()} -> {target.lower()}")


@alias.command("list")
@click.pass_obj
def alias_list(obj: _Ctx) -> None:
    """List aliases."""
    table = Table("alias", "delivers to")
    for a in obj.store().list_aliases():
        table.add_row(a.address, ", ".join(a.targets))
    console.print(table)


@alias.command("del")
@click.argument("address")
@click.argument("target", required=False)
@click.pass_obj
def alias_del(obj: _Ctx, address: str, target: str | None) -> None:
    """Delete an alias (all its targets, or just TARGET)."""
    obj.store().delete_alias(address, target)
    console.print(f"deleted {address.lower()}" + (f" -> {target.lower()}" if target else ""))


# ---- check ----------------------------------------------------------------------------------


@cli.command()
@click.option("--repair", is_flag=True, help="Correct what was found.")
@click.pass_obj
def check(obj: _Ctx, repair: bool) -> None:
    """Recompute quota usage and blob references; report (and with --repair fix) drift."""
    report = obj.store().check(repair=repair)
    for line in report.quota_drift + report.blob_drift:
        console.print(f"drift: {line}")
    if report.clean:
        console.print("ok: quota usage and blob references match the stored messages")
        return
    if repair:
        console.print("repaired")
        return
    sys.exit(2)


def main() -> None:
    global _own_process
    _own_process = True
    cli(prog_name="postfach")


if __name__ == "__main__":
    main()
