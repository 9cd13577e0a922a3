"""Structured JSON logs (structlog): one JSON object a line, with the request id of the request it is about.

Every stdlib logger (cartox, gunicorn, uvicorn, libraries) goes through the same JSON formatter, so a line
logged anywhere while a request runs carries its request id (a context variable bound for the request's
thread). What is logged about a request is its route template, method, status and duration: never the
query string, the body, a header value, a patient id or a token.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

import structlog

REQUEST_ID_HEADER = "X-Request-ID"
# A client's request id is kept when it is short and plain (it is echoed in a header and written to logs).
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_HANDLER_MARK = "_cartox_json"

_SHARED_PROCESSORS: list[structlog.typing.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


# Exceptions as a list of frames (file, line, function) and types: no local variables and no exception
# message, either of which may hold a request's data (a value that failed to parse, a resource ...).
_TRACEBACKS = structlog.processors.ExceptionRenderer(structlog.tracebacks.ExceptionDictTransformer(show_locals=False))


def _without_exception_messages(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    for exception in event.get("exception") or ():
        if isinstance(exception, dict):
            exception.pop("exc_value", None)
            exception.pop("exc_notes", None)
            exception.pop("syntax_error", None)
    return event


def json_formatter() -> logging.Formatter:
    """The formatter of every cartox log handler: a JSON object a line (exceptions as a structured list)."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED_PROCESSORS,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _TRACEBACKS,
            _without_exception_messages,
            structlog.processors.JSONRenderer(),
        ],
    )


def configure_logging(level: str) -> None:
    """Root logging to stderr as JSON at `level` (CARTOX_LOG_LEVEL); idempotent, other handlers are kept."""
    structlog.configure(
        processors=[*_SHARED_PROCESSORS, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    if not any(getattr(handler, _HANDLER_MARK, False) for handler in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(json_formatter())
        setattr(handler, _HANDLER_MARK, True)
        root.addHandler(handler)
    root.setLevel(level)
    # urllib3 logs request paths (FHIR queries carry patient ids): never below WARNING
    logging.getLogger("urllib3").setLevel(max(logging.WARNING, root.level))


def request_id_from(header_value: str | None) -> str:
    """The client's X-Request-ID when sane, else a new one (a UUID without dashes)."""
    if header_value and _SANE_REQUEST_ID.fullmatch(header_value):
        return header_value
    return uuid.uuid4().hex


def bind_request(request_id: str) -> None:
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)


def unbind_request() -> None:
    structlog.contextvars.clear_contextvars()


def get_logger(name: str = "cartox") -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)


def gunicorn_logconfig(level: str) -> dict[str, Any]:
    """gunicorn's logconfig_dict: its own lines (start, workers, signals) in the same JSON as the app's.

    The server's access log stays off (its lines would carry no request id): the application writes one
    JSON line a request instead (service.observability.instrument).
    """
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": json_formatter}},
        "handlers": {"json": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "root": {"level": level, "handlers": ["json"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": ["json"], "propagate": False},
            "gunicorn.access": {"level": "CRITICAL", "handlers": [], "propagate": False},
        },
    }
