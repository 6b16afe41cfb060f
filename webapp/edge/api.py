"""The JSON API under ``/api``: upload documents, follow and control jobs, batches, reports, search."""

from __future__ import annotations

import math

from flask import Blueprint, current_app, jsonify, redirect, request, url_for

from webapp.edge.auth import current_owner, get_visible_or_404, owned, owner_filter, visible_job
from webapp.core.documents import accept_uploads, accept_urls, delete_document, list_chunks, read_upload
from webapp.edge.document_json import (batch_to_dict, chunk_to_dict, decode_chunk_cursor, document_to_dict,
                                       encode_chunk_cursor)
from webapp.core.protocol.delayed import StartTimeError, start_time
from webapp.core.embeddings import EmbeddingError
from webapp.core.service_errors import ServiceError
from webapp.core.protocol.control import cancel_job
from webapp.core.protocol.states import JobStateError
from webapp.edge.job_json import job_to_dict, list_jobs
from webapp.core.protocol.launch import QueueUnavailable, relaunch
from webapp.core.models import Batch, Document, Job, Report
from webapp.core.report_files import CONTENT_TYPES, FORMATS
from webapp.edge.report_requests import report_to_dict, request_report
from webapp.edge.request_checks import free_text
from webapp.core.storage import StorageError, storage_from_config
from webapp.core.search import MODES as SEARCH_MODES, search_chunks

bp = Blueprint("api", __name__, url_prefix="/api")


@bp.after_request
def no_store(response):
    """API answers describe state that changes by the second: never cached (a browser going
    back to a page must not show a stale job list)."""
    response.headers.setdefault("Cache-Control", "no-store")
    return response

DEFAULT_LIMIT, MAX_LIMIT = 20, 100


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ServiceError(400, f"invalid_{name}", f"'{name}' must be a whole number.") from None
    if not low <= value <= high:
        raise ServiceError(400, f"invalid_{name}", f"'{name}' must be between {low} and {high}.")
    return value


def _flag(name: str) -> bool:
    raw = (request.form.get(name) or request.args.get(name) or "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ServiceError(400, f"invalid_{name}", f"'{name}' must be true or false.")


@bp.post("/documents")
def upload_documents():
    """Accept one or more files (parts named ``file``) as one batch; 202 with job and batch links.

    Form fields: ``password`` (encrypted PDFs), ``reprocess`` (``true``: process again even if the
    same bytes were uploaded before), ``callback_url`` (webhook for each job's final state),
    ``run_at`` (ISO-8601 UTC) or ``delay`` (seconds): start the jobs then (``scheduled`` until
    then), ``report=documents``: a documents report of the files once every job of the batch
    ended (its links under ``report``).
    A file whose bytes match a document of the same owner that finished or is in flight is not
    processed again: its entry has ``"duplicate": true`` and points at that document and its job.
    An empty or unsupported file is listed under ``refused`` with its reason while the others are
    accepted; when none is accepted the answer is that file's 400/415 error.

    Or a JSON object ``{"url": "https://…"}`` / ``{"urls": [...]}`` (with ``callback_url``,
    ``run_at``/``delay`` as above): each URL gets a ``fetch`` job that downloads it and then runs
    the document pipeline; the answer has the same shape. A URL whose address is refused
    (loopback, private, link-local… unless ``FETCH_ALLOW_PRIVATE_NETWORKS``) is listed under
    ``refused`` (``url_refused``); when every one is, the answer is that 400.
    """
    if request.is_json:
        result = _accept_url_request()
    else:
        files = request.files.getlist("file")
        result = accept_uploads(
            [read_upload(f) for f in files if f],
            password=request.form.get("password") or None,
            owner=current_owner(),
            reprocess=_flag("reprocess"),
            callback_url=request.form.get("callback_url") or None,
            run_at=_start_time(request.form),
            report=request.form.get("report") or None,
        )
    duplicates = Job.by_id(accepted.document.job_id for accepted in result.files if accepted.duplicate)
    body = {
        "batch_id": result.batch_id,
        "batch_url": url_for("api.get_batch", batch_id=result.batch_id) if result.batch_id else None,
        "documents": [
            {
                "id": accepted.document.id,
                "filename": accepted.document.filename,
                "job_id": accepted.document.job_id,
                "duplicate": accepted.duplicate,
                "status": duplicates[accepted.document.job_id].status if accepted.duplicate else result.status,
                "batch_id": accepted.document.batch_id,
                "status_url": url_for("api.get_job", job_id=accepted.document.job_id),
                "document_url": url_for("api.get_document", document_id=accepted.document.id),
            }
            for accepted in result.files
        ],
        "refused": [refused.to_dict() for refused in result.refused],
        "report": _report_links(result.report) if result.report else None,
    }
    return jsonify(body), 202


def _accept_url_request():
    """:func:`accept_urls` for a JSON body ``{"url": …}`` or ``{"urls": [...]}``."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ServiceError(400, "invalid_json", 'Send a JSON object such as {"url": "https://example.com/a.pdf"} '
                                                'or {"urls": [...]}, or files as multipart/form-data.')
    unknown = sorted(set(body) - {"url", "urls", "callback_url", "run_at", "delay"})
    if unknown:
        raise ServiceError(400, "unknown_field", f"Unknown field(s) {', '.join(unknown)}: a fetch request takes url or "
                                                 "urls, and optionally callback_url, run_at or delay.")
    if ("url" in body) == ("urls" in body):
        raise ServiceError(400, "no_url", "Send either 'url' (a string) or 'urls' (a list of strings).")
    urls = [body["url"]] if "url" in body else body["urls"]
    if not isinstance(urls, list):
        raise ServiceError(400, "no_url", "'urls' must be a list of strings.")
    callback_url = body.get("callback_url")
    if callback_url is not None and not isinstance(callback_url, str):
        raise ServiceError(400, "invalid_callback_url", "'callback_url' must be a string.")
    return accept_urls(urls, owner=current_owner(), callback_url=callback_url or None, run_at=_start_time(body))


def _start_time(source):
    """The planned start from ``run_at``/``delay`` in ``source`` (form or JSON object), or
    ``None`` (at once). Raises 400 ``invalid_start_time`` with the sentence."""
    try:
        return start_time(source.get("run_at"), source.get("delay"))
    except StartTimeError as exc:
        raise ServiceError(400, "invalid_start_time", str(exc)) from None


def _report_links(report: Report) -> dict:
    return {
        "id": report.id,
        "job_id": report.job_id,
        "status_url": url_for("api.get_job", job_id=report.job_id),
        "report_url": url_for("api.get_report", report_id=report.id),
    }


@bp.get("/batches/<batch_id>")
def get_batch(batch_id: str):
    """One upload's documents: totals by status, overall progress (0–100 %), the documents."""
    batch = get_visible_or_404(Batch, batch_id, "batch")
    return jsonify(batch_to_dict(batch))


@bp.get("/documents")
def list_documents():
    """The newest documents: ``{"documents": [...]}``; ``limit`` 1–100 (default 20)."""
    limit = _int_arg("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    documents = list(owned(Document.select(), Document).order_by(Document.created_at.desc(), Document.id.desc()).limit(limit))
    jobs = Job.by_id(d.job_id for d in documents)
    return jsonify({"documents": [document_to_dict(d, jobs.get(d.job_id)) for d in documents]})


@bp.get("/documents/<document_id>")
def get_document(document_id: str):
    """One document with its current job's status, or 404 ``document_not_found``."""
    document = get_visible_or_404(Document, document_id, "document")
    return jsonify(document_to_dict(document))


@bp.get("/documents/<document_id>/chunks")
def get_document_chunks(document_id: str):
    """A document's chunks in reading order (by ``ordinal``), a page at a time:
    ``?limit=&cursor=`` → ``{"chunks": [...], "next": cursor|null}`` (:func:`chunk_to_dict`);
    ``limit`` 1–100 (default 20). 400 ``invalid_limit``/``invalid_cursor``; 404
    ``document_not_found`` for an unknown document or another owner's."""
    limit = _int_arg("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    after = decode_chunk_cursor(request.args.get("cursor") or None)
    document = get_visible_or_404(Document, document_id, "document")
    chunks, more = list_chunks(document.id, limit, after)
    return jsonify({"chunks": [chunk_to_dict(chunk) for chunk in chunks],
                    "next": encode_chunk_cursor(chunks[-1].ordinal) if more else None})


@bp.delete("/documents/<document_id>")
def remove_document(document_id: str):
    """Delete a document: its running job is stopped first, then its chunks, its jobs' rows
    (and RQ's records of them) and its stored bytes are removed. 204; 404 ``document_not_found``."""
    delete_document(get_visible_or_404(Document, document_id, "document").id)
    return "", 204


@bp.get("/jobs/<job_id>")
def get_job(job_id: str):
    """One job: the database row joined with RQ's live status and progress, or 404 ``job_not_found``."""
    return jsonify(job_to_dict(visible_job(job_id)))


def _state_error(exc: JobStateError, conflict_code: str) -> ServiceError:
    """404 ``job_not_found`` when there is no row, else 409 ``conflict_code`` with the sentence."""
    if exc.status is None:
        return ServiceError(404, "job_not_found", str(exc))
    return ServiceError(409, conflict_code, str(exc))


@bp.post("/jobs/<job_id>/cancel")
def cancel(job_id: str):
    """Cancel a queued or scheduled job, or stop a running one: 200 with the job; 404; 409
    ``job_not_cancelable`` when it already ended."""
    visible_job(job_id)
    try:
        job = cancel_job(job_id)
    except JobStateError as exc:
        raise _state_error(exc, "job_not_cancelable") from None
    return jsonify(job_to_dict(job))


@bp.post("/jobs/<job_id>/retry")
def retry(job_id: str):
    """Launch a failed, stopped or canceled job again from its parameters: 202 with the job;
    404; 409 ``job_not_retryable`` for a job in any other state; 503 when Redis is down."""
    visible_job(job_id)
    try:
        job = relaunch(job_id)
    except JobStateError as exc:
        raise _state_error(exc, "job_not_retryable") from None
    except QueueUnavailable as exc:
        raise ServiceError(503, "queue_unavailable", str(exc)) from exc
    return jsonify(job_to_dict(job)), 202


@bp.get("/jobs")
def get_jobs():
    """Jobs newest first: ``?status=&kind=&limit=&cursor=`` → ``{"jobs": [...], "next": cursor|null}``."""
    limit = _int_arg("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    jobs, next_cursor = list_jobs(
        status=request.args.get("status") or None,
        kind=request.args.get("kind") or None,
        limit=limit,
        cursor=request.args.get("cursor") or None,
        owner=owner_filter(),
    )
    return jsonify({"jobs": [job_to_dict(job) for job in jobs], "next": next_cursor})


@bp.post("/reports")
def create_report():
    """Request a report: JSON ``{"type": "activity"|"documents", "params": {...}}``, optionally
    ``"run_at"`` (ISO-8601 UTC) or ``"delay"`` (seconds) → 202 ``{"id", "job_id", "status_url",
    "report_url"}``; the job runs on the ``high`` queue (at its planned time: ``scheduled`` until
    then). A default period (``since``/``until``) is fixed when the request is made."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ServiceError(400, "invalid_json", 'Send a JSON object such as {"type": "activity", "params": {}}.')
    report = request_report(body.get("type"), body.get("params"), owner=current_owner(), scope=owner_filter(),
                            run_at=_start_time(body))
    return jsonify(_report_links(report)), 202


@bp.get("/reports")
def list_reports():
    """The newest reports first: ``{"reports": [...]}``; ``limit`` 1–100 (default 20)."""
    limit = _int_arg("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    reports = list(owned(Report.select(), Report).order_by(Report.created_at.desc(), Report.id.desc()).limit(limit))
    jobs = Job.by_id(r.job_id for r in reports)
    return jsonify({"reports": [report_to_dict(r, jobs.get(r.job_id)) for r in reports]})


@bp.get("/reports/<report_id>")
def get_report(report_id: str):
    """One report: its job's status and progress, and download links once it finished."""
    return jsonify(report_to_dict(get_visible_or_404(Report, report_id, "report")))


@bp.get("/reports/<report_id>/download")
def download_report(report_id: str):
    """The report file in ``format`` (html, csv, json, pdf; default html): 404 until it finished,
    409 ``report_failed`` with the reason when its job failed, stopped or was canceled.

    From S3 storage: 302 to a presigned URL of the file, valid ``REPORT_URL_EXPIRY`` seconds,
    whose answer carries the same Content-Type and Content-Disposition (the bytes never pass
    through the web process). From a local folder: the bytes, 200."""
    report = get_visible_or_404(Report, report_id, "report")
    fmt = request.args.get("format", "html")
    if fmt not in FORMATS:
        raise ServiceError(400, "invalid_format", f"'format' must be one of {', '.join(FORMATS)}.")
    job = Job.find(report.job_id) if report.job_id else None
    if job is not None and job.status in ("failed", "stopped", "canceled"):
        raise ServiceError(409, "report_failed", f"The report was not made: {job.error or job.status}.")
    if job is None or job.status != "finished" or not report.files or fmt not in report.files:
        raise ServiceError(404, "report_not_ready", "The report is not ready yet; follow its status_url.")
    disposition = "inline" if fmt == "html" else "attachment"
    disposition = f'{disposition}; filename="docket-{report.type}-{report.id}.{fmt}"'
    storage = storage_from_config(current_app.config)
    try:
        url = storage.presigned_url(report.files[fmt], current_app.config["REPORT_URL_EXPIRY"],
                                    content_type=CONTENT_TYPES[fmt], content_disposition=disposition)
        if url is not None:
            response = redirect(url, 302)
            response.headers["Cache-Control"] = "no-store"  # the URL expires; ask again next time
            return response
        data = storage.get(report.files[fmt])
    except StorageError as exc:
        raise ServiceError(404 if not exc.transient else 503, "report_file_unavailable",
                       f"The report file could not be read: {exc}.") from exc
    response = current_app.response_class(data, mimetype=CONTENT_TYPES[fmt].split(";")[0],
                                          content_type=CONTENT_TYPES[fmt])
    response.headers["Content-Disposition"] = disposition
    if fmt == "html":  # the report page embeds its chart and style; it needs nothing else
        response.headers["Content-Security-Policy"] = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    return response


MAX_QUERY_CHARS = 2000  # a search text longer than this is refused (400 query_too_long)


@bp.route("/search", methods=["GET", "POST"])
@free_text("q")  # read as words: a NUL or a stray surrogate in it finds nothing and harms nothing
def search():
    """Top-k of the caller's chunks for the query (``k`` 1–SEARCH_MAX_K, default 5), ranked by
    ``mode``: ``hybrid`` (default: vector and full-text rankings fused), ``vector`` or ``text``;
    optionally only one document's (``document_id``) or one batch's (``batch_id``) chunks (another
    owner's or an unknown id: 404, as everywhere). ``GET ?q=&k=&mode=&document_id=&batch_id=``, or
    ``POST`` with the same names in a JSON object, for a query too long for a URL (at most 2,000
    characters either way)."""
    if request.method == "POST":
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise ServiceError(400, "invalid_json", 'Send a JSON object such as {"q": "termination notice", "k": 5}.')
        query, raw_k = body.get("q"), body.get("k", 5)
        if not isinstance(query, str):
            raise ServiceError(400, "missing_query", "Give the text to search for as 'q' (a string).")
        if isinstance(raw_k, bool) or not isinstance(raw_k, int) or not 1 <= raw_k <= current_app.config["SEARCH_MAX_K"]:
            raise ServiceError(400, "invalid_k", f"'k' must be a whole number between 1 and {current_app.config['SEARCH_MAX_K']}.")
        query, k = query.strip(), raw_k
        options = {name: body.get(name) for name in ("mode", "document_id", "batch_id")}
        for name, value in options.items():
            if value is not None and not isinstance(value, str):
                raise ServiceError(400, f"invalid_{name}", f"'{name}' must be a string.")
    else:
        query = (request.args.get("q") or "").strip()
        k = _int_arg("k", 5, 1, current_app.config["SEARCH_MAX_K"])
        options = {name: request.args.get(name) for name in ("mode", "document_id", "batch_id")}
    mode = options["mode"] or "hybrid"
    if mode not in SEARCH_MODES:
        raise ServiceError(400, "invalid_mode", f"'mode' must be one of {', '.join(SEARCH_MODES)}.")
    if not query:
        raise ServiceError(400, "missing_query", "Give the text to search for as the 'q' parameter.")
    if len(query) > MAX_QUERY_CHARS:
        raise ServiceError(400, "query_too_long", f"The query is {len(query):,} characters; at most {MAX_QUERY_CHARS:,}.")
    if options["document_id"] is not None:
        get_visible_or_404(Document, options["document_id"], "document")
    if options["batch_id"] is not None:
        get_visible_or_404(Batch, options["batch_id"], "batch")
    try:
        results = search_chunks(query, k, owner=owner_filter(), document_id=options["document_id"],
                                batch_id=options["batch_id"], mode=mode)
    except EmbeddingError as exc:
        if exc.retry_after is not None:  # Docket's shared OpenAI budget, not the service, said no
            raise ServiceError(429, "rate_limited", f"The query could not be embedded now: {exc}. Try again later.",
                           headers={"Retry-After": str(max(1, math.ceil(exc.retry_after)))}) from exc
        raise ServiceError(502, "embedding_unavailable", f"The query could not be embedded: {exc}") from exc
    return jsonify({"results": results})
