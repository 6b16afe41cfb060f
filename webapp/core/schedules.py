"""Periodic jobs: what runs when (the ``schedule`` table), and the rq-scheduler process that
starts them.

* **Declared in one place.** :data:`SCHEDULABLE_JOBS` is the allow-list of what a schedule may
  run, :func:`builtin_schedules` the schedules every Docket has (fixed ids). ``flask --app wsgi
  schedule sync`` (run at release and by the scheduler process itself) writes them into the
  ``schedule`` table and rq-scheduler's sorted set in Redis: idempotent — running it twice,
  restarting the scheduler or deploying again never duplicates a schedule, a changed one is
  replaced, one removed from the code disappears, and a paused one stays paused.
* **The table is the truth, Redis a copy.** Schedules added at runtime (``POST
  /api/schedules``) are rows too. When Redis lost its data (restarted empty, ``FLUSHALL``) the
  scheduler process notices the missing marker key and writes every entry again from the table.
* **Every run is an ordinary job.** rq-scheduler's own ``enqueue_job`` would push its stored
  job into a queue, bypassing the job protocol; :class:`DocketScheduler` keeps rq-scheduler's
  loop, lock, heartbeat and sorted set but starts each due schedule through
  :func:`webapp.core.protocol.launch.launch` (or :func:`webapp.core.report_files.launch_report`): a Job row with
  ``params``, enqueued with job id = row id, visible in the API like any other. rq-scheduler's
  entry (a stored RQ job, pickled by RQ's default serializer like every Docket job) is only the
  timetable: it holds the schedule's id.
* **Cron is UTC.** rq-scheduler computes cron times in the server's local time zone, and its
  ``crontab`` call warns on every computation (``FutureWarning``: no ``default_utc``).
  :func:`next_cron_time` asks ``crontab`` for the next time after an aware UTC "now", which is
  both UTC whatever ``TZ`` says and the call the warning asks for: fixed at the source.

The same loop starts delayed one-off jobs (``run_at``/``delay`` of an upload or a report) when
their time comes: their entries sit in the same sorted set under the job's own id
(:mod:`webapp.core.protocol.delayed`), polled every ``SCHEDULER_INTERVAL`` (1 s).

RQ's own scheduler is a different thing: it moves jobs RQ itself deferred — the delayed
automatic retries of :class:`rq.Retry` — from each queue's ``ScheduledJobRegistry`` back to the
queue, under a per-queue lock that one process holds. Every worker pool runs one
(``with_scheduler=True``); the scheduler process runs one as well (:class:`DocketScheduler`
takes RQ's locks whenever they are free), so delayed retries keep flowing when the worker that
held the locks was killed: its locks expire after 61 s and the scheduler process takes them
over at its next poll, where a worker would wait for its 10-minute maintenance.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import crontab
from flask import Flask, current_app
from peewee import DatabaseError
from redis import Redis
from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from rq.scheduler import RQScheduler
from rq_scheduler import Scheduler

from webapp.core.compat.rq_scheduler_private import create_entry_job, poll_interval, use_connection
from webapp.core.db import connection, db
from webapp.core.protocol.states import WAITING
from webapp.core.protocol.launch import QueueUnavailable, launch, release_delayed
from webapp.core.models import Job, Schedule, utcnow
from webapp.core.queues import QUEUE_NAMES, rq

log = logging.getLogger(__name__)

ENTRY_PREFIX = "schedule-"  # rq-scheduler job id of schedule <id>: "schedule-<id>"
# Present while rq-scheduler's sorted set holds what the schedule table says; a Redis that lost
# its data lost this key too, and the scheduler writes every entry again.
SYNCED_KEY = "docket:schedules:synced"
MIN_INTERVAL = 10  # seconds: the shortest interval schedule accepted at runtime
MAX_INTERVAL = 366 * 24 * 3600


@dataclass(frozen=True)
class SchedulableJob:
    """What a schedule may run (the allow-list of ``POST /api/schedules``).

    Attributes:
        name: the schedule's ``job``.
        description: one sentence for the API and the schedules page.
        params: parameter name → (type, description); nothing else is accepted.
        start: starts one run with the schedule's ``params``, the app config and the schedule's
            owner (``None``: the system's); returns the Job row it launched.
        admin_only: only an admin may add it (maintenance jobs act on every owner's rows).
    """

    name: str
    description: str
    params: dict[str, tuple[type, str]]
    start: Callable[[dict[str, Any], dict[str, Any], str | None], Job]
    admin_only: bool = True


def _start_kind(kind: str, keys: tuple[str, ...] = ()) -> Callable[[dict[str, Any], dict[str, Any], str | None], Job]:
    def start(params: dict[str, Any], config: dict[str, Any], owner: str | None) -> Job:
        return launch(kind, {key: params[key] for key in keys if key in params})
    return start


def _start_activity_report(params: dict[str, Any], config: dict[str, Any], owner: str | None) -> Job:
    """An activity report of the last ``hours``: of ``owner``'s jobs, or every job for a system
    schedule (built-in, or added by an admin)."""
    from webapp.core.models import isoformat
    from webapp.core.report_files import launch_report

    until = utcnow()
    since = until - timedelta(hours=int(params.get("hours", 24)))
    report_params = {"since": isoformat(since), "until": isoformat(until)}
    if owner is not None:
        report_params["owner"] = owner
    report = launch_report("activity", report_params, owner=owner)
    return Job.find(report.job_id)


SCHEDULABLE_JOBS: dict[str, SchedulableJob] = {
    job.name: job
    for job in (
        SchedulableJob("reconcile", "Bring job rows and RQ into agreement: restore jobs Redis lost, "
                       "re-run or fail jobs whose worker vanished.", {}, _start_kind("reconcile")),
        SchedulableJob("retention", "Delete terminal jobs, their uploads, chunks and report files older than "
                       "max_age_days (default RETENTION_DAYS).",
                       {"max_age_days": (int, "days to keep (≥ 1)")}, _start_kind("retention", ("max_age_days",))),
        SchedulableJob("orphans", "Delete stored files no row references; fail jobs whose stored file is gone.",
                       {}, _start_kind("orphans")),
        SchedulableJob("activity_report", "An activity report of the last hours (parameter hours, default 24), "
                       "on the high queue.",
                       {"hours": (int, "hours covered (1–8784)")}, _start_activity_report, admin_only=False),
    )
}


@dataclass(frozen=True)
class BuiltinSchedule:
    """A schedule every Docket has; ``id`` is fixed, so sync finds it again."""

    id: str
    job: str
    cron: str | None = None
    interval: int | None = None


def builtin_schedules(config: dict[str, Any]) -> list[BuiltinSchedule]:
    """The built-in schedules (cron in UTC):

    * ``reconcile`` every ``RECONCILE_INTERVAL`` seconds (60);
    * ``retention`` daily at 03:30, ``orphans`` daily at 04:00;
    * ``daily-activity-report`` daily at 02:00 (an activity report of the last 24 h, on ``high``).
    """
    return [
        BuiltinSchedule("reconcile", "reconcile", interval=int(config["RECONCILE_INTERVAL"])),
        BuiltinSchedule("retention", "retention", cron="30 3 * * *"),
        BuiltinSchedule("orphans", "orphans", cron="0 4 * * *"),
        BuiltinSchedule("daily-activity-report", "activity_report", cron="0 2 * * *"),
    ]


class ScheduleError(ValueError):
    """A schedule request is not valid; the message is a sentence for the client."""


def validate_schedule(job: Any, cron: Any, interval: Any, params: Any) -> tuple[str, str | None, int | None, dict]:
    """Check a schedule request against the allow-list.

    Args:
        job: a name in :data:`SCHEDULABLE_JOBS`.
        cron: five cron fields (UTC), at most 100 characters (``Schedule.cron``), or ``None``.
        interval: seconds between runs (``MIN_INTERVAL``–366 days), or ``None``.
        params: the job's parameters (a JSON object) or ``None``.

    Returns:
        ``(job, cron, interval, params)``, normalised.

    Raises:
        ScheduleError: an unknown job, not exactly one of cron/interval, a bad cron expression
            or interval, or an unknown or mistyped parameter.
    """
    if not isinstance(job, str) or job not in SCHEDULABLE_JOBS:
        raise ScheduleError(f"'job' must be one of {', '.join(SCHEDULABLE_JOBS)}.")
    if (cron is None) == (interval is None):
        raise ScheduleError("Give exactly one of 'cron' (five fields, UTC) and 'interval' (seconds).")
    if cron is not None:
        if not isinstance(cron, str) or len(cron.split()) != 5:
            raise ScheduleError("'cron' must be five fields (minute hour day month weekday), e.g. \"0 2 * * *\".")
        try:
            next_cron_time(cron)
        except ValueError as exc:
            raise ScheduleError(f"'cron' is not a valid cron expression: {exc}.") from None
        cron = " ".join(cron.split())
        if len(cron) > Schedule.cron.max_length:  # a VARCHAR on PostgreSQL, which refuses a longer value
            raise ScheduleError(f"'cron' may be at most {Schedule.cron.max_length} characters; this one has "
                                f"{len(cron)} (a step such as */5 is shorter than a list of values).")
    if interval is not None:
        if isinstance(interval, bool) or not isinstance(interval, int) or not MIN_INTERVAL <= interval <= MAX_INTERVAL:
            raise ScheduleError(f"'interval' must be a whole number of seconds from {MIN_INTERVAL} to {MAX_INTERVAL}.")
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise ScheduleError("'params' must be a JSON object.")
    allowed = SCHEDULABLE_JOBS[job].params
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        accepted = ", ".join(allowed) or "none"
        raise ScheduleError(f"Unknown parameter(s) {', '.join(unknown)} for {job}; accepted: {accepted}.")
    for key, (kind, _) in allowed.items():
        if key in params and (isinstance(params[key], bool) or not isinstance(params[key], kind)):
            raise ScheduleError(f"'{key}' must be {'a whole number' if kind is int else 'a ' + kind.__name__}.")
    if "max_age_days" in params and params["max_age_days"] < 1:
        raise ScheduleError("'max_age_days' must be at least 1.")
    if "hours" in params and not 1 <= params["hours"] <= 8784:
        raise ScheduleError("'hours' must be from 1 to 8784.")
    return job, cron, interval, params


def next_cron_time(cron: str, after: datetime | None = None) -> datetime:
    """The first time after ``after`` (default now) that the cron expression matches, in UTC.

    Args:
        cron: five fields (minute hour day-of-month month day-of-week), read as UTC.
        after: an aware datetime, or naive UTC.

    Returns:
        A naive UTC datetime (how Docket stores times).

    Raises:
        ValueError: ``cron`` is not a valid expression.
    """
    after = after or datetime.now(timezone.utc)
    if after.tzinfo is None:
        after = after.replace(tzinfo=timezone.utc)
    # An aware "now" makes crontab compute in UTC and is the call its FutureWarning asks for.
    found = crontab.CronTab(cron).next(now=after.astimezone(timezone.utc), return_datetime=True, default_utc=True)
    if found is None:  # e.g. "0 0 30 2 *": a day that never comes
        raise ValueError("it matches no date")
    return found.astimezone(timezone.utc).replace(tzinfo=None)


def next_run_after(schedule: Schedule, now: datetime | None = None) -> datetime:
    """The schedule's next run time after ``now`` (naive UTC)."""
    now = now or utcnow()
    if schedule.cron:
        return next_cron_time(schedule.cron, now)
    return now + timedelta(seconds=int(schedule.interval))


def fingerprint(schedule: Schedule) -> str:
    """What identifies a schedule's timetable and work; a changed one is written again by sync."""
    data = json.dumps([schedule.job, schedule.cron, schedule.interval, schedule.params or {}], sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def _timestamp(value: datetime) -> float:
    return value.replace(tzinfo=timezone.utc).timestamp()


def _scheduler(connection_: Redis | None = None) -> "DocketScheduler":
    return DocketScheduler(connection=connection_ or rq.connection, queue_name="high")


@dataclass
class SyncResult:
    """What :func:`sync_schedules` changed: schedule ids per action."""

    added: list[str]
    updated: list[str]
    removed: list[str]
    kept: list[str]


def sync_builtin_rows(config: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Write the built-in schedules into the table: insert missing ones, update changed ones
    (keeping ``paused`` and the last run), delete built-in rows no longer declared.

    Returns:
        ``(changed or added ids, removed ids)``.
    """
    declared = {b.id: b for b in builtin_schedules(config)}
    changed, removed = [], []
    with db.database.atomic():
        rows = {row.id: row for row in Schedule.select().where(Schedule.builtin == True)}  # noqa: E712
        for row_id, row in rows.items():
            if row_id not in declared:
                row.delete_instance()
                removed.append(row_id)
        for builtin in declared.values():
            row = rows.get(builtin.id)
            if row is None:
                Schedule.create(id=builtin.id, job=builtin.job, cron=builtin.cron, interval=builtin.interval,
                                params={}, builtin=True)
                changed.append(builtin.id)
            elif (row.job, row.cron, row.interval) != (builtin.job, builtin.cron, builtin.interval):
                Schedule.update(job=builtin.job, cron=builtin.cron, interval=builtin.interval).where(
                    Schedule.id == builtin.id).execute()
                changed.append(builtin.id)
    return changed, removed


def sync_schedules(config: dict[str, Any] | None = None, connection_: Redis | None = None) -> SyncResult:
    """Make rq-scheduler's entries in Redis what the ``schedule`` table says (built-ins first
    written from the code). Idempotent: an entry whose schedule did not change keeps its next
    run time; entries of deleted or paused schedules are removed; none is ever duplicated (the
    entry id is ``schedule-<id>``). Sets :data:`SYNCED_KEY`.

    Needs an app context (database, Redis).

    Raises:
        redis.exceptions.RedisError, peewee.DatabaseError: Redis or the database is unavailable.
    """
    config = config or current_app.config
    scheduler = _scheduler(connection_)
    redis = scheduler.connection
    with connection():
        sync_builtin_rows(config)
        rows = {f"{ENTRY_PREFIX}{row.id}": row for row in Schedule.select()}
    wanted = {entry_id: row for entry_id, row in rows.items() if not row.paused}
    present = {member.decode() for member in redis.zrange(scheduler.scheduled_jobs_key, 0, -1)}
    result = SyncResult([], [], [], [])
    for entry_id in sorted(present):
        if entry_id.startswith(ENTRY_PREFIX) and entry_id not in wanted:
            scheduler.remove_entry(entry_id)
            result.removed.append(entry_id[len(ENTRY_PREFIX):])
    for entry_id, row in wanted.items():
        current = scheduler.fetch_entry(entry_id) if entry_id in present else None
        if current is not None and current.meta.get("fingerprint") == fingerprint(row):
            result.kept.append(row.id)
            continue
        scheduler.put_entry(row)
        (result.updated if current is not None else result.added).append(row.id)
    redis.set(SYNCED_KEY, utcnow().isoformat())
    return result


def remove_schedule_entry(schedule_id: str, connection_: Redis | None = None) -> None:
    """Remove schedule ``schedule_id``'s entry from rq-scheduler (paused or deleted)."""
    _scheduler(connection_).remove_entry(f"{ENTRY_PREFIX}{schedule_id}")


def put_schedule_entry(schedule: Schedule, connection_: Redis | None = None) -> datetime:
    """Write (or replace) the schedule's entry; returns its next run time (naive UTC)."""
    return _scheduler(connection_).put_entry(schedule)


def next_run_times(schedule_ids: list[str], connection_: Redis | None = None) -> dict[str, datetime | None]:
    """Each schedule's next run time (naive UTC) from rq-scheduler's sorted set; ``None`` when it
    has no entry (paused, or not synced yet). Redis errors give ``None`` for all."""
    scheduler = _scheduler(connection_)
    try:
        with scheduler.connection.pipeline(transaction=False) as pipe:
            for schedule_id in schedule_ids:
                pipe.zscore(scheduler.scheduled_jobs_key, f"{ENTRY_PREFIX}{schedule_id}")
            scores = pipe.execute()
    except RedisError:
        return dict.fromkeys(schedule_ids)
    return {schedule_id: (datetime.fromtimestamp(score, timezone.utc).replace(tzinfo=None) if score is not None else None)
            for schedule_id, score in zip(schedule_ids, scores)}


def fire(schedule_id: str) -> Job | None:
    """Start one run of schedule ``schedule_id`` now (through the job protocol) and record it
    as the schedule's last run.

    Called by :class:`DocketScheduler` when the schedule is due; also the function of
    rq-scheduler's stored entry, so the stock ``rqscheduler`` would run it in a worker.

    A run is skipped while the schedule's previous run is still waiting in its queue (no
    worker, or a long backlog on ``high``): runs never pile up, the next one comes on time.

    Returns:
        The Job row launched; ``None`` when the schedule no longer exists, is paused, or its
        previous run has not started yet.

    Raises:
        peewee.DatabaseError: the database is unavailable (nothing was launched).
    """
    config = current_app.config
    with connection():
        schedule = Schedule.get_or_none(Schedule.id == schedule_id)
        if schedule is None or schedule.paused:
            return None
        previous = Job.find(schedule.last_job_id) if schedule.last_job_id else None
        # Waiting in RQ too: after Redis lost it, reconcile must be able to run again to restore it.
        if (previous is not None and previous.status in WAITING
                and RQJob.exists(previous.id, connection=rq.connection)):
            log.info("schedule %s: its previous run %s is still %s; skipped", schedule_id, previous.id,
                     previous.status)
            return None
        try:
            job = SCHEDULABLE_JOBS[schedule.job].start(schedule.params or {}, config, schedule.owner)
        except QueueUnavailable as exc:
            job = None  # launch marked the row failed (queue_unavailable); it is still the last run
            job_id = exc.job_ids[0] if exc.job_ids else None
        else:
            job_id = job.id
        Schedule.update(last_run_at=utcnow(), last_job_id=job_id).where(Schedule.id == schedule_id).execute()
    log.info("schedule %s: started %s job %s", schedule_id, schedule.job, job_id)
    return job


class DocketScheduler(Scheduler):
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

    # --- the timetable ----------------------------------------------------------------------
    def fetch_entry(self, entry_id: str):
        """rq-scheduler's stored job ``entry_id``, or ``None``."""
        try:
            return self.job_class.fetch(entry_id, connection=self.connection)
        except NoSuchJobError:
            return None

    def put_entry(self, schedule: Schedule) -> datetime:
        """Store schedule's entry (an RQ job holding its id) and its next run time (naive UTC)."""
        entry_id = f"{ENTRY_PREFIX}{schedule.id}"
        when = next_run_after(schedule)
        entry = create_entry_job(self, "webapp.core.schedules.fire", kwargs={"schedule_id": schedule.id},
                                 id=entry_id, result_ttl=-1, queue_name="high",
                                 description=f"schedule {schedule.id}: {schedule.job} "
                                             f"{'cron ' + schedule.cron if schedule.cron else f'every {schedule.interval} s'}",
                                 meta={"fingerprint": fingerprint(schedule), "schedule_id": schedule.id,
                                       "cron_string": schedule.cron, "interval": schedule.interval})
        with self.connection.pipeline() as pipe:
            entry.save(pipeline=pipe)
            pipe.zadd(self.scheduled_jobs_key, {entry_id: _timestamp(when)})
            pipe.execute()
        return when

    def remove_entry(self, entry_id: str) -> None:
        """Remove entry ``entry_id`` and its stored job."""
        with self.connection.pipeline() as pipe:
            pipe.zrem(self.scheduled_jobs_key, entry_id)
            pipe.delete(self.job_class.key_for(entry_id))
            pipe.execute()

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
        self.connection.zadd(self.scheduled_jobs_key, {job.id: _timestamp(next_run_after(schedule))})
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
