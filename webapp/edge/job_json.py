"""A job's status as the API reports it: the database row joined with what RQ says now."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from webapp.core.service_errors import ServiceError
from webapp.core.models import ALL_STATUSES, Job, isoformat
from webapp.core.queues import rq


def job_to_dict(job: Job) -> dict[str, Any]:
    """The API representation of a job (``GET /api/jobs/<id>``).

    ``status`` is the database row's (the source of truth, RQ's status words). ``rq_status`` is
    what RQ says now, or ``None`` once RQ has expired the job (or Redis cannot be reached).
    While the job runs, ``stage`` and ``progress`` (0–100 %) come from RQ's job meta, which the
    worker updates more often than the row. ``pages_done``/``pages_total``: a big PDF's progress
    in pages while its page-range parts run (``None`` for a document read whole).
    """
    stage, progress = job.stage, job.progress
    rq_status, meta = rq.live_state(job.id, with_meta=job.status == "started")
    if meta.get("stage"):
        stage = meta["stage"]
    if isinstance(meta.get("progress"), int):
        progress = max(progress, meta["progress"])
    return {
        "id": job.id,
        "kind": job.kind,
        "queue": job.queue,
        "status": job.status,
        "rq_status": rq_status,
        "progress": progress,
        "stage": stage,
        "result": job.result,
        "error": job.error,
        "error_code": job.error_code,
        "params": job.params,
        "attempts": job.attempts,
        "created_at": isoformat(job.created_at),
        "enqueued_at": isoformat(job.enqueued_at),
        "started_at": isoformat(job.started_at),
        "ended_at": isoformat(job.ended_at),
        "retry_at": isoformat(job.retry_at),
        "run_at": isoformat(job.run_at),  # a delayed job's planned start
        "updated_at": isoformat(job.updated_at),
        "document_id": job.document_id,
        "batch_id": job.batch_id,
        "webhook": job.webhook,
        # A big PDF read in page-range parts (webapp/core/workflows/page_parts.py): pages read so
        # far of its pages; a part's or join's document job. None otherwise.
        "pages_done": job.pages_done,
        "pages_total": job.pages_total,
        "parent_id": job.parent_id,
    }


def encode_keyset(values: list[Any]) -> str:
    """An opaque cursor holding ``values`` (JSON values: the sort key of the last row of a page):
    URL-safe base64 of their JSON, without padding. Every paged list uses it (jobs, a document's
    chunks), so one decoder checks them all."""
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def decode_keyset(cursor: str, types: tuple[type, ...]) -> list[Any]:
    """Inverse of :func:`encode_keyset`: the values, checked to be as many as ``types`` and of
    those types (``bool`` is not an ``int`` here; a string holds no NUL, which PostgreSQL refuses).

    Raises:
        ServiceError: 400 ``invalid_cursor`` for anything else.
    """
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(values, list) or len(values) != len(types):
            raise ValueError("not a list of the cursor's length")
        for value, kind in zip(values, types):
            if isinstance(value, bool) or not isinstance(value, kind) or (isinstance(value, str) and "\x00" in value):
                raise ValueError("a value of the wrong type")
        return values
    except (ValueError, TypeError, binascii.Error, json.JSONDecodeError):
        raise ServiceError(400, "invalid_cursor", "The cursor is not valid; use the 'next' value of a previous page.") from None


def encode_cursor(job: Job) -> str:
    """An opaque cursor pointing after ``job`` in newest-first order."""
    return encode_keyset([job.created_at.isoformat(), job.id])


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Inverse of :func:`encode_cursor`. Raises :class:`ServiceError` 400 ``invalid_cursor``."""
    created_at, job_id = decode_keyset(cursor, (str, str))
    try:
        return datetime.fromisoformat(created_at), job_id
    except ValueError:
        raise ServiceError(400, "invalid_cursor", "The cursor is not valid; use the 'next' value of a previous page.") from None


def list_jobs(status: str | None, kind: str | None, limit: int, cursor: str | None,
              owner: str | None = None) -> tuple[list[Job], str | None]:
    """A page of jobs, newest first (keyset pagination on ``created_at``, ``id``); only ``owner``'s
    jobs when it is given (``None``: every job, for an admin).

    Returns:
        ``(jobs, next_cursor)``; ``next_cursor`` is ``None`` on the last page.

    Raises:
        ServiceError: 400 for an unknown status or a bad cursor.
    """
    query = Job.select().order_by(Job.created_at.desc(), Job.id.desc())
    if status:
        if status not in ALL_STATUSES:
            raise ServiceError(400, "invalid_status", f"Unknown status {status!r}; use one of {', '.join(sorted(ALL_STATUSES))}.")
        query = query.where(Job.status == status)
    if kind:
        query = query.where(Job.kind == kind)
    if owner is not None:
        query = query.where(Job.owner == owner)
    if cursor:
        created_at, job_id = decode_cursor(cursor)
        query = query.where(
            (Job.created_at < created_at) | ((Job.created_at == created_at) & (Job.id < job_id))
        )
    rows = list(query.limit(limit + 1))
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor
