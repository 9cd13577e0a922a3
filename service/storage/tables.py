"""The storage schema as SQLAlchemy Core tables (the migrations in migrations/versions create them).

No table holds a name, a birth date or a raw identifier: the audit keeps a keyed hash of the patient id.
"""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Column, DateTime, Float, ForeignKey, Integer, MetaData, String, Table, Text, UniqueConstraint

metadata = MetaData()

# One row per evaluation answered (CDS Hooks services and /evaluate): what was advised, never to whom.
evaluations = Table(
    "evaluations", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("request_id", String(64), nullable=False),
    Column("service_id", String(64), nullable=False),
    Column("hook_instance", String(128)),
    Column("rule_set_version", String(128), nullable=False),
    Column("guideline", String(64), nullable=False),
    Column("as_of", DateTime(timezone=True), nullable=False),
    Column("patient_hash", String(64)),  # HMAC-SHA256 of "Patient/<id>" with CARTOX_AUDIT_KEY
    Column("input_sha256", String(64), nullable=False),
    Column("output_ids", JSON, nullable=False),
    Column("findings", JSON, nullable=False),  # grades and metrics per rule
    Column("duration_ms", Float, nullable=False),
)

# The cards of each evaluation, by uuid: feedback names a card by its uuid only.
evaluation_cards = Table(
    "evaluation_cards", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("evaluation_id", Integer, ForeignKey("evaluations.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("card_uuid", String(64), nullable=False, index=True),
    Column("rule", String(128), nullable=False),  # the card's source.topic code
    Column("title", String(256), nullable=False),
    Column("indicator", String(16), nullable=False),
)

# Clinicians' responses to cards (CDS Hooks feedback); the same card, outcome and time are stored once.
feedback = Table(
    "feedback", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("request_id", String(64), nullable=False),
    Column("service_id", String(64), nullable=False),
    Column("card_uuid", String(64), nullable=False, index=True),
    Column("outcome", String(16), nullable=False),
    Column("outcome_timestamp", DateTime(timezone=True), nullable=False),
    Column("accepted_suggestions", JSON, nullable=False),
    Column("override_system", String(512)),
    Column("override_code", String(128)),
    Column("override_display", String(512)),
    Column("user_comment", Text),
    Column("card_known", Boolean, nullable=False),  # the card uuid was in an audit row when the feedback came
    UniqueConstraint("card_uuid", "outcome", "outcome_timestamp", name="uq_feedback_card_outcome_time"),
)

# JWT ids already used, per issuer, until the token expires (replay protection across workers and instances).
jwt_replay = Table(
    "jwt_replay", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("issuer", String(512), nullable=False),
    Column("jti", String(256), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
    UniqueConstraint("issuer", "jti", name="uq_jwt_replay_issuer_jti"),
)
