"""Deployment tests: the Dockerfile (without docker), the README's set-up command, the installed package."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers",
        "deploy: deployment checks (fresh virtualenv, real gunicorn on a loopback port, built wheel); "
        "part of the default run, select or skip with -m deploy / -m 'not deploy'",
    )


# --------------------------------------------------------------------------------------------------
# A running `cartox serve` on a loopback port (operations, schemathesis, `cartox check`)
# --------------------------------------------------------------------------------------------------
@dataclass
class RunningServer:
    base_url: str
    proc: subprocess.Popen
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_cartox(tmp_dir: Path, *, workers: int = 2, threads: int = 4, env: dict[str, str] | None = None,
                 startup_timeout: float = 30.0) -> RunningServer:
    """`cartox serve` of the environment under test, own process group, a free 127.0.0.1 port, /healthz answered."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run_dir = tmp_dir / "run"  # gunicorn >= 25.1 puts its control socket in $XDG_RUNTIME_DIR
    run_dir.mkdir(mode=0o700, exist_ok=True)
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("CARTOX_", "GUNICORN", "PROMETHEUS_"))}
    environment.update(XDG_RUNTIME_DIR=str(run_dir), **(env or {}))
    log = tmp_dir / f"serve-{port}.log"
    cartox = Path(sys.executable).with_name("cartox")
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(cartox), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
                                 "--threads", str(threads)], env=environment, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    server = RunningServer(f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"cartox serve exited with {proc.returncode}:\n{server.log_text()}")
        try:
            with urllib.request.urlopen(f"{server.base_url}/healthz", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.2)
    stop_cartox(server)
    pytest.fail(f"/healthz not answering within {startup_timeout} s:\n{server.log_text()}")


def stop_cartox(server: RunningServer) -> None:
    """SIGTERM to the server's own process group (SIGKILL if it lingers)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(server.proc.pid, sig)
            server.proc.wait(timeout=15)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def cartox_server(tmp_path_factory):
    """One `cartox serve` (2 workers, default settings) shared by a test module."""
    server = start_cartox(tmp_path_factory.mktemp("serve"))
    yield server
    stop_cartox(server)


@pytest.fixture
def serve_cartox(tmp_path):
    """serve_cartox(workers=2, env={...}) -> a started server; every one is stopped after the test."""
    started: list[RunningServer] = []

    def start(**options) -> RunningServer:
        server = start_cartox(tmp_path, **options)
        started.append(server)
        return server

    yield start
    for server in started:
        stop_cartox(server)
