"""The schedule table: what may be scheduled (:data:`SCHEDULABLE_JOBS`), the built-in schedules,
validation, cron in UTC, the timetable in Redis (:class:`Timetable`), its sync from the table,
and :func:`fire` (one run, through the job protocol). The process that polls it:
:mod:`webapp.core.schedules.scheduler`. (The design: :mod:`webapp.core.schedules`.)
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import crontab
from flask import current_app
from redis import Redis
from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from rq_scheduler import Scheduler

from webapp.core.compat.rq_scheduler_private import create_entry_job
from webapp.core.db import connection, db
from webapp.core.protocol.states import WAITING
from webapp.core.protocol.launch import QueueUnavailable, launch
from webapp.core.models import Job, Schedule, utcnow
from webapp.core.queues import rq

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
            owner (``None``: the system's); returns the Job row it launched, or ``None`` when it declined to start now (skipped).
        admin_only: only an admin may add it (maintenance jobs act on every owner's rows).
    """

    name: str
    description: str
    params: dict[str, tuple[type, str]]
    start: Callable[[dict[str, Any], dict[str, Any], str | None], Job | None]
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


def _start_source_sync(params: dict[str, Any], config: dict[str, Any], owner: str | None) -> Job | None:
    """A sync of source ``source_id`` through its one-at-a-time guard
    (:func:`webapp.core.sources.start_scheduled_sync`); ``None`` when skipped (a sync still runs)."""
    from webapp.core.sources import start_scheduled_sync

    return start_scheduled_sync(params, config, owner)


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
        # Sources (issue 23): POST /api/sources with "cron" adds one; a due time while the
        # source's previous sync still runs is skipped.
        SchedulableJob("sync_source", "Sync a source (parameter source_id): ingest new and changed items, "
                       "delete gone ones.", {"source_id": (str, "the source's id")}, _start_source_sync,
                       admin_only=False),
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


def entry_score(value: datetime) -> float:
    """The sorted-set score of a naive UTC time: its Unix timestamp (seconds)."""
    return value.replace(tzinfo=timezone.utc).timestamp()


def _scheduler(connection_: Redis | None = None) -> "Timetable":
    return Timetable(connection=connection_ or rq.connection, queue_name="high")


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
            if job is None:  # the start refused to launch now (a source's sync still running): skipped
                log.info("schedule %s: its %s job did not start now; skipped", schedule_id, schedule.job)
                return None
            job_id = job.id
        Schedule.update(last_run_at=utcnow(), last_job_id=job_id).where(Schedule.id == schedule_id).execute()
    log.info("schedule %s: started %s job %s", schedule_id, schedule.job, job_id)
    return job


class Timetable(Scheduler):
    """rq-scheduler's :class:`~rq_scheduler.Scheduler` as the schedules' timetable: each schedule's
    entry (a stored RQ job holding its id) and next run time in rq-scheduler's sorted set. The
    scheduler process (:class:`webapp.core.schedules.scheduler.DocketScheduler`) is one, with the loop."""

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
        entry = create_entry_job(self, "webapp.core.schedules.table.fire", kwargs={"schedule_id": schedule.id},
                                 id=entry_id, result_ttl=-1, queue_name="high",
                                 description=f"schedule {schedule.id}: {schedule.job} "
                                             f"{'cron ' + schedule.cron if schedule.cron else f'every {schedule.interval} s'}",
                                 meta={"fingerprint": fingerprint(schedule), "schedule_id": schedule.id,
                                       "cron_string": schedule.cron, "interval": schedule.interval})
        with self.connection.pipeline() as pipe:
            entry.save(pipeline=pipe)
            pipe.zadd(self.scheduled_jobs_key, {entry_id: entry_score(when)})
            pipe.execute()
        return when

    def remove_entry(self, entry_id: str) -> None:
        """Remove entry ``entry_id`` and its stored job."""
        with self.connection.pipeline() as pipe:
            pipe.zrem(self.scheduled_jobs_key, entry_id)
            pipe.delete(self.job_class.key_for(entry_id))
            pipe.execute()
