"""Schema revisions: a new SQLite file is migrated at start, anything else must be at the head revision."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from service.storage.database import StorageError, check_schema, current_revision, downgrade, head_revision, new_engine, upgrade

CARTOX = Path(sys.executable).with_name("cartox")
TABLES = {"evaluations", "evaluation_cards", "feedback", "jwt_replay", "alembic_version"}


def tables_and_revision(url: str) -> tuple[set[str], str | None]:
    engine = new_engine(url)
    try:
        with engine.connect() as connection:
            return set(inspect(connection).get_table_names()), current_revision(connection)
    finally:
        engine.dispose()


def test_a_new_sqlite_file_is_migrated_at_start(tmp_path):
    url = f"sqlite:///{tmp_path / 'data' / 'cartox.sqlite3'}"
    check_schema(url)
    assert tables_and_revision(url) == (TABLES, head_revision())


def test_sqlite_runs_in_wal_mode_with_full_synchronous_commits(tmp_path):
    from service.storage.database import Database

    database = Database(f"sqlite:///{tmp_path / 'cartox.sqlite3'}")
    with database.engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
        assert connection.execute(text("PRAGMA busy_timeout")).scalar() == 10_000
    database.dispose()


@pytest.mark.parametrize("backend", ["postgresql"])
def test_an_empty_postgresql_database_is_not_migrated_implicitly(blank_database):
    url = blank_database()
    with pytest.raises(StorageError, match="run `cartox db upgrade`"):
        check_schema(url)
    upgrade(url)
    check_schema(url)
    assert tables_and_revision(url) == (TABLES, head_revision())


def test_a_database_at_an_older_revision_is_refused(database_url):
    downgrade(database_url, "base")
    with pytest.raises(StorageError) as raised:
        check_schema(database_url)
    message = str(raised.value)
    assert f"is at revision none, this cartox needs {head_revision()}: run `cartox db upgrade`" in message
    assert "\n" not in message


def test_a_database_of_something_else_is_refused(blank_database):
    url = blank_database()
    engine = new_engine(url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE patients (id INTEGER)"))
    engine.dispose()
    with pytest.raises(StorageError, match="not a cartox database"):
        check_schema(url)


def test_a_revision_from_a_newer_cartox_is_refused(database_url):
    engine = new_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'f00d'"))
    engine.dispose()
    with pytest.raises(StorageError, match="revision f00d, unknown to this cartox"):
        check_schema(database_url)


def test_the_password_of_the_url_is_never_shown(backend):
    url = "postgresql+psycopg://cartox:s3cret@127.0.0.1:1/none"
    with pytest.raises(StorageError) as raised:
        check_schema(url)
    assert "s3cret" not in str(raised.value) and "***" in str(raised.value)


def _environment(url: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARTOX_", "GUNICORN"))}
    env["XDG_RUNTIME_DIR"] = str(tmp_path)
    if url.startswith("sqlite"):
        env["CARTOX_DATA_DIR"] = str(Path(url.removeprefix("sqlite:///")).parent)
    else:
        env["CARTOX_DATABASE_URL"] = url
    return env


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_refuses_an_older_database_in_one_line_and_db_upgrade_fixes_it(database_url, tmp_path):
    downgrade(database_url, "base")
    env = _environment(database_url, tmp_path)
    serve = [str(CARTOX), "serve", "--host", "127.0.0.1", "--port", str(_free_port()), "--workers", "1"]
    refused = subprocess.run(serve, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("cartox: database ") and lines[0].endswith("run `cartox db upgrade`"), lines

    upgraded = subprocess.run([str(CARTOX), "db", "upgrade"], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr[-2000:]
    assert upgraded.stdout.strip().endswith(f"at revision {head_revision()}")
    assert tables_and_revision(database_url) == (TABLES, head_revision())
