"""Delayed jobs: a job that starts at a planned time (``run_at`` or ``delay`` of an upload or
a report request), the way Celery's ``eta``/``countdown`` does, on rq-scheduler.

This module is the timetable (below :mod:`webapp.core.protocol.launch`, which writes and reads it); starting
a due job and restoring lost entries are launches, in :mod:`webapp.core.protocol.launch`. The flow, in the
job protocol's order:

1. The Job row is committed ``scheduled`` with ``run_at`` and no ``retry_at``
   (:func:`webapp.core.protocol.launch.new_job`).
2. :func:`webapp.core.protocol.launch.enqueue_jobs` writes, in the same Redis ``MULTI`` as the request's
   other jobs, the RQ job (id = row id, status ``scheduled``, its kind's function, parameters,
   callbacks and queue) and its entry in rq-scheduler's sorted set
   (``rq:scheduler:scheduled_jobs``) scored by ``run_at`` (:func:`add_entry`).
3. The scheduler process (:class:`webapp.core.schedules.scheduler.DocketScheduler`, polling every
   ``SCHEDULER_INTERVAL`` s, 1 by default) finds the entry due and calls
   :func:`webapp.core.protocol.launch.release_delayed`:
   removing the entry is the claim (``ZREM`` answers 1 to one caller only), the row goes
   ``scheduled → queued`` (guarded: a canceled row stays canceled) and the job is enqueued
   through the job protocol, replacing the entry's record.
4. Canceled while scheduled (:func:`webapp.core.protocol.control.cancel_job`): the row is ``canceled``,
   RQ's record too, and the entry is removed (:func:`remove_entry`).
5. Redis lost it (restarted empty, ``FLUSHALL``): reconcile finds the entry missing
   (:func:`missing_entries`) and writes it again for the same planned time
   (:func:`webapp.core.protocol.launch.restore_delayed`); a time that passed meanwhile starts at the next poll.

Why rq-scheduler and not RQ's own ``enqueue_at`` (its ``ScheduledJobRegistry``): RQ's scheduler
moves a due job into its queue inside a worker, with no hook, so the row would keep saying
``scheduled`` after its time came, until a worker started it; and the scheduler process already
runs rq-scheduler's loop for the periodic jobs, which starts every due entry through the job
protocol. RQ's registry stays what it was: the delayed automatic retries (rows with
``retry_at``).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Any

from redis import Redis
from redis.client import Pipeline
from rq import Queue
from rq.job import JobStatus
from rq.queue import EnqueueData
from rq_scheduler import Scheduler

from webapp.core.models import Job, utcnow

log = logging.getLogger(__name__)

SCHEDULED_JOBS_KEY = Scheduler.scheduled_jobs_key  # rq-scheduler's sorted set (hard-coded "rq:" prefix)
MAX_DELAY = timedelta(days=366)  # the latest planned start a request may ask for


class StartTimeError(ValueError):
    """A request's ``run_at``/``delay`` is not valid; the message is a sentence for the client."""


def start_time(run_at: Any = None, delay: Any = None, now: datetime | None = None) -> datetime | None:
    """The planned start of a job from a request's ``run_at`` or ``delay``.

    Args:
        run_at: an ISO-8601 time (string), e.g. ``2026-11-22T09:30:00Z``; one without an offset
            is read as UTC.
        delay: seconds from now (a number, or a string holding one), at least 0.
        now: the current time (naive UTC; default now).

    Returns:
        The planned start as naive UTC; ``None`` when neither is given, or the time is not in
        the future (the job starts at once, as Celery treats a past ``eta``).

    Raises:
        StartTimeError: both are given; ``run_at`` is not an ISO-8601 time; ``delay`` is not a
            number or is negative; the time is more than :data:`MAX_DELAY` (366 days) away.
    """
    if run_at in (None, "") and delay in (None, ""):
        return None
    if run_at not in (None, "") and delay not in (None, ""):
        raise StartTimeError("Give either 'run_at' (an ISO-8601 time) or 'delay' (seconds), not both.")
    now = now or utcnow()
    if run_at not in (None, ""):
        if not isinstance(run_at, str):
            raise StartTimeError("'run_at' must be an ISO-8601 time such as 2026-11-22T09:30:00Z.")
        try:
            when = datetime.fromisoformat(run_at.strip().replace("Z", "+00:00"))
        except ValueError:
            raise StartTimeError(f"'run_at' is not an ISO-8601 time: {run_at[:60]!r}; "
                                 "use e.g. 2026-11-22T09:30:00Z.") from None
        if when.tzinfo is not None:
            when = when.astimezone(timezone.utc).replace(tzinfo=None)
    else:
        try:
            seconds = float(delay) if not isinstance(delay, bool) else float("nan")
        except (TypeError, ValueError):
            seconds = float("nan")
        if not seconds >= 0:  # also NaN
            raise StartTimeError("'delay' must be a number of seconds, 0 or more.")
        if seconds > MAX_DELAY.total_seconds():
            raise StartTimeError(f"'delay' may be at most {int(MAX_DELAY.total_seconds())} seconds (366 days).")
        when = now + timedelta(seconds=seconds)
    if when - now > MAX_DELAY:
        raise StartTimeError("A job may be planned at most 366 days ahead.")
    return when if when > now else None


def is_delayed(job: Job) -> bool:
    """Whether the row waits for its planned start (``scheduled`` with ``run_at`` and without
    ``retry_at``, which would make it an automatic retry waiting in RQ's registry)."""
    return job.status == JobStatus.SCHEDULED.value and job.run_at is not None and job.retry_at is None


def _score(when: datetime) -> float:
    return when.replace(tzinfo=timezone.utc).timestamp()


def add_entry(queue: Queue, job: Job, data: EnqueueData, pipeline: Pipeline) -> None:
    """Write delayed job ``job`` into ``pipeline``: RQ's record, made as ``queue`` would make it
    from ``data`` (:meth:`rq.Queue.prepare_data`) but with status ``scheduled`` and on no list,
    and rq-scheduler's entry (the job id, scored by ``job.run_at``)."""
    rq_job = queue.create_job(
        data.func, args=data.args, kwargs=data.kwargs, timeout=data.timeout, result_ttl=data.result_ttl,
        ttl=data.ttl, failure_ttl=data.failure_ttl, description=data.description, job_id=data.job_id,
        meta=data.meta, retry=data.retry, on_failure=data.on_failure, on_stopped=data.on_stopped,
        status=JobStatus.SCHEDULED,
    )
    rq_job.save(pipeline=pipeline)
    pipeline.zadd(SCHEDULED_JOBS_KEY, {job.id: _score(job.run_at)})


def remove_entry(redis: Redis, job_id: str) -> bool:
    """Remove delayed job ``job_id``'s entry from rq-scheduler's timetable (canceled, or
    released). Returns whether there was one (``ZREM``: true for one caller only)."""
    return bool(redis.zrem(SCHEDULED_JOBS_KEY, job_id))


def missing_entries(redis: Redis, job_ids: list[str]) -> set[str]:
    """The ids among ``job_ids`` that have no entry in rq-scheduler's timetable (one round trip)."""
    if not job_ids:
        return set()
    with redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.zscore(SCHEDULED_JOBS_KEY, job_id)
        scores = pipe.execute()
    return {job_id for job_id, score in zip(job_ids, scores) if score is None}
