"""The database: its URL from the settings, one SQLAlchemy engine per process, Alembic migrations in code.

SQLite (default) is a file under CARTOX_DATA_DIR in WAL mode with synchronous=FULL: a commit is on disk
before the service answers, so a killed worker loses nothing it acknowledged; it serves the workers of one
host. PostgreSQL (CARTOX_DATABASE_URL, psycopg 3) serves several instances.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import Connection, make_url

from service.settings import Settings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SQLITE_FILE = "cartox.sqlite3"
_BUSY_TIMEOUT_MS = 10_000

log = logging.getLogger("cartox.storage")
# Alembic tells its context at INFO on every check: the start-up says itself what it migrated.
logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)


class StorageError(Exception):
    """The database cannot be used as it is (older or unknown schema, unreachable): the service must not start."""


def database_url(settings: Settings) -> str:
    """CARTOX_DATABASE_URL (postgresql:// gets the psycopg 3 driver), else the SQLite file in the data directory."""
    if settings.database_url:
        url = make_url(settings.database_url)
        if url.drivername in ("postgresql", "postgres"):
            url = url.set(drivername="postgresql+psycopg")
        return url.render_as_string(hide_password=False)
    return f"sqlite:///{Path(settings.data_dir).resolve() / SQLITE_FILE}"


def shown_url(url: str) -> str:
    """The URL for messages and logs: never the password."""
    return make_url(url).render_as_string(hide_password=True)


# SQLite commit durability: FULL survives power loss (feedback); NORMAL in WAL mode survives a killed process but
# not a power loss, and spares the request an fsync (the JWT replay claims on the request's path, the audit).
DURABLE, CRASH_SAFE = "FULL", "NORMAL"


def _sqlite_pragmas(synchronous: str) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return on_connect


def new_engine(url: str, synchronous: str = DURABLE) -> Engine:
    if url.startswith("sqlite"):
        path = make_url(url).database
        if path:
            Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": _BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _sqlite_pragmas(synchronous))
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def _alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    assert head is not None, "no migration shipped"
    return head


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(url: str, revision: str = "head") -> None:
    """Run the migrations up to `revision` (`cartox db upgrade`)."""
    engine = new_engine(url)
    try:
        with engine.begin() as connection:
            command.upgrade(_alembic_config(connection), revision)
    finally:
        engine.dispose()


def downgrade(url: str, revision: str) -> None:
    engine = new_engine(url)
    try:
        with engine.begin() as connection:
            command.downgrade(_alembic_config(connection), revision)
    finally:
        engine.dispose()


def check_schema(url: str) -> None:
    """Start-up check: a new empty SQLite file is migrated; any other database must be at the head revision.

    A PostgreSQL database is never migrated implicitly: instances starting together would race, and a
    shared schema changes when its operator decides (`cartox db upgrade`)."""
    engine = new_engine(url)
    try:
        with engine.connect() as connection:
            tables = inspect(connection).get_table_names()
            revision = current_revision(connection)
    except Exception as exc:  # unreachable server, bad credentials, unreadable file
        raise StorageError(f"database {shown_url(url)} cannot be opened: {str(exc).splitlines()[0]}") from None
    finally:
        engine.dispose()
    head = head_revision()
    if revision == head:
        return
    if not tables and url.startswith("sqlite"):
        upgrade(url)
        log.info("new database %s created at revision %s", shown_url(url), head)
        return
    if revision is None and tables and "alembic_version" not in tables:
        raise StorageError(f"database {shown_url(url)} has tables but is not a cartox database (no alembic_version)")
    known = {script.revision for script in ScriptDirectory(str(MIGRATIONS)).walk_revisions()}
    if revision is not None and revision not in known:
        raise StorageError(f"database {shown_url(url)} is at revision {revision}, unknown to this cartox (head {head}): "
                           "a newer cartox migrated it")
    raise StorageError(f"database {shown_url(url)} is at revision {revision or 'none'}, this cartox needs {head}: "
                       "run `cartox db upgrade`")


class Database:
    """The engine of this process: created on first use and again after a fork (gunicorn starts its workers by
    forking the process that built the app, and a connection pool must not cross a fork)."""

    def __init__(self, url: str, synchronous: str = DURABLE) -> None:
        self.url = url
        self.synchronous = synchronous
        self._engine: Engine | None = None
        self._pid = 0
        self._lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        pid = os.getpid()
        if self._engine is None or self._pid != pid:
            with self._lock:
                if self._engine is None or self._pid != pid:
                    if self._engine is not None:
                        self._engine.dispose(close=False)  # the parent's connections stay the parent's
                    self._engine = new_engine(self.url, self.synchronous)
                    self._pid = pid
        return self._engine

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    def ping(self) -> None:
        """Raises when the database does not answer (readiness)."""
        with self.engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")

    def dispose(self) -> None:
        if self._engine is not None and self._pid == os.getpid():
            self._engine.dispose()
        self._engine = None
