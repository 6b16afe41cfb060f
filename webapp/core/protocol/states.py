"""The job state machine: every status change of a Job row, in one place.

Status words are RQ's (:class:`rq.job.JobStatus`). A change is one guarded
``UPDATE … SET status = <to>, updated_at = now … WHERE id = ? AND status IN (<allowed from>)``,
so a late or duplicate delivery (RQ delivers at least once), a cancel racing a start, or the
worker, the web process and the scheduler acting at once can never move a row backwards::

    queued ──▶ started ──▶ finished
      │  ▲        │ ├────▶ failed ───┐
      │  │        │ └────▶ stopped ──┤  retry (a user): ──▶ queued
      │  │        ▼                  │
      │  └── scheduled (automatic retry after a transient failure)
      ├────────────────────▶ canceled ┘
      └────────────────────▶ failed   (Redis refused the job)

    started, scheduled ──▶ queued   (a worker shutting down hands its job back; reconcile
                                     re-runs a job whose worker or RQ record vanished)
    scheduled ──▶ queued            (a delayed job's ``run_at`` came: webapp/core/protocol/delayed.py)
    deferred ──▶ queued             (a batch's callback: every job of the batch ended,
                                     webapp/core/workflows/chords.py); both may be canceled while they wait
    queued, started ──▶ scheduled   (a rate limit's budget is used up: the job runs again when
                                     it frees units, webapp/core/workflows/rate_limits.py; not a failure)

The web process (cancel, retry), the worker (start, progress, finish, fail) and RQ's callbacks
(:func:`on_job_failure`, :func:`on_job_stopped`, also run by RQ's abandoned-job cleanup) all
use these functions. Every change is published as a live event on Redis pub/sub
(:mod:`webapp.core.protocol.events`). Entering a terminal state forgets the document's PDF password and
sends :data:`job_ended`, to which the webhook delivery and the batch callbacks listen.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Any

import peewee
from blinker import Namespace
from flask import current_app, has_app_context
from peewee import JOIN
from redis.exceptions import ConnectionError as RedisConnectionError
from rq.job import JobStatus

from webapp.core.protocol import events as job_events
from webapp.core.db import connection
from webapp.core.protocol.events import EVENT_COLUMNS
from webapp.core.protocol.job_errors import JobError, JobStopped, WorkerProcessDied
from webapp.core.models import TERMINAL_STATUSES, Document, Job, utcnow

log = logging.getLogger(__name__)

_signals = Namespace()
job_ended = _signals.signal("job-ended")
"""Sent once a Job row entered a terminal state and its transaction committed, with the Flask
app as sender and ``row=`` a dict of :data:`webapp.core.protocol.events.EVENT_COLUMNS` plus ``document``,
``callback_url`` and ``owner``. Orchestration that follows a job's end (its webhook, its batch's
callback) connects here for its app (``job_ended.connect(receiver, sender=app)``), so the state
machine stays below :mod:`webapp.core.protocol.launch` and imports none of it. A receiver's exception is
logged and does not stop the others."""

QUEUED, STARTED, FINISHED = JobStatus.QUEUED.value, JobStatus.STARTED.value, JobStatus.FINISHED.value
FAILED, STOPPED, CANCELED = JobStatus.FAILED.value, JobStatus.STOPPED.value, JobStatus.CANCELED.value
SCHEDULED, DEFERRED = JobStatus.SCHEDULED.value, JobStatus.DEFERRED.value

TERMINAL = TERMINAL_STATUSES
WAITING = frozenset({QUEUED, SCHEDULED, DEFERRED})  # not running yet: canceled, not stopped

# target status → the statuses a row may have to move there.
TRANSITIONS: dict[str, frozenset[str]] = {
    # RQ delivers at least once and may run a job again after its worker died, so a job may
    # start again from started/failed/finished (a second run replaces the first one's output);
    # never after a cancel or a stop.
    STARTED: frozenset({QUEUED, SCHEDULED, DEFERRED, STARTED, FAILED, FINISHED}),
    FINISHED: frozenset({STARTED}),
    FAILED: frozenset({QUEUED, SCHEDULED, DEFERRED, STARTED}),
    STOPPED: frozenset({STARTED}),
    CANCELED: WAITING,
    # A transient failure, waiting for its automatic retry (started); a rate limit's budget
    # used up before or while the job ran, waiting for it to free units (queued, started).
    SCHEDULED: frozenset({STARTED, QUEUED}),
    # Retried on request (failed/stopped/canceled: RETRYABLE); handed back by a worker told to
    # shut down, or re-run by reconcile after its worker vanished (started); restored by
    # reconcile after Redis lost it, or a delayed job whose time came (scheduled); a batch's
    # callback whose batch ended (deferred, webapp/core/workflows/chords.py).
    QUEUED: frozenset({FAILED, STOPPED, CANCELED, STARTED, SCHEDULED, DEFERRED}),
}
RETRYABLE = frozenset({FAILED, STOPPED, CANCELED})  # what a user may retry

MAX_ERROR = 1000  # characters of an error sentence kept on the row


class JobStateError(Exception):
    """A requested change is not allowed from the row's current status (or there is no row).

    Attributes:
        status: the row's status, ``None`` when there is no row.
    """

    def __init__(self, message: str, status: str | None) -> None:
        super().__init__(message)
        self.status = status


def transition(job_id: str, to: str, from_: frozenset[str] | None = None, when: Any = None, **fields: Any) -> bool:
    """Move row ``job_id`` to status ``to`` if its current status allows it (:data:`TRANSITIONS`).

    Args:
        job_id: the Job row (= RQ job id).
        to: the target status word.
        from_: narrow the allowed current statuses further (a subset of ``TRANSITIONS[to]``).
        when: one more condition of the same ``WHERE`` (a peewee expression), e.g. "no
            ``retry_at``" or "every job of the batch ended": checked atomically with the status.
        **fields: other columns to set in the same ``UPDATE``.

    A change to a non-terminal status is published as a live event at once (one ``PUBLISH``,
    :mod:`webapp.core.protocol.events`; call it outside a transaction, as the functions here do); a
    terminal one by :func:`after_terminal`, which every path into a terminal state calls after
    its commit.

    Returns:
        Whether the row changed (``False``: no row, or a status that does not allow ``to``).

    Raises:
        ValueError: ``from_`` names a status the state machine does not allow.
    """
    allowed = TRANSITIONS[to]
    if from_ is not None:
        if not from_ <= allowed:
            raise ValueError(f"{sorted(from_ - allowed)} → {to} is not a transition of the state machine")
        allowed = from_
    conditions = [Job.id == job_id, Job.status.in_(tuple(allowed))] + ([when] if when is not None else [])
    return _update(job_id, Job.update(status=to, updated_at=utcnow(), **fields).where(*conditions),
                   publish=to not in TERMINAL)


def _update(job_id: str, query, publish: bool) -> bool:
    """Run the guarded ``UPDATE`` ``query`` of row ``job_id``; if it changed the row and
    ``publish``, publish the row as a live event (:mod:`webapp.core.protocol.events`). The row's columns
    come back with the ``UPDATE`` (``RETURNING``, SQLite ≥ 3.35 and PostgreSQL): no extra query.
    Terminal states are published by :func:`after_terminal`, after their transaction committed."""
    rows = list(query.returning(*[getattr(Job, name) for name in EVENT_COLUMNS]).dicts().execute())
    if rows and publish:
        job_events.publish(rows[0])
    return bool(rows)


def mark_started(job_id: str) -> bool:
    """``→ started``: count the attempt, clear the previous one's error and progress.

    Returns ``False`` if the job must not run (canceled, stopped, or no row).
    """
    return transition(job_id, STARTED, started_at=utcnow(), ended_at=None, error=None, error_code=None,
                      stage=None, progress=0, retry_at=None, attempts=Job.attempts + 1)


def record_progress(job_id: str, stage: str | None, progress: int) -> bool:
    """Persist a running job's ``stage`` and ``progress`` (0–100 %).

    Returns:
        ``False`` when the row is no longer ``started`` (canceled, stopped, ended elsewhere):
        the job must stop at this point.
    """
    return _update(job_id, Job.update(stage=stage, progress=progress, updated_at=utcnow())
                   .where(Job.id == job_id, Job.status == STARTED), publish=True)


def finish_query(job_id: str, result: dict[str, Any]):
    """The ``UPDATE`` that marks the row ``finished`` with ``result``; run it in the job's final
    transaction and roll back when it changes no row. Call :func:`after_terminal` after the commit."""
    now = utcnow()
    return Job.update(status=FINISHED, progress=100, stage=None, result=result, error=None, error_code=None,
                      ended_at=now, updated_at=now).where(Job.id == job_id, Job.status.in_(tuple(TRANSITIONS[FINISHED])))


def mark_failed(job_id: str, message: str, code: str) -> bool:
    """``→ failed`` with a human ``message`` (≤ 1000 characters kept) and a machine ``code``.
    Opens a database connection if none is open. Returns whether the row changed."""
    return _end(job_id, FAILED, message, code)


def mark_stopped(job_id: str, message: str = "the job was stopped on request", code: str = "stopped") -> bool:
    """``started → stopped``. Returns whether the row changed."""
    return _end(job_id, STOPPED, message, code)


def mark_canceled(job_id: str) -> bool:
    """``queued/scheduled/deferred → canceled``. Returns whether the row changed."""
    return _end(job_id, CANCELED, "the job was canceled before it ran", "canceled")


def mark_scheduled(job_id: str, message: str, code: str, retry_at: datetime) -> bool:
    """``started/queued → scheduled``: a transient failure; RQ retries the job at ``retry_at`` (UTC).
    The row keeps the error that caused it. ``queued``: the worker process died after RQ handed it
    the job and before the job's first line marked the row started (the chaos run's whole-worker
    kill found it failing such a job ``worker_died`` with its retries unused). Returns whether the
    row changed."""
    with connection():
        return transition(job_id, SCHEDULED, from_=frozenset({STARTED, QUEUED}), error=message[:MAX_ERROR],
                          error_code=code, retry_at=retry_at, stage=None)


def mark_requeued(job_id: str) -> bool:
    """``failed/stopped/canceled → queued`` for a retry on request; the row keeps ``attempts``.
    Returns whether the row changed."""
    return transition(job_id, QUEUED, from_=RETRYABLE, error=None, error_code=None, result=None, stage=None, progress=0,
                      started_at=None, ended_at=None, enqueued_at=None, retry_at=None, webhook=None)


def mark_rate_limited(job_id: str, retry_at: datetime, message: str) -> bool:
    """``queued/started → scheduled``: a rate limit's budget (:mod:`webapp.core.workflows.rate_limits`) was not
    free within ``RATE_LIMIT_MAX_WAIT``, so the worker gave the job to RQ's scheduler for
    ``retry_at`` (UTC). ``error_code`` ``rate_limited`` and ``message`` (a sentence) say why
    until the next start clears them. A run that was cut short (``started``: the budget of an API
    request inside the job) did no useful work, so its ``attempts`` is taken back: ``attempts``
    counts runs, and reconcile compares it with the kind's retry limit.

    Returns whether the row changed.
    """
    if retry_at.tzinfo is not None:  # RQ's clock is aware; rows hold naive UTC (a PostgreSQL
        retry_at = retry_at.astimezone(timezone.utc).replace(tzinfo=None)  # session zone would shift it)
    with connection():
        return transition(job_id, SCHEDULED, from_=frozenset({QUEUED, STARTED}), error=message[:MAX_ERROR],
                          error_code="rate_limited", retry_at=retry_at, stage=None, progress=0,
                          attempts=peewee.Case(None, ((Job.status == STARTED, Job.attempts - 1),), Job.attempts))


def mark_handed_back(job_id: str) -> bool:
    """``started → queued``: a worker told to shut down (SIGTERM) gave its unfinished job back to
    the queue; another worker runs it again from the start. The row keeps ``attempts`` (the
    next start counts one more). Returns whether the row changed."""
    with connection():
        return transition(job_id, QUEUED, from_=frozenset({STARTED}), stage=None, progress=0, retry_at=None)


def mark_due(job_id: str) -> bool:
    """``scheduled → queued`` for a delayed job whose planned time (``run_at``) came: only a row
    still waiting for its start (no ``retry_at``: an automatic retry is RQ's to deliver), so a
    canceled job or a second delivery changes nothing. Returns whether the row changed."""
    with connection():
        return transition(job_id, QUEUED, from_=frozenset({SCHEDULED}), when=Job.retry_at.is_null())


def mark_rerun(job_id: str, reason: str, code: str) -> bool:
    """``started/scheduled → queued`` by reconcile: the job's worker or its RQ record is gone, so
    it is enqueued again from ``params``. ``reason`` (a sentence) and ``code`` stay on the row
    until the next start clears them. Returns whether the row changed."""
    with connection():
        return transition(job_id, QUEUED, from_=frozenset({STARTED, SCHEDULED}), stage=None, progress=0,
                          retry_at=None, error=reason[:MAX_ERROR], error_code=code)


def _end(job_id: str, to: str, message: str, code: str) -> bool:
    with connection() as database:
        with database.atomic():
            changed = transition(job_id, to, error=message[:MAX_ERROR], error_code=code, ended_at=utcnow(),
                                 retry_at=None)
        if changed:
            after_terminal(job_id)
    return changed


def after_terminal(job_id: str) -> None:
    """What follows a row's entering a terminal state: publish it as a live event
    (:mod:`webapp.core.protocol.events`), forget the document's PDF password, then send :data:`job_ended`
    to the app's receivers (a webhook delivery, a batch's callback; each registers itself in
    its module's ``init_app``). Never raises: each step's failure is logged on its own.

    One ``SELECT`` in the common case (no password left, no webhook): it runs after every job.
    Every path into a terminal state calls it after its transaction committed (:func:`_end`,
    the jobs' final store), so the event is never sent for a change that was rolled back.
    """
    try:
        with connection():
            row = (Job.select(Job.document, Job.callback_url, Job.owner,
                              Document.password.is_null(False).alias("has_password"),
                              *[getattr(Job, name) for name in EVENT_COLUMNS])
                   .join(Document, JOIN.LEFT_OUTER, on=(Job.document == Document.id))
                   .where(Job.id == job_id).dicts().first())
            if row is None:
                return
            job_events.publish(row)
            if row["has_password"]:
                Document.update(password=None).where(Document.id == row["document"]).execute()
            if not has_app_context():
                return
            app = current_app._get_current_object()
            for receiver in job_ended.receivers_for(app):
                try:
                    receiver(app, row=row)
                except Exception:
                    log.exception("job %s: %s after its terminal state failed", job_id,
                                  getattr(receiver, "__qualname__", receiver))
    except Exception:
        log.exception("job %s: follow-up of its terminal state failed", job_id)


# RQ callbacks, registered by webapp.core.protocol.launch on every job. RQ imports them by dotted path in the
# worker (jobs run inside the app context there) and in its abandoned-job cleanup.

def on_job_failure(rq_job, connection_, exc_type, exc_value, traceback) -> None:
    """RQ ``on_failure`` callback: record why the job failed on its row.

    Called by the worker after the job raised (before RQ decides on a retry), by
    ``StartedJobRegistry.cleanup`` for an abandoned job (:class:`rq.exceptions.AbandonedJobError`,
    its worker vanished) and by Docket's worker pool when a worker process died.

    A transient failure with retries left moves the row to ``scheduled`` (RQ's ``Retry``
    enqueues the job again after the next delay); anything else is final: the row is ``failed``
    (or ``stopped``) and RQ's remaining retries are cleared, so a permanent failure (encrypted
    without password, damaged, unsupported) is never retried.
    """
    code, message, transient = describe_failure(exc_type, exc_value)
    if code == "stopped":
        rq_job.retries_left = 0
        mark_stopped(rq_job.id, message)
        return
    if transient and rq_job.retries_left:
        delay = rq_job.get_retry_interval()
        if mark_scheduled(rq_job.id, message, code, retry_at=utcnow() + timedelta(seconds=delay)):
            return
        if _status(rq_job.id) == SCHEDULED:
            return  # a second report of the same failure (two abandoned-job cleanups at once)
    rq_job.retries_left = 0  # RQ must not retry what the row says is over
    mark_failed(rq_job.id, message, code)


def _status(job_id: str) -> str | None:
    with connection():
        return Job.select(Job.status).where(Job.id == job_id).scalar()


def on_job_stopped(rq_job, connection_) -> None:
    """RQ ``on_stopped`` callback (RQ's stop-job command): the row follows to ``stopped``."""
    mark_stopped(rq_job.id)


def describe_failure(exc_type, exc_value) -> tuple[str, str, bool]:
    """``(error_code, human sentence, transient)`` for an exception a job ended with."""
    from rq.exceptions import AbandonedJobError
    from rq.timeouts import JobTimeoutException

    if isinstance(exc_value, JobStopped) or (exc_type is not None and issubclass(exc_type, JobStopped)):
        return "stopped", getattr(exc_value, "message", None) or JobStopped().message, False
    if isinstance(exc_value, JobError):
        return exc_value.code, exc_value.message, exc_value.transient
    if exc_type is not None and issubclass(exc_type, AbandonedJobError):
        died = WorkerProcessDied("the worker running this job stopped answering (it was killed or lost)")
        return died.code, died.message, died.transient
    if isinstance(exc_value, JobTimeoutException):
        return "timeout", f"the job took longer than its time limit: {exc_value}", False
    if isinstance(exc_value, (peewee.OperationalError, peewee.InterfaceError)):
        return "database_unavailable", f"the database was unavailable: {exc_value}", True
    if isinstance(exc_value, RedisConnectionError):
        return "queue_unavailable", f"Redis was unavailable: {exc_value}", True
    name = exc_type.__name__ if exc_type else "error"
    return "internal_error", f"unexpected error: {name}: {exc_value}", False
