"""Running as root safely (adapters): bind the listeners, then become ``[server] user``.

* Started as root with a user configured: the data directory is created (0700) owned by that
  user, every listener is bound, then the process takes the user's groups, gid and uid (real,
  effective and saved) and checks that it cannot become root again.
* Started as root without a user: refused with one line if a listener is on a privileged port
  (below 1024), otherwise started with a warning (the default ports are unprivileged).
* Admin commands run as root switch to the data directory's owner first
  (`become_data_owner`), so they never leave root-owned files the server cannot open.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import pkgutil
import pwd
import resource
from dataclasses import dataclass
from pathlib import Path

from postfach.config import Config, ConfigError, listener_items
from postfach.datadir import StartupError
from postfach.store.sqlite import WRITER_PRIORITY_BOOST

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunAs:
    name: str
    uid: int
    gid: int


def lookup(name: str) -> RunAs:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(f"[server] user: no such user {name!r}") from None
    if pw.pw_uid == 0:
        raise ConfigError(f"[server] user: {name!r} is root; name an unprivileged user")
    return RunAs(pw.pw_name, pw.pw_uid, pw.pw_gid)


def plan(cfg: Config) -> RunAs | None:
    """Whom to become after binding: None to stay as we are. Refuses root on privileged ports
    without a configured user (the caller warns about root on unprivileged ones once started)."""
    if os.geteuid() != 0:
        if cfg.user is not None and lookup(cfg.user).uid != os.geteuid():
            log.warning("event=no_privilege_drop reason=not-root user=%s", cfg.user)
        return None
    if cfg.user is None:
        low = [(n, a) for n, a in listener_items(cfg.listeners) if 0 < a[1] < 1024]
        if low:
            name, (host, port) = low[0]
            raise StartupError(
                f"refusing to run as root with {name} on privileged port {host}:{port}:"
                ' set [server] user = "NAME" in postfach.toml (or POSTFACH_USER=NAME)'
                " so the server drops root after binding"
            )
        return None
    return lookup(cfg.user)


def prepare_data_dir(path: Path, who: RunAs) -> None:
    """As root, before dropping: the data directory exists, 0700, owned by ``who``."""
    if not path.exists():
        # Missing parents as mkdir -p would make them under umask 022 (ours is 077, and a
        # 0700 root-owned parent would lock the user out of its own directory).
        for parent in reversed([p for p in path.absolute().parents if not p.exists()]):
            parent.mkdir()
            parent.chmod(0o755)
        path.mkdir(mode=0o700)
        os.chown(path, who.uid, who.gid)
        return
    st = path.stat()
    if path.is_dir() and st.st_uid != who.uid:
        raise StartupError(
            f"data directory {path} is owned by uid {st.st_uid}, not by {who.name}"
            f" (chown -R {who.name}: {path})"
        )


def _preload() -> None:
    """Import now what the standard library imports lazily (the thread pool behind
    ``asyncio.to_thread``, codecs for message charsets): after the drop, a Python installed
    where the user cannot read (pyenv under /root) could not import them any more."""
    import concurrent.futures.thread  # noqa: F401
    import encodings

    for mod in pkgutil.iter_modules(encodings.__path__):
        with contextlib.suppress(Exception):
            importlib.import_module(f"encodings.{mod.name}")


def drop(who: RunAs) -> None:
    """Become ``who`` for good (groups, gid, uid; real, effective and saved)."""
    _preload()
    _keep_writer_priority()
    os.initgroups(who.name, who.gid)
    os.setresgid(who.gid, who.gid, who.gid)
    os.setresuid(who.uid, who.uid, who.uid)
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:  # pragma: no cover - the kernel forbids this after setresuid
        raise StartupError("could not drop root privileges for good")
    if os.getresuid() != (who.uid,) * 3 or os.getresgid() != (who.gid,) * 3:
        raise StartupError("could not drop root privileges")  # pragma: no cover
    log.info("event=privileges_dropped user=%s uid=%d gid=%d", who.name, who.uid, who.gid)
    stdlib = Path(os.__file__).parent
    if not os.access(stdlib, os.R_OK | os.X_OK):
        log.warning("event=python_unreadable path=%s user=%s", stdlib, who.name)


def _keep_writer_priority() -> None:
    """Let the store's writer threads, started after the drop, still run ahead of their event
    loops (`postfach.store.sqlite.boost_priority`): RLIMIT_NICE allows a process without root
    to lower a nice value down to 20 minus the limit, and only root may raise the limit."""
    rlimit_nice = getattr(resource, "RLIMIT_NICE", None)
    if rlimit_nice is None:  # pragma: no cover - not Linux
        return
    want = 20 + WRITER_PRIORITY_BOOST
    try:
        soft, hard = resource.getrlimit(rlimit_nice)
        if soft != resource.RLIM_INFINITY and soft < want:
            top = hard if hard == resource.RLIM_INFINITY else max(hard, want)
            resource.setrlimit(rlimit_nice, (want, top))
    except (OSError, ValueError) as exc:  # a container may take CAP_SYS_RESOURCE from root
        log.info("event=writer_priority_unavailable reason=rlimit_nice error=%r", exc)


def become_data_owner(data_dir: Path) -> None:
    """For admin commands run as root: take the uid and gid of the data directory's owner, so
    files they create (database journals, blob directories, keys) belong to the server's user."""
    if os.geteuid() != 0:
        return
    try:
        st = data_dir.stat()
    except OSError:
        return
    if st.st_uid == 0:
        return
    try:
        name = pwd.getpwuid(st.st_uid).pw_name
        os.initgroups(name, st.st_gid)
    except KeyError:
        os.setgroups([])
    os.setresgid(st.st_gid, st.st_gid, st.st_gid)
    os.setresuid(st.st_uid, st.st_uid, st.st_uid)
