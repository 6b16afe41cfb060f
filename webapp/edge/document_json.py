"""A document, its chunks and a batch as the API shows them (``GET /api/documents/<id>``, ``GET
/api/documents/<id>/chunks``, ``GET /api/batches/<id>``): the rows with their current job's
status, links included; the cursor of a page of chunks."""

from __future__ import annotations

from typing import Any

from flask import url_for

from webapp.core.models import Batch, Chunk, Document, Job, Report, isoformat
from webapp.core.protocol.states import TERMINAL
from webapp.core.service_errors import ServiceError
from webapp.edge.job_json import decode_keyset, encode_keyset


def document_to_dict(document: Document, job: Job | None = None) -> dict[str, Any]:
    """The API representation of a document (``GET /api/documents/<id>``).

    ``status`` and ``error`` are those of the document's current job. A fetched document has its
    ``source_url`` and the ``etag``/``last_modified`` its server sent with the stored bytes; its
    ``content_type`` is ``""`` and ``sha256`` ``None`` until its fetch job has downloaded it.
    """
    if job is None and document.job_id:
        job = Job.get_or_none(Job.id == document.job_id)
    return {
        "id": document.id,
        "filename": document.filename,
        "content_type": document.content_type,
        "bytes": document.size_bytes,
        "sha256": document.sha256 or None,
        "source_url": document.source_url,
        "etag": document.etag,
        "last_modified": document.last_modified,
        "status": job.status if job else None,
        "batch_id": document.batch_id,
        "pages": document.pages,
        "chars": document.chars,
        "chunks": document.chunk_count,
        "ocr_pages": document.ocr_pages,
        "warnings": document.warnings or [],
        "error": job.error if job else None,
        "error_code": job.error_code if job else None,
        "job_id": document.job_id,
        "created_at": isoformat(document.created_at),
    }


def batch_to_dict(batch: Batch) -> dict[str, Any]:
    """The API representation of a batch (``GET /api/batches/<id>``).

    ``totals`` counts the documents by their current job's status; ``progress`` (0–100 %) is
    the mean over the documents, an ended job counting 100; ``report`` is the documents report
    asked for with the upload (``{"id", "status", "report_url"}``) or ``None``.
    """
    documents = list(Document.select().where(Document.batch_id == batch.id).order_by(Document.created_at, Document.id))
    jobs = Job.by_id(d.job_id for d in documents)
    totals: dict[str, int] = {}
    done = 0
    for document in documents:
        job = jobs.get(document.job_id)
        status = job.status if job else "unknown"
        totals[status] = totals.get(status, 0) + 1
        done += 100 if status in TERMINAL else (job.progress if job else 0)
    ended = sum(count for status, count in totals.items() if status in TERMINAL)
    report = (Report.select(Report.id, Job.status.alias("job_status")).join(Job, on=(Job.id == Report.job_id))
              .where(Job.batch_id == batch.id).dicts().first())
    return {
        "id": batch.id,
        "size": batch.size,
        "created_at": isoformat(batch.created_at),
        "totals": totals,
        "ended": ended,
        "finished": ended == len(documents),
        "progress": done // len(documents) if documents else 100,
        "documents": [document_to_dict(d, jobs.get(d.job_id)) for d in documents],
        # The documents report asked for with the upload (deferred until every document ended).
        "report": {"id": report["id"], "status": report["job_status"],
                   "report_url": url_for("api.get_report", report_id=report["id"])} if report else None,
    }


def chunk_to_dict(chunk: Chunk) -> dict[str, Any]:
    """The API representation of a chunk (``GET /api/documents/<id>/chunks``): its place in the
    document (``ordinal`` from 0, ``page_start``/``page_end`` from 1 or ``None`` for formats
    without pages), its section's heading path (``headings``, outermost first; ``[]`` when
    unknown), whether OCR read it (``ocr``) and the engine's mean confidence (``ocr_confidence``,
    0–1, or ``None``), and its ``text``."""
    return {
        "ordinal": chunk.ordinal,
        "page_start": chunk.page_start,
        "page_end": chunk.page_end,
        "headings": list(chunk.headings or []),
        "ocr": bool(chunk.ocr),
        "ocr_confidence": chunk.ocr_confidence,
        "text": chunk.text,
    }


def encode_chunk_cursor(ordinal: int) -> str:
    """The cursor of the page of a document's chunks that follows chunk ``ordinal``."""
    return encode_keyset([ordinal])


def decode_chunk_cursor(cursor: str | None) -> int | None:
    """The ordinal a chunk cursor points after; ``None`` for no cursor (the first page).

    Raises:
        ServiceError: 400 ``invalid_cursor`` for a cursor that :func:`encode_chunk_cursor` did not make.
    """
    if not cursor:
        return None
    (ordinal,) = decode_keyset(cursor, (int,))
    if not -1 <= ordinal < 2**31:  # an ordinal is a 32-bit integer column
        raise ServiceError(400, "invalid_cursor", "The cursor is not valid; use the 'next' value of a previous page.")
    return ordinal
