"""The jti replay check: one JWT is accepted once within its lifetime."""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from typing import Protocol


class ReplayStore(Protocol):
    def claim(self, issuer: str, jti: str, expires_at: datetime) -> bool:
        """Record (issuer, jti) until expires_at; False when it was already recorded (a replay)."""
        ...


class InMemoryReplayStore:
    """One process's memory: replays across gunicorn workers or instances go unseen, so production
    deployments inject a shared store (create_app(replay_store=...))."""

    # Expired entries are dropped every this many claims, which bounds the memory to the tokens seen
    # within the longest accepted lifetime.
    _PURGE_EVERY = 1024

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], datetime] = {}
        self._lock = threading.Lock()
        self._claims = 0

    def claim(self, issuer: str, jti: str, expires_at: datetime) -> bool:
        now = datetime.now(timezone.utc)
        key = (issuer, jti)
        with self._lock:
            self._claims += 1
            if self._claims % self._PURGE_EVERY == 0:
                self._seen = {k: until for k, until in self._seen.items() if until > now}
            until = self._seen.get(key)
            if until is not None and until > now:
                return False
            self._seen[key] = expires_at
            return True
