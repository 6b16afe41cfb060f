"""The sources API under ``/api/sources`` (issue 23): register a source, sync it, see its syncs,
delete it. The service is :mod:`webapp.core.sources`, the sync itself the ``sync`` job.

A source, as every answer here shows it::

    {"id": "…", "kind": "s3" | "web" | "sitemap", "name": "…",
     "url": "s3://bucket/prefix/" | "https://example.com/sitemap.xml" | null,
     "urls": ["https://…", …] | null,                      # a web source's pages
     "schedule": {"id", "cron", "next_run_at", "url"} | null,
     "sync_job": {"id", "status", "url"} | null,             # the running or last sync
     "created_at": "…", "source_url": "/api/sources/…", "sync_url": "/api/sources/…/sync"}

``GET /api/sources/<id>`` adds ``items`` (``{"total", "synced", "pending", "failed"}``) and
``syncs`` (the last ``SOURCE_SYNC_HISTORY`` (20), newest first): ``{"job_id", "status", "counts":
{listed, ingested, changed, deleted, unchanged, failed, retried, in_flight}, "started_at",
"ended_at", "error", "url"}``.

Owners: a source belongs to the token's owner, its documents too; another owner's id answers
404 as a missing one; admins see every source.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, request, url_for
from redis.exceptions import RedisError

from webapp.core.db import db
from webapp.core.models import Job, Schedule, Source, SourceSync, isoformat
from webapp.core.protocol.launch import QueueUnavailable
from webapp.core.schedules.table import (ScheduleError, next_run_times, put_schedule_entry, remove_schedule_entry,
                                         validate_schedule)
from webapp.core.service_errors import ServiceError
from webapp.core.sources import COUNT_NAMES, SyncRunning, delete_source, item_counts, start_sync, validate_source
from webapp.edge.auth import current_owner, get_visible_or_404, owned
from webapp.edge.json_errors import error_response

bp = Blueprint("sources_api", __name__, url_prefix="/api")

REDIS_DOWN = "Redis (the scheduler's queue) is unavailable; the source was not added. Try again shortly."


@bp.after_request
def no_store(response):
    """Sync states change by the second: never cached (as :mod:`webapp.edge.api`)."""
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def source_to_dict(source: Source, schedule: Schedule | None = None, next_run_at=None,
                   sync_job: Job | None = None) -> dict[str, Any]:
    """The API representation of a source (the module docstring shows it)."""
    return {
        "id": source.id,
        "kind": source.kind,
        "name": source.name,
        "url": source.url,
        "urls": source.urls,
        "schedule": None if schedule is None else {
            "id": schedule.id, "cron": schedule.cron, "next_run_at": isoformat(next_run_at),
            "url": url_for("schedules_api.get_schedule", schedule_id=schedule.id),
        },
        "sync_job": None if sync_job is None else {
            "id": sync_job.id, "status": sync_job.status, "url": url_for("api.get_job", job_id=sync_job.id),
        },
        "created_at": isoformat(source.created_at),
        "source_url": url_for("sources_api.get_source", source_id=source.id),
        "sync_url": url_for("sources_api.sync_source", source_id=source.id),
    }


def _to_dicts(sources: list[Source]) -> list[dict[str, Any]]:
    """Many sources with their schedules (one query, one Redis round trip) and sync jobs (one query)."""
    schedule_ids = [s.schedule_id for s in sources if s.schedule_id]
    schedules = {row.id: row for row in Schedule.select().where(Schedule.id.in_(schedule_ids))} if schedule_ids else {}
    nexts = next_run_times(list(schedules)) if schedules else {}
    jobs = Job.by_id(s.sync_job_id for s in sources)
    return [source_to_dict(s, schedules.get(s.schedule_id), nexts.get(s.schedule_id), jobs.get(s.sync_job_id))
            for s in sources]


def sync_history(source_id: str, limit: int) -> list[dict[str, Any]]:
    """The last ``limit`` syncs of a source, newest first (see the module docstring)."""
    syncs = list(SourceSync.select().where(SourceSync.source == source_id)
                 .order_by(SourceSync.created_at.desc(), SourceSync.job_id).limit(limit))
    jobs = Job.by_id(sync.job_id for sync in syncs)
    history = []
    for sync in syncs:
        job = jobs.get(sync.job_id)
        counts = dict.fromkeys(COUNT_NAMES, 0)
        counts.update(sync.counts or {})
        history.append({
            "job_id": sync.job_id,
            "status": job.status if job else None,  # None: retention removed the job's row
            "counts": counts,
            "started_at": isoformat(job.started_at) if job else None,
            "ended_at": isoformat(job.ended_at) if job else None,
            "error": job.error if job else None,
            "url": url_for("api.get_job", job_id=sync.job_id),
        })
    return history


@bp.get("/sources")
def list_sources():
    """The caller's sources (an admin: all), oldest first: ``{"sources": [source, ...]}``."""
    rows = list(owned(Source.select(), Source).order_by(Source.created_at, Source.id))
    return jsonify({"sources": _to_dicts(rows)})


@bp.get("/sources/<source_id>")
def get_source(source_id: str):
    """One source with ``items`` counts and its last syncs; 404 ``source_not_found``."""
    source = get_visible_or_404(Source, source_id, "source")
    body = _to_dicts([source])[0]
    body["items"] = item_counts(source.id)
    body["syncs"] = sync_history(source.id, int(current_app.config["SOURCE_SYNC_HISTORY"]))
    return jsonify(body)


@bp.post("/sources")
def create_source():
    """Register a source owned by the caller → 201 with it and its ``Location``.

    JSON: ``{"kind": "s3", "url": "s3://bucket/prefix/"}``, ``{"kind": "web", "urls": [...]}`` or
    ``{"kind": "sitemap", "url": "https://…/sitemap.xml"}``; optional ``name`` and ``cron`` (five
    fields, UTC: a schedule of syncs, in the schedule table like every periodic job). Nothing is
    synced until ``POST /api/sources/<id>/sync`` or the first scheduled time.

    400 ``invalid_json``, ``invalid_source`` (with the sentence) or ``url_refused`` (an http(s)
    URL whose host resolves to an address Docket does not fetch, checked now and at every fetch);
    503 ``queue_unavailable`` when a cron was given and Redis cannot be reached (nothing is kept).
    """
    fields = validate_source(request.get_json(silent=True), current_app.config)
    cron = fields.pop("cron")
    if cron is not None:
        try:
            _, cron, _, _ = validate_schedule("sync_source", cron, None, {"source_id": "-"})
        except ScheduleError as exc:
            raise ServiceError(400, "invalid_source", str(exc)) from None
    owner = current_owner()
    schedule = None
    with db.database.atomic():
        source = Source.create(owner=owner, **fields)
        if cron is not None:
            schedule = Schedule.create(job="sync_source", cron=cron, params={"source_id": source.id}, builtin=False,
                                       owner=owner)
            Source.update(schedule_id=schedule.id).where(Source.id == source.id).execute()
            source.schedule_id = schedule.id
    next_run_at = None
    if schedule is not None:
        try:
            next_run_at = put_schedule_entry(schedule)
        except RedisError as exc:
            current_app.logger.error("source %s: Redis refused its schedule's entry; removed again: %s", source.id, exc)
            with db.database.atomic():
                Source.delete().where(Source.id == source.id).execute()
                Schedule.delete().where(Schedule.id == schedule.id).execute()
            raise ServiceError(503, "queue_unavailable", REDIS_DOWN) from exc
    response = jsonify(source_to_dict(source, schedule, next_run_at, None))
    response.headers["Location"] = url_for("sources_api.get_source", source_id=source.id)
    return response, 201


@bp.post("/sources/<source_id>/sync")
def sync_source(source_id: str):
    """Start a sync now → 202 ``{"job_id", "status", "status_url", "events_url"}``.

    409 ``sync_running`` while a sync of this source is waiting or running (two never overlap),
    with that sync's ``job_id`` and ``status_url`` beside the error; 404 ``source_not_found``;
    503 ``queue_unavailable`` when Redis refused the job.
    """
    source = get_visible_or_404(Source, source_id, "source")
    try:
        job = start_sync(source.id)
    except LookupError:
        raise ServiceError(404, "source_not_found", f"There is no source with id {source_id}.") from None
    except SyncRunning as exc:
        response = error_response(409, "sync_running", f"A sync of this source is already {exc.job.status}; "
                                  "wait for it to end (follow its status_url) before starting another.")
        body = response.get_json()
        body.update(job_id=exc.job.id, status=exc.job.status, status_url=url_for("api.get_job", job_id=exc.job.id))
        return jsonify(body), 409
    except QueueUnavailable as exc:
        raise ServiceError(503, "queue_unavailable", str(exc)) from exc
    return jsonify({"job_id": job.id, "status": job.status, "status_url": url_for("api.get_job", job_id=job.id),
                    "events_url": url_for("events.job_events", job_id=job.id)}), 202


@bp.delete("/sources/<source_id>")
def remove_source(source_id: str):
    """Delete a source, its schedule, items and sync history → 204; its running sync is canceled.
    ``?delete_documents=true`` also deletes every document made from it (their chunks leave
    search); otherwise they stay, the caller's as before. 404 ``source_not_found``; 400
    ``invalid_delete_documents`` for a value other than true/false."""
    source = get_visible_or_404(Source, source_id, "source")
    raw = (request.args.get("delete_documents") or "").strip().lower()
    if raw not in ("", "0", "1", "true", "false", "yes", "no"):
        raise ServiceError(400, "invalid_delete_documents", "'delete_documents' must be true or false.")
    if source.schedule_id:
        Schedule.delete().where(Schedule.id == source.schedule_id).execute()
        try:
            remove_schedule_entry(source.schedule_id)
        except RedisError as exc:  # an entry whose row is gone never starts a job
            current_app.logger.warning("source %s: its schedule's entry stays until the scheduler drops it: %s",
                                       source.id, exc)
    delete_source(source, delete_documents=raw in ("1", "true", "yes"))
    return "", 204
