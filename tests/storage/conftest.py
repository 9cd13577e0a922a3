"""Storage tests run on SQLite and on PostgreSQL.

PostgreSQL: CARTOX_TEST_DATABASE_URL (set by .ci/run, which creates that database), else a server answering
on 127.0.0.1:5432 as user postgres (trust authentication). Each test gets a database of its own, created on
that server and dropped afterwards. Without any server the PostgreSQL cases are skipped with the reason,
except in CI (CARTOX_CI=1), where they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

def pytest_configure(config) -> None:
    # the SIGKILL test starts `cartox serve`: a deployment check (also registered by tests/deploy)
    config.addinivalue_line("markers", "deploy: deployment checks (real `cartox serve` on a loopback port)")


LOCAL_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
BACKENDS = ["sqlite", "postgresql"]


def _server_answers(url: str) -> str | None:
    """None when a connection works, else why not."""
    engine = create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return None
    except Exception as exc:
        return str(exc).splitlines()[0]
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """URL of a PostgreSQL database whose server lets the tests create databases."""
    configured = os.environ.get("CARTOX_TEST_DATABASE_URL")
    url = configured or LOCAL_SERVER
    problem = _server_answers(url)
    if problem is None:
        return url
    where = "CARTOX_TEST_DATABASE_URL" if configured else "127.0.0.1:5432 (CARTOX_TEST_DATABASE_URL not set)"
    message = f"no PostgreSQL at {where}: {problem}"
    if os.environ.get("CARTOX_CI") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def blank_database(backend: str, request, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """blank_database() -> the URL of a new empty database of the test's backend."""
    created: list[str] = []
    server = request.getfixturevalue("postgres_server") if backend == "postgresql" else None

    def make() -> str:
        name = f"cartox_t_{uuid.uuid4().hex[:12]}"
        if server is None:
            return f"sqlite:///{tmp_path / name / 'cartox.sqlite3'}"
        admin = create_engine(server, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            admin.dispose()
        created.append(name)
        return make_url(server).set(database=name).render_as_string(hide_password=False)

    yield make
    if server is not None and created:
        admin = create_engine(server, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as connection:
                for name in created:
                    connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            admin.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def database_url(blank_database) -> str:
    """A new database of the test's backend, migrated to the head revision."""
    from service.storage.database import upgrade

    url = blank_database()
    upgrade(url)
    return url


@pytest.fixture
def storage_app(engine, database_url):
    """The Flask app on the test's database, with a fixed audit key."""
    from service.app import create_app

    settings = engine.settings.with_values(database_url=database_url, audit_key=AUDIT_KEY)
    application = create_app(settings=settings, engine=engine)
    application.config["TESTING"] = True
    yield application
    application.extensions["cartox.storage"].database.dispose()


AUDIT_KEY = "test-audit-key-0123456789abcdef-0123456789"


@pytest.fixture(scope="session")
def audit_key() -> str:
    return AUDIT_KEY
