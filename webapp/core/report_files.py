"""Reports in the core: where their files live and what they are (shared by the report job,
which writes them, and the API, which serves them), and :func:`launch_report`, used by the API
and by the scheduler alike."""

from __future__ import annotations

from typing import Any

REPORT_TYPES = ("activity", "documents")
FORMATS = ("html", "csv", "json", "pdf")
CONTENT_TYPES = {
    "html": "text/html; charset=utf-8",
    "csv": "text/csv; charset=utf-8",
    "json": "application/json",
    "pdf": "application/pdf",
}


def report_key(report_id: str, fmt: str) -> str:
    """The storage key of report ``report_id`` in format ``fmt`` (server-made, never a client name)."""
    return f"reports/{report_id[:2]}/{report_id}.{fmt}"


def new_report(report_type: str, params: dict[str, Any], owner: str | None = None, *, run_at=None,
               batch_id: str | None = None):
    """Unsaved Report row and ``report`` Job row (save both in one transaction, then
    :func:`webapp.core.protocol.launch.enqueue_jobs` the job).

    Args:
        report_type: one of :data:`REPORT_TYPES`.
        params: the report's validated, normalised parameters (JSON); ``params["owner"]``, when
            present, limits it to that owner's documents and jobs.
        owner: whose report it is (``None``: the system's, from a built-in schedule).
        run_at: planned start (naive UTC): a delayed job (:mod:`webapp.core.protocol.delayed`).
        batch_id: make it the batch's callback: ``deferred`` until every document job of the
            batch ended (:mod:`webapp.core.workflows.chords`).

    Returns:
        ``(report, job)``.
    """
    from webapp.core.protocol.launch import new_job
    from webapp.core.models import Report, new_id

    report = Report(id=new_id(), type=report_type, params=params, owner=owner)
    job = new_job("report", {"report_id": report.id}, owner=owner, run_at=run_at, batch_id=batch_id,
                  status="deferred" if batch_id else "queued")
    report.job_id = job.id
    return report, job


def launch_report(report_type: str, params: dict[str, Any], owner: str | None = None, run_at=None):
    """Record a Report row and its ``report`` job in one transaction, then enqueue the job.

    Args:
        report_type, params, owner, run_at: see :func:`new_report`.

    Returns:
        The Report row; its ``job_id`` is enqueued on ``high`` (or, with ``run_at``, waits in
        the scheduler's timetable until then).

    Raises:
        webapp.core.protocol.launch.QueueUnavailable: Redis refused (the job row is marked ``failed``).
    """
    from webapp.core.db import db
    from webapp.core.protocol.launch import enqueue_jobs

    report, job = new_report(report_type, params, owner, run_at=run_at)
    with db.database.atomic():
        report.save(force_insert=True)
        job.save(force_insert=True)
    enqueue_jobs([job])
    return report
