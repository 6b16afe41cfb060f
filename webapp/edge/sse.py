"""Live progress as Server-Sent Events: ``GET /api/jobs/<id>/events``, ``GET /api/batches/<id>/events``.

Each stream is ``text/event-stream``::

    retry: 3000

    event: job
    data: {"id": "…", "kind": "document", "status": "started", "progress": 40, "stage": "embed", …}

    : keep-alive

    event: end
    data: {"reason": "terminal"}

* ``job`` events carry one job's state (:func:`webapp.core.protocol.events.job_event`); the batch stream
  also sends ``batch`` events (``{"id", "jobs": [...], "totals", "progress", "finished"}``), first
  and last.
* The first event is the current state read from the database; the changes follow as they are
  published (:mod:`webapp.core.protocol.events`). The stream starts listening on a subscription Redis
  has confirmed before it reads, so no change falls between the read and the listening (one
  published meanwhile and not newer than the read is skipped by its ``updated_at``).
* It ends with ``event: end`` when the job is terminal (finished, failed, stopped, canceled) or
  the batch has no job left that is not. A client (``EventSource``) must then close it: an
  ``EventSource`` reconnects to any stream that ends.
* A ``: keep-alive`` comment every ``EVENTS_HEARTBEAT`` seconds (15) keeps proxies from closing
  an idle stream (Heroku's router closes one silent for 55 s), and finds clients gone.
* After ``EVENTS_MAX_STREAM`` seconds (600) a stream ends without ``end``; the client reconnects
  after ``retry`` ms and gets the current state again.

Auth and owner scoping are the other ``/api`` routes' (:mod:`webapp.edge.auth`): a bearer token or the
UI's signed-in session cookie (``EventSource`` cannot send a header; it is a same-origin GET);
another owner's id answers 404 like a missing one.

Resources: the request's database connection goes back to the pool before the first byte is
streamed (a short connection is taken again only to re-read a batch). A web process holds ONE
Redis pub/sub connection for all its streams (:class:`webapp.core.protocol.event_hub.EventHub`); each stream holds one
web-server thread (the Procfile's ``WEB_THREADS``) until it ends or its client goes away, which
is noticed at the next write (a change or the keep-alive) and unregisters the stream.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from datetime import datetime, timezone
from typing import Any, Iterator

from flask import Blueprint, Flask, Response, current_app
from redis.exceptions import RedisError

from webapp.edge.auth import get_visible_or_404, visible_job
from webapp.core.protocol.kinds import batch_member_kinds
from webapp.core.db import connection, db
from webapp.core.service_errors import ServiceError
from webapp.core.protocol.event_hub import EventHub, Listener
from webapp.core.protocol.events import EVENT_COLUMNS, batch_channel, job_channel, job_event
from webapp.core.models import TERMINAL_STATUSES, Batch, Job
from webapp.core.queues import rq
from webapp.edge.server import on_graceful_exit

log = logging.getLogger(__name__)

bp = Blueprint("events", __name__, url_prefix="/api")

RETRY_MS = 3000  # the client's reconnection delay after a stream ended without "end"
DEFAULT_HEARTBEAT = 15.0  # seconds; Heroku's router closes a connection idle for 55 s
DEFAULT_MAX_STREAM = 600.0  # seconds a stream lasts at most before the client reconnects


@bp.get("/jobs/<job_id>/events")
def job_events(job_id: str):
    """Stream job ``job_id``'s status and progress changes as Server-Sent Events until it is
    terminal (see the module docstring). 404 ``job_not_found`` for a missing or another owner's
    job; 503 ``queue_unavailable`` when Redis cannot be reached."""
    listener = _listen(job_channel(job_id))
    try:
        first = job_event(visible_job(job_id).__data__)
    except BaseException:
        listener.close()
        raise
    _release_database()
    return _event_stream(_job_stream(listener, first, *_limits()))


@bp.get("/batches/<batch_id>/events")
def batch_events(batch_id: str):
    """Stream the changes of every job of upload ``batch_id`` as Server-Sent Events until none
    is left that is not terminal (see the module docstring). 404 ``batch_not_found`` for a
    missing or another owner's batch; 503 ``queue_unavailable`` when Redis cannot be reached."""
    listener = _listen(batch_channel(batch_id))
    try:
        get_visible_or_404(Batch, batch_id, "batch")
        first = batch_state(batch_id)
    except BaseException:
        listener.close()
        raise
    _release_database()
    app = current_app._get_current_object()
    return _event_stream(_batch_stream(app, listener, first, *_limits()))


def batch_state(batch_id: str) -> dict[str, Any]:
    """The ``batch`` event of upload ``batch_id``, read now: its document jobs' events (oldest first;
    not the batch's report job, as ``GET /api/batches/<id>`` counts documents only),
    the count of jobs per status, the mean progress (0–100 %, a terminal job counting 100) and
    whether every job is terminal. Needs a database connection."""
    rows = list(Job.select(*[getattr(Job, name) for name in EVENT_COLUMNS])
                .where(Job.batch_id == batch_id, Job.kind.in_(batch_member_kinds())).order_by(Job.created_at, Job.id).dicts())
    jobs = [job_event(row) for row in rows]
    totals: dict[str, int] = {}
    for job in jobs:
        totals[job["status"]] = totals.get(job["status"], 0) + 1
    done = sum(100 if job["terminal"] else job["progress"] for job in jobs)
    return {"id": batch_id, "jobs": jobs, "totals": totals,
            "progress": done // len(jobs) if jobs else 100,
            "finished": all(job["terminal"] for job in jobs)}


def _limits() -> tuple[float, float]:
    config = current_app.config
    return (float(config.get("EVENTS_HEARTBEAT") or DEFAULT_HEARTBEAT),
            float(config.get("EVENTS_MAX_STREAM") or DEFAULT_MAX_STREAM))


_hub_lock = threading.Lock()


def event_hub(app: Flask) -> EventHub:
    """``app``'s :class:`EventHub` in this process (made on first use, on the app's Redis client;
    call it inside ``app``'s context)."""
    with _hub_lock:
        hub = app.extensions.get("job_event_hub")
        if hub is None:
            hub = app.extensions["job_event_hub"] = EventHub(rq.connection)
            on_graceful_exit(hub.end_all)  # a worker shutting down ends its streams; clients reconnect
        return hub


def _listen(channel: str) -> Listener:
    """A listener of ``channel`` on the current app's hub.

    Raises:
        ServiceError: 503 ``queue_unavailable`` when Redis cannot be reached.
    """
    try:
        return event_hub(current_app._get_current_object()).listen(channel)
    except RedisError as exc:
        raise ServiceError(503, "queue_unavailable", f"Live events are unavailable: Redis cannot be reached ({exc}). "
                       "Poll the job's status instead.") from None


def _release_database() -> None:
    """Give the request's database connection back to the pool before streaming: Flask's
    teardown (which would otherwise close it) runs only once the response is done."""
    database = db.database
    if not database.is_closed():
        database.close()


def _event_stream(events: Iterator[str]) -> Response:
    response = Response(events, mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"  # nginx-style proxies: do not buffer the stream
    return response


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _newer(event: dict[str, Any], seen: dict[str, datetime | None]) -> bool:
    """Whether ``event`` is newer than the last state sent of its job (and note it if so)."""
    at = datetime.fromisoformat(event["updated_at"]) if event.get("updated_at") else None
    if at is not None and at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    last = seen.get(event["id"])
    if last is not None and (at is None or at <= last):
        return False
    seen[event["id"]] = at
    return True


def _messages(listener: Listener, heartbeat: float, lifetime: float) -> Iterator[dict[str, Any] | None]:
    """The events delivered to ``listener``, ``None`` whenever ``heartbeat`` seconds passed
    without one (time for a keep-alive), until ``lifetime`` seconds are over or the subscription
    broke. The caller closes the listener."""
    deadline = time.monotonic() + lifetime
    quiet_since = time.monotonic()
    while True:
        now = time.monotonic()
        if now >= deadline:
            return
        if now - quiet_since >= heartbeat:
            quiet_since = now
            yield None
            continue
        try:
            data = listener.queue.get(timeout=min(heartbeat - (now - quiet_since), deadline - now))
        except queue.Empty:
            continue
        if data is None:
            return  # the subscription broke: the client reconnects and reads the state again
        try:
            event = json.loads(data)
        except ValueError:
            continue
        quiet_since = time.monotonic()
        yield event


def _job_stream(listener: Listener, first: dict[str, Any], heartbeat: float, lifetime: float) -> Iterator[str]:
    try:
        yield f"retry: {RETRY_MS}\n\n"
        yield _sse("job", first)
        if first["terminal"]:
            yield _sse("end", {"reason": "terminal"})
            return
        seen = {first["id"]: None}
        _newer(first, seen)
        for event in _messages(listener, heartbeat, lifetime):
            if event is None:
                yield ": keep-alive\n\n"
                continue
            if not _newer(event, seen):
                continue
            yield _sse("job", event)
            if event["terminal"]:
                yield _sse("end", {"reason": "terminal"})
                return
    finally:  # also on GeneratorExit: the client went away
        listener.close()


def _batch_stream(app: Flask, listener: Listener, first: dict[str, Any], heartbeat: float,
                  lifetime: float) -> Iterator[str]:
    try:
        yield f"retry: {RETRY_MS}\n\n"
        yield _sse("batch", first)
        if first["finished"]:
            yield _sse("end", {"reason": "terminal"})
            return
        seen: dict[str, datetime | None] = {}
        statuses = {}
        for job in first["jobs"]:
            _newer(job, seen)
            statuses[job["id"]] = job["status"]
        for event in _messages(listener, heartbeat, lifetime):
            if event is None:
                yield ": keep-alive\n\n"
                continue
            if not _newer(event, seen):
                continue
            statuses[event["id"]] = event["status"]
            yield _sse("job", event)
            if event["terminal"] and all(status in TERMINAL_STATUSES for status in statuses.values()):
                # Confirm with the database (a short connection): it may know a job this stream
                # has not heard of.
                with app.app_context(), connection():
                    state = batch_state(first["id"])
                if state["finished"]:
                    yield _sse("batch", state)
                    yield _sse("end", {"reason": "terminal"})
                    return
                statuses.update({job["id"]: job["status"] for job in state["jobs"]})
    finally:  # also on GeneratorExit: the client went away
        listener.close()
