"""``postfach fetch`` against real POP3 servers on loopback: postfach itself, a private Dovecot
(when installed), and a scripted fake for what real servers will not do on request.

The source document's set-up runs through these tests: the home PC downloads and deletes, the
phone leaves mail on the server, and when every client leaves mail there, the mailbox fills up
and fetch says so.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fetchkit import (
    FakePop3,
    Pop3Box,
    Setup,
    dovecot_box,
    fetch,
    ids,
    maildir_ids,
    mbox_ids,
    messages,
    mid,
    one_error_line,
    postfach_box,
    run_cli,
    store_ids,
)

from postfach.app import open_store
from postfach.cli.fetch import _target
from postfach.client.config import parse_config
from postfach.client.errors import FetchError
from postfach.client.fetch import FetchReport, fetch_account
from postfach.client.policy import DAY
from postfach.client.statefile import StateFile
from postfach.client.targets import MaildirTarget, MboxTarget, StoreTarget
from postfach.store.sqlite import SqliteMailstore
from postfach.tls import fingerprint
from support import RunningServer, start_server

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["postfach", "dovecot"])
def box(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pop3Box]:
    """The same tests against postfach's POP3 server and against Dovecot's."""
    if request.param == "postfach":
        srv = start_server(tmp_path / "data")
        try:
            yield postfach_box(srv)
        finally:
            srv.stop()
        return
    if shutil.which("dovecot") is None:
        pytest.skip("dovecot is not installed")
    if os.geteuid() != 0:
        pytest.skip("the private Dovecot gives its mail to the nobody user, which needs root")
    with dovecot_box() as b:
        yield b


@pytest.fixture
def pbox(server: RunningServer) -> Pop3Box:
    return postfach_box(server)


@pytest.fixture
def local(tmp_path: Path) -> Iterator[SqliteMailstore]:
    """A second postfach data directory with the account fetch delivers into."""
    store = open_store(tmp_path / "local")
    store.add_account("bob@localhost", "!no-login", 0, 0)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


def direct(setup: Setup, name: str, store: SqliteMailstore | None = None, **kw: Any) -> FetchReport:
    """One run through the API (for injected crashes and a controlled clock)."""
    account = parse_config(setup.config.read_text()).account(name)
    target = _target(account, SimpleNamespace(store=lambda: store) if store else None)
    return fetch_account(account, target, StateFile(setup.state, name), **kw)


def landed(kind: str, dest: Path | str, store: SqliteMailstore | None = None) -> list[str]:
    if kind == "maildir":
        return maildir_ids(Path(dest))
    if kind == "mbox":
        return mbox_ids(Path(dest))
    assert store is not None
    return store_ids(store, str(dest))


# ---- the policies ---------------------------------------------------------------------------


def test_delete_policy_is_the_home_pc(box: Pop3Box, setup: Setup) -> None:
    box.put(messages("a", 3))
    dest = setup.add("home", box, policy="delete")
    r = fetch(setup)
    assert r.exit_code == 0, r.stderr
    assert "home: 3 new messages" in r.stdout and "3 deleted on the server, 0 left" in r.stdout
    assert maildir_ids(Path(dest)) == ids("a", 3)
    assert box.count() == 0
    box.put(messages("b", 2))
    assert fetch(setup).exit_code == 0
    assert maildir_ids(Path(dest)) == sorted(ids("a", 3) + ids("b", 2))
    assert box.count() == 0


def test_keep_policy_is_the_phone(box: Pop3Box, setup: Setup) -> None:
    box.put(messages("a", 3))
    dest = setup.add("phone", box, policy="keep", target="mbox")
    for _ in range(2):
        r = fetch(setup)
        assert r.exit_code == 0, r.stderr
    assert "0 new messages" in r.stdout and "3 left there" in r.stdout
    assert mbox_ids(Path(dest)) == ids("a", 3)
    assert box.count() == 3
    box.put(messages("b", 1))
    assert fetch(setup).exit_code == 0
    assert mbox_ids(Path(dest)) == sorted(ids("a", 3) + ids("b", 1))
    assert box.count() == 4


def test_phone_then_home_pc_both_get_everything(box: Pop3Box, setup: Setup) -> None:
    """The source document's advice: the phone leaves mail on the server, the home PC later
    downloads and deletes it, and so holds the complete mail."""
    phone = setup.add("phone", box, policy="keep", extra="warn_after_runs = 2")
    home = setup.add("home", box, policy="delete")
    for i in range(4):
        box.put(messages(f"r{i}-", 2))
        r = fetch(setup, "--account", "phone")
        assert r.exit_code == 0 and r.stderr == "", r.stderr
        if i % 2:
            assert fetch(setup, "--account", "home").exit_code == 0
            assert box.count() == 0
    everything = sorted(x for i in range(4) for x in ids(f"r{i}-", 2))
    assert maildir_ids(Path(phone)) == everything
    assert maildir_ids(Path(home)) == everything
    # The phone's state forgets what the home PC deleted.
    assert fetch(setup, "--account", "phone").exit_code == 0
    state = parse_state(setup, "phone")
    assert state["known"] == {}


def parse_state(setup: Setup, name: str) -> dict[str, Any]:
    import json

    data = json.loads((setup.state / f"{name}.json").read_text())
    assert isinstance(data, dict)
    return data


def test_both_clients_keeping_mail_warns_that_the_mailbox_fills_up(
    box: Pop3Box, setup: Setup
) -> None:
    setup.add("phone", box, policy="keep", extra="warn_after_runs = 3")
    setup.add("laptop", box, policy="keep-days", extra="keep_days = 30\nwarn_after_runs = 3")
    warned = []
    for i in range(5):
        box.put(messages(f"g{i}-", 1, size=2000))
        r = fetch(setup, "--quiet")
        assert r.exit_code == 0 and r.stdout == ""
        warned.append(r.stderr)
    assert warned[:3] == ["", "", ""]
    for name in ("phone", "laptop"):
        assert f"postfach: warning: {name}: mail is left on the server" in warned[3]
    assert "grew on each of the last 3 runs" in warned[4] and "bounces" in warned[4]
    assert len(warned[4].strip().splitlines()) == 2


def test_no_warning_while_another_client_deletes(box: Pop3Box, setup: Setup) -> None:
    setup.add("phone", box, policy="keep", extra="warn_after_runs = 2")
    for i in range(5):
        box.put(messages(f"n{i}-", 2))
        r = fetch(setup)
        assert r.stderr == "", r.stderr
        if i % 2:  # another client (the home PC) downloads and deletes now and then
            delete_everything(box)


def delete_everything(box: Pop3Box) -> None:
    import poplib

    p = poplib.POP3(box.host, box.port, timeout=30)
    p.user(box.user)
    p.pass_(box.password)
    for n in range(1, p.stat()[0] + 1):
        p.dele(n)
    p.quit()


def test_server_quota_warning(box: Pop3Box, setup: Setup) -> None:
    box.put(messages("q", 3, size=4000))
    setup.add("phone", box, policy="keep", extra='server_quota = "12K"')
    r = fetch(setup, "-q")
    assert r.exit_code == 0
    assert "of its 12.0K quota" in r.stderr


def test_keep_days_deletes_after_n_days(box: Pop3Box, setup: Setup) -> None:
    t0 = 1_800_000_000
    box.put(messages("k", 3))
    dest = setup.add("a", box, policy="keep-days", extra="keep_days = 2")
    r = direct(setup, "a", now=lambda: t0)
    assert (r.downloaded, r.deleted) == (3, 0)
    box.put(messages("l", 1))
    r = direct(setup, "a", now=lambda: t0 + DAY)
    assert (r.downloaded, r.deleted) == (1, 0)
    r = direct(setup, "a", now=lambda: t0 + 2 * DAY)
    assert (r.downloaded, r.deleted) == (0, 3)
    assert box.count() == 1
    r = direct(setup, "a", now=lambda: t0 + 3 * DAY + 1)
    assert (r.downloaded, r.deleted) == (0, 1)
    assert box.count() == 0
    assert maildir_ids(Path(dest)) == sorted(ids("k", 3) + ids("l", 1))


def test_keep_zero_days_deletes_at_once(box: Pop3Box, setup: Setup) -> None:
    box.put(messages("z", 2))
    setup.add("a", box, policy="keep-days", extra="keep_days = 0")
    assert fetch(setup).exit_code == 0
    assert box.count() == 0


def test_delete_when_deleted_locally(box: Pop3Box, setup: Setup) -> None:
    box.put(messages("d", 4))
    dest = Path(setup.add("a", box, policy="delete-when-deleted-locally"))
    assert fetch(setup).exit_code == 0
    files = {mid((dest / "new" / n).read_bytes()): n for n in os.listdir(dest / "new")}
    assert box.count() == 4
    # A mail program deletes one, marks one trashed, reads one, leaves one alone.
    (dest / "new" / files["d0@remote.example"]).unlink()
    name = files["d1@remote.example"]
    os.rename(dest / "new" / name, dest / "cur" / f"{name}:2,ST")
    name = files["d2@remote.example"]
    os.rename(dest / "new" / name, dest / "cur" / f"{name}:2,S")
    r = fetch(setup)
    assert r.exit_code == 0 and "2 deleted on the server, 2 left" in r.stdout
    assert box.count() == 2
    assert fetch(setup).exit_code == 0 and box.count() == 2
    assert len(maildir_ids(dest)) == 3
    # A Maildir that went away (an unmounted disk) is not "everything deleted locally".
    os.rename(dest, dest.with_name("elsewhere"))
    assert "is missing" in one_error_line(fetch(setup))
    assert box.count() == 2 and not dest.exists()


def test_dry_run_changes_nothing(box: Pop3Box, setup: Setup) -> None:
    box.put(messages("y", 2))
    dest = setup.add("a", box, policy="delete")
    r = fetch(setup, "--dry-run")
    assert r.exit_code == 0, r.stderr
    assert "a (dry run): 2 messages on the server; would download 2" in r.stdout
    assert "delete 2 on the server" in r.stdout
    assert box.count() == 2 and not Path(dest).exists()
    assert not (setup.state / "a.json").exists()


def test_postfach_account_target(box: Pop3Box, setup: Setup, local: SqliteMailstore) -> None:
    box.put(messages("p", 3))
    setup.add("a", box, policy="keep", target="postfach")
    r = fetch(setup, data=local.directory)
    assert r.exit_code == 0, r.stderr
    assert "stored in postfach account bob@localhost" in r.stdout
    assert store_ids(local, "bob@localhost") == ids("p", 3)
    assert fetch(setup, data=local.directory).exit_code == 0
    assert store_ids(local, "bob@localhost") == ids("p", 3)


def test_postfach_target_over_quota_deletes_nothing(
    pbox: Pop3Box, setup: Setup, local: SqliteMailstore
) -> None:
    local.set_quota("bob@localhost", 0, 2)
    pbox.put(messages("o", 5))
    setup.add("a", pbox, policy="delete", target="postfach")
    r = fetch(setup, data=local.directory)
    assert "over its quota" in one_error_line(r)
    assert pbox.count() == 5  # nothing deleted: nothing more could be stored


# ---- crashes, kills and cut connections -------------------------------------------------------


class Crash(Exception):
    pass


@pytest.mark.parametrize("kind", ["maildir", "mbox", "postfach"])
@pytest.mark.parametrize("point", ["after-write", "after-sync"])
def test_crash_between_storing_and_recording(
    box: Pop3Box,
    setup: Setup,
    local: SqliteMailstore,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    point: str,
) -> None:
    """Raise right after a message was written (or after a batch was made durable), before
    the state records it; the next run loses nothing and stores nothing twice."""
    box.put(messages("c", 12))
    dest = setup.add("a", box, policy="delete", target=kind)
    cls: Any = {"maildir": MaildirTarget, "mbox": MboxTarget, "postfach": StoreTarget}[kind]
    method = "put" if point == "after-write" else "flush"
    original = getattr(cls, method)
    calls = {"n": 0}
    fail_at = 6 if method == "put" else 2

    def crashing(self: Any, *args: Any) -> None:
        original(self, *args)
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise Crash

    monkeypatch.setattr(cls, method, crashing)
    with pytest.raises(Crash):
        direct(setup, "a", local, window=4)
    monkeypatch.undo()
    assert box.count() == 12  # nothing deleted on the server
    before = landed(kind, dest, local)
    assert len(before) >= 4
    r = direct(setup, "a", local, window=4)
    assert landed(kind, dest, local) == ids("c", 12)
    # Only what the journal had not confirmed is looked at again; a Maildir file name proves
    # its message stored without downloading it.
    assert r.downloaded + r.recovered == 12 - 4
    if kind == "maildir":
        assert r.recovered == {"after-write": 2, "after-sync": 4}[point]
    assert box.count() == 0
    r = direct(setup, "a", local, window=4)
    assert r.downloaded == 0 and landed(kind, dest, local) == ids("c", 12)


def test_kill_9_loses_nothing_and_doubles_nothing(pbox: Pop3Box, setup: Setup) -> None:
    """A real process, killed with SIGKILL while it stores mail, then run again."""
    n = 1500
    pbox.put(messages("kill", n))
    dest = Path(setup.add("a", pbox, policy="delete"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTFACH_")}
    argv = [sys.executable, "-m", "postfach", "fetch", "--config", str(setup.config), "-q"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        new = dest / "new"
        if new.is_dir() and len(os.listdir(new)) >= 200:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"not killed: {proc.returncode} {err!r}"
    assert pbox.count() == n
    for _ in range(50):  # the server may take a moment to see the dead session's socket close
        r = fetch(setup)
        if "in use" not in r.stderr:
            break
        time.sleep(0.1)
    assert r.exit_code == 0, r.stderr
    assert maildir_ids(dest) == ids("kill", n)
    assert pbox.count() == 0


def test_connection_cut_in_the_middle_of_retr(setup: Setup) -> None:
    fake = FakePop3(messages("cut", 10))
    try:
        fake.cut_in_retr = 4
        dest = setup.add("a", fake.box(), policy="keep")
        r = fetch(setup)
        assert "the server closed the connection during RETR" in one_error_line(r)
        assert maildir_ids(Path(dest)) == ids("cut", 3)  # what arrived before the cut
        fake.commands.clear()
        r = fetch(setup)
        assert r.exit_code == 0, r.stderr
        assert maildir_ids(Path(dest)) == ids("cut", 10)
        # What arrived before the cut was kept, not downloaded again.
        assert [c for c in fake.commands if c.startswith("RETR")] == [
            f"RETR {i}" for i in range(4, 11)
        ]
    finally:
        fake.close()


def test_connection_cut_with_delete_policy_deletes_nothing(setup: Setup) -> None:
    fake = FakePop3(messages("cd", 5))
    try:
        fake.cut_in_retr = 5
        dest = setup.add("a", fake.box(), policy="delete", target="mbox")
        one_error_line(fetch(setup))
        assert len(fake.messages) == 5 and not any(c.startswith("DELE") for c in fake.commands)
        assert fetch(setup).exit_code == 0
        assert mbox_ids(Path(dest)) == ids("cd", 5) and fake.messages == []
    finally:
        fake.close()


def test_server_without_uidl_is_refused_in_keep_modes(setup: Setup) -> None:
    fake = FakePop3(messages("nu", 3), uidl=False)
    try:
        for policy in ("keep", "keep-days", "delete-when-deleted-locally"):
            setup.accounts.clear()
            extra = "keep_days = 3" if policy == "keep-days" else ""
            dest = setup.add("a", fake.box(), policy=policy, extra=extra)
            line = one_error_line(fetch(setup))
            assert "does not support UIDL" in line and 'policy = "delete"' in line
            assert maildir_ids(Path(dest)) == []
        assert not any(c.startswith("RETR") for c in fake.commands)
    finally:
        fake.close()


def test_server_without_uidl_in_delete_mode_never_doubles(setup: Setup) -> None:
    """Without UIDL a message is known by its bytes until the server confirms its deletion:
    a QUIT left unanswered leaves the messages on the server, and the next run deletes them
    without storing them again."""
    fake = FakePop3(messages("du", 4), uidl=False, pipelining=False)
    try:
        fake.cut_before_quit = True
        dest = setup.add("a", fake.box(), policy="delete")
        r = fetch(setup)
        assert r.exit_code == 0 and "did not finish deleting" in r.stderr
        assert maildir_ids(Path(dest)) == ids("du", 4) and len(fake.messages) == 4
        fake.add(messages("dv", 1))
        r = fetch(setup)
        assert r.exit_code == 0 and r.stderr == "", r.stderr
        assert maildir_ids(Path(dest)) == sorted(ids("du", 4) + ids("dv", 1))
        assert fake.messages == []
        assert parse_state(setup, "a")["unconfirmed"] == {}
    finally:
        fake.close()


def test_sasl_plain_login_when_user_is_refused(setup: Setup) -> None:
    fake = FakePop3(messages("s", 1))
    try:
        fake.sasl_only = True
        dest = setup.add("a", fake.box(), policy="keep")
        r = fetch(setup)
        assert r.exit_code == 0, r.stderr
        assert fake.logins == ["\0anyone\0correct horse"]
        assert maildir_ids(Path(dest)) == ids("s", 1)
    finally:
        fake.close()


def test_two_runs_at_once_for_one_account(pbox: Pop3Box, setup: Setup) -> None:
    setup.add("a", pbox, policy="keep")
    with StateFile(setup.state, "a"):
        line = one_error_line(fetch(setup))
    assert "another postfach fetch is running for account 'a'" in line


# ---- TLS ------------------------------------------------------------------------------------


def test_tls_is_verified_and_the_error_shows_the_fingerprint(
    server: RunningServer, pbox: Pop3Box, setup: Setup
) -> None:
    pbox.put(messages("t", 1))
    setup.add("a", pbox, tls="tls", port=pbox.tls_port)
    line = one_error_line(fetch(setup))
    assert pbox.cert is not None
    shown = "SHA256:" + fingerprint(pbox.cert)
    assert "TLS certificate not trusted" in line and f'fingerprint = "{shown}"' in line
    r = fetch(setup, "--fingerprint", shown)
    assert r.exit_code == 0, r.stderr
    assert "1 new messages" in r.stdout


@pytest.mark.parametrize("tls", ["tls", "starttls"])
def test_fingerprint_pinning(pbox: Pop3Box, setup: Setup, tls: str) -> None:
    assert pbox.cert is not None
    pbox.put(messages("f", 2))
    port = pbox.tls_port if tls == "tls" else pbox.port
    good = fingerprint(pbox.cert)
    setup.add("a", pbox, tls=tls, port=port, extra=f'fingerprint = "SHA256:{good}"')
    r = fetch(setup)
    assert r.exit_code == 0, r.stderr
    setup.accounts.clear()
    wrong = "SHA256:" + ":".join(["00"] * 32)
    setup.add("a", pbox, tls=tls, port=port, extra=f'fingerprint = "{wrong}"')
    line = one_error_line(fetch(setup))
    assert "fingerprint mismatch" in line and good in line


def test_ca_file_verifies_the_host_name(pbox: Pop3Box, setup: Setup) -> None:
    assert pbox.cert is not None
    setup.add("a", pbox, tls="starttls", extra=f'ca_file = "{pbox.cert}"')
    r = fetch(setup)
    assert r.exit_code == 0, r.stderr
    # The certificate names 127.0.0.1 and localhost; "127.1" reaches the server, by another name.
    setup.accounts.clear()
    other = Pop3Box(pbox.kind, pbox.port, pbox.user, pbox.put, pbox.count, host="127.1")
    setup.add("b", other, tls="starttls", extra=f'ca_file = "{pbox.cert}"')
    line = one_error_line(fetch(setup))
    assert "not trusted" in line and "mismatch" in line


# ---- size -----------------------------------------------------------------------------------


def test_2000_messages(pbox: Pop3Box, setup: Setup) -> None:
    n = 2000
    pbox.put(messages("big", n, size=3000))
    dest = Path(setup.add("a", pbox, policy="delete"))
    t = time.perf_counter()
    r = fetch(setup)
    elapsed = time.perf_counter() - t
    assert r.exit_code == 0, r.stderr
    assert f"{n} new messages" in r.stdout
    assert len(os.listdir(dest / "new")) == n and pbox.count() == 0
    assert maildir_ids(dest) == ids("big", n)
    assert elapsed < 60, f"{n} messages took {elapsed:.1f}s"


# ---- the command line -----------------------------------------------------------------------


def test_bad_input_is_one_line(pbox: Pop3Box, setup: Setup, tmp_path: Path) -> None:
    setup.add("a", pbox, policy="keep")
    cases: list[tuple[list[str], str]] = [
        (["--config", str(tmp_path / "missing.toml")], "no config file"),
        (["--account", "nope"], "no account 'nope'"),
        (["--fingerprint", "SHA256:beef"], "not a SHA-256 fingerprint"),
    ]
    for args, text in cases:
        argv = args if args[0] == "--config" else ["--config", str(setup.config), *args]
        assert text in one_error_line(run_cli("fetch", *argv))
    bad = tmp_path / "bad.toml"
    bad.write_text('[account.a]\nhost = "h"\npassword = "secret"\n')
    assert "passwords do not belong" in one_error_line(run_cli("fetch", "--config", str(bad)))
    # Wrong password, world-readable password file, nothing listening.
    setup.accounts.clear()
    wrong = Pop3Box(pbox.kind, pbox.port, pbox.user, pbox.put, pbox.count, password="nope")
    setup.add("a", wrong)
    assert "login as alice@example.org failed" in one_error_line(fetch(setup))
    setup.password_file("nope").chmod(0o644)
    assert "readable by others" in one_error_line(fetch(setup))
    setup.accounts.clear()
    closed = Pop3Box(pbox.kind, 1, pbox.user, pbox.put, pbox.count)
    setup.add("a", closed)
    assert "cannot connect" in one_error_line(fetch(setup))


def test_real_process_errors_and_exit_codes(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTFACH_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "cfg")
    r = subprocess.run([sys.executable, "-m", "postfach", "fetch"], capture_output=True,
                       text=True, env=env, timeout=60)  # fmt: skip
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"postfach: error: no config file {tmp_path / 'cfg' / 'postfach' / 'fetch.toml'}"
        " (see postfach fetch --help for an example)"
    ]
    r = subprocess.run([sys.executable, "-m", "postfach", "fetch", "--help"],
                       capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert r.returncode == 0 and "[account.home]" in r.stdout


def test_password_command(pbox: Pop3Box, setup: Setup) -> None:
    pbox.put(messages("pc", 1))
    setup.add("a", pbox)
    text = setup.config.read_text()
    pw_line = next(line for line in text.splitlines() if line.startswith("password_file"))
    setup.config.write_text(
        text.replace(pw_line, "password_command = \"printf '%s\\\\n' 'correct horse'\"")
    )
    r = fetch(setup)
    assert r.exit_code == 0, r.stderr
    setup.config.write_text(text.replace(pw_line, 'password_command = ["false"]'))
    assert "password_command exited with status 1" in one_error_line(fetch(setup))


def test_errors_name_the_account_and_the_others_still_run(pbox: Pop3Box, setup: Setup) -> None:
    pbox.put(messages("e", 1))
    closed = Pop3Box(pbox.kind, 1, pbox.user, pbox.put, pbox.count)
    setup.add("broken", closed)
    dest = setup.add("fine", pbox)
    r = fetch(setup)
    assert r.exit_code == 1
    assert r.stderr.startswith("postfach: error: broken: 127.0.0.1:1: cannot connect")
    assert "fine: 1 new messages" in r.stdout
    assert maildir_ids(Path(dest)) == ids("e", 1)


def test_fetch_error_is_one_line_through_the_api(setup: Setup) -> None:
    fake = FakePop3([], uidl=False)
    try:
        setup.add("a", fake.box(), policy="keep")
        with pytest.raises(FetchError) as exc:
            direct(setup, "a")
        assert "\n" not in str(exc.value) and "does not support UIDL" in str(exc.value)
    finally:
        fake.close()
