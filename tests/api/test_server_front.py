"""service.server in process: the WSGI environ of a buffered request, and the ASGI front around the app.

The real server (sockets, stalled and chunked clients) is tested in tests/deploy/test_slow_clients.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from service.server import BufferedWSGI, wsgi_environ

SCOPE: dict[str, Any] = {
    "type": "http", "http_version": "1.1", "method": "POST", "scheme": "http", "root_path": "",
    "path": "/evaluate/ü", "query_string": b"asOf=2026-03-05T12:00:00%2B01:00",
    "server": ("127.0.0.1", 8080), "client": ("127.0.0.1", 50000),
    "headers": [
        (b"content-type", b"application/fhir+json"), (b"transfer-encoding", b"chunked"),
        (b"accept", b"application/json"), (b"accept", b"application/fhir+json"),
        (b"x_forwarded_for", b"10.0.0.1"),
    ],
}


def test_environ_of_a_buffered_chunked_request() -> None:
    environ = wsgi_environ(SCOPE, b"{}", None)
    assert environ["CONTENT_LENGTH"] == "2"  # the buffered body's length replaces the client's framing
    assert "HTTP_TRANSFER_ENCODING" not in environ
    assert environ["CONTENT_TYPE"] == "application/fhir+json"
    assert environ["HTTP_ACCEPT"] == "application/json, application/fhir+json"
    assert "HTTP_X_FORWARDED_FOR" not in environ  # an underscore name must not pass for X-Forwarded-For
    assert environ["PATH_INFO"] == "/evaluate/ü".encode().decode("latin-1")  # PEP 3333: bytes as latin-1
    assert environ["QUERY_STRING"] == "asOf=2026-03-05T12:00:00%2B01:00"
    assert environ["wsgi.input"].read() == b"{}"
    assert "cartox.body_verdict" not in environ


def _call(front: BufferedWSGI, scope: dict[str, Any], messages: list[dict[str, Any]], pause: float = 0.0) -> list[dict[str, Any]]:
    """Run the ASGI front on one request; receive() hands out `messages`, then waits `pause` s each time."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(pause)
        return {"type": "http.request", "body": b" ", "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(front(scope, receive, send))
    return sent


@pytest.fixture
def front(app_factory) -> BufferedWSGI:
    return BufferedWSGI(app_factory(max_body_bytes=1000), max_body_bytes=1000, body_timeout=1, threads=1)


def _code(sent: list[dict[str, Any]]) -> str:
    return json.loads(sent[1]["body"])["issue"][0]["details"]["coding"][0]["code"]


def test_chunks_over_the_limit_are_413_and_close(front: BufferedWSGI) -> None:
    chunks = [{"type": "http.request", "body": b" " * 600, "more_body": True}] * 2
    sent = _call(front, SCOPE, chunks)
    assert sent[0]["status"] == 413
    assert (b"connection", b"close") in sent[0]["headers"]
    assert _code(sent) == "input-body-too-large"


def test_a_body_that_keeps_trickling_is_408_at_the_deadline(front: BufferedWSGI) -> None:
    sent = _call(front, SCOPE, [], pause=0.1)
    assert sent[0]["status"] == 408
    assert (b"connection", b"close") in sent[0]["headers"]
    assert _code(sent) == "input-timeout"


def test_a_client_gone_before_its_body_ended_gets_no_answer(front: BufferedWSGI) -> None:
    assert _call(front, SCOPE, [{"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"}]) == []


def test_a_complete_body_reaches_the_app(front: BufferedWSGI) -> None:
    scope = {**SCOPE, "path": "/evaluate", "headers": [(b"content-type", b"application/fhir+json")]}
    sent = _call(front, scope, [{"type": "http.request", "body": b'{"a": 1} x', "more_body": False}])
    assert sent[0]["status"] == 400
    assert (b"connection", b"close") not in sent[0]["headers"]
    assert (b"x-content-type-options", b"nosniff") in sent[0]["headers"]
    assert _code(sent) == "input-not-json"
