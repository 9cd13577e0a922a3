"""JWT replay protection: a token id (jti) is accepted once per issuer until the token expires.

Atomic across workers and instances: the unique constraint on (issuer, jti) decides, never a read
followed by a write. This check is on the request's critical path by necessity (CDS Hooks 2.0 security).
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

from sqlalchemy import delete, insert
from sqlalchemy.exc import IntegrityError

from service.storage.database import Database
from service.storage.tables import jwt_replay

# Expired rows are purged by at most one claim per interval and process.
PURGE_INTERVAL_SECONDS = 60.0
MAX_ISSUER = jwt_replay.c.issuer.type.length
MAX_JTI = jwt_replay.c.jti.type.length


def as_utc(moment: datetime) -> datetime:
    """Aware UTC (SQLite keeps the wall time only: every stored instant is UTC)."""
    if moment.tzinfo is None:
        raise ValueError("an aware datetime is required")
    return moment.astimezone(timezone.utc)


class SqlReplayStore:
    """claim(issuer, jti, expires_at): True the first time, False while that (issuer, jti) is claimed and unexpired."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._next_purge = 0.0
        self._purge_lock = threading.Lock()

    def claim(self, issuer: str, jti: str, expires_at: datetime) -> bool:
        """`expires_at`: when the token stops being accepted (its exp plus the leeway the verifier allows).

        An issuer or jti longer than its column (MAX_ISSUER, MAX_JTI) cannot be recorded, so is never accepted."""
        if not issuer or not jti or len(issuer) > MAX_ISSUER or len(jti) > MAX_JTI:
            return False
        expires = as_utc(expires_at)
        now = datetime.now(timezone.utc)
        self._purge_now_and_then(now)
        row = {"issuer": issuer, "jti": jti, "expires_at": expires}
        try:
            with self.database.engine.begin() as connection:
                connection.execute(insert(jwt_replay), row)
            return True
        except IntegrityError:
            pass
        # Claimed before: free again only once that claim expired. The DELETE that removes it wins the claim;
        # a concurrent claimer deletes nothing or collides on the INSERT.
        try:
            with self.database.engine.begin() as connection:
                freed = connection.execute(delete(jwt_replay).where(
                    jwt_replay.c.issuer == issuer, jwt_replay.c.jti == jti, jwt_replay.c.expires_at <= now)).rowcount
                if not freed:
                    return False
                connection.execute(insert(jwt_replay), row)
            return True
        except IntegrityError:
            return False

    def purge_expired(self, now: datetime | None = None) -> int:
        moment = as_utc(now or datetime.now(timezone.utc))
        with self.database.engine.begin() as connection:
            return connection.execute(delete(jwt_replay).where(jwt_replay.c.expires_at <= moment)).rowcount

    def _purge_now_and_then(self, now: datetime) -> None:
        if time.monotonic() < self._next_purge or not self._purge_lock.acquire(blocking=False):
            return
        try:
            self._next_purge = time.monotonic() + PURGE_INTERVAL_SECONDS
            self.purge_expired(now)
        finally:
            self._purge_lock.release()
