"""Storage at the service's edge: the audit of evaluations, CDS Hooks feedback and JWT replay protection.

SQLAlchemy 2 Core with Alembic migrations shipped in migrations/ (run in code: no alembic.ini). A new
migration is a file in migrations/versions whose down_revision is the current head.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.settings import Settings
from service.storage.audit import AuditWriter, audit_failures, audit_key
from service.storage.database import CRASH_SAFE, Database, StorageError, check_schema, database_url
from service.storage.feedback import FeedbackStore
from service.storage.replay import SqlReplayStore

__all__ = ["Storage", "StorageError", "SqlReplayStore", "audit_failures", "open_storage"]


@dataclass
class Storage:
    database: Database
    audit: AuditWriter | None  # None: CARTOX_AUDIT=false
    audit_key: bytes
    feedback: FeedbackStore
    replay: SqlReplayStore


def open_storage(settings: Settings) -> Storage:
    """The database checked (StorageError when the service must not start with it) and the stores on it."""
    url = database_url(settings)
    check_schema(url)
    database = Database(url)  # feedback: a commit survives power loss before the 200
    crash_safe = Database(url, CRASH_SAFE)  # survives a killed worker, no fsync on the request's path
    writer = AuditWriter(crash_safe, settings.audit_write_timeout_ms / 1000) if settings.audit else None
    key = audit_key(settings.audit_key, settings.data_dir) if settings.audit else b""
    return Storage(database, writer, key, FeedbackStore(database), SqlReplayStore(crash_safe))
