"""Queue statistics for operators: what waits, runs and ended on each of Docket's queues.

Read from two sources, each for what it knows best:

* **RQ** (Redis) says what is in each queue and registry *now*: the queued count and the head of
  the queue, the started, scheduled (delayed retries), deferred, failed, finished and canceled
  registries, and the workers listening on the queue. Counts are RQ's own
  (``Queue.count``, ``BaseRegistry.get_job_count(cleanup=False)``) — the numbers rq-dashboard
  and ``rq info`` show. No cleanup is run here: cleaning the started registry would run failure
  callbacks in the web process; the workers' maintenance does it.
* **The Job table** says what *ended*: the rate of jobs that reached a terminal state (their
  ``ended_at``) in the last 5 and 60 minutes. RQ's finished registry forgets jobs after
  ``JOB_RESULT_TTL`` and keeps no failure times; the rows keep both. It also says what waits
  outside RQ's registries: delayed jobs (in rq-scheduler's timetable until their ``run_at``,
  :mod:`webapp.core.protocol.delayed`) and batch reports waiting for their batch (not in Redis at all,
  :mod:`webapp.core.workflows.chords`).

Core module: no Flask request code (the edge answers ``GET /api/queues`` with
:func:`queue_statistics`, see :mod:`webapp.edge.queues_api`).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from peewee import Case, fn
from redis import Redis
from rq import Queue, Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from rq.registry import (CanceledJobRegistry, DeferredJobRegistry, FailedJobRegistry, FinishedJobRegistry,
                         ScheduledJobRegistry, StartedJobRegistry)

from webapp.core.protocol.states import DEFERRED, SCHEDULED, TERMINAL
from webapp.core.models import Job, isoformat, utcnow
from webapp.core.owner_caps import owner_depths
from webapp.core.queues import QUEUE_NAMES, rq

# The counts every queue reports, in this order: "queued" is the queue itself, the others RQ's registries.
REGISTRIES = {
    "started": StartedJobRegistry,
    "scheduled": ScheduledJobRegistry,
    "deferred": DeferredJobRegistry,
    "failed": FailedJobRegistry,
    "finished": FinishedJobRegistry,
    "canceled": CanceledJobRegistry,
}
# Windows of the jobs-per-minute rates: response key → minutes.
RATE_WINDOWS = {"last_5_minutes": 5, "last_60_minutes": 60}
HEAD_LOOKAHEAD = 10  # queued ids read to find the head job when the first ones were deleted meanwhile


def queue_statistics(connection: Redis | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Statistics of every Docket queue, in :data:`webapp.core.queues.QUEUE_NAMES` order.

    Needs an app context and an open database connection (the rates are read from the Job table).

    Args:
        connection: the Redis client; default the current app's (:data:`webapp.core.queues.rq`).
        now: naive UTC "now" (tests); default the current time.

    Returns:
        ``{"queues": [{"name", "counts": {"queued", "started", "scheduled", "deferred", "failed",
        "finished", "canceled"} (job counts), "oldest_queued_age_seconds" (seconds, float, or
        ``None`` for an empty queue), "workers" (count of workers listening on the queue),
        "jobs_per_minute": {"last_5_minutes", "last_60_minutes"} (jobs that reached a terminal
        state in the window ÷ the window's minutes, rounded to 3 decimals), "waiting": {"delayed",
        "for_batch"} (rows: delayed jobs before their ``run_at``; batch reports whose batch has
        not ended), "owners": [{"owner" (``null``: the system's jobs), "queued", "started"}, …]
        (each owner's rows waiting and running, most queued first; fair share,
        :mod:`webapp.core.fair_queue`)}, …],
        "generated_at": ISO-8601 UTC}``.

    Raises:
        redis.exceptions.RedisError: Redis cannot be reached.
        peewee.DatabaseError: the database cannot be reached.
    """
    connection = connection or rq.connection
    now = now or utcnow()
    rates = jobs_per_minute(now)
    waiting = waiting_rows()
    owners = owner_depths()
    queues = []
    for name in QUEUE_NAMES:
        queue = Queue(name, connection=connection)
        counts = {"queued": queue.count}
        for key, registry_class in REGISTRIES.items():
            counts[key] = registry_class(name, connection=connection).get_job_count(cleanup=False)
        queues.append({
            "name": name,
            "counts": counts,
            "oldest_queued_age_seconds": oldest_queued_age(queue, now),
            "workers": len(Worker.all(queue=queue)),
            "jobs_per_minute": rates[name],
            "waiting": waiting[name],
            "owners": owners.get(name, []),
        })
    return {"queues": queues, "generated_at": isoformat(now)}


def oldest_queued_age(queue: Queue, now: datetime) -> float | None:
    """Seconds the job at the head of ``queue`` has waited since RQ enqueued it (its
    ``enqueued_at``), rounded to 0.1 s; ``None`` when the queue is empty.

    Ids whose job no longer exists (deleted after it was queued) are skipped, as a worker
    would skip them.

    Raises:
        redis.exceptions.RedisError: Redis cannot be reached.
    """
    for job_id in queue.get_job_ids(0, HEAD_LOOKAHEAD - 1):
        try:
            job = RQJob.fetch(job_id, connection=queue.connection, serializer=queue.serializer)
        except NoSuchJobError:
            continue
        if job.enqueued_at is None:
            continue
        enqueued_at = job.enqueued_at
        if enqueued_at.tzinfo is not None:
            enqueued_at = enqueued_at.astimezone(timezone.utc).replace(tzinfo=None)
        return round(max(0.0, (now - enqueued_at).total_seconds()), 1)
    return None


def waiting_rows() -> dict[str, dict[str, int]]:
    """Per queue name, the rows waiting outside RQ's registries: ``delayed`` (``scheduled`` with a
    ``run_at`` and no ``retry_at``) and ``for_batch`` (``deferred``: a batch's report). One query.

    Raises:
        peewee.DatabaseError: the database cannot be reached.
    """
    delayed = (Job.status == SCHEDULED) & Job.run_at.is_null(False) & Job.retry_at.is_null()
    counts = {name: {"delayed": 0, "for_batch": 0} for name in QUEUE_NAMES}
    query = (Job.select(Job.queue, fn.SUM(Case(None, ((delayed, 1),), 0)).alias("delayed"),
                        fn.SUM(Case(None, ((Job.status == DEFERRED, 1),), 0)).alias("for_batch"))
             .where(Job.status.in_((SCHEDULED, DEFERRED))).group_by(Job.queue).dicts())
    for found in query:
        if found["queue"] in counts:
            counts[found["queue"]] = {"delayed": int(found["delayed"] or 0), "for_batch": int(found["for_batch"] or 0)}
    return counts


def jobs_per_minute(now: datetime) -> dict[str, dict[str, float]]:
    """Per queue name, the jobs per minute that reached a terminal state (finished, failed,
    canceled, stopped — their row's ``ended_at``) in each window of :data:`RATE_WINDOWS`.

    One query: a count per queue and window (``SUM(CASE …)`` grouped by queue).

    Args:
        now: naive UTC; the windows end here.

    Returns:
        ``{queue: {"last_5_minutes": jobs/min, "last_60_minutes": jobs/min}}`` for every name in
        :data:`QUEUE_NAMES` (0.0 when none ended).

    Raises:
        peewee.DatabaseError: the database cannot be reached.
    """
    cutoffs = {key: now - timedelta(minutes=minutes) for key, minutes in RATE_WINDOWS.items()}
    columns = [fn.COALESCE(fn.SUM(Case(None, [(Job.ended_at > cutoff, 1)], 0)), 0).alias(key)
               for key, cutoff in cutoffs.items()]
    rows = (Job.select(Job.queue, *columns)
            .where(Job.status.in_(list(TERMINAL)), Job.ended_at > min(cutoffs.values()), Job.ended_at <= now,
                   Job.queue.in_(list(QUEUE_NAMES)))
            .group_by(Job.queue)
            .dicts())
    counts = {row["queue"]: row for row in rows}
    return {
        name: {key: round(int(counts.get(name, {}).get(key) or 0) / minutes, 3)
               for key, minutes in RATE_WINDOWS.items()}
        for name in QUEUE_NAMES
    }
