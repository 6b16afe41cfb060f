"""The schedules API under ``/api/schedules``: list, add, delete, pause and resume periodic jobs.

The ``schedule`` table is the truth and rq-scheduler's sorted set in Redis a copy
(:mod:`webapp.core.schedules`). Every change here commits the row first and then writes or removes
the schedule's entry in Redis; when Redis cannot be reached, the answer is ``503
queue_unavailable`` unless the row alone already gives the right behaviour (see each view).

A schedule, as every answer here shows it::

    {"id": "3f2a…", "job": "activity_report", "description": "An activity report of …",
     "cron": "0 2 * * *" | null, "interval": 3600 | null, "params": {"hours": 24},
     "builtin": false, "paused": false,
     "next_run_at": "2025-01-02T02:00:00+00:00" | null,   # rq-scheduler's entry; null when paused
     "last_run_at": "…" | null,
     "last_job": {"id", "status", "error", "error_code", "url"} | null,
     "created_at": "…", "url": "/api/schedules/3f2a…"}

Times are ISO-8601 UTC; cron expressions are read as UTC.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, request, url_for
from redis.exceptions import RedisError

from webapp.edge.auth import current_principal, get_visible_or_404, owned
from webapp.core.service_errors import ServiceError
from webapp.core.models import Job, Schedule, isoformat
from webapp.core.schedules.table import (SCHEDULABLE_JOBS, ScheduleError, builtin_schedules, next_run_times,
                                         put_schedule_entry, remove_schedule_entry, validate_schedule)

bp = Blueprint("schedules_api", __name__, url_prefix="/api")

FIELDS = ("job", "cron", "interval", "params")
REDIS_DOWN = "Redis (the scheduler's queue) is unavailable; nothing was changed. Try again shortly."


@bp.after_request
def no_store(response):
    """Next run times and last runs change by the minute: never cached (as :mod:`webapp.edge.api`)."""
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def schedule_to_dict(schedule: Schedule, next_run_at, last_job: Job | None) -> dict[str, Any]:
    """The API representation of a schedule (the module docstring shows it).

    Args:
        schedule: the row.
        next_run_at: its entry's next run time (naive UTC) or ``None``; ignored while paused.
        last_job: the Job row of its last run, or ``None`` (never ran, or retention deleted it).
    """
    known = SCHEDULABLE_JOBS.get(schedule.job)
    return {
        "id": schedule.id,
        "job": schedule.job,
        "description": known.description if known else None,
        "cron": schedule.cron,
        "interval": schedule.interval,
        "params": schedule.params or {},
        "builtin": schedule.builtin,
        "paused": schedule.paused,
        "next_run_at": None if schedule.paused else isoformat(next_run_at),
        "last_run_at": isoformat(schedule.last_run_at),
        "last_job": None if last_job is None else {
            "id": last_job.id,
            "status": last_job.status,
            "error": last_job.error,
            "error_code": last_job.error_code,
            "url": url_for("api.get_job", job_id=last_job.id),
        },
        "created_at": isoformat(schedule.created_at),
        "url": url_for("schedules_api.get_schedule", schedule_id=schedule.id),
    }


def _to_dicts(schedules: list[Schedule]) -> list[dict[str, Any]]:
    """Many schedules with their next run times (one Redis round trip) and last jobs (one query)."""
    nexts = next_run_times([s.id for s in schedules])
    jobs = Job.by_id(s.last_job_id for s in schedules)
    return [schedule_to_dict(s, nexts.get(s.id), jobs.get(s.last_job_id)) for s in schedules]


def _one(schedule: Schedule) -> dict[str, Any]:
    return _to_dicts([schedule])[0]


@bp.get("/schedules")
def list_schedules():
    """Every schedule the caller may see (an admin: all; others: their own), built-in first (in the order the code declares them), then the added ones
    oldest first: ``{"schedules": [schedule, ...]}``. A schedule with no entry in Redis (paused,
    not synced yet, or Redis unreachable) has ``next_run_at: null``."""
    order = {b.id: i for i, b in enumerate(builtin_schedules(current_app.config))}
    rows = sorted(owned(Schedule.select(), Schedule), key=lambda s: (not s.builtin, order.get(s.id, len(order)), s.created_at, s.id))
    return jsonify({"schedules": _to_dicts(rows)})


@bp.get("/schedules/<schedule_id>")
def get_schedule(schedule_id: str):
    """One schedule, or 404 ``schedule_not_found``."""
    return jsonify(_one(get_visible_or_404(Schedule, schedule_id, "schedule")))


@bp.post("/schedules")
def create_schedule():
    """Add a schedule: JSON ``{"job": <name>, "cron": "<five fields, UTC>"}`` or ``{"job": <name>,
    "interval": <seconds, 10 or more>}``, optional ``"params": {...}`` (the job's own, see
    :data:`webapp.core.schedules.table.SCHEDULABLE_JOBS`) → 201 with the schedule and its ``Location``.

    403 ``admin_required`` for a maintenance job (``reconcile``, ``retention``, ``orphans``) from a
    token that is not an admin's. 400 ``invalid_json`` when the body is not a JSON object, ``invalid_schedule`` (with the
    sentence) when it is not a valid schedule. 503 ``queue_unavailable`` when Redis cannot be
    reached: the row, committed first, is then deleted again, so the answer means "not added" and
    the client's retry adds it once. (Kept, it would claim to be scheduled with no entry in Redis
    until the next ``schedule sync``: the scheduler writes entries again from the table only when
    Redis lost its data, not after the web process merely failed to reach it.)
    """
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ServiceError(400, "invalid_json",
                       'Send a JSON object such as {"job": "activity_report", "cron": "0 6 * * *"}.')
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise ServiceError(400, "invalid_schedule", f"Unknown field(s) {', '.join(unknown)}; accepted: {', '.join(FIELDS)}.")
    try:
        job, cron, interval, params = validate_schedule(body.get("job"), body.get("cron"), body.get("interval"),
                                                        body.get("params"))
    except ScheduleError as exc:
        raise ServiceError(400, "invalid_schedule", str(exc)) from None
    principal = current_principal()
    if SCHEDULABLE_JOBS[job].admin_only and not principal.admin:
        raise ServiceError(403, "admin_required", f"Only an admin may schedule {job} jobs (they act on every owner's rows).")
    # An admin's schedule is the system's (its reports cover every owner), like the built-ins.
    schedule = Schedule.create(job=job, cron=cron, interval=interval, params=params, builtin=False,
                               owner=None if principal.admin else principal.owner)
    try:
        next_run_at = put_schedule_entry(schedule)
    except RedisError as exc:
        current_app.logger.error("schedule %s: Redis refused its entry, the row is removed again: %s", schedule.id, exc)
        schedule.delete_instance()
        raise ServiceError(503, "queue_unavailable", REDIS_DOWN) from exc
    response = jsonify(schedule_to_dict(schedule, next_run_at, None))
    response.headers["Location"] = url_for("schedules_api.get_schedule", schedule_id=schedule.id)
    return response, 201


@bp.delete("/schedules/<schedule_id>")
def delete_schedule(schedule_id: str):
    """Delete an added schedule and its entry: 204. 404 ``schedule_not_found``; 409
    ``builtin_schedule`` for a built-in one (those can be paused, not deleted).

    The row goes first. If Redis cannot be reached the answer is still 204: an entry whose row is
    gone never starts a job (the scheduler drops it when it comes due, ``schedule sync`` too).
    """
    schedule = get_visible_or_404(Schedule, schedule_id, "schedule")
    if schedule.builtin:
        raise ServiceError(409, "builtin_schedule", "Built-in schedules can be paused and resumed, not deleted.")
    Schedule.delete().where(Schedule.id == schedule_id).execute()
    try:
        remove_schedule_entry(schedule_id)
    except RedisError as exc:
        current_app.logger.warning("schedule %s deleted; its entry stays until the scheduler drops it: %s",
                                   schedule_id, exc)
    return "", 204


@bp.post("/schedules/<schedule_id>/pause")
def pause_schedule(schedule_id: str):
    """Pause a schedule (built-in or added): 200 with it; 404 ``schedule_not_found``. Pausing a
    paused schedule changes nothing.

    The row is marked first, then the entry removed. If Redis cannot be reached the answer is
    still 200: the scheduler reads the row before every run and starts nothing for a paused
    schedule (it drops the entry then), and ``schedule sync`` removes it too.
    """
    schedule = get_visible_or_404(Schedule, schedule_id, "schedule")
    Schedule.update(paused=True).where(Schedule.id == schedule_id).execute()
    try:
        remove_schedule_entry(schedule_id)
    except RedisError as exc:
        current_app.logger.warning("schedule %s paused; its entry stays until the scheduler drops it: %s",
                                   schedule_id, exc)
    schedule.paused = True
    return jsonify(_one(schedule))


@bp.post("/schedules/<schedule_id>/resume")
def resume_schedule(schedule_id: str):
    """Resume a paused schedule: 200 with it, its next run counted from now; 404
    ``schedule_not_found``. Resuming a running schedule keeps its next run time (and writes its
    entry again only if Redis lost it).

    503 ``queue_unavailable`` when Redis cannot be reached: the row is paused again, so it never
    claims to run without an entry.
    """
    schedule = get_visible_or_404(Schedule, schedule_id, "schedule")
    was_paused = schedule.paused
    if not was_paused and next_run_times([schedule_id])[schedule_id] is not None:
        return jsonify(_one(schedule))
    Schedule.update(paused=False).where(Schedule.id == schedule_id).execute()
    schedule.paused = False
    try:
        put_schedule_entry(schedule)
    except RedisError as exc:
        if was_paused:
            Schedule.update(paused=True).where(Schedule.id == schedule_id).execute()
        raise ServiceError(503, "queue_unavailable", REDIS_DOWN) from exc
    return jsonify(_one(schedule))
