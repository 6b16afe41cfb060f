"""Docket's public HTTP API as seen from outside: one session, one sentence per error.

Everything here speaks only the documented API (``/api/...``, the JSON error shape
``{"error": {"code", "message"}}``), so the client works against any deployment of any version
that has the routes it calls. Nothing of the server's code is imported.
"""

from __future__ import annotations

import mimetypes
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Iterable

import requests
from requests.adapters import HTTPAdapter
from requests_toolbelt.multipart.encoder import MultipartEncoder, MultipartEncoderMonitor
from urllib3.util.retry import Retry

DEFAULT_URL = "http://127.0.0.1:5000"
DEFAULT_TIMEOUT = 60.0  # seconds a request may wait for the server's answer (connect: 10 s)
CONNECT_TIMEOUT = 10.0

# Exit statuses (the README's table): what a script can branch on.
EXIT_OK = 0
EXIT_JOBS_FAILED = 1  # a job ended failed, stopped or canceled; a file or URL was refused; waiting gave up
EXIT_USAGE = 2  # click's own status for a bad command line
EXIT_REFUSED = 3  # the server refused the request (400, 401, 403, 404, 409, 413, 415 …): repeating it will not help
EXIT_UNAVAILABLE = 4  # no answer, a timeout, 429 or a 5xx: the same command may work later


class DocketError(Exception):
    """A request that did not succeed, as one sentence for a person.

    Attributes:
        message: the sentence (ends with a full stop; no traceback, no HTML).
        status: the HTTP status, or ``None`` when no answer came (refused connection, timeout).
        code: the server's error code (``job_not_found``, ``queue_unavailable`` …) or ``None``.
        exit_status: :data:`EXIT_REFUSED` or :data:`EXIT_UNAVAILABLE`.
    """

    def __init__(self, message: str, status: int | None = None, code: str | None = None,
                 exit_status: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.message, self.status, self.code, self.exit_status = message, status, code, exit_status


def _sentence(text: str) -> str:
    text = " ".join(str(text).split())
    return text if text.endswith((".", "?", "!", ")")) else text + "."


def server_error(body: Any) -> tuple[str | None, str | None]:
    """The ``(code, message)`` of an error answer's JSON body, either shape Docket uses:
    ``{"error": {"code", "message"}}`` (every route) or ``{"error": "<code>", "message": …}``;
    ``(None, None)`` for anything else (an HTML page from a proxy, an empty body)."""
    if not isinstance(body, dict):
        return None, None
    error = body.get("error")
    if isinstance(error, dict):
        return error.get("code"), error.get("message")
    if isinstance(error, str):
        return error, body.get("message")
    return None, body.get("message") if isinstance(body.get("message"), str) else None


def error_for(response: requests.Response, what: str, token_given: bool) -> DocketError:
    """The :class:`DocketError` for a non-2xx ``response`` to a request about ``what`` (e.g.
    ``"job 9a41…"``), using the server's own sentence where it sent one."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    code, message = server_error(body)
    said = f" (the server said: {_sentence(message)})" if message else ""
    if status == 401:
        if not token_given:
            text = "No token was sent: set DOCKET_TOKEN to an API token (create one on the server with " \
                   "'flask --app wsgi tokens create NAME')."
        else:
            text = "The server refused the token: set DOCKET_TOKEN to a valid API token" + (
                said or " (it is unknown, mistyped or was revoked).")
        return DocketError(text, status, code)
    if status == 403:
        return DocketError(f"The token is not allowed to do this{said}", status, code)
    if status == 404:
        if code in (None, "not_found"):  # no such route: another service, or a server without this feature
            text = f"The server at {response.url} has no such address: is DOCKET_URL a Docket server, " \
                   f"and one recent enough for this command?"
        else:
            text = f"No {what} on this server{said}"
        return DocketError(text, status, code)
    if status == 413:
        return DocketError(f"The upload is too large for this server{said}", status, code)
    if status == 415:
        return DocketError(f"The server does not accept this type of file{said}", status, code)
    if status == 429:
        wait = response.headers.get("Retry-After")
        when = f"try again in {wait} seconds" if wait and wait.strip().isdigit() else "try again later"
        return DocketError(f"The server is rate limiting this request: {when}{said}", status, code,
                           EXIT_UNAVAILABLE)
    if status == 503:
        return DocketError(f"Docket is unavailable right now (HTTP 503): try again shortly{said}", status, code,
                           EXIT_UNAVAILABLE)
    if status >= 500:
        return DocketError(f"The server failed (HTTP {status}){said}", status, code, EXIT_UNAVAILABLE)
    if message:
        return DocketError(_sentence(message), status, code)
    return DocketError(f"The server refused the request (HTTP {status}) without a reason: is DOCKET_URL "
                       "a Docket server?", status, code)


class DocketClient:
    """A client of one Docket server: ``base_url`` (e.g. ``http://127.0.0.1:5000``) and an API
    ``token`` sent as ``Authorization: Bearer <token>``.

    Every method returns the answer's JSON (a dict) or raises :class:`DocketError`. Requests wait
    at most ``timeout`` seconds for an answer. ``retries`` (0 by default) retries GET requests
    that got no answer or a 502/503/504, with urllib3's backoff: for long waits that should
    survive a restart of the web process, never for a request that changes something.
    """

    def __init__(self, base_url: str = DEFAULT_URL, token: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 retries: int = 0) -> None:
        self.base_url = check_url(base_url)
        self.token = token or None
        self.timeout = (min(CONNECT_TIMEOUT, timeout), timeout)
        self.session = requests.Session()
        self.session.headers["Accept"] = "application/json"
        self.session.headers["User-Agent"] = "docket-client"
        if self.token:
            self.session.headers["Authorization"] = f"Bearer {self.token}"
        if retries:
            retry = Retry(total=retries, backoff_factor=1, status_forcelist=(502, 503, 504),
                          allowed_methods=frozenset({"GET"}), respect_retry_after_header=True,
                          raise_on_status=False)
            for prefix in ("http://", "https://"):
                self.session.mount(prefix, HTTPAdapter(max_retries=retry))

    def with_retries(self, retries: int) -> "DocketClient":
        """A client of the same server and token whose GET requests are retried (see the class)."""
        return DocketClient(self.base_url, self.token, self.timeout[1], retries)

    # --- the one place a request is sent -------------------------------------------------------------

    def request(self, method: str, path: str, what: str = "such thing", expect: Iterable[int] = (200,),
                **kwargs: Any) -> Any:
        """Send ``method path`` (``path`` under the base URL, e.g. ``/api/jobs/1``) and return the
        answer's JSON (``None`` for an empty body, e.g. 204).

        Raises:
            DocketError: no answer (refused, unresolvable, timed out: exit status 4), or a status
            outside ``expect`` (:func:`error_for`), or a success answer that is not JSON.
        """
        url = self.base_url + path
        try:
            response = self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.exceptions.Timeout:
            raise DocketError(f"Docket at {self.base_url} did not answer within {self.timeout[1]:g} s: it may be "
                              "overloaded; try again, or raise --timeout.", exit_status=EXIT_UNAVAILABLE) from None
        except requests.exceptions.ConnectionError as exc:
            reason = _connection_reason(exc)
            raise DocketError(f"Could not reach Docket at {self.base_url}: is it running? ({reason})",
                              exit_status=EXIT_UNAVAILABLE) from None
        except requests.exceptions.RequestException as exc:  # anything else requests can say
            raise DocketError(f"The request to Docket at {self.base_url} failed: {exc.__class__.__name__}.",
                              exit_status=EXIT_UNAVAILABLE) from None
        if response.status_code not in expect:
            raise error_for(response, what, self.token is not None)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise DocketError(f"The server at {self.base_url} answered HTTP {response.status_code} without JSON: "
                              "is DOCKET_URL a Docket server?", response.status_code,
                              exit_status=EXIT_UNAVAILABLE) from None

    # --- documents -------------------------------------------------------------------------------------

    def upload(self, paths: list[Path], fields: dict[str, str],
               on_bytes: Callable[[int, int], None] | None = None) -> dict:
        """``POST /api/documents`` with one part named ``file`` per path and the form ``fields``
        (``reprocess``, ``callback_url``, ``delay``, ``run_at``, ``report``, ``password``).

        The body is streamed from the files (never read whole into memory); ``on_bytes(sent,
        total)`` is called as it goes (bytes). Returns the 202 answer: ``batch_id``,
        ``documents: [{id, filename, job_id, status, duplicate, status_url, …}]``, ``refused``.
        """
        with ExitStack() as stack:
            parts: list[tuple[str, Any]] = [(name, value) for name, value in fields.items()]
            for path in paths:
                handle = stack.enter_context(open(path, "rb"))
                content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                parts.append(("file", (path.name, handle, content_type)))
            encoder: Any = MultipartEncoder(fields=parts)
            if on_bytes is not None:
                total = encoder.len
                encoder = MultipartEncoderMonitor(encoder, lambda monitor: on_bytes(monitor.bytes_read, total))
            return self.request("POST", "/api/documents", "upload", expect=(202,), data=encoder,
                                headers={"Content-Type": encoder.content_type})

    def fetch(self, urls: list[str], options: dict[str, Any]) -> dict:
        """``POST /api/documents`` with JSON ``{"urls": [...], **options}``: the server fetches each
        URL as a document. Returns the same 202 shape as :meth:`upload`."""
        return self.request("POST", "/api/documents", "URL fetch", expect=(202,), json={"urls": urls, **options})

    # --- jobs ------------------------------------------------------------------------------------------

    def job(self, job_id: str) -> dict:
        """``GET /api/jobs/<id>``: ``status`` (RQ's words), ``stage``, ``progress`` (0–100), ``error``…"""
        return self.request("GET", f"/api/jobs/{_segment(job_id)}", f"job {job_id}")

    def cancel(self, job_id: str) -> dict:
        """``POST /api/jobs/<id>/cancel``: the job, now ``canceled`` (it had not started) or
        ``stopped`` (it was running). 409 when it already ended."""
        return self.request("POST", f"/api/jobs/{_segment(job_id)}/cancel", f"job {job_id}")

    def retry(self, job_id: str) -> dict:
        """``POST /api/jobs/<id>/retry``: the job, ``queued`` again (same id; ``attempts`` counts on).
        409 unless it is failed, stopped or canceled."""
        return self.request("POST", f"/api/jobs/{_segment(job_id)}/retry", f"job {job_id}", expect=(202,))

    # --- search ----------------------------------------------------------------------------------------

    def search(self, query: str, k: int, mode: str | None = None, document_id: str | None = None,
               batch_id: str | None = None) -> dict:
        """``POST /api/search`` (the JSON form, so any query length up to the server's limit fits):
        ``{"results": [{score, filename, page_start, page_end, headings, text, …}]}``."""
        body = {"q": query, "k": k, "mode": mode, "document_id": document_id, "batch_id": batch_id}
        what = f"document {document_id}" if document_id else f"batch {batch_id}" if batch_id else "search"
        return self.request("POST", "/api/search", what, json={n: v for n, v in body.items() if v is not None})

    # --- sources ---------------------------------------------------------------------------------------

    def sources(self) -> dict:
        """``GET /api/sources``: ``{"sources": [...]}``."""
        return self.request("GET", "/api/sources", "sources")

    def source(self, source_id: str) -> dict:
        """``GET /api/sources/<id>``: the source with its ``syncs``."""
        return self.request("GET", f"/api/sources/{_segment(source_id)}", f"source {source_id}")

    def add_source(self, body: dict[str, Any]) -> dict:
        """``POST /api/sources`` with ``body`` (``kind`` and ``url`` or ``urls``, optional
        ``schedule``, ``name``): the new source (201)."""
        return self.request("POST", "/api/sources", "sources", expect=(200, 201), json=body)

    def sync_source(self, source_id: str) -> dict:
        """``POST /api/sources/<id>/sync``: ``{"job_id", "status_url", …}`` (202)."""
        return self.request("POST", f"/api/sources/{_segment(source_id)}/sync", f"source {source_id}",
                            expect=(200, 202))

    def delete_source(self, source_id: str, delete_documents: bool) -> None:
        """``DELETE /api/sources/<id>`` (and its documents with ``delete_documents``)."""
        params = {"delete_documents": "true"} if delete_documents else None
        self.request("DELETE", f"/api/sources/{_segment(source_id)}", f"source {source_id}",
                     expect=(200, 202, 204), params=params)


def check_url(url: str) -> str:
    """``url`` without a trailing ``/`` once it is an http(s) URL with a host and nothing after
    its path (the server's base, e.g. ``https://docket.example.com`` or ``http://host:5000/prefix``).

    Raises:
        DocketError: with :data:`EXIT_USAGE` for anything else, naming DOCKET_URL.
    """
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url.strip())
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.query and not parts.fragment
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        valid = False
    if not valid:
        raise DocketError(f"DOCKET_URL must be the server's http:// or https:// address, such as {DEFAULT_URL}; "
                          f"got {url!r}.", exit_status=EXIT_USAGE)
    return url.strip().rstrip("/")


def _segment(value: str) -> str:
    """``value`` as one path segment (a ``/`` or ``?`` in an id must not reach another route)."""
    from urllib.parse import quote

    return quote(value, safe="")


def _connection_reason(exc: requests.exceptions.ConnectionError) -> str:
    """A few words on why no connection was made, without urllib3's object reprs."""
    text = str(exc)
    for needle, words in (("Connection refused", "connection refused"),
                          ("Name or service not known", "unknown host name"),
                          ("nodename nor servname", "unknown host name"),
                          ("Temporary failure in name resolution", "the host name could not be resolved"),
                          ("CERTIFICATE_VERIFY_FAILED", "its TLS certificate was not trusted"),
                          ("Connection reset", "the connection was reset"),
                          ("RemoteDisconnected", "the server closed the connection")):
        if needle in text:
            return words
    if isinstance(exc, requests.exceptions.SSLError):
        return "a TLS error"
    return "no connection could be made"

