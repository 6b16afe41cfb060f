"""The scheduler process (the Procfile's ``scheduler``): rq-scheduler's loop, lock and heartbeat,
starting each due schedule through :func:`webapp.core.schedules.table.fire`, each due delayed job
through :func:`webapp.core.protocol.launch.release_delayed`, and RQ's delayed retries when no
worker holds RQ's scheduler lock. (The design: :mod:`webapp.core.schedules`.)
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Flask
from peewee import DatabaseError
from redis.exceptions import RedisError
from rq.scheduler import RQScheduler

from webapp.core.compat.rq_scheduler_private import poll_interval, use_connection
from webapp.core.db import connection
from webapp.core.protocol.launch import release_delayed
from webapp.core.models import Schedule
from webapp.core.queues import QUEUE_NAMES, rq

from webapp.core.schedules.table import (ENTRY_PREFIX, SYNCED_KEY, Timetable, entry_score, fire, next_run_after,
                                         sync_schedules)

log = logging.getLogger(__name__)


class DocketScheduler(Timetable):
    """rq-scheduler's :class:`~rq_scheduler.Scheduler` whose due entries start through
    :func:`fire` (a Job row per run) and whose cron times are UTC (:func:`next_cron_time`).

    Args:
        app: the Flask app (config, database, Redis); ``None`` when used inside an app context
            only to read or write entries.
        **kwargs: rq-scheduler's (``connection``, ``interval`` in seconds, ``queue_name``).
    """

    def __init__(self, app: Flask | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.rq_scheduler: RQScheduler | None = None

    # --- the loop -----------------------------------------------------------------------------
    def enqueue_jobs(self):
        """One poll (rq-scheduler's loop calls it every ``interval`` seconds while holding its
        lock): write the entries again if Redis lost them, then start what is due. A Redis or
        database outage is logged and the next poll tries again; the process keeps running."""
        try:
            self.deliver_retries()
            with self.app.app_context():
                if not self.connection.exists(SYNCED_KEY):
                    result = sync_schedules(connection_=self.connection)
                    log.info("scheduler: wrote rq-scheduler's entries from the schedule table "
                             "(added %s, updated %s, removed %s)", result.added, result.updated, result.removed)
                return super().enqueue_jobs()
        except (RedisError, DatabaseError) as exc:
            log.error("scheduler: poll failed, trying again in %s s: %s", poll_interval(self), exc)
            return []

    def get_jobs_to_queue(self, with_times: bool = False):
        """rq-scheduler's due entries, with "now" to the microsecond: its own rounds now down to
        whole seconds (``to_unix``), which started a delayed job (``run_at`` 12:00:00.4) up to a
        second late on top of the poll interval."""
        return self.get_jobs(time.time(), with_times=with_times)

    def deliver_retries(self) -> None:
        """RQ's scheduler role (see the module docstring): hold RQ's per-queue scheduler locks
        when they are free, and move the due delayed retries of the queues it holds."""
        if self.rq_scheduler is None:
            self.rq_scheduler = RQScheduler(QUEUE_NAMES, connection=self.connection, interval=poll_interval(self))
            use_connection(self.rq_scheduler, self.connection)
            self.rq_scheduler.register_birth()
        if self.rq_scheduler.acquired_locks != set(QUEUE_NAMES):
            self.rq_scheduler.acquire_locks()  # takes the free ones, refreshes its own
        else:
            self.rq_scheduler.heartbeat()
        if self.rq_scheduler.acquired_locks:
            self.rq_scheduler.enqueue_scheduled_jobs()

    def register_death(self):
        """rq-scheduler's death, and RQ's scheduler locks released for the workers' schedulers."""
        if self.rq_scheduler is not None:
            try:
                self.rq_scheduler.release_locks()
                self.rq_scheduler.register_death()
            except RedisError:
                pass
            self.rq_scheduler = None
        super().register_death()

    def enqueue_job(self, job) -> None:
        """Start one due entry. A schedule's: first move it to its next run time (so a failure
        can never start it in a loop), then :func:`fire` its schedule inside the app context.
        A delayed job's (any id not starting with ``schedule-``): :func:`webapp.core.protocol.launch.release_delayed`."""
        if not job.id.startswith(ENTRY_PREFIX):
            try:
                release_delayed(self.connection, job.id)
            except DatabaseError as exc:
                # The entry was claimed but the row could not move: reconcile writes it again.
                log.error("delayed job %s: could not start it (database unavailable): %s", job.id, exc)
            return
        schedule_id = job.meta.get("schedule_id") or (job.kwargs or {}).get("schedule_id")
        with connection():
            schedule = Schedule.get_or_none(Schedule.id == schedule_id) if schedule_id else None
        if schedule is None or schedule.paused:
            self.remove_entry(job.id)
            return
        self.connection.zadd(self.scheduled_jobs_key, {job.id: entry_score(next_run_after(schedule))})
        try:
            fire(schedule.id)
        except DatabaseError as exc:
            log.error("schedule %s: could not start its job (database unavailable): %s", schedule.id, exc)
        except Exception:  # one broken schedule must not stop the process that runs all the others
            log.exception("schedule %s: could not start its %s job", schedule.id, schedule.job)


def run_scheduler(app: Flask, interval: float, burst: bool = False) -> None:
    """Run the scheduler process until SIGTERM/SIGINT: write the schedules from the table into
    rq-scheduler (so a deploy's changes apply even without the release phase), then poll every
    ``interval`` seconds. If Redis or the database is unreachable, wait and start again instead of
    exiting (a platform would restart it, a local ``honcho`` run would not)."""
    backoff = 1.0
    while True:
        scheduler = DocketScheduler(app=app, connection=rq.connection, interval=interval, queue_name="high")
        started = time.monotonic()
        try:
            with app.app_context():
                result = sync_schedules(connection_=scheduler.connection)
            log.info("scheduler: schedules synced (added %s, updated %s, removed %s, unchanged %d)",
                     result.added, result.updated, result.removed, len(result.kept))
            scheduler.run(burst=burst)
            return
        except (RedisError, DatabaseError) as exc:
            if time.monotonic() - started > 60:  # it had been running: a new outage starts the backoff again
                backoff = 1.0
            log.error("scheduler: Redis or the database is unavailable (%s); trying again in %.0f s", exc, backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, 30)
