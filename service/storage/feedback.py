"""CDS Hooks feedback: stored synchronously (committed before the service answers), once per card, outcome and time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import Insert, select
from sqlalchemy.dialects import postgresql, sqlite

from service.storage.database import Database
from service.storage.tables import evaluation_cards, feedback

ACCEPTED = "accepted"
OVERRIDDEN = "overridden"


@dataclass(frozen=True)
class OverrideReason:
    system: str | None
    code: str | None
    display: str | None
    user_comment: str | None


@dataclass(frozen=True)
class FeedbackItem:
    card: str  # the card's uuid, lower case
    outcome: str  # ACCEPTED | OVERRIDDEN
    outcome_timestamp: datetime  # aware
    accepted_suggestions: tuple[str, ...]
    override: OverrideReason | None  # None: accepted, or overridden without a reason (a plain dismiss)


@dataclass(frozen=True)
class StoreResult:
    stored: int  # new rows
    already_stored: int  # the same card, outcome and time sent again
    unknown_cards: tuple[str, ...]  # card uuids no audit row names


def _insert_ignoring_duplicates(database: Database) -> Insert:
    dialect = sqlite if database.is_sqlite else postgresql
    # RETURNING tells which rows were new: rowcount is not reliable for INSERT ... ON CONFLICT on every driver.
    return (dialect.insert(feedback).on_conflict_do_nothing(index_elements=["card_uuid", "outcome", "outcome_timestamp"])
            .returning(feedback.c.id))


class FeedbackStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    def known_cards(self, uuids: set[str]) -> set[str]:
        with self.database.engine.connect() as connection:
            rows = connection.execute(select(evaluation_cards.c.card_uuid).where(evaluation_cards.c.card_uuid.in_(uuids)).distinct())
            return {row.card_uuid for row in rows}

    def store(self, service_id: str, items: list[FeedbackItem], request_id: str) -> StoreResult:
        """Insert every item in one transaction; returns once it is committed (durable: see service.storage.database).

        Whether a card is known is read before the write transaction: on SQLite a transaction that reads and
        then writes can fail at once on a concurrent writer instead of waiting for it."""
        known = self.known_cards({item.card for item in items})
        received = datetime.now(timezone.utc)
        statement = _insert_ignoring_duplicates(self.database)
        stored = 0
        with self.database.engine.begin() as connection:
            for item in items:
                reason = item.override or OverrideReason(None, None, None, None)
                stored += connection.execute(statement.values(
                    received_at=received, request_id=request_id, service_id=service_id, card_uuid=item.card,
                    outcome=item.outcome, outcome_timestamp=item.outcome_timestamp.astimezone(timezone.utc),
                    accepted_suggestions=list(item.accepted_suggestions), override_system=reason.system,
                    override_code=reason.code, override_display=reason.display, user_comment=reason.user_comment,
                    card_known=item.card in known,
                )).first() is not None
        unknown = tuple(sorted({item.card for item in items} - known))
        return StoreResult(stored, len(items) - stored, unknown)
