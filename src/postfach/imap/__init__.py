"""IMAP4rev2 / IMAP4rev1 server: sans-IO core (wire, parser, commands, view) and asyncio server."""
