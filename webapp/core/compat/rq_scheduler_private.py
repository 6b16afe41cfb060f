"""rq-scheduler 0.14.0's private internals that Docket uses (see :mod:`webapp.core.compat`).

* :func:`create_entry_job` — ``Scheduler._create_job``: build the RQ job a timetable entry holds
  without enqueueing or scheduling it. The public ``schedule``/``cron`` compute the next run
  themselves (``cron`` in the server's local time) and write the entry at once; Docket computes
  the time in UTC from its own table and writes job and entry in one pipeline.
* :func:`poll_interval` — ``Scheduler._interval``: the poll interval the scheduler was built
  with (seconds); no public accessor.
* :func:`use_connection` — ``rq.scheduler.RQScheduler._connection``: RQ's scheduler drops its
  connection before forking its own process (``start``); Docket runs it inside the rq-scheduler
  process instead, so it gives it the connection back.
"""

from __future__ import annotations

from typing import Any

from redis import Redis
from rq.job import Job as RQJob
from rq.scheduler import RQScheduler
from rq_scheduler import Scheduler


def create_entry_job(scheduler: Scheduler, func: str, **options: Any) -> RQJob:
    """The unsaved RQ job of a timetable entry (``Scheduler._create_job(func, commit=False, …)``)."""
    return scheduler._create_job(func, commit=False, **options)


def poll_interval(scheduler: Scheduler) -> float:
    """Seconds between the scheduler's polls (``Scheduler._interval``)."""
    return scheduler._interval


def use_connection(rq_scheduler: RQScheduler, connection: Redis) -> None:
    """Give RQ's scheduler the Redis connection it would otherwise open after forking."""
    rq_scheduler._connection = connection
