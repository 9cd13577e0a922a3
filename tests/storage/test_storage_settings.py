"""Storage settings: a value the service cannot use is refused naming the variable, never showing a secret."""

from __future__ import annotations

import pytest

from service.settings import Settings
from service.storage.database import database_url


@pytest.mark.parametrize("variable, value, words", [
    ("CARTOX_DATABASE_URL", "mysql://root:hunter2@db/cartox", ["sqlite:///", "postgresql+psycopg://"]),
    ("CARTOX_AUDIT_KEY", "short-secret", ["at least 32 characters"]),
    ("CARTOX_AUDIT_WRITE_TIMEOUT_MS", "0", ["outside the allowed range 1-10000"]),
    ("CARTOX_AUDIT", "maybe", ["expected true or false"]),
])
def test_a_bad_storage_setting_names_its_variable(variable, value, words):
    with pytest.raises(ValueError) as raised:
        Settings.from_env({variable: value})
    message = str(raised.value)
    assert message.startswith(f"{variable}: ")
    assert all(word in message for word in words), message
    assert "hunter2" not in message and "short-secret" not in message


def test_secrets_are_not_in_the_settings_repr():
    settings = Settings.from_env({"CARTOX_DATABASE_URL": "postgresql://cartox:hunter2@db/cartox", "CARTOX_AUDIT_KEY": "k" * 40})
    assert "hunter2" not in repr(settings) and "k" * 40 not in repr(settings)


def test_database_url_defaults_to_sqlite_in_the_data_directory_and_postgresql_gets_psycopg(tmp_path):
    assert database_url(Settings(data_dir=str(tmp_path))) == f"sqlite:///{tmp_path.resolve()}/cartox.sqlite3"
    assert database_url(Settings(database_url="postgresql://cartox:pw@db:5432/cartox")) == "postgresql+psycopg://cartox:pw@db:5432/cartox"
    assert database_url(Settings(database_url="postgresql+psycopg://db/cartox")) == "postgresql+psycopg://db/cartox"
