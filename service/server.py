"""The HTTP server of `cartox serve`: gunicorn processes, asyncio HTTP/1.1 (uvicorn), a bounded thread pool.

Connection I/O is asynchronous: a client that stalls while sending its body holds a socket, never a
thread. Each request body is buffered whole, within CARTOX_BODY_TIMEOUT_SECONDS and
CARTOX_MAX_BODY_BYTES (chunked bodies included), before the Flask application runs on one of a few
threads. A body that misses the deadline or the limit reaches the application as a marker in the WSGI
environ (see service.http_api.common.BODY_VERDICT), so 408 and 413 are OperationOutcomes like every
other error. README "Worker model" says why.
"""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gunicorn.app.base import BaseApplication
from uvicorn_worker import UvicornWorker

from service.http_api.common import BODY_TIMED_OUT, BODY_TOO_LARGE, BODY_VERDICT
from service.observability.logs import gunicorn_logconfig

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

# Headers of the client's framing, replaced by the buffered body's Content-Length.
_FRAMING = {"CONTENT_LENGTH", "TRANSFER_ENCODING"}


class BufferedWSGI:
    """ASGI application running a WSGI application once the whole request body has arrived."""

    def __init__(self, app: WSGIApp, max_body_bytes: int, body_timeout: float, threads: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None  # created in the worker process, after the fork

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan and websockets are switched off in CartoxWorker
            return
        read = await self._read_body(scope, receive)
        if read is None:
            return  # the client went away: nobody to answer
        body, verdict = read
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="cartox")
        environ = wsgi_environ(scope, body, verdict)
        status, headers, content = await asyncio.get_running_loop().run_in_executor(self._pool, run_wsgi, self.app, environ)
        if verdict is not None:
            # The rest of the body is still on its way: the connection cannot carry another request.
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    async def _read_body(self, scope: Scope, receive: Receive) -> tuple[bytes, str | None] | None:
        """(body, None), (b"", verdict) when the deadline or the size limit cut it off, None on disconnect."""
        declared = header(scope, b"content-length")
        if declared is not None and int(declared) > self.max_body_bytes:
            return b"", BODY_TOO_LARGE  # answered before reading (and before any 100 Continue)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), timeout=max(deadline - loop.time(), 0))
            except TimeoutError:
                return b"", BODY_TIMED_OUT
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:  # a chunked body has no Content-Length to check beforehand
                return b"", BODY_TOO_LARGE
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def wsgi_environ(scope: Scope, body: bytes, verdict: str | None) -> dict[str, Any]:
    """PEP 3333 environ of an ASGI HTTP scope whose body has been read into memory."""
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": scope.get("root_path", "").encode().decode("latin-1"),
        "PATH_INFO": scope["path"].encode().decode("latin-1"),
        "QUERY_STRING": scope["query_string"].decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{scope['http_version']}",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if client:
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = client[0], str(client[1])
    if verdict is not None:
        environ[BODY_VERDICT] = verdict
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").upper()
        if "_" in name:
            continue  # X_Forwarded_For would pass for X-Forwarded-For once both become HTTP_X_FORWARDED_FOR
        key = name.replace("-", "_")
        if key in _FRAMING:
            continue
        value = raw_value.decode("latin-1")
        if key == "CONTENT_TYPE":
            environ[key] = value
            continue
        key = "HTTP_" + key
        environ[key] = f"{environ[key]}, {value}" if key in environ else value
    return environ


def run_wsgi(app: WSGIApp, environ: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Call the WSGI application and collect its whole response (a pool thread never waits on a client)."""
    started: list[tuple[str, list[tuple[str, str]]]] = []
    written: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        started[:] = [(status, headers)]  # nothing is sent yet, so a later call (with exc_info) simply replaces it
        return written.append

    result = app(environ, start_response)
    try:
        written.extend(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    status, headers = started[0]
    return int(status.split(" ", 1)[0]), [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers], b"".join(written)


class CartoxWorker(UvicornWorker):  # type: ignore[misc]
    """uvicorn in a gunicorn worker process, configured for BufferedWSGI: no Server header, plain HTTP/1.1."""

    CONFIG_KWARGS = {
        "loop": "asyncio",
        "http": "h11",
        "ws": "none",
        "lifespan": "off",
        "server_header": False,
        # under docker stop's 10 s: requests still running after SIGTERM get 5 s to finish
        "timeout_graceful_shutdown": 5,
    }


class Server(BaseApplication):  # type: ignore[misc]
    """gunicorn with CartoxWorker, configured in code only (no gunicorn.conf.py, no GUNICORN_CMD_ARGS)."""

    def __init__(self, application: BufferedWSGI, bind: str, workers: int, log_level: str = "INFO") -> None:
        self.application = application
        self.bind = bind
        self.workers = workers
        self.log_level = log_level
        super().__init__()

    def load_config(self) -> None:
        self.cfg.set("bind", self.bind)
        self.cfg.set("workers", self.workers)
        self.cfg.set("worker_class", CartoxWorker)
        self.cfg.set("timeout", 60)  # the event loop beats the heartbeat, also while a thread evaluates
        self.cfg.set("graceful_timeout", 8)
        self.cfg.set("logconfig_dict", gunicorn_logconfig(self.log_level))
        self.cfg.set("child_exit", _worker_exited)

    def load(self) -> BufferedWSGI:
        return self.application


def _worker_exited(_server: Any, worker: Any) -> None:
    """gunicorn child_exit hook (in the master): the dead worker's metric files stop counting as live."""
    from service.observability.metrics import worker_exited

    worker_exited(worker.pid)
