"""``postfach sync`` against mbsync (isync): resync cost on a large account, in one run.

    .venv/bin/python benchmarks/sync.py [--messages 50000] [--changed 0.01] [--repeat 3]

What it does, all on 127.0.0.1 in a temporary directory (removed at the end unless --keep):

1. Starts ``postfach serve`` (IMAP only) and makes two accounts with the same mailbox:
   ``--messages`` small messages in INBOX (a third of them unseen) plus a few in Sent.
   One account is synced by ``postfach sync``, the other by ``mbsync``, each into its own
   Maildir++ tree, so neither sees the other's writes.
2. Initial sync of each (timed, for information).
3. One untimed resync each, then waits until the Maildirs' mtimes are settled, so the timed
   runs measure the steady state a cron job or a mail program's "check mail" sees.
4. Timed, ``--repeat`` times each, the median reported:
   a. resync with nothing changed;
   b. resync after ``--changed`` (1 %) of the messages got a flag changed on the server;
   c. resync after the same share of the messages got a flag changed in the Maildir.
   Each run is the real command (``postfach sync --config ...`` / ``mbsync -c ... -a``) as a
   subprocess, interpreter start-up included, and the two tools alternate.
5. Checks both Maildirs hold every message, and prints the figures (``--json FILE`` too).

With ``--keep`` the directory is kept, and ``--reuse DIR`` times it again later (same server
port, no filling, no initial sync: steps 3 to 5 only).

Both tools fsync every message they write (postfach's default, mbsync's ``FSync yes``).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from postfach.client.imap import ImapClient, Literal  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from postfach_server import add_workers_argument  # noqa: E402

HOST = "127.0.0.1"
DOMAIN = "bench.example"
PASSWORD = "bench-password"
OURS = f"ours@{DOMAIN}"
THEIRS = f"mbsync@{DOMAIN}"
MODULE = "python -m …cli.sync"


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def postfach_bin() -> str:
    candidate = Path(sys.executable).parent / "postfach"
    return str(candidate if candidate.exists() else REPO / ".venv" / "bin" / "postfach")


def message(i: int) -> bytes:
    words = " ".join(f"word{(i * 7 + k) % 997}" for k in range(12))
    body = "".join(f"{words} line {n}\r\n" for n in range(20))
    return (
        f"From: Load <load@sender.example>\r\nTo: <someone@{DOMAIN}>\r\n"
        f"Subject: benchmark message {i}\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
        f"Message-ID: <bench.{i}@sender.example>\r\n\r\n{body}"
    ).encode()


class Server:
    def __init__(self, root: Path, port: int | None = None, workers: int | None = None) -> None:
        self.root = root
        self.port = port or free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("POSTFACH_")}
        self.env.update(POSTFACH_DATA=str(root / "data"), POSTFACH_IMAP=f"{HOST}:{self.port}")
        for name in ("SMTP", "LMTP", "SUBMISSION", "SUBMISSIONS", "POP3", "POP3S", "IMAPS",
                     "HTTP"):  # fmt: skip
            self.env[f"POSTFACH_{name}"] = "off"
        if workers is not None:  # None: the server's default
            self.env["POSTFACH_WORKERS"] = str(workers)
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str, stdin: str | None = None) -> None:
        subprocess.run([postfach_bin(), *args], env=self.env, input=stdin, text=True, check=True,
                       capture_output=True, timeout=120)  # fmt: skip

    def start(self, *, new: bool = True) -> None:
        if new:
            self.cli("domain", "add", DOMAIN)
            for user in (OURS, THEIRS):
                self.cli("user", "add", user, "--password-stdin", stdin=PASSWORD + "\n")
        log = open(self.root / "server.log", "wb")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen([postfach_bin(), "serve"], env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((HOST, self.port), timeout=1) as s:
                    if s.recv(100).startswith(b"* OK"):
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("postfach did not start; see server.log")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)

    def client(self, user: str) -> ImapClient:
        c = ImapClient(HOST, self.port, tls="none", timeout=300)
        c.connect()
        c.login(user, PASSWORD)
        return c


def fill(server: Server, user: str, count: int) -> None:
    c = server.client(user)
    try:
        for start in range(0, count, 500):
            parts: list[bytes | Literal] = [b"APPEND INBOX"]
            for i in range(start, min(count, start + 500)):
                parts += [b" ", b"()" if i % 3 == 0 else b"(\\Seen)", b" ", Literal(message(i))]
            c.check(*parts)
        parts = [b"APPEND Sent"]
        for i in range(count, count + 20):
            parts += [b" (\\Seen) ", Literal(message(i))]
        c.check(*parts)
    finally:
        c.logout()


def change_server_flags(server: Server, user: str, uids: list[int]) -> None:
    c = server.client(user)
    try:
        c.check(b"SELECT INBOX")
        for k in range(0, len(uids), 400):
            chunk = ",".join(str(u) for u in uids[k : k + 400]).encode()
            c.check(b"UID STORE " + chunk + b" +FLAGS.SILENT (\\Flagged)")
    finally:
        c.logout()


def change_local_flags(maildir: Path, share: float, rng: random.Random) -> int:
    files = sorted((maildir / "cur").iterdir()) + sorted((maildir / "new").iterdir())
    picked = rng.sample(files, max(1, int(len(files) * share)))
    for p in picked:
        unique, _, info = p.name.partition(":2,")
        letters = "".join(sorted(set(info) | {"F"}))
        os.rename(p, maildir / "cur" / f"{unique}:2,{letters}")
    return len(picked)


def count_files(maildir: Path) -> int:
    return sum(len(os.listdir(maildir / sub)) for sub in ("cur", "new"))


def timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--messages", type=int, default=50_000)
    ap.add_argument("--changed", type=float, default=0.01, help="share of messages changed")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--reuse", type=Path, metavar="DIR",
                    help="a directory kept by --keep: skip filling and the initial syncs "
                         "(--messages must match); kept")  # fmt: skip
    add_workers_argument(ap)
    args = ap.parse_args()
    mbsync = shutil.which("mbsync")
    if mbsync is None:
        print("mbsync (isync) is not installed", file=sys.stderr)
        return 2
    # Bytecode as an installed package has it (pip compiles at install; an editable install
    # under PYTHONDONTWRITEBYTECODE would otherwise compile every module on every run).
    compileall.compile_dir(REPO / "src" / "postfach", quiet=1)
    root = args.reuse or Path(tempfile.mkdtemp(prefix="postfach-sync-bench."))
    # --reuse: the same port, which both tools' states are tied to
    server = Server(
        root, int((root / "port").read_text()) if args.reuse else None, workers=args.workers
    )
    (root / "port").write_text(f"{server.port}\n")
    results: dict[str, object] = {"messages": args.messages, "changed": args.changed}
    try:
        server.start(new=args.reuse is None)
        if args.reuse is None:
            say(f"filling two accounts with {args.messages} messages each")
            t = timed(lambda: (fill(server, OURS, args.messages),
                               fill(server, THEIRS, args.messages)))  # fmt: skip
            say(f"filled in {t:.0f} s")

        ours_md, theirs_md = root / "ours", root / "theirs"
        pw = root / "pw"
        pw.write_text(PASSWORD + "\n")
        pw.chmod(0o600)
        cfg = root / "sync.toml"
        cfg.write_text(
            f'[account.bench]\nhost = "{HOST}"\nport = {server.port}\ntls = "none"\n'
            f'user = "{OURS}"\npassword_file = "{pw}"\nmaildir = "{ours_md}"\n'
        )
        theirs_md.mkdir(exist_ok=True)
        rc = root / "mbsyncrc"
        rc.write_text(
            f"IMAPAccount bench\nHost {HOST}\nPort {server.port}\nUser {THEIRS}\n"
            f'Pass "{PASSWORD}"\nSSLType None\nAuthMechs LOGIN PLAIN\n\n'
            "IMAPStore remote\nAccount bench\n\n"
            f"MaildirStore local\nInbox {theirs_md}\nSubFolders Maildir++\n\n"
            "Channel bench\nFar :remote:\nNear :local:\nPatterns *\nCreate Both\n"
            "Expunge Both\nSyncState *\nSync All\n"
        )

        def run_ours() -> None:
            subprocess.run([postfach_bin(), "sync", "--config", str(cfg), "-q"], check=True,
                           timeout=3600)  # fmt: skip

        def run_theirs() -> None:
            subprocess.run([mbsync, "-q", "-c", str(rc), "-a"], check=True, timeout=3600)

        def run_ours_module() -> None:
            # The same code without the admin CLI's imports (the server, argon2, aiosmtpd):
            # shows how much of a run is the interpreter starting the ``postfach`` command.
            subprocess.run([sys.executable, "-m", "postfach.cli.sync", "--config", str(cfg), "-q"],
                           check=True, timeout=3600)  # fmt: skip

        tools = {"postfach sync": run_ours, MODULE: run_ours_module,
                 "mbsync": run_theirs}  # fmt: skip
        figures: dict[str, dict[str, float]] = {name: {} for name in tools}
        for name, run in tools.items():
            if name == MODULE or args.reuse is not None:
                figures[name]["initial sync"] = float("nan")
                continue  # the same Maildir as "postfach sync"; or synced before (--reuse)
            t = timed(run)
            figures[name]["initial sync"] = t
            say(f"{name}: initial sync {t:.1f} s")

        def settle() -> None:
            time.sleep(2.5)  # let the Maildir mtimes age (postfach trusts only settled ones)
            for run in tools.values():
                run()
            time.sleep(2.5)

        rng = random.Random(7)
        n_changed = max(1, int(args.messages * args.changed))

        def on_server() -> None:
            uids = rng.sample(range(1, args.messages + 1), n_changed)
            for user in (OURS, THEIRS):  # the same UIDs in both accounts
                change_server_flags(server, user, uids)

        def locally() -> None:
            for md in (ours_md, theirs_md):
                change_local_flags(md, args.changed, rng)

        settle()
        phases: list[tuple[str, Callable[[], None] | None]] = [
            ("resync, nothing changed", None),
            (f"resync, {args.changed:.0%} flags changed on the server", on_server),
            (f"resync, {args.changed:.0%} flags changed locally", locally),
        ]
        for label, change in phases:
            times: dict[str, list[float]] = {name: [] for name in tools}
            for _ in range(args.repeat):
                if change is not None:
                    change()
                for name, run in tools.items():
                    if change is None or name != MODULE:  # it shares the Maildir of OURS
                        times[name].append(timed(run))
                if change is not None:
                    settle()
            for name in tools:
                if not times[name]:
                    figures[name][label] = float("nan")
                    continue
                figures[name][label] = statistics.median(times[name])
                shown = ", ".join(f"{t:.3f}" for t in times[name])
                say(f"{name}: {label}: median {figures[name][label]:.3f} s ({shown})")

        for md in (ours_md, theirs_md):
            got = count_files(md)
            if got != args.messages:
                raise RuntimeError(f"{md} holds {got} messages, not {args.messages}")
        results["figures"] = figures
        print()
        labels = list(next(iter(figures.values())))
        print(f"{'':42} " + " ".join(f"{n:>20}" for n in figures))
        for label in labels:
            cells = [figures[n][label] for n in figures]
            print(f"{label:42} " + " ".join("-".rjust(20) if c != c else f"{c:>18.3f} s"
                                            for c in cells))  # fmt: skip
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        server.stop()
        if args.keep or args.reuse is not None:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
