"""The web server layer: gunicorn's worker for the Procfile's ``web`` process, with JSON errors.

Flask answers every error it sees in the JSON shape (:mod:`webapp.edge.json_errors`), but some requests
never reach Flask: gunicorn refuses them while parsing — a request line over
``--limit-request-line`` (4094 bytes by default) gets ``414``, too many or too large headers
``431``, malformed HTTP ``400`` — and writes its own HTML page. :class:`JsonErrorWorker` is
gunicorn's threaded worker (``gthread``, what ``--threads`` selects) whose
:meth:`~JsonErrorWorker.handle_error` writes those answers in Docket's error shape instead::

    HTTP/1.1 414 URI Too Long
    Content-Type: application/json

    {"error": {"code": "uri_too_long", "message": "The request line is 10,050 bytes; …"}}

How: gunicorn's own ``Worker.handle_error`` still decides the status, logs and writes the access
log line; it is handed the client socket wrapped in :class:`_JsonErrorSocket`, which replaces the
HTML body gunicorn sends with the JSON one (keeping gunicorn's status line). Nothing is patched
globally. The code is the reason phrase in snake_case, as :mod:`webapp.edge.json_errors` makes it for
Werkzeug's errors (``URI Too Long`` → ``uri_too_long``), except ``500`` → ``internal_error``.
Every such answer is JSON, not only under ``/api``: when the request line cannot be read there is
no path to decide by.

Threads and streams: a live-progress stream (``/api/jobs/<id>/events``, :mod:`webapp.edge.sse`)
holds one of the worker's threads for as long as it is open, so the Procfile gives each worker
many threads (``--threads ${WEB_THREADS:-256}``: 200 open streams and room for everything else;
an idle thread costs a little memory, no CPU). But threads that all run Python at once only
contend for the GIL: measured with the status-endpoint benchmark (32 concurrent clients), 256
threads running requests unchecked served ``GET /api/jobs/<id>`` 35–45 % slower than 4 threads.
So :class:`ActiveRequestLimit` lets at most ``WEB_ACTIVE_REQUESTS`` (4) requests per process
run the application at a time — what the 4 threads allowed before; the others wait, idle, for
a slot. A stream takes a slot only while the application sets it up (auth, the first read):
the events it sends afterwards are written outside the limit.

Used in the Procfile: ``gunicorn wsgi:app --worker-class webapp.edge.server.JsonErrorWorker …``. This
module is part of the HTTP edge and imports nothing else of Docket.
"""

from __future__ import annotations

import json
import os
import re
import threading
from typing import Any, Callable, Iterable

from gunicorn.http.errors import LimitRequestHeaders, LimitRequestLine
from gunicorn.workers.gthread import ThreadWorker

STATUS_LINE = re.compile(rb"^HTTP/1\.[01] (\d{3}) ([^\r\n]*)\r\n")
DEFAULT_ACTIVE_REQUESTS = 4  # the threads per worker before streams; measured above


def error_message(status: int, exc: BaseException, limit_request_line: int) -> str:
    """The sentence of gunicorn's own error answer ``status``, caused by ``exc``.

    Args:
        status: the HTTP status gunicorn chose.
        exc: the exception gunicorn's parser (or the worker) raised.
        limit_request_line: the server's ``--limit-request-line`` in bytes (0: unlimited).
    """
    if isinstance(exc, LimitRequestLine):
        size = f"{exc.size:,} bytes" if isinstance(exc.size, int) else "too long"
        limit = f"at most {exc.max_size or limit_request_line:,} bytes are accepted"
        return (f"The request line (method, path and query) is {size}; {limit}. Send a long search text "
                'with POST /api/search and a JSON body such as {"q": "…"}.')
    if isinstance(exc, LimitRequestHeaders):
        return f"The request's headers are too large or too many: {exc}."
    if status >= 500:
        return "Something went wrong on the server; the error was logged."
    return f"The request is not valid HTTP: {exc}."


def json_error(status: int, reason: str, message: str) -> bytes:
    """A complete HTTP/1.1 answer (status line, headers, body) with Docket's JSON error shape."""
    code = "internal_error" if status == 500 else re.sub(r"[^a-z0-9]+", "_", reason.lower()).strip("_") or "error"
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\r\n")
    return head.encode("latin-1") + body


class _JsonErrorSocket:
    """A client socket whose error page is rewritten as JSON when gunicorn sends it.

    gunicorn's ``handle_error`` writes its answer with one ``sendall`` (``util.write_error``);
    that call's status line is kept and its HTML body replaced. Everything else goes to the
    real socket unchanged.
    """

    def __init__(self, sock: Any, exc: BaseException, limit_request_line: int) -> None:
        self._sock, self._exc, self._limit = sock, exc, limit_request_line

    def sendall(self, data: bytes, *args: Any) -> None:
        match = STATUS_LINE.match(data)
        if match:
            status, reason = int(match.group(1)), match.group(2).decode("latin-1")
            data = json_error(status, reason, error_message(status, self._exc, self._limit))
        self._sock.sendall(data, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class ActiveRequestLimit:
    """WSGI middleware: at most ``limit`` requests of this process run the application at once.

    The slot is held while the application is called — for an ordinary Flask response that is
    all the work, the body is ready when it returns — and released before the body is sent, so
    a streamed body (Server-Sent Events) never holds one.

    Args:
        app: the WSGI application.
        limit: concurrent application calls, at least 1.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], limit: int) -> None:
        self.app = app
        self.limit = max(1, limit)
        self._slots = threading.BoundedSemaphore(self.limit)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        with self._slots:
            return self.app(environ, start_response)


def active_requests(env: dict[str, str] | os._Environ = os.environ) -> int:
    """``WEB_ACTIVE_REQUESTS`` from the environment (default 4), at least 1.

    Raises:
        ValueError: it is not a whole number.
    """
    raw = (env.get("WEB_ACTIVE_REQUESTS") or "").strip()
    if not raw:
        return DEFAULT_ACTIVE_REQUESTS
    try:
        return max(1, int(raw))
    except ValueError:
        raise ValueError(f"WEB_ACTIVE_REQUESTS must be a whole number, got {raw!r}") from None


_graceful_exit_callbacks: list[Callable[[], None]] = []


def on_graceful_exit(callback: Callable[[], None]) -> None:
    """Call ``callback`` (no arguments, quick, never blocking) when this process's gunicorn worker
    begins its graceful shutdown (SIGTERM: a deploy, a restart, scaling down), from the signal
    handler. Live-progress streams end then, so their clients reconnect to a worker that stays
    instead of holding this one open until its graceful timeout. Outside gunicorn it is never
    called."""
    _graceful_exit_callbacks.append(callback)


class JsonErrorWorker(ThreadWorker):
    """gunicorn's threaded worker, answering its own HTTP errors in Docket's JSON error shape,
    and running at most ``WEB_ACTIVE_REQUESTS`` application calls at once (:class:`ActiveRequestLimit`)."""

    def handle_exit(self, sig, frame):
        """SIGTERM: gunicorn's graceful shutdown, then the :func:`on_graceful_exit` callbacks."""
        super().handle_exit(sig, frame)
        for callback in list(_graceful_exit_callbacks):
            try:
                callback()
            except Exception:  # a signal handler must not raise
                self.log.exception("a graceful-exit callback failed")

    def load_wsgi(self):
        """Load the application (after the fork), wrapped in the process's request limit."""
        super().load_wsgi()
        self.wsgi = ActiveRequestLimit(self.wsgi, active_requests())

    def handle_error(self, req, client, addr, exc):
        """gunicorn's handling (status, logs, access log), with the answer written as JSON."""
        super().handle_error(req, _JsonErrorSocket(client, exc, self.cfg.limit_request_line), addr, exc)
