"""A bounded FHIR client for one CDS Hooks call: reads and paged searches on the call's `fhirServer`.

Bounds: the queries of one call run in parallel on a small thread pool and share one deadline (the time
budget); the caller waits for them until the deadline and no longer, whatever a server does. Each attempt's
connect and read timeouts are the configured ones or what is left of the budget, whichever is shorter, and
the body is read one receive at a time with the socket's timeout cut to what is left, so a query abandoned at
the deadline also ends there instead of holding a pool thread. 429 and 5xx answers, timeouts and dropped
connections are retried a bounded number of times with exponential backoff, or after the server's
Retry-After when it fits in the budget. Redirects are not followed, and every URL, `next` links included,
must be on the origin (scheme, host, port) of fhirServer: the access token goes nowhere else.

Sessions: requests does not promise that a Session is thread-safe (its cookie jar and adapter state are
shared mutable objects), so each thread of the worker process's fetch pool has its own Session, created on
first use (after gunicorn's fork, never inherited from the parent) and kept for the thread's life: the
keep-alive connections are reused call after call, and there are at most as many Sessions as pool threads.
Cookies are refused (one EHR's cookie must never ride on a call made for another caller) and the token is
set per request, never on the Session.
"""

from __future__ import annotations

import contextvars
import email.utils
import http.cookiejar
import logging
import re
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timezone
from http import HTTPStatus
from typing import Any, Callable, Mapping, TypeVar
from urllib.parse import quote

import orjson
import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import ReadTimeoutError

from service.fhir_client.policy import origin, same_origin

log = logging.getLogger("cartox.fhir_client")

_TEMPLATE_FIELD = re.compile(r"\{\{context\.(\w+)\}\}")
_COUNT_PARAMETER = re.compile(r"[?&]_count=")
_CHUNK_BYTES = 64 * 1024
_BACKOFF_FIRST_SECONDS = 0.2
_BACKOFF_MAX_SECONDS = 2.0
# Per worker process: 4 request threads x 4 prefetch keys run at once; more calls queue within their budget.
FETCH_THREADS = 16

Result = TypeVar("Result")

# Why a query failed, as FetchFailure.kind: the HTTP edge maps each to a stable OperationOutcome code.
TIMEOUT = "timeout"
UNAUTHORIZED = "unauthorized"
FAILED = "failed"


class FetchFailure(Exception):
    """A query that gave no usable answer; `reason` is for the caller and the log (no token, no patient id)."""

    def __init__(self, kind: str, reason: str) -> None:
        self.kind = kind
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class ClientLimits:
    connect_timeout: float
    read_timeout: float
    budget: float
    max_pages: int
    page_size: int
    max_response_bytes: int
    max_attempts: int = 3


@dataclass(frozen=True)
class SearchResult:
    """All pages of a search merged into one searchset; `next_url` is set when paging stopped early (the
    page cap, a link to another origin, a failed page): the Bundle then keeps that link, so the evaluation
    reports the data as partial."""

    bundle: dict[str, Any]
    next_url: str | None


class _NoNetrc(requests.auth.AuthBase):
    """A Session-level auth that changes nothing: its presence stops requests from adding credentials from
    ~/.netrc, so a call without fhirAuthorization goes without any Authorization header."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return request


def fill_template(template: str, context: dict[str, Any]) -> str | None:
    """`Observation?patient={{context.patientId}}` with the context's values URL-encoded (a patientId
    cannot add query parameters or path segments); None when a field is missing or not a string."""
    values: list[str] = []
    for name in _TEMPLATE_FIELD.findall(template):
        value = context.get(name)
        if not isinstance(value, str) or not value:
            return None
        values.append(value)
    filled = iter(values)
    return _TEMPLATE_FIELD.sub(lambda _match: quote(next(filled), safe=""), template)


class FhirClient:
    """One per application (worker process); `call()` starts the queries of one CDS Hooks call."""

    def __init__(self, limits: ClientLimits) -> None:
        self.limits = limits
        self._local = threading.local()
        # Threads start on the first query, so an application made before gunicorn's fork forks none.
        self.pool = ThreadPoolExecutor(max_workers=FETCH_THREADS, thread_name_prefix="cartox-fhir")

    def session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.auth = _NoNetrc()
            session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
            session.headers["Accept"] = "application/fhir+json, application/json;q=0.9"
            adapter = HTTPAdapter(max_retries=0, pool_connections=4, pool_maxsize=4)  # retries are ours
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._local.session = session
        return session

    def call(self, fhir_server: str, access_token: str | None) -> "FhirCall":
        return FhirCall(self, fhir_server.rstrip("/"), access_token, time.monotonic() + self.limits.budget)


class FhirCall:
    """The queries of one CDS Hooks call: one server, one token, one deadline."""

    def __init__(self, client: FhirClient, base: str, access_token: str | None, deadline: float) -> None:
        self._client = client
        self._limits = client.limits
        self.base = base
        self._token = access_token
        self._deadline = deadline
        where = origin(base)
        self._shown = f"{where[0]}://{where[1]}:{where[2]}" if where else "fhirServer"  # for messages: no path, no ids

    def gather(self, jobs: Mapping[str, Callable[[], Result]]) -> dict[str, Result | FetchFailure]:
        """Run the jobs in parallel on the pool; wait until all are done, one failed, or the deadline. A job
        not done by then gets a FetchFailure (the budget's, or the first failure's) and its result, if it
        ever comes, is dropped."""
        # Each job runs in a copy of the caller's context, so that its log lines carry the request's context.
        futures: dict[str, Future[Result]] = {key: self._client.pool.submit(contextvars.copy_context().run, job) for key, job in jobs.items()}
        wait(futures.values(), timeout=max(0.0, self._remaining()), return_when=FIRST_EXCEPTION)
        results: dict[str, Result | FetchFailure] = {}
        first: tuple[str, FetchFailure] | None = None
        for key, future in futures.items():
            if future.done():
                error = future.exception()
                if error is not None and not isinstance(error, FetchFailure):
                    raise error  # a bug, not the server's doing
                results[key] = error if error is not None else future.result()
                if error is not None and first is None:
                    first = key, error
        for key, future in futures.items():
            if key not in results:
                future.cancel()  # one still queued never starts
                if first is not None and self._remaining() > 0:
                    failed_key, failure = first
                    results[key] = FetchFailure(failure.kind, f"not completed, since the query for {failed_key!r} failed: {failure.reason}")
                else:
                    results[key] = self._over_budget()
        return {key: results[key] for key in futures}  # in the order of the jobs

    def _over_budget(self) -> FetchFailure:
        return FetchFailure(TIMEOUT, f"{self._shown} gave no complete answer within the budget of {self._limits.budget:g} s")

    def read(self, path: str) -> dict[str, Any]:
        """GET [base]/Type/id: the resource, which must be of that type."""
        document = self._get_json(f"{self.base}/{path}")
        expected = path.split("/", 1)[0]
        if document.get("resourceType") != expected:
            raise FetchFailure(FAILED, f"{self._shown} answered the {expected} read with a {document.get('resourceType')!r}, not a {expected}")
        return document

    def search(self, path: str) -> SearchResult:
        """GET [base]/Type?params, then every `next` page (up to the page cap), merged."""
        if not _COUNT_PARAMETER.search(path):
            path += ("&" if "?" in path else "?") + f"_count={self._limits.page_size}"
        return self.complete(self._search_page(f"{self.base}/{path}"), pages_read=1)

    def complete(self, first_page: dict[str, Any], pages_read: int = 0) -> SearchResult:
        """Follow the `next` links of a searchset (a prefetched one, or the first page of a search) and merge
        the pages. A page that fails ends the paging: what was read is kept, with the link still to follow."""
        entries = list(first_page.get("entry") or [])
        included = {_resource_key(entry) for entry in entries if _is_include(entry)}
        next_url = _next_link(first_page)
        while next_url is not None:
            if not same_origin(next_url, self.base):
                log.warning("FHIR paging stopped: a next link leaves the origin of %s (not followed)", self._shown)
                break
            if pages_read >= self._limits.max_pages:
                log.warning("FHIR paging stopped after %d pages from %s (CARTOX_FHIR_MAX_PAGES)", pages_read, self._shown)
                break
            try:
                page = self._search_page(next_url)
            except FetchFailure as failure:
                log.warning("FHIR paging stopped: %s", failure.reason)
                break
            pages_read += 1
            for entry in page.get("entry") or []:
                key = _resource_key(entry) if _is_include(entry) else None
                if key is not None:  # the same Medication is included again on every page that cites it
                    if key in included:
                        continue
                    included.add(key)
                entries.append(entry)
            next_url = _next_link(page)
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "entry": entries}
        if next_url is not None:
            bundle["link"] = [{"relation": "next", "url": next_url}]
        return SearchResult(bundle, next_url)

    def _search_page(self, url: str) -> dict[str, Any]:
        document = self._get_json(url)
        if not is_bundle(document):
            raise FetchFailure(FAILED, f"{self._shown} answered a search with a {document.get('resourceType')!r}, not a Bundle")
        return document

    def _remaining(self) -> float:
        return self._deadline - time.monotonic()

    def _get_json(self, url: str) -> dict[str, Any]:
        if not same_origin(url, self.base):  # every caller checks first: this is the last line of defence
            raise FetchFailure(FAILED, f"a query outside the origin of {self._shown} was refused")
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        last: _Retryable | None = None
        for attempt in range(self._limits.max_attempts):
            if last is not None:
                pause = last.retry_after if last.retry_after is not None else _backoff(attempt)
                if pause >= self._remaining():
                    raise self._given_up(last, "no time left in the budget for a retry")
                time.sleep(pause)
            try:
                return self._attempt(url, headers)
            except _Retryable as failure:
                last = failure
        assert last is not None  # max_attempts >= 1
        raise self._given_up(last, f"{self._limits.max_attempts} attempts")

    def _given_up(self, last: "_Retryable", why: str) -> FetchFailure:
        if self._remaining() <= 0:
            return self._over_budget()
        return FetchFailure(last.kind, f"{last.reason} ({why})")

    def _attempt(self, url: str, headers: dict[str, str]) -> dict[str, Any]:
        remaining = self._remaining()
        if remaining <= 0:
            raise self._over_budget()
        timeout = (min(self._limits.connect_timeout, remaining), min(self._limits.read_timeout, remaining))
        try:
            with self._client.session().get(url, headers=headers, timeout=timeout, stream=True, allow_redirects=False) as response:
                status = response.status_code
                if status == 429 or status >= 500:
                    raise _Retryable(FAILED, f"{self._shown} answered {_status_text(status)}", _retry_after(response))
                if status in (401, 403):
                    raise FetchFailure(UNAUTHORIZED, f"{self._shown} answered {_status_text(status)}")
                if status != 200:
                    hint = " (redirects are not followed)" if 300 <= status < 400 else ""
                    raise FetchFailure(FAILED, f"{self._shown} answered {_status_text(status)}{hint}")
                body = self._read_body(response)
        except requests.Timeout:
            raise _Retryable(TIMEOUT, f"{self._shown} did not answer in time") from None
        except requests.ConnectionError as exc:
            text = str(exc).lower()
            raise _Retryable(FAILED, f"{self._shown}: connection {'refused' if 'refused' in text else 'failed'}") from None
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise FetchFailure(FAILED, f"{self._shown} answered with a body that is not JSON") from None
        if not isinstance(document, dict):
            raise FetchFailure(FAILED, f"{self._shown} answered with JSON that is not a FHIR resource")
        return document

    def _read_body(self, response: requests.Response) -> bytes:
        """One receive at a time (urllib3's read1), each with the socket's timeout cut to what is left of
        the budget: a server that trickles its body cannot hold the thread past the deadline."""
        raw = response.raw
        chunks: list[bytes] = []
        size = 0
        while True:
            remaining = self._remaining()
            if remaining <= 0:
                raise self._over_budget()
            sock = getattr(raw.connection, "sock", None)
            if sock is not None:
                sock.settimeout(min(self._limits.read_timeout, remaining))
            try:
                chunk = raw.read1(_CHUNK_BYTES, decode_content=True)
            except ReadTimeoutError:
                raise _Retryable(TIMEOUT, f"{self._shown} did not answer in time") from None
            except Urllib3Error:
                raise _Retryable(FAILED, f"{self._shown}: connection failed while sending its answer") from None
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self._limits.max_response_bytes:
                raise FetchFailure(FAILED, f"{self._shown} answered more than {self._limits.max_response_bytes} bytes (CARTOX_MAX_BODY_BYTES)")
            chunks.append(chunk)


class _Retryable(FetchFailure):
    def __init__(self, kind: str, reason: str, retry_after: float | None = None) -> None:
        super().__init__(kind, reason)
        self.retry_after = retry_after


def _backoff(attempt: int) -> float:
    return min(_BACKOFF_FIRST_SECONDS * 2 ** (attempt - 1), _BACKOFF_MAX_SECONDS)


def _retry_after(response: requests.Response) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date); None when absent or unreadable."""
    value = response.headers.get("Retry-After", "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds()) if when.tzinfo else None


def _status_text(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def _next_link(bundle: dict[str, Any]) -> str | None:
    links = bundle.get("link")
    for link in links if isinstance(links, list) else []:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return link["url"]
    return None


def is_bundle(document: Any) -> bool:
    """A Bundle whose entries (if any) are a list of objects: what paging can merge."""
    if not isinstance(document, dict) or document.get("resourceType") != "Bundle":
        return False
    entries = document.get("entry")
    return entries is None or (isinstance(entries, list) and all(isinstance(entry, dict) for entry in entries))


def has_next_link(document: Any) -> bool:
    return isinstance(document, dict) and _next_link(document) is not None


def _resource_key(entry: dict[str, Any]) -> tuple[str, str] | None:
    resource = entry.get("resource")
    if isinstance(resource, dict) and isinstance(resource.get("resourceType"), str) and isinstance(resource.get("id"), str):
        return resource["resourceType"], resource["id"]
    return None


def _is_include(entry: Any) -> bool:
    return isinstance(entry, dict) and isinstance(entry.get("search"), dict) and entry["search"].get("mode") == "include"
