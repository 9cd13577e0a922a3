"""Audit of every evaluation: what was advised (rules, grades, metrics, cards, output ids), never to whom.

A request hands its record to a background writer through a bounded queue and waits at most
CARTOX_AUDIT_WRITE_TIMEOUT_MS for room in it; a record that cannot be queued or written is logged and
counted (audit_failures()), never an error for the request.
"""

from __future__ import annotations

import atexit
import hashlib
import hmac
import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from service.observability.metrics import record_audit_failure
from service.storage.database import Database
from service.storage.tables import evaluation_cards, evaluations

log = logging.getLogger("cartox.audit")

QUEUE_SIZE = 1024
_BATCH = 64  # records written per transaction when the writer is behind
# A queued record holds its request body until the writer hashes it: past this many waiting records a new one is
# hashed before it is queued, so that a stalled writer never holds more than a few bodies.
_BODIES_QUEUED = 4
_FLUSH_AT_EXIT_SECONDS = 2.0
AUDIT_KEY_FILE = "audit.key"

_failures = 0
_failures_lock = threading.Lock()


def audit_failures() -> int:
    """Audit records lost in this process (queue full past the bound, or the write failed)."""
    return _failures


def count_failures(count: int) -> None:
    global _failures
    with _failures_lock:
        _failures += count
    for _ in range(count):  # the Prometheus counter, summed over the server's workers
        record_audit_failure()


@dataclass(frozen=True)
class AuditRecord:
    created_at: datetime
    request_id: str
    service_id: str
    hook_instance: str | None
    rule_set_version: str
    guideline: str
    as_of: datetime
    patient_hash: str | None
    body: bytes  # the request body: its SHA-256 is taken by the writer thread, off the request's path
    output_ids: list[str]
    findings: list[dict[str, Any]]
    cards: list[dict[str, str]]  # uuid, rule, title, indicator
    duration_ms: float
    digest: str | None = None  # the body's SHA-256 when taken before queueing


def input_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def patient_hash(key: bytes, patient_reference: str | None) -> str | None:
    """HMAC-SHA256 of "Patient/<id>": the same patient gives the same value under one key, and no id can be read back."""
    if patient_reference is None:
        return None
    return hmac.new(key, patient_reference.encode("utf-8"), hashlib.sha256).hexdigest()


# What each finding kind says, for the audit: grades, metrics, phase grades or the regimen's state and dose.
_SUMMARY_BY_KIND: dict[str, Callable[[Any], dict[str, Any]]] = {
    "grading": lambda f: {"grade": f.current.grade, "maximumGrade": f.maximum.grade, "onsetDay": f.onset_day},
    "metrics": lambda f: {"outcome": f.outcome, "metrics": {name: metric.value for name, metric in f.metrics.items()},
                          "thresholdsReached": [threshold.code for threshold in f.reached]},
    "phased": lambda f: {"phases": {phase.name: phase.grade for phase in f.phases}},
    "regimen": lambda f: {"state": f.state, "doseMgPerDay": f.dose_mg, "day": f.day},
}


def finding_summary(finding: Any) -> dict[str, Any]:
    """Grades, metrics or state of one finding, with no date, no name, no input identifier."""
    return {"rule": finding.rule.rule_id, "version": finding.rule.rule_version, **_SUMMARY_BY_KIND[finding.kind](finding)}


def card_summaries(cards: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """uuid, rule (source.topic code), title and indicator of each card: what feedback is reported against."""
    summaries = []
    for card in cards:
        topic = card.get("source", {}).get("topic", {})
        summaries.append({"uuid": card["uuid"], "rule": topic.get("code", "-"), "title": topic.get("display", "-"),
                          "indicator": card.get("indicator", "-")})
    return summaries


def card_resource_ids(cards: Iterable[Mapping[str, Any]]) -> list[str]:
    """Ids of the resources the cards' suggestions carry (RiskAssessment, CarePlan, MedicationRequest)."""
    ids = []
    for card in cards:
        for suggestion in card.get("suggestions", ()):
            for action in suggestion.get("actions", ()):
                resource_id = (action.get("resource") or {}).get("id")
                if resource_id and resource_id not in ids:
                    ids.append(resource_id)
    return ids


def audit_key(configured: str, data_dir: str) -> bytes:
    """CARTOX_AUDIT_KEY, else a key generated once and kept in the data directory (with a warning: instances
    sharing a database need the same configured key for their hashes to match)."""
    if configured:
        return configured.encode("utf-8")
    path = Path(data_dir).resolve() / AUDIT_KEY_FILE
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it first
        else:
            with os.fdopen(descriptor, "w") as file:
                file.write(secrets.token_hex(32))
    log.warning("CARTOX_AUDIT_KEY is not set: patient ids in the audit are keyed with the generated key in %s; "
                "set CARTOX_AUDIT_KEY (the same on every instance) in production", path)
    return path.read_text(encoding="utf-8").strip().encode("utf-8")


class AuditWriter:
    """One daemon thread per process writing queued records; started on the first record (after a fork)."""

    def __init__(self, database: Database, timeout_seconds: float, queue_size: int = QUEUE_SIZE) -> None:
        self.database = database
        self.timeout_seconds = timeout_seconds
        self.queue_size = queue_size
        self._queue: queue.Queue[AuditRecord] | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def submit(self, record: AuditRecord) -> bool:
        """Queue the record within the bound; False (logged, counted) when the queue stayed full."""
        records = self._started()
        if records.qsize() >= _BODIES_QUEUED:
            record = replace(record, body=b"", digest=input_digest(record.body))
        try:
            records.put(record, timeout=self.timeout_seconds)
            return True
        except queue.Full:
            count_failures(1)
            log.error("audit record of request %s dropped: the audit queue stayed full for %.0f ms",
                      record.request_id, self.timeout_seconds * 1000)
            return False

    def flush(self, timeout: float) -> bool:
        """Wait until every queued record is written (or failed); False if the timeout came first."""
        records = self._queue
        if records is None or self._pid != os.getpid():
            return True
        deadline = time.monotonic() + timeout
        while records.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not records.unfinished_tasks

    def _started(self) -> queue.Queue[AuditRecord]:
        pid = os.getpid()
        if self._queue is None or self._pid != pid:
            with self._lock:
                if self._queue is None or self._pid != pid:
                    self._queue = queue.Queue(self.queue_size)
                    self._thread = threading.Thread(target=self._run, args=(self._queue,), name="cartox-audit", daemon=True)
                    self._thread.start()
                    self._pid = pid
                    atexit.register(self.flush, _FLUSH_AT_EXIT_SECONDS)
        return self._queue

    def _run(self, records: queue.Queue[AuditRecord]) -> None:
        while True:
            batch = [records.get()]
            while len(batch) < _BATCH:
                try:
                    batch.append(records.get_nowait())
                except queue.Empty:
                    break
            try:
                write_records(self.database, batch)
            except Exception:
                count_failures(len(batch))
                log.exception("audit write of %d record(s) failed", len(batch))
            finally:
                for _ in batch:
                    records.task_done()


def write_records(database: Database, records: Sequence[AuditRecord]) -> None:
    """Insert the records and their cards in one transaction."""
    if not records:
        return
    with database.engine.begin() as connection:
        for record in records:
            evaluation_id = connection.execute(insert(evaluations).values(
                created_at=record.created_at, request_id=record.request_id, service_id=record.service_id,
                hook_instance=record.hook_instance, rule_set_version=record.rule_set_version, guideline=record.guideline,
                as_of=record.as_of.astimezone(timezone.utc), patient_hash=record.patient_hash,
                input_sha256=record.digest or input_digest(record.body), output_ids=record.output_ids, findings=record.findings,
                duration_ms=record.duration_ms,
            )).inserted_primary_key[0]
            if record.cards:
                connection.execute(insert(evaluation_cards), [
                    {"evaluation_id": evaluation_id, "card_uuid": card["uuid"], "rule": card["rule"][:128],
                     "title": card["title"][:256], "indicator": card["indicator"][:16]}
                    for card in record.cards
                ])
