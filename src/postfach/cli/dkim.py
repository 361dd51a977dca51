"""``postfach domain dkim DOMAIN``: the DKIM key's DNS record (the key is made on first use)."""

from __future__ import annotations

from pathlib import Path

import click

from postfach.config import ConfigError, load_config
from postfach.dkim import DkimKeys


@click.command("dkim")
@click.argument("domain")
@click.option("--selector", help="DKIM selector (default from [submission] dkim_selector).")
def domain_dkim(domain: str, selector: str | None) -> None:
    """Print the DNS TXT record that publishes DOMAIN's DKIM key."""
    root = click.get_current_context().find_root().obj
    data: Path = root.data_dir
    if ("." not in domain and domain.lower() != "localhost") or "@" in domain or "/" in domain:
        click.echo(f"postfach: error: not a domain name: {domain!r}", err=True)
        raise SystemExit(1)
    try:
        sel = selector or load_config(data).submission.dkim_selector
    except ConfigError:
        sel = selector or "postfach"
    keys = DkimKeys(data, sel)
    click.echo(keys.zone_record(domain))
