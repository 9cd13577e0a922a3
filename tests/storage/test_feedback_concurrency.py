"""Feedback stored by two processes at once (two workers, or two instances on PostgreSQL): nothing lost, and
an item both send is stored exactly once."""

from __future__ import annotations

import json
import subprocess
import sys

from sqlalchemy import func, select

from service.storage.database import Database
from service.storage.tables import feedback

_SENDER = """
import json, sys, time
from datetime import datetime, timezone
from pathlib import Path
from service.storage.database import Database
from service.storage.feedback import FeedbackItem, FeedbackStore
url, barrier, name, count = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
store = FeedbackStore(Database(url))
store.known_cards({"00000000-0000-4000-8000-000000000000"})  # connected before the race
at = datetime(2026, 3, 7, 12, tzinfo=timezone.utc)
def item(card):
    return FeedbackItem(card, "overridden", at, (), None)
shared = [item(f"00000000-0000-4000-8000-{i:012d}") for i in range(count)]
own = [item(f"00000000-0000-4000-9{name[-1]}00-{i:012d}") for i in range(count)]
(barrier / name).touch()
while len(list(barrier.iterdir())) < 2:
    time.sleep(0.001)
stored = 0
for index in range(count):  # one request per item, as clients send them, alternating shared and own
    stored += store.store("car-t-toxicity", [shared[index]], name).stored
    assert store.store("car-t-toxicity", [own[index]], name).stored == 1
print(json.dumps(stored))
"""


def test_two_processes_storing_feedback_at_once_lose_nothing_and_store_shared_items_once(database_url, tmp_path):
    count = 60
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    processes = [subprocess.Popen([sys.executable, "-c", _SENDER, database_url, str(barrier), f"p{i}", str(count)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    shared_stored = 0
    for process in processes:
        out, err = process.communicate(timeout=180)
        assert process.returncode == 0, err[-2000:]
        shared_stored += json.loads(out)
    assert shared_stored == count  # each shared item acknowledged as new by exactly one process
    database = Database(database_url)
    try:
        with database.engine.connect() as connection:
            assert connection.execute(select(func.count()).select_from(feedback)).scalar() == 3 * count
            per_sender = dict(connection.execute(select(feedback.c.request_id, func.count()).group_by(feedback.c.request_id)).all())
    finally:
        database.dispose()
    assert sum(per_sender.values()) == 3 * count and set(per_sender) <= {"p0", "p1"}
