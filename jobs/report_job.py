"""The report job (kind ``report``, queue ``high``): gather a report's data, render it in four
formats (:mod:`jobs.report_formats`) and store the files beside the uploads.

Requested through :func:`webapp.edge.report_requests.request_report`, which validated the type and params
and recorded the :class:`~webapp.core.models.Report` row; this job reads only that row.
"""

from __future__ import annotations

import statistics
from datetime import datetime, timedelta
from typing import Any, Iterator, Mapping

from flask import current_app
from peewee import JOIN

from jobs.document_errors import JobError
from jobs.report_formats import render_report
from jobs.summaries import SummaryError, chat_summary, extractive_summary
from jobs.tracking import NOT_RUNNING, JobTracker
from webapp.core.db import connection
from webapp.core.embeddings import EmbeddingError, embedder_from_config, from_blobs
from webapp.core.logs import begin_stage, end_stage
from webapp.core.models import TERMINAL_STATUSES, Chunk, Document, Job, Report, isoformat, utcnow
from webapp.core.report_files import FORMATS, report_key
from webapp.core.storage import StorageError, storage_from_config

OUTCOMES = ("finished", "failed", "stopped", "canceled")


def build_report(report_id: str) -> dict[str, Any]:
    """The RQ job: build report ``report_id`` and store it as HTML, CSV, JSON and PDF.

    Args:
        report_id: :class:`~webapp.core.models.Report` id; the current RQ job's id is its Job row.

    Returns:
        ``{"report_id", "files": {format: storage key}}`` (also the Job row's ``result``), or
        ``{"skipped": reason}`` when the row says not to run.

    Raises:
        JobError: ``not_found`` (the Report row is gone), ``storage_unavailable`` (transient),
            ``summary_unavailable`` (the chat API failed; transient for 429/5xx/timeouts).
        RuntimeError: called outside an RQ worker.
    """
    tracker = JobTracker.for_current_job("build_report")
    config = current_app.config
    with connection() as database:
        if not tracker.start():
            return NOT_RUNNING
        report = Report.get_or_none(Report.id == report_id)
        if report is None:
            raise JobError(f"report {report_id} does not exist", code="not_found")
        tracker.set_progress("gather", 0)
        begin_stage("gather")  # one log line per stage as it ends (webapp/core/logs.py)
        if report.type == "activity":
            data = activity_report(report.params)
        else:
            data = documents_report(report.params, config, lambda done, total: tracker.set_progress(
                "summarise", 5 + 60 * done // max(total, 1)))
        data.update(type=report.type, params=report.params, generated_at=isoformat(utcnow()))
        files = {}
        storage = storage_from_config(config)
        begin_stage("render")
        for index, fmt in enumerate(FORMATS):
            tracker.set_progress("render", 70 + 7 * index)
            key = report_key(report.id, fmt)
            try:
                storage.put(key, render_report(data, fmt))
            except StorageError as exc:
                raise JobError(f"the report could not be stored: {exc}", code="storage_unavailable",
                               transient=exc.transient) from exc
            files[fmt] = key
        result = {"report_id": report.id, "files": files}
        begin_stage("store")
        with database.atomic() as transaction:
            Report.update(files=files).where(Report.id == report.id).execute()
            if not tracker.finish_query(result).execute():
                transaction.rollback()
                return {"skipped": "the job row changed while the job ran"}
    tracker.finished()
    end_stage()
    return result


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value).replace(tzinfo=None)


def _percentiles(values: list[float]) -> dict[str, float | None]:
    """p50 and p95 in seconds (``statistics.quantiles``, inclusive method); ``None`` without data."""
    if not values:
        return {"p50": None, "p95": None}
    if len(values) == 1:
        return {"p50": round(values[0], 3), "p95": round(values[0], 3)}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": round(cuts[49], 3), "p95": round(cuts[94], 3)}


def activity_report(params: Mapping[str, Any]) -> dict[str, Any]:
    """Jobs created between ``params["since"]`` and ``params["until"]`` (ISO-8601 UTC).

    Returns:
        The activity report dict of :mod:`jobs.report_formats`: counts by kind and status,
        queue wait (enqueued → started) and run time (started → ended) p50/p95 in seconds,
        jobs per hour by outcome (by the hour they ended), failures grouped by ``error_code``.
    """
    since, until = _parse(params["since"]), _parse(params["until"])
    jobs = list(_owned_by(Job.select(Job.kind, Job.status, Job.error, Job.error_code, Job.enqueued_at,
                                     Job.started_at, Job.ended_at).where(Job.created_at >= since, Job.created_at < until),
                          Job, params))
    by_kind_status: dict[tuple[str, str], int] = {}
    for job in jobs:
        by_kind_status[(job.kind, job.status)] = by_kind_status.get((job.kind, job.status), 0) + 1
    waits = [(j.started_at - j.enqueued_at).total_seconds() for j in jobs if j.started_at and j.enqueued_at]
    runs = [(j.ended_at - j.started_at).total_seconds() for j in jobs
            if j.ended_at and j.started_at and j.status == "finished"]
    hours: dict[datetime, dict[str, int]] = {}
    hour = since.replace(minute=0, second=0, microsecond=0)
    while hour < until:
        hours[hour] = {outcome: 0 for outcome in OUTCOMES}
        hour += timedelta(hours=1)
    for job in jobs:
        if job.status in OUTCOMES and job.ended_at:
            bucket = job.ended_at.replace(minute=0, second=0, microsecond=0)
            if bucket in hours:
                hours[bucket][job.status] += 1
    failures: dict[str, dict[str, Any]] = {}
    for job in jobs:
        if job.status == "failed":
            entry = failures.setdefault(job.error_code or "unknown",
                                        {"error_code": job.error_code or "unknown", "count": 0, "example": job.error})
            entry["count"] += 1
    return {
        "title": "Docket activity",
        "since": isoformat(since),
        "until": isoformat(until),
        "total_jobs": len(jobs),
        "by_kind_status": [{"kind": k, "status": s, "count": n} for (k, s), n in sorted(by_kind_status.items())],
        "queue_wait_seconds": _percentiles(waits),
        "run_seconds": _percentiles(runs),
        "per_hour": [{"hour": isoformat(h), **counts} for h, counts in hours.items()],
        "failures_by_code": sorted(failures.values(), key=lambda f: (-f["count"], f["error_code"])),
    }


def documents_report(params: Mapping[str, Any], config: Mapping[str, Any], on_document=None) -> dict[str, Any]:
    """Per document: pages, characters, chunks, warnings, its job's status or error, and a
    summary — by the chat API (``SUMMARY_MODEL``) when ``OPENAI_API_KEY`` is set, else the
    document's most central sentences (:func:`jobs.summaries.extractive_summary`).

    Args:
        params: ``{"document_ids": [...]}`` or ``{"since", "until"}`` (documents uploaded then).
        config: the app's configuration.
        on_document: ``on_document(done, total)`` after each document.

    Raises:
        JobError: ``summary_unavailable`` when the chat API fails (transient for 429/5xx/timeouts).
    """
    query = _owned_by(Document.select(), Document, params)
    if "document_ids" in params:
        query = query.where(Document.id.in_(params["document_ids"]))
    else:
        query = query.where(Document.created_at >= _parse(params["since"]), Document.created_at < _parse(params["until"]))
    documents = list(query.order_by(Document.created_at, Document.id))
    jobs = Job.by_id(d.job_id for d in documents)
    rows = []
    for index, document in enumerate(documents):
        job = jobs.get(document.job_id)
        summary, method = _summary(document, config)
        rows.append({
            "id": document.id,
            "filename": document.filename,
            "status": job.status if job else None,
            "pages": document.pages,
            "chars": document.chars,
            "chunks": document.chunk_count,
            "warnings": document.warnings or [],
            "summary": summary,
            "summary_method": method,
            "error": job.error if job else None,
            "error_code": job.error_code if job else None,
        })
        if on_document:
            on_document(index + 1, len(documents))
    found = {document.id for document in documents}
    return {
        "title": "Docket documents",
        "documents": rows,
        # What did not come through, said once more on its own (a batch's report lists the
        # documents of the batch that failed, were stopped or canceled, and any deleted since).
        "not_finished": [{key: row[key] for key in ("id", "filename", "status", "error_code", "error")}
                         for row in rows if row["status"] != "finished"],
        "missing_ids": [i for i in params.get("document_ids", []) if i not in found],
    }


def _summary(document: Document, config: Mapping[str, Any]) -> tuple[str | None, str | None]:
    chunks = list(Chunk.select().where(Chunk.document == document.id).order_by(Chunk.ordinal))
    if not chunks:
        return None, None
    texts = [chunk.text for chunk in chunks]
    if config.get("OPENAI_API_KEY"):
        model = config["SUMMARY_MODEL"]
        try:
            return chat_summary("\n\n".join(texts), api_key=config["OPENAI_API_KEY"], base_url=config["OPENAI_BASE_URL"],
                                model=model, timeout=config["OPENAI_TIMEOUT"],
                                max_retries=config["OPENAI_MAX_RETRIES"]), f"openai:{model}"
        except SummaryError as exc:
            raise JobError(f"the summary of {document.filename} could not be written: {exc}",
                           code="summary_unavailable", transient=exc.transient) from exc
    embedder = embedder_from_config(config)
    try:
        if all(chunk.embedding_model == embedder.name for chunk in chunks):
            vectors = from_blobs([chunk.embedding for chunk in chunks], chunks[0].dimensions)
        else:  # embedded by another model earlier: sentences and centre must share one space
            vectors = embedder.embed(texts)
        return extractive_summary(texts, vectors, embedder.embed), "extractive"
    except EmbeddingError as exc:
        raise JobError(f"the summary of {document.filename} could not be made: {exc}",
                       code="embedding_unavailable", transient=exc.transient) from exc


def _owned_by(query, model, params: Mapping[str, Any]):
    """``query`` limited to ``params["owner"]``'s rows of ``model``; unchanged when the report
    covers every owner (an admin's request or a system schedule's)."""
    return query.where(model.owner == params["owner"]) if params.get("owner") else query


def needed_by_report(job: Job) -> tuple[set[str], set[str]]:
    """The report kind's ``keeps`` hook: a report job that has not ended needs the documents its
    report lists (``document_ids``); retention keeps them. ``job``: the row (``id``, ``params``).

    Returns:
        ``(job ids, document ids)``: no jobs; the report's documents.
    """
    documents: set[str] = set()
    for report in Report.select(Report.params).where(Report.job_id == job.id):
        documents.update((report.params or {}).get("document_ids") or [])
    return set(), documents


def stored_report_files() -> Iterator[str]:
    """The report kind's ``owns`` hook: every stored file a report row names, and every file a
    report whose job has not ended may be writing (its files are stored before its row names
    them). The orphans job keeps them."""
    reports = (Report.select(Report.id, Report.files, Job.status.alias("job_status"))
               .join(Job, JOIN.LEFT_OUTER, on=(Job.id == Report.job_id)).dicts().iterator())
    for report in reports:
        yield from (report["files"] or {}).values()
        if report["job_status"] is not None and report["job_status"] not in TERMINAL_STATUSES:
            yield from (report_key(report["id"], fmt) for fmt in FORMATS)
