"""The JSON API under ``/api``: upload documents, follow jobs, read documents, search."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request, url_for

from webapp.documents import accept_uploads, document_to_dict, read_upload
from webapp.embeddings import EmbeddingError
from webapp.errors import ApiError
from webapp.job_status import job_to_dict, list_jobs
from webapp.models import Document, Job
from webapp.search import search_chunks

bp = Blueprint("api", __name__, url_prefix="/api")

DEFAULT_LIMIT, MAX_LIMIT = 20, 100


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"invalid_{name}", f"'{name}' must be a whole number.") from None
    if not low <= value <= high:
        raise ApiError(400, f"invalid_{name}", f"'{name}' must be between {low} and {high}.")
    return value


@bp.post("/documents")
def upload_documents():
    """Accept one or more files (parts named ``file``) and an optional ``password``; 202 with job links."""
    files = request.files.getlist("file")
    password = request.form.get("password") or None
    documents = accept_uploads([read_upload(f) for f in files if f], password=password)
    body = {
        "documents": [
            {
                "id": document.id,
                "filename": document.filename,
                "job_id": document.job_id,
                "status_url": url_for("api.get_job", job_id=document.job_id),
                "document_url": url_for("api.get_document", document_id=document.id),
            }
            for document in documents
        ]
    }
    return jsonify(body), 202


@bp.get("/documents")
def list_documents():
    """The newest documents: ``{"documents": [...]}``; ``limit`` 1–100 (default 20)."""
    limit = _int_arg("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    documents = list(Document.select().order_by(Document.created_at.desc(), Document.id.desc()).limit(limit))
    jobs = {job.id: job for job in Job.select().where(Job.id.in_([d.job_id for d in documents if d.job_id]))}
    return jsonify({"documents": [document_to_dict(d, jobs.get(d.job_id)) for d in documents]})


@bp.get("/documents/<document_id>")
def get_document(document_id: str):
    """One document with its current job's status, or 404 ``document_not_found``."""
    document = Document.get_or_none(Document.id == document_id)
    if document is None:
        raise ApiError(404, "document_not_found", f"There is no document with id {document_id}.")
    return jsonify(document_to_dict(document))


@bp.get("/jobs/<job_id>")
def get_job(job_id: str):
    """One job: the database row joined with RQ's live status and progress, or 404 ``job_not_found``."""
    job = Job.find(job_id)
    if job is None:
        raise ApiError(404, "job_not_found", f"There is no job with id {job_id}.")
    return jsonify(job_to_dict(job))


@bp.get("/jobs")
def get_jobs():
    """Jobs newest first: ``?status=&kind=&limit=&cursor=`` → ``{"jobs": [...], "next": cursor|null}``."""
    limit = _int_arg("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    jobs, next_cursor = list_jobs(
        status=request.args.get("status") or None,
        kind=request.args.get("kind") or None,
        limit=limit,
        cursor=request.args.get("cursor") or None,
    )
    return jsonify({"jobs": [job_to_dict(job) for job in jobs], "next": next_cursor})


@bp.get("/search")
def search():
    """Top-k chunks for ``q`` by cosine similarity; ``k`` 1–SEARCH_MAX_K (default 5)."""
    query = (request.args.get("q") or "").strip()
    if not query:
        raise ApiError(400, "missing_query", "Give the text to search for as the 'q' parameter.")
    k = _int_arg("k", 5, 1, current_app.config["SEARCH_MAX_K"])
    try:
        results = search_chunks(query, k)
    except EmbeddingError as exc:
        raise ApiError(502, "embedding_unavailable", f"The query could not be embedded: {exc}") from exc
    return jsonify({"results": results})
