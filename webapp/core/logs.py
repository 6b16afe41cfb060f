"""Structured logs: one JSON object per line on stderr, with the request and job they belong to.

Every process (web, worker, scheduler, CLI) calls :func:`configure_logging` once, from
``create_app`` and again, with the command's level, from the worker and scheduler commands: it
puts one handler on the root logger and lets Docket's, RQ's and rq-scheduler's loggers propagate
to it (RQ's loggers do not propagate by default; RQ adds no handler of its own when one exists up
the hierarchy), so nothing is printed twice. ``LOG_FORMAT=text`` prints the same lines for a
person instead; ``LOG_LEVEL`` sets the level of Docket's, RQ's and rq-scheduler's loggers (other
libraries log warnings and above only: the OpenAI client's HTTP library logs each request at INFO).

Fields of every JSON line: ``time`` (ISO-8601 UTC), ``level``, ``logger``, ``message``, ``pid``,
plus whatever the context holds — ``request_id`` in a web request; ``job_id``, ``kind``,
``document_id`` and ``request_id`` (the request that launched the job) while a worker runs a job —
and the line's own fields:

* one line per HTTP request (logger ``webapp.requests``, :func:`init_app`): ``method``, ``path``,
  ``status``, ``duration_ms``, ``remote_addr`` (as Flask sees it, after ``ProxyFix`` when
  ``TRUSTED_PROXY_COUNT`` is set);
* one line per job stage as it ends (logger ``docket.stages``, :func:`begin_stage` /
  :func:`end_stage`): ``stage``, ``duration_ms``, ``outcome`` (``ok`` or ``failed``).

The request id is the incoming ``X-Request-ID`` header when it is a plausible id (1–200 characters
of ``A-Z a-z 0-9 . _ -``; Heroku's router sends one), else a new UUID4; it is sent back in the
``X-Request-ID`` response header and stored in the RQ job's ``meta`` by :mod:`webapp.core.protocol.launch`, so the
job's lines in the worker carry it too.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import time
import uuid
from contextlib import contextmanager
from typing import Any, Iterator

REQUEST_ID_HEADER = "X-Request-ID"
# Heroku's router sends a UUID; other proxies send their own ids. Anything else (too long, spaces,
# quotes, control characters) is not trusted into the logs: a new id replaces it.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,200}")
LOG_FORMATS = ("json", "text")
# Loggers at LOG_LEVEL; every other logger (libraries) logs WARNING and above.
OWN_LOGGERS = ("webapp", "jobs", "docket", "rq", "rq_scheduler")
# Context fields added to every line while they are set (a request, a job), in this order.
CONTEXT_FIELDS = ("request_id", "job_id", "kind", "document_id")
# Fields the text format appends as key=value (the JSON format has all of them anyway).
TEXT_FIELDS = CONTEXT_FIELDS + ("stage", "outcome", "method", "path", "status", "duration_ms", "remote_addr")

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("docket_log_context", default={})
_stage: contextvars.ContextVar[tuple[str, float] | None] = contextvars.ContextVar("docket_log_stage", default=None)
stage_log = logging.getLogger("docket.stages")
request_log = logging.getLogger("webapp.requests")


# --- context ---------------------------------------------------------------------------------
def current_context() -> dict[str, Any]:
    """The context fields set now (``request_id``, ``job_id``, …); an empty dict outside any."""
    return dict(_context.get())


def current_request_id() -> str | None:
    """The request id of the web request or job being handled now, ``None`` outside both."""
    return _context.get().get("request_id")


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add ``fields`` (``None`` values are left out) to every line logged in the block, in this
    thread; an open stage is ended as ``failed`` when the block raises, and forgotten after it."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    stage_token = _stage.set(None)
    try:
        yield
    except BaseException:
        end_stage("failed")
        raise
    finally:
        end_stage("ok")  # a no-op unless a stage was left open
        _stage.reset(stage_token)
        _context.reset(token)


def valid_request_id(value: str | None) -> str:
    """``value`` if it is a plausible request id (:data:`REQUEST_ID_PATTERN`: 1–200 characters of
    letters, digits, ``.``, ``_``, ``-``), else a new UUID4 (its 36-character string)."""
    if value and REQUEST_ID_PATTERN.fullmatch(value):
        return value
    return str(uuid.uuid4())


# --- job stages ------------------------------------------------------------------------------
def begin_stage(stage: str) -> None:
    """A job enters ``stage`` (``extract``, ``chunk``, ``embed``, ``store``, ``collect``, …): the
    stage open until now, if any, ends with outcome ``ok`` and its line is logged."""
    end_stage("ok")
    _stage.set((stage, time.perf_counter()))


def end_stage(outcome: str = "ok") -> None:
    """Log the open stage's line (``stage``, ``duration_ms``, ``outcome``) and close it; nothing
    when no stage is open. The worker ends a stage left open by a failing job as ``failed``."""
    open_stage = _stage.get()
    if open_stage is None:
        return
    _stage.set(None)
    stage, started = open_stage
    duration_ms = round((time.perf_counter() - started) * 1000, 1)
    level = logging.INFO if outcome == "ok" else logging.WARNING
    stage_log.log(level, "stage %s %s in %.1f ms", stage, outcome, duration_ms,
                  extra={"stage": stage, "outcome": outcome, "duration_ms": duration_ms})


# --- formatting ------------------------------------------------------------------------------
class ContextFilter(logging.Filter):
    """Adds the context fields (:data:`CONTEXT_FIELDS`) to each record that lacks them."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class StderrHandler(logging.StreamHandler):
    """A ``StreamHandler`` on whatever ``sys.stderr`` is when a line is written (as Flask's
    default handler), not the stream of the moment it was made: a test runner replaces it."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value …``: the JSON line's fields, for a person."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = " ".join(f"{key}={getattr(record, key)}" for key in TEXT_FIELDS
                          if getattr(record, key, None) is not None)
        if not extras:
            return line
        first, newline, rest = line.partition("\n")  # keep a traceback below the line
        return f"{first} {extras}{newline}{rest}"


def json_formatter() -> logging.Formatter:
    """python-json-logger's formatter: ``time`` (ISO-8601 UTC), ``level``, ``logger``,
    ``message``, ``pid``, then every extra field of the record; a traceback as ``exc_info``."""
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter("{levelname}{name}{message}{process}", style="{", timestamp="time",
                         rename_fields={"levelname": "level", "name": "logger", "process": "pid"})


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Send every log line of this process to stderr, one JSON object (or text line) each.

    Idempotent: a second call (a second app, the worker command's ``--logging-level``) changes
    the level and format of the same handler instead of adding another.

    Args:
        level: level name of Docket's, RQ's and rq-scheduler's loggers (``DEBUG``, ``INFO``, …).
        fmt: ``json`` or ``text``.

    Raises:
        ValueError: an unknown level or format.
    """
    level = level.upper()
    if not isinstance(logging.getLevelName(level), int):
        raise ValueError(f"LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got {level!r}")
    if fmt not in LOG_FORMATS:
        raise ValueError(f"LOG_FORMAT must be json or text, got {fmt!r}")
    from flask.logging import default_handler

    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "docket", False)), None)
    if handler is None:
        handler = StderrHandler()
        handler.docket = True  # type: ignore[attr-defined]
        handler.addFilter(ContextFilter())
        root.addHandler(handler)
    handler.setFormatter(json_formatter() if fmt == "json" else TextFormatter())
    if root.level == logging.NOTSET or root.level < logging.WARNING:
        root.setLevel(logging.WARNING)
    for name in OWN_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.propagate = True
        # Handlers the earlier per-command setups (or Flask, on an app.logger touched before)
        # put there would print each line a second time.
        for own in [h for h in logger.handlers if h is default_handler or getattr(h, "docket", False)]:
            logger.removeHandler(own)


# --- HTTP requests ---------------------------------------------------------------------------
def init_app(app) -> None:
    """Give every request of ``app`` a request id and log one line per request when it ends.

    The line (logger ``webapp.requests``, INFO): ``method``, ``path`` (without the query string,
    which may carry tokens), ``status``, ``duration_ms`` (until the response is ready; a streamed
    body may go on after it), ``remote_addr``, ``request_id``.
    """
    from flask import g, request

    @app.before_request
    def start_request_log():
        g.request_started = time.perf_counter()
        g.request_id = valid_request_id(request.headers.get(REQUEST_ID_HEADER))
        g.request_log_token = _context.set({**_context.get(), "request_id": g.request_id})

    @app.after_request
    def finish_request_log(response):
        started = g.get("request_started")
        request_id = g.get("request_id") or valid_request_id(request.headers.get(REQUEST_ID_HEADER))
        response.headers[REQUEST_ID_HEADER] = request_id
        duration_ms = round((time.perf_counter() - started) * 1000, 1) if started is not None else None
        request_log.info("%s %s %s", request.method, request.path, response.status_code,
                         extra={"method": request.method, "path": request.path, "status": response.status_code,
                                "duration_ms": duration_ms, "remote_addr": request.remote_addr,
                                "request_id": request_id})
        return response

    @app.teardown_request
    def forget_request_id(exc=None):
        token = g.pop("request_log_token", None)
        if token is not None:
            try:
                _context.reset(token)
            except ValueError:  # set in another context (cannot happen in Flask's request flow)
                _context.set({})
