"""Requesting reports (the HTTP edge's side): validate the request, record a Report row, launch
its ``report`` job on the ``high`` queue; describe and download it.

Report types and their ``params``:

* ``activity`` — ``since``/``until`` (ISO-8601, UTC when no offset is given; default the last
  24 hours): jobs by kind and status, queue wait and run time (p50/p95), throughput per hour,
  failures grouped by ``error_code``, and a chart of jobs per hour by outcome.
* ``documents`` — ``document_ids`` (a list) or ``since``/``until`` (documents uploaded in the
  period; default the last 24 hours): pages, characters, chunks, warnings and a short summary.

The job (:mod:`jobs.report_job`) writes the report in four formats into the uploads' storage,
under server-made keys; the Report row lists them once its job finished.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from webapp.core.service_errors import ServiceError
from webapp.core.protocol.launch import QueueUnavailable
from webapp.core.models import Document, Job, Report, isoformat, utcnow
from webapp.core.report_files import FORMATS, REPORT_TYPES, launch_report

MAX_DOCUMENTS = 500  # document ids in one documents report
MAX_PERIOD = timedelta(days=366)


def parse_time(value: Any, name: str) -> datetime:
    """An ISO-8601 time as naive UTC (a time without offset is taken as UTC).

    Raises:
        ServiceError: 400 ``invalid_params``.
    """
    if not isinstance(value, str):
        raise ServiceError(400, "invalid_params", f"'{name}' must be an ISO-8601 time such as 2026-11-22T00:00:00Z.")
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ServiceError(400, "invalid_params", f"'{name}' is not an ISO-8601 time: {value!r}.") from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(timezone.utc).replace(tzinfo=None)
    return parsed


def validate_request(report_type: Any, params: Any, scope: str | None = None) -> dict[str, Any]:
    """The report's normalised ``params`` (JSON), ready for its job.

    ``scope``: the owner whose rows the report may cover (``None``: every owner's, for an admin);
    ``document_ids`` of other owners are refused like missing ones.

    Raises:
        ServiceError: 400 ``invalid_report_type`` / ``invalid_params`` with a sentence.
    """
    if report_type not in REPORT_TYPES:
        raise ServiceError(400, "invalid_report_type", f"'type' must be one of {', '.join(REPORT_TYPES)}.")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ServiceError(400, "invalid_params", "'params' must be a JSON object.")
    allowed = {"since", "until"} | ({"document_ids"} if report_type == "documents" else set())
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ServiceError(400, "invalid_params", f"Unknown parameter(s) {', '.join(unknown)} for a {report_type} report; "
                                              f"use {', '.join(sorted(allowed))}.")
    if report_type == "documents" and "document_ids" in params:
        ids = params["document_ids"]
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids) or len(ids) > MAX_DOCUMENTS:
            raise ServiceError(400, "invalid_params", f"'document_ids' must be a list of 1 to {MAX_DOCUMENTS} document ids.")
        if "since" in params or "until" in params:
            raise ServiceError(400, "invalid_params", "Give either 'document_ids' or a period ('since'/'until'), not both.")
        ids = list(dict.fromkeys(ids))
        candidates = Document.select(Document.id).where(Document.id.in_(ids))
        if scope is not None:
            candidates = candidates.where(Document.owner == scope)
        found = {d.id for d in candidates}
        missing = [i for i in ids if i not in found]
        if missing:
            raise ServiceError(400, "invalid_params", f"No document with id {', '.join(missing[:5])}.")
        return {"document_ids": ids}
    until = parse_time(params["until"], "until") if "until" in params else utcnow()
    since = parse_time(params["since"], "since") if "since" in params else until - timedelta(hours=24)
    if not since < until:
        raise ServiceError(400, "invalid_params", "'since' must be before 'until'.")
    if until - since > MAX_PERIOD:
        raise ServiceError(400, "invalid_params", "A report covers at most 366 days.")
    return {"since": isoformat(since), "until": isoformat(until)}


def request_report(report_type: Any, params: Any, *, owner: str, scope: str | None,
                   run_at: datetime | None = None) -> Report:
    """Validate, record and launch a report; returns its row (its ``job_id`` is enqueued on ``high``).

    Args:
        report_type, params: the request's ``type`` and ``params``.
        owner: whose report it is (who may see and download it).
        scope: the owner whose documents and jobs it covers, recorded as ``params["owner"]``;
            ``None`` (an admin's request): every owner's.
        run_at: planned start (naive UTC; :func:`webapp.core.protocol.delayed.start_time`), or ``None``: at once.

    Raises:
        ServiceError: 400 for a bad request; 503 ``queue_unavailable`` when Redis refuses.
    """
    normalised = validate_request(report_type, params, scope)
    if scope is not None:
        normalised["owner"] = scope
    try:
        return launch_report(report_type, normalised, owner=owner, run_at=run_at)
    except QueueUnavailable as exc:
        raise ServiceError(503, "queue_unavailable", str(exc)) from exc


def report_to_dict(report: Report, job: Job | None = None) -> dict[str, Any]:
    """The API representation of a report (``GET /api/reports/<id>``)."""
    from flask import url_for

    if job is None and report.job_id:
        job = Job.find(report.job_id)
    finished = job is not None and job.status == "finished" and report.files
    return {
        "id": report.id,
        "type": report.type,
        "params": report.params,
        "job_id": report.job_id,
        "status": job.status if job else None,
        "progress": job.progress if job else 0,
        "stage": job.stage if job else None,
        "attempts": job.attempts if job else 0,
        "retry_at": isoformat(job.retry_at) if job else None,
        "run_at": isoformat(job.run_at) if job else None,  # a delayed report's planned start
        "batch_id": job.batch_id if job else None,  # a batch's report (deferred until the batch ended)
        "error": job.error if job else None,
        "error_code": job.error_code if job else None,
        "created_at": isoformat(report.created_at),
        "status_url": url_for("api.get_job", job_id=report.job_id) if report.job_id else None,
        "downloads": {fmt: url_for("api.download_report", report_id=report.id, format=fmt) for fmt in FORMATS}
        if finished else {},
    }
