"""``postfach demo``: the POP3/IMAP story on a throwaway server (see `postfach.demo`)."""

from __future__ import annotations

import click


@click.command("demo")
@click.option("--lang", type=click.Choice(["en", "de"]), default="en", show_default=True)
@click.option("--pause", is_flag=True, help="Wait for Enter between the steps.")
def demo_command(lang: str, pause: bool) -> None:
    """Show POP3 and IMAP with two devices (a phone and a home PC) on a throwaway server.

    Runs on 127.0.0.1 with a temporary data directory that is removed at the end.
    """
    from postfach.demo import run_demo

    def wait() -> None:
        click.prompt("", default="", show_default=False, prompt_suffix="[Enter] ")

    run_demo(lang=lang, pause=wait if pause else None)
