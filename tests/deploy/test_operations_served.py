"""Operations of a really started `cartox serve` with two worker processes: metrics add up across workers,
every log line is JSON with a request id, the metrics directory lives as long as the server."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from email.message import Message
from pathlib import Path

import pytest

pytestmark = pytest.mark.deploy

REQUESTS = 40


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Message, str]:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:  # a new connection each time: either worker may answer
        return response.status, response.headers, response.read().decode()


def _healthz_count(metrics_text: str) -> float:
    for line in metrics_text.splitlines():
        if line.startswith("cartox_http_requests_total{") and 'route="/healthz"' in line and 'status="200"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _children(pid: int) -> list[int]:
    """The live processes whose parent is `pid` (from /proc/*/stat: the children files miss some)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return sorted(found)


def _metrics_dir_of(pid: int) -> Path | None:
    """The multiprocess directory, from the value files a worker keeps open."""
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if "cartox-metrics-" in target:
            return Path(target).parent
    return None


def test_metrics_add_up_across_workers_and_log_lines_carry_request_ids(serve_cartox):
    server = serve_cartox(workers=2)
    before = _healthz_count(_get(f"{server.base_url}/metrics")[2])

    def probe(index: int) -> None:
        status, headers, _ = _get(f"{server.base_url}/healthz", {"X-Request-ID": f"probe-{index}"})
        assert status == 200 and headers["X-Request-ID"] == f"probe-{index}"

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(probe, range(REQUESTS)))
    assert _healthz_count(_get(f"{server.base_url}/metrics")[2]) - before == REQUESTS

    workers = _children(server.proc.pid)
    assert len(workers) == 2, workers
    metrics_dir = next(d for d in map(_metrics_dir_of, workers) if d is not None)
    # A worker that stops keeps its counts: kill one (gunicorn starts another) and the total stays.
    os.kill(workers[0], signal.SIGKILL)
    assert _healthz_count(_get(f"{server.base_url}/metrics")[2]) - before == REQUESTS

    from_files = {path.name for path in metrics_dir.iterdir()}
    assert any(name.startswith("counter_") for name in from_files) and any(name.startswith("histogram_") for name in from_files)
    os.killpg(server.proc.pid, signal.SIGTERM)
    server.proc.wait(timeout=15)
    assert not metrics_dir.exists(), "the metrics directory outlives the server"

    records = [json.loads(line) for line in server.log_text().splitlines() if line.startswith("{")]
    access = [record for record in records if record.get("event") == "request"]
    assert {r["request_id"] for r in access if r["route"] == "/healthz"} >= {f"probe-{i}" for i in range(REQUESTS)}
    assert all(r["request_id"] for r in access)
    assert all(set(r) >= {"timestamp", "level", "logger", "event"} for r in records)
