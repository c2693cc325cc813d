"""Optuna storage: check and open a URL, retry what SQLite reports as busy, fail stale trials.

- `sqlite:///PATH`: RDBStorage with a 60 s busy timeout and the database in WAL mode (readers do
  not block the writer); every storage call the tuner makes goes through `retry`, which backs
  off on "database is locked".
- `journal:PATH`: optuna's `JournalStorage(JournalFileBackend(PATH))`, an append-only log with a
  file lock; safe for several processes on one machine (and on NFS with care).
- `postgresql://…`, `mysql://…`: RDBStorage; share it between machines.

Stale trials: a worker records `host`, `worker_pid`, `worker_start` (the process start time, so
a reused pid is not mistaken for a live worker) and a `heartbeat` (unix time, refreshed every
`HEARTBEAT_SECONDS`) in each trial's user attrs. On startup the tuner fails every RUNNING trial
whose worker is gone from this host, or, from another host, whose heartbeat is older than
`STALE_SECONDS`; the reason goes to the trial's `reason` attr, and it is not counted against the
trial budget.
"""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from budgetlm.errors import UserError

T = TypeVar("T")
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 600.0
NO_ATTRS_SECONDS = 120.0  # a RUNNING trial that never got its worker attrs
_STORAGE_SCHEMES = ("sqlite", "postgresql", "mysql", "oracle", "mssql")


def _busy(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database is busy" in text or "busy" in text and (
        "sqlite" in text
    )


def retry(fn: Callable[..., T], *args: Any, attempts: int = 30, **kwargs: Any) -> T:
    """Call `fn`, retrying with backoff while SQLite says the database is locked."""
    delay = 0.05
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # sqlalchemy OperationalError, optuna StorageInternalError
            chain: BaseException | None = exc
            busy = False
            while chain is not None:
                busy = busy or _busy(chain)
                chain = chain.__cause__ or chain.__context__
            if not busy or i == attempts - 1:
                raise
            time.sleep(delay)
            delay = min(1.0, delay * 2)
    raise AssertionError("unreachable")


def check_storage_url(url: str) -> None:
    """Reject what optuna cannot open, with the accepted forms in the message."""
    accepted = "expected sqlite:///PATH, journal:PATH, postgresql://… or mysql://…"
    if url.startswith("journal:"):
        if not url[len("journal:"):].strip():
            raise ValueError(f"journal: needs a file path ({accepted})")
        return
    m = re.match(r"^([a-z][a-z0-9]*)(\+[a-z0-9_]+)?://(.*)$", url)
    if not m or m.group(1) not in _STORAGE_SCHEMES:
        raise ValueError(f"unsupported storage URL {url!r}; {accepted}")
    if m.group(1) == "sqlite":
        path = m.group(3)
        if not path.startswith("/") or len(path) < 2 or path in ("/:memory:",):
            raise ValueError(
                f"{url!r}: sqlite needs a file: sqlite:///relative/path.db or sqlite:////abs.db"
            )
    elif not m.group(3):
        raise ValueError(f"{url!r}: missing host/database")


def sqlite_path(url: str) -> Path | None:
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):])
    return None


def journal_path(url: str) -> Path | None:
    if url.startswith("journal:"):
        return Path(url[len("journal:"):])
    return None


def storage_exists(url: str) -> bool:
    """False when a file storage has not been created yet (report/export then have nothing)."""
    for path in (sqlite_path(url), journal_path(url)):
        if path is not None:
            return path.exists()
    return True


def _wal(path: Path, url: str) -> None:
    for _ in range(20):
        try:
            con = sqlite3.connect(str(path), timeout=60)
            try:
                con.execute("PRAGMA journal_mode=WAL")
            finally:
                con.close()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise UserError(f"storage {url}: cannot open {path}: {exc}") from None
            time.sleep(0.2)


def make_storage_parent(url: str) -> None:
    """Create the folder of a file storage (sqlite or journal); UserError naming the storage
    when it cannot be created. Other storages: nothing to do."""
    for path in (sqlite_path(url), journal_path(url)):
        if path is not None:
            _make_parent(path, url)


def _make_parent(path: Path, url: str) -> None:
    """Create the folder of a file storage; UserError naming the storage when it cannot be."""
    if path.is_dir():
        raise UserError(f"storage {url}: {path} is a directory, not a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        where = exc.filename or path.parent
        why = (" is not a folder" if isinstance(exc, FileExistsError | NotADirectoryError)
               else f": {(exc.strerror or str(exc)).lower()}")
        raise UserError(
            f"storage {url}: cannot create the folder {path.parent} ({where}{why})"
        ) from None


def open_storage(url: str, create: bool = True) -> Any:
    """An optuna storage object for `url` (parents of file storages are created)."""
    import optuna

    jp = journal_path(url)
    if jp is not None:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        if create:
            _make_parent(jp, url)
        try:
            return JournalStorage(JournalFileBackend(str(jp)))
        except OSError as exc:
            raise UserError(f"storage: cannot open journal {jp}: {exc.strerror or exc}") from None
    sp = sqlite_path(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if sp is not None:
        if create:
            _make_parent(sp, url)
        elif sp.is_dir():
            raise UserError(f"storage {url}: {sp} is a directory, not a database file")
        _wal(sp, url)
        kwargs = {"connect_args": {"timeout": 60}}
    try:
        return retry(optuna.storages.RDBStorage, url, engine_kwargs=kwargs)
    except ImportError as exc:
        raise UserError(f"storage: {url.split(':')[0]} needs a database driver ({exc})") from None
    except Exception as exc:  # sqlalchemy ArgumentError / OperationalError (bad host, auth)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"storage: cannot open {url}: {first}") from None


# ---------------------------------------------------------------------------------------------
# Worker identity and stale trials


def hostname() -> str:
    return socket.gethostname()


def process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (field 22 of /proc/PID/stat), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def worker_attrs() -> dict[str, Any]:
    pid = os.getpid()
    return {
        "host": hostname(),
        "worker_pid": pid,
        "worker_start": process_start(pid),
        "heartbeat": time.time(),
    }


class Heartbeat:
    """Called often while a trial runs: refreshes its `heartbeat` attr every
    `HEARTBEAT_SECONDS`."""

    def __init__(self, trial: Any):
        self.trial = trial
        self.last = time.time()

    def __call__(self) -> None:
        if time.time() - self.last >= HEARTBEAT_SECONDS:
            self.last = time.time()
            retry(self.trial.set_user_attr, "heartbeat", self.last)


def stale_reason(attrs: dict[str, Any], started: Any, now: float | None = None) -> str | None:
    """Why a RUNNING trial with these user attrs has no live worker (None: it may be alive)."""
    now = time.time() if now is None else now
    host = attrs.get("host")
    if host is None:
        age = now - started.timestamp() if started is not None else 0.0
        if age > NO_ATTRS_SECONDS:
            return f"stale: no worker recorded after {age:.0f} s"
        return None
    if host == hostname():
        pid = int(attrs.get("worker_pid", -1))
        if pid <= 0 or not pid_alive(pid):
            return f"stale: worker pid {pid} on {host} is gone (killed?)"
        start = attrs.get("worker_start")
        if start is not None and process_start(pid) not in (None, start):
            return f"stale: worker pid {pid} on {host} is gone (pid reused)"
        return None
    beat = float(attrs.get("heartbeat", 0.0))
    if now - beat > STALE_SECONDS:
        return f"stale: no heartbeat from {host} for {now - beat:.0f} s"
    return None


def fail_stale_trials(study: Any) -> list[tuple[Any, str]]:
    """Fail RUNNING trials whose worker is gone; returns (frozen trial, reason) of each."""
    import optuna
    from optuna.trial import TrialState

    failed = []
    for t in retry(study.get_trials, deepcopy=False, states=(TrialState.RUNNING,)):
        reason = stale_reason(t.user_attrs, t.datetime_start)
        if reason is None:
            continue
        try:
            live = optuna.trial.Trial(study, t._trial_id)
            retry(live.set_user_attr, "reason", reason)
            retry(live.set_user_attr, "outcome", "stale")
            retry(live.set_user_attr, "stale", True)
            retry(study.tell, t.number, state=TrialState.FAIL)
        except (RuntimeError, ValueError):
            continue  # another process got there first
        except Exception as exc:  # optuna UpdateFinishedTrialError
            if "finished" in str(exc).lower():
                continue
            raise
        failed.append((t, reason))
    return failed
