"""Where ``postfach fetch``, ``sync`` and ``migrate`` get an account's password: the first line
of ``password_command``'s output or of ``password_file`` (never the command line)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def read_password(
    command: str | tuple[str, ...] | None,
    file: str | None,
    expand: Callable[[str], Path],
    error: type[Exception],
) -> str:
    """The password, or ``error`` with one line for the user. ``password_file`` must not be
    readable by group or others."""
    if command is not None:
        import subprocess  # only here: most runs read a file, and start-up is most of a sync

        try:
            out = subprocess.run(
                list(command) if isinstance(command, tuple) else ["/bin/sh", "-c", command],
                capture_output=True,
                timeout=120,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise error(f"password_command failed: {exc}") from None
        if out.returncode != 0:
            detail = out.stderr.decode("utf-8", "replace").strip().splitlines()
            raise error(
                f"password_command exited with status {out.returncode}"
                + (f": {detail[0]}" if detail else "")
            )
        text = out.stdout.decode("utf-8", "replace")
        source = "password_command"
    else:
        assert file is not None
        path = expand(file)
        try:
            if os.stat(path).st_mode & 0o077:
                raise error(f"password_file {path} is readable by others; chmod 600 it")
            text = path.read_text("utf-8")
        except OSError as exc:
            raise error(f"cannot read password_file {path}: {exc.strerror}") from None
        source = "password_file"
    password = text.splitlines()[0] if text else ""
    if not password:
        raise error(f"{source} gave an empty password")
    return password
