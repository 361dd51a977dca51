"""Whom a server started as root becomes, and when it refuses to start (no process changes)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from postfach import privileges
from postfach.config import ConfigError, load_config
from postfach.datadir import StartupError


def test_lookup_refuses_unknown_users_and_root() -> None:
    with pytest.raises(ConfigError, match="no such user"):
        privileges.lookup("no-such-user-postfach")
    with pytest.raises(ConfigError, match="is root"):
        privileges.lookup("root")
    nobody = privileges.lookup("nobody")
    assert nobody.uid != 0 and nobody.name == "nobody"


def test_root_without_user_refuses_privileged_ports_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    default = load_config(tmp_path, env={})
    assert privileges.plan(default) is None  # 2525, 2110, ...: started, with a warning
    low = load_config(tmp_path, env={"POSTFACH_IMAPS": "127.0.0.1:993"})
    with pytest.raises(StartupError, match=r"imaps on privileged port 127\.0\.0\.1:993"):
        privileges.plan(low)
    who = privileges.plan(replace(low, user="nobody"))
    assert who is not None and who.name == "nobody"


def test_existing_data_directory_of_another_owner_is_refused(tmp_path: Path) -> None:
    nobody = privileges.lookup("nobody")
    if os.stat(tmp_path).st_uid == nobody.uid:  # pragma: no cover - only when run as nobody
        pytest.skip("tmp_path belongs to nobody")
    with pytest.raises(StartupError, match="chown -R nobody"):
        privileges.prepare_data_dir(tmp_path, nobody)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_new_data_directory_belongs_to_the_user_and_its_parents_stay_open(tmp_path: Path) -> None:
    nobody = privileges.lookup("nobody")
    data = tmp_path / "var" / "lib" / "postfach"
    old = os.umask(0o077)  # as in `postfach serve`
    try:
        privileges.prepare_data_dir(data, nobody)
    finally:
        os.umask(old)
    st = data.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (nobody.uid, nobody.gid, 0o700)
    assert [(p.stat().st_mode & 0o777) for p in (data.parent, data.parent.parent)] == [0o755] * 2
    privileges.prepare_data_dir(data, nobody)  # exists and is the user's: nothing to do
