"""CDS Hooks prefetch fallback: what the EHR did not prefetch is fetched from the call's `fhirServer`.

- A missing required key: its discovery template is filled from the context and queried (a read, or a
  search with all its pages). A `null` value means "no data" and is never fetched.
- A prefetched searchset with a `next` link: its remaining pages are fetched and merged; if that fails, the
  pages sent are used and the evaluation reports the data as partial (it does not turn present data into a 412).
- Only a fhirServer on the allow-list of the caller is queried (service.fhir_client.policy), with the
  `fhirAuthorization` access token as `Authorization: Bearer` when there is one, and none when not.
- The queries run in parallel within one time budget; a required key still unavailable: 412 with one
  located issue per key saying why (stable codes below). At the first failure cartox answers at once: a key
  whose query was cut short says which query failed.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any, Callable, Iterable

import msgspec
import orjson
from flask import current_app, request

from service.errors import InputError, Issue
from service.fhir_client.client import (
    FAILED, TIMEOUT, UNAUTHORIZED, ClientLimits, FetchFailure, FhirCall, FhirClient, fill_template, has_next_link, is_bundle,
)
from service.fhir_client.policy import ServerPolicy, origin
from service.http_api.auth import CALLER
from service.settings import Settings

log = logging.getLogger("cartox.prefetch")

EXTENSION_KEY = "cartox.fhir_client"
# failure kind -> (stable cartox code, FHIR IssueType)
_FAILURE_CODES = {
    TIMEOUT: ("prefetch-fetch-timeout", "timeout"),
    UNAUTHORIZED: ("prefetch-fetch-unauthorized", "security"),
    FAILED: ("prefetch-fetch-failed", "transient"),
}


def init_app_client(settings: Settings, development: bool) -> tuple[FhirClient, ServerPolicy]:
    """The worker's FHIR client and server policy (one per application)."""
    limits = ClientLimits(
        connect_timeout=settings.fhir_connect_timeout_seconds,
        read_timeout=settings.fhir_read_timeout_seconds,
        budget=settings.fhir_fetch_budget_seconds,
        max_pages=settings.fhir_max_pages,
        page_size=settings.fhir_page_size,
        max_response_bytes=settings.max_body_bytes,
    )
    # Without an allow-list, development may query loopback servers (a local FHIR server or sandbox); production
    # queries only the servers its allow-list names.
    return FhirClient(limits), ServerPolicy(settings.fhir_server_allowlist, loopback_without_allowlist=development)


def verified_callers() -> tuple[str | None, str | None]:
    """(issuer, tenant) of the verified CDS Hooks JWT, put in the WSGI environ by the authentication layer;
    (None, None) for an unsigned call (development), which only "*" entries allow."""
    caller = request.environ.get(CALLER)
    return (caller.issuer, caller.tenant) if caller is not None else (None, None)


def complete_prefetch(
    prefetch: dict[str, msgspec.Raw],
    templates: dict[str, str],
    searchset_keys: Iterable[str],
    fhir_server: str | None,
    fhir_authorization: Any,
    context: dict[str, Any],
    callers: Iterable[str | None],
    optional: Iterable[str] = (),
) -> dict[str, msgspec.Raw]:
    """The prefetch with every missing key of `templates` fetched and paged searchsets completed; raises a
    412 InputError naming each required key that is still unavailable, and why. An `optional` key that cannot
    be fetched is left out (logged)."""
    optional = frozenset(optional)
    missing = [key for key in templates if key not in prefetch]
    paged = [key for key in searchset_keys if key in prefetch and _has_next_link(prefetch[key])]
    if not missing and not paged:
        return prefetch
    client, policy = current_app.extensions[EXTENSION_KEY]
    if not fhir_server or not policy.allows(fhir_server, callers):
        if fhir_server:
            log.warning("prefetch fallback refused: fhirServer %s is not on the allow-list of this caller", _origin_text(fhir_server))
        missing = [key for key in missing if key not in optional]
        if not missing:  # only optional keys or paged searchsets: used as sent, reported as partial
            return prefetch
        if not fhir_server:
            raise _unavailable(missing, "prefetch-missing", "required", "the request has no fhirServer to fetch it from")
        raise _unavailable(missing, "prefetch-server-not-allowed", "forbidden",
                           "fhirServer is not on the allow-list of this caller (CARTOX_FHIR_SERVER_ALLOWLIST), so it was not queried")
    call = client.call(fhir_server, _access_token(fhir_authorization))
    jobs: dict[str, Callable[[], dict[str, Any]]] = {key: partial(_fetch, call, templates[key], context) for key in missing}
    jobs |= {key: partial(_complete, call, prefetch[key]) for key in paged}
    results = call.gather(jobs)
    failed = {key: result for key, result in results.items() if isinstance(result, FetchFailure) and key in missing}
    for key in [key for key in failed if key in optional]:
        log.warning("optional prefetch %r not fetched: %s", key, failed.pop(key).reason)
    if failed:
        for key, failure in failed.items():
            log.warning("prefetch fallback for %r failed: %s", key, failure.reason)
        raise InputError([_issue(key, failure) for key, failure in failed.items()], status=412)
    completed = dict(prefetch)
    for key, result in results.items():
        if not isinstance(result, FetchFailure):  # a paged searchset not completed in time stays as sent
            completed[key] = msgspec.Raw(orjson.dumps(result))
    return completed


def _complete(call: FhirCall, raw: msgspec.Raw) -> dict[str, Any]:
    return call.complete(orjson.loads(bytes(raw))).bundle


def _fetch(call: FhirCall, template: str, context: dict[str, Any]) -> dict[str, Any]:
    path = fill_template(template, context)
    if path is None:
        raise FetchFailure(FAILED, f"the query {template!r} needs a context field this request does not have")
    resource_path = path.split("?", 1)[0]
    if "?" not in path and resource_path.count("/") == 1:
        return call.read(path)
    return call.search(path).bundle


def _access_token(fhir_authorization: Any) -> str | None:
    token = fhir_authorization.get("access_token") if isinstance(fhir_authorization, dict) else None
    return token if isinstance(token, str) and token else None


def _has_next_link(raw: msgspec.Raw) -> bool:
    """A prefetched Bundle cut by paging. Anything malformed is left as sent, for the decoder to report."""
    data = bytes(raw)
    if b'"next"' not in data:  # the common case, a whole searchset, is not parsed twice
        return False
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return is_bundle(document) and has_next_link(document)


def _issue(key: str, failure: FetchFailure) -> Issue:
    code, fhir_type = _FAILURE_CODES[failure.kind]
    return Issue(code, f"Required prefetch {key!r} is missing and could not be fetched: {failure.reason}", f"prefetch.{key}", fhir_type=fhir_type)


def _unavailable(keys: list[str], code: str, fhir_type: str, why: str) -> InputError:
    return InputError(
        [Issue(code, f"Required prefetch {key!r} is missing and could not be fetched: {why}", f"prefetch.{key}", fhir_type=fhir_type)
         for key in keys],
        status=412,
    )


def _origin_text(url: str) -> str:
    where = origin(url)
    return f"{where[0]}://{where[1]}:{where[2]}" if where else "(not an http(s) URL)"
