"""JWT replay store: a (issuer, jti) is claimed once until it expires, also by racing processes."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from service.storage import SqlReplayStore
from service.storage.database import Database
from service.storage.tables import jwt_replay

ISSUER = "https://ehr.example.org"


@pytest.fixture
def store(database_url):
    database = Database(database_url)
    yield SqlReplayStore(database)
    database.dispose()


def test_a_jti_is_claimed_once_until_it_expires(store):
    later = datetime.now(timezone.utc) + timedelta(minutes=5)
    assert store.claim(ISSUER, "jti-1", later) is True
    assert store.claim(ISSUER, "jti-1", later) is False
    assert store.claim("https://other.example.org", "jti-1", later) is True  # per issuer
    assert store.claim(ISSUER, "jti-2", later) is True


def test_ids_too_long_to_record_are_never_accepted(store):
    later = datetime.now(timezone.utc) + timedelta(minutes=5)
    assert store.claim(ISSUER, "j" * 257, later) is False
    assert store.claim("https://" + "i" * 600, "jti-1", later) is False
    assert store.claim(ISSUER, "", later) is False
    assert store.claim(ISSUER, "j" * 256, later) is True


def test_an_expired_claim_frees_its_jti(store):
    past = datetime.now(timezone.utc) - timedelta(seconds=1)
    assert store.claim(ISSUER, "jti-old", past) is True
    later = datetime.now(timezone.utc) + timedelta(minutes=5)
    assert store.claim(ISSUER, "jti-old", later) is True
    assert store.claim(ISSUER, "jti-old", later) is False


def test_purge_removes_only_expired_rows(store):
    now = datetime.now(timezone.utc)
    store.claim(ISSUER, "gone", now - timedelta(minutes=1))
    store.claim(ISSUER, "kept", now + timedelta(minutes=1))
    assert store.purge_expired(now) == 1
    with store.database.engine.connect() as connection:
        assert [row.jti for row in connection.execute(select(jwt_replay.c.jti))] == ["kept"]


def test_expiry_in_another_offset_is_the_same_instant(store):
    paris = timezone(timedelta(hours=2))
    expires = (datetime.now(timezone.utc) + timedelta(minutes=5)).astimezone(paris)
    assert store.claim(ISSUER, "jti-tz", expires) is True
    store.purge_expired(datetime.now(timezone.utc))  # five minutes ahead in any offset: not purged
    assert store.claim(ISSUER, "jti-tz", expires) is False


_CLAIMER = """
import json, random, sys, time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from service.storage import SqlReplayStore
from service.storage.database import Database
url, barrier, count, name = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
store = SqlReplayStore(Database(url))
expires = datetime.now(timezone.utc) + timedelta(minutes=5)
store.claim("warm-up", name, expires)  # imported and connected before the race
ids = [f"jti-{i}" for i in range(count)]
random.Random(name).shuffle(ids)  # each process in its own order: they collide all along
(barrier / name).touch()
while len(list(barrier.iterdir())) < 2:
    time.sleep(0.001)
started = time.time()
claimed = [jti for jti in ids if store.claim("%s", jti, expires)]
print(json.dumps({"claimed": claimed, "started": started, "ended": time.time()}))
""" % ISSUER


def test_two_processes_racing_claim_each_jti_exactly_once(database_url, tmp_path):
    count = 400
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    processes = [subprocess.Popen([sys.executable, "-c", _CLAIMER, database_url, str(barrier), str(count), f"p{i}"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err[-2000:]
        results.append(json.loads(out))
    first, second = (set(result["claimed"]) for result in results)
    assert first.isdisjoint(second), sorted(first & second)[:5]
    assert first | second == {f"jti-{i}" for i in range(count)}
    # the race was run: both processes were claiming at the same time (who wins how many is up to the scheduler)
    assert max(r["started"] for r in results) < min(r["ended"] for r in results), results
    database = Database(database_url)
    try:
        with database.engine.connect() as connection:
            assert connection.execute(select(func.count()).select_from(jwt_replay).where(jwt_replay.c.issuer == ISSUER)).scalar() == count
    finally:
        database.dispose()
