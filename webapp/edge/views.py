"""The HTML pages: upload, live job progress and search (``/``), a document's own page
(``/documents/<id>``, rendered on the server: its facts and chunks), reports (``/reports``) and
periodic jobs (``/schedules``) and sources kept in sync (``/sources``).

The other pages are static shells; their scripts (``static/common.js`` plus one per page) talk to the
JSON API. No inline script or style, so a Content-Security-Policy without ``'unsafe-inline'``
fits them.
"""

from __future__ import annotations

from flask import Blueprint, current_app, render_template, request, url_for

from webapp.core.documents import list_chunks, page_before, page_start_after
from webapp.core.models import Chunk, Document, Job
from webapp.core.service_errors import ServiceError
from webapp.edge.auth import current_principal, get_visible_or_404
from webapp.edge.document_json import chunk_to_dict, decode_chunk_cursor, encode_chunk_cursor
from webapp.core.embeddings import embedder_name
from webapp.core.schedules.table import MIN_INTERVAL, SCHEDULABLE_JOBS

bp = Blueprint("views", __name__)


@bp.get("/")
def index():
    config = current_app.config
    return render_template(
        "index.html",
        page="documents",
        max_upload_mb=config["MAX_CONTENT_LENGTH"] // (1024 * 1024),
        embedding_model=embedder_name(config),
    )


@bp.get("/reports")
def reports():
    return render_template("reports.html", page="reports")


@bp.get("/schedules")
def schedules():
    """The schedules page; its job choices are the allow-list of ``POST /api/schedules`` (without
    the maintenance jobs for a principal who is not an admin)."""
    admin = current_principal().admin
    return render_template("schedules.html", page="schedules",
                           jobs=[job for job in SCHEDULABLE_JOBS.values() if admin or not job.admin_only],
                           min_interval=MIN_INTERVAL)


@bp.get("/sources")
def sources():
    """The sources page (issue 23): add a source (S3 prefix, web URLs, sitemap; optional cron),
    sync it, see its syncs' counts, delete it — ``static/sources.js`` over ``/api/sources``."""
    return render_template("sources.html", page="sources")


@bp.get("/queues")
def queues():
    """The queues page (admins only): each queue's counts, oldest wait, workers and rates from
    ``GET /api/queues``, refreshed by ``static/queues.js``; links to ``/rq`` and ``/schedules``.

    Raises:
        ServiceError: 403 ``admin_required`` for a principal who is not an admin.
    """
    from webapp.edge.auth import require_admin

    require_admin()
    return render_template("queues.html", page="queues")


CHUNKS_PER_PAGE = 100  # a document's page shows this many chunks at a time


@bp.get("/documents/<document_id>")
def document(document_id: str):
    """A document's own page: its facts (file name, type, size, pages, chunks, OCR'd pages,
    warnings, its job's status) and its chunks in reading order, :data:`CHUNKS_PER_PAGE` at a
    time, each with its pages, heading path, OCR mark and confidence, and an anchor
    ``#chunk-<ordinal>``.

    Query: ``cursor`` (a page's cursor, as ``GET /api/documents/<id>/chunks`` makes them) or
    ``chunk`` (an ordinal: the page holding that chunk, as search results link to it).

    Raises:
        ServiceError: 404 ``document_not_found`` for an unknown document or another owner's
            (the error page); 400 ``invalid_cursor``/``invalid_chunk`` for a bad query.
    """
    document = get_visible_or_404(Document, document_id, "document")
    if request.args.get("chunk"):
        try:
            ordinal = int(request.args["chunk"])
        except ValueError:
            ordinal = -1
        if not 0 <= ordinal < 2**31:
            raise ServiceError(400, "invalid_chunk", "'chunk' must be a chunk's ordinal: a whole number from 0.")
        after = page_start_after(document.id, ordinal, CHUNKS_PER_PAGE)
    else:
        after = decode_chunk_cursor(request.args.get("cursor") or None)
    chunks, more = list_chunks(document.id, CHUNKS_PER_PAGE, after)
    first = chunks[0].ordinal if chunks else (after or -1) + 1
    has_previous, previous_after = page_before(document.id, first, CHUNKS_PER_PAGE)

    def page_url(after_ordinal: int | None) -> str:
        cursor = encode_chunk_cursor(after_ordinal) if after_ordinal is not None else None
        return url_for("views.document", document_id=document.id, cursor=cursor)

    job = Job.find(document.job_id) if document.job_id else None
    total = Chunk.select().where(Chunk.document == document.id).count()
    position = Chunk.select().where(Chunk.document == document.id, Chunk.ordinal < first).count()
    return render_template(
        "document.html",
        page="documents",
        document=document,
        job=job,
        chunks=[chunk_to_dict(chunk) for chunk in chunks],
        total=total,
        position=position,
        previous_url=page_url(previous_after) if has_previous else None,
        next_url=page_url(chunks[-1].ordinal) if more else None,
        type_label=TYPE_LABELS.get(document.content_type, document.content_type),
        chunks_per_page=CHUNKS_PER_PAGE,
    )


# How the page names a document's type (the upload form's words; others show the MIME type).
TYPE_LABELS = {
    "application/pdf": "PDF",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "Word (.docx)",
    "text/html": "HTML",
    "text/plain": "Plain text",
    "text/markdown": "Markdown",
}
