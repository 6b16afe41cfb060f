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


def launch_report(report_type: str, params: dict[str, Any], owner: str | None = None):
    """Record a Report row and its ``report`` job in one transaction, then enqueue the job.

    Args:
        report_type: one of :data:`REPORT_TYPES`.
        params: the report's validated, normalised parameters (JSON); ``params["owner"]``, when
            present, limits it to that owner's documents and jobs.
        owner: whose report it is (``None``: the system's, from a built-in schedule).

    Returns:
        The Report row; its ``job_id`` is enqueued on ``high``.

    Raises:
        webapp.launch.QueueUnavailable: Redis refused (the job row is marked ``failed``).
    """
    from webapp.db import db
    from webapp.launch import enqueue_jobs, new_job
    from webapp.models import Report, new_id

    report = Report(id=new_id(), type=report_type, params=params, owner=owner)
    job = new_job("report", {"report_id": report.id}, owner=owner)
    report.job_id = job.id
    with db.database.atomic():
        report.save(force_insert=True)
        job.save(force_insert=True)
    enqueue_jobs([job])
    return report
