"""Where a study lives: SQLite in the tuning folder by default, any Optuna RDB URL otherwise
(PostgreSQL for workers on several machines). Every storage runs Optuna's heartbeat: a trial
whose worker died (SIGKILL, a lost machine) is failed by the next worker that starts a trial
and re-queued once, with the same parameters, as a new trial (a new run folder)."""
from __future__ import annotations

import contextlib
import re
import time
import warnings
from pathlib import Path

from featvlr.core.errors import ConfigError

DEFAULT_HEARTBEAT_S = 30


def default_url(out: str | Path) -> str:
    """``sqlite:///<out>/study.db`` (absolute, so any working folder reaches it)."""
    return f"sqlite:///{(Path(out) / 'study.db').resolve()}"


def masked(url: str) -> str:
    """The URL with its password replaced by ``***`` (for messages)."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def _with_driver(url: str) -> str:
    """``postgresql://`` with the psycopg2 driver when psycopg (3), SQLAlchemy's default for
    that scheme from 2.1 on, is not installed (``featvlr[postgres]`` installs psycopg2)."""
    import importlib.util

    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


# What a worker sees when another one creates the same new database's tables at the same moment
# (SQLite and PostgreSQL wording): retried, the tables then exist.
_CREATION_RACE = ("already exists", "UNIQUE constraint failed", "duplicate key value")


def _sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL (SQLAlchemy's reading of it); None for another
    database or an in-memory one."""
    if not url.startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    return Path(database) if database and database != ":memory:" else None


@contextlib.contextmanager
def _creation_lock(url: str):
    """For a SQLite file that does not exist yet, an exclusive lock on ``<file>.lock`` while the
    storage opens and creates its tables, so workers on one machine never race to create them.
    An existing file (a report, a second worker later) or a folder that cannot hold the lock
    opens without it; an in-memory database needs none."""
    path = _sqlite_file(url)
    if path is None or path.exists():
        yield
        return
    try:
        import fcntl

        handle = open(f"{path}.lock", "a")
    except (ImportError, OSError):  # no POSIX locks here, or a read-only folder
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_storage(url: str, *, heartbeat_s: float = DEFAULT_HEARTBEAT_S):
    """An :class:`optuna.storages.RDBStorage` on ``url`` (tables created when missing).

    Raises :class:`ConfigError` naming ``--storage`` when the URL is malformed, its driver is
    not installed or the database cannot be reached (a 10 s connect timeout)."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    engine: dict = {}
    given, url = url, _with_driver(url)
    if url.startswith("sqlite"):
        engine = {"connect_args": {"timeout": 120}}
        path = _sqlite_file(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    elif url.startswith(("postgresql", "mysql")):
        engine = {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    try:
        for attempt in range(6):
            try:
                with _creation_lock(url):
                    return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=max(1, int(heartbeat_s)),
                                      grace_period=max(2, int(2 * heartbeat_s)),
                                      heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
            except Exception as exc:  # two workers creating the tables of a new database at once
                if attempt == 5 or not any(m in str(exc) for m in _CREATION_RACE):
                    raise
                time.sleep(0.5 + attempt)
    except ModuleNotFoundError as exc:
        hint = " (pip install featvlr[postgres])" if "psycopg" in str(exc) else ""
        raise ConfigError(f"--storage {masked(given)}: its database driver is not installed: "
                          f"{exc.name}{hint}") from None
    except Exception as exc:  # sqlalchemy's errors: bad URL, refused connection, bad password
        if "Failed to import DB access module" in str(exc):
            raise ConfigError(f"--storage {masked(given)}: its database driver is not installed "
                              "(pip install featvlr[postgres] for PostgreSQL)") from None
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        reason = first[0] if first else type(exc).__name__
        raise ConfigError(f"--storage {masked(given)}: cannot open the study storage: {reason}") from None


__all__ = ["DEFAULT_HEARTBEAT_S", "default_url", "masked", "open_storage"]
