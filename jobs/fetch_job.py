"""The fetch job (kind ``fetch``, queue ``default``): download a document from its URL, then run
the document pipeline on it (:mod:`jobs.document_job`) in the same job.

Launched by :func:`webapp.core.documents.accept_urls` (``POST /api/documents`` with JSON ``url`` or
``urls``) with ``params={"document_id": …}``; the Document row holds the URL (``source_url``) and
the storage key its bytes go to. One job for both halves, so the document has one job to follow,
cancel and retry, and its progress moves from ``fetch`` to ``extract`` … ``store``.

Every retry downloads again: RQ delivers at least once, and the document then holds what the URL
serves at the time of the run that finished.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

from flask import current_app
from rq import get_current_job

from jobs.document_errors import JobError
from jobs.document_job import run_document_job
from jobs.tracking import JobTracker
from webapp.core import egress, filetypes
from webapp.core.documents import clean_filename
from webapp.core.models import Document
from webapp.core.storage import StorageError, storage_from_config


def fetch_document(document_id: str) -> dict[str, Any]:
    """The RQ job: download document ``document_id``'s ``source_url``, store the bytes, and turn
    them into chunks with embeddings.

    Args:
        document_id: :class:`~webapp.core.models.Document` id of a fetched document.

    Returns:
        What :func:`jobs.document_job.run_document_job` returns, with ``"url"`` (the URL fetched,
        after redirects) added by the download.

    Raises:
        RuntimeError: called outside an RQ worker.
        JobError: the download's failures (see :func:`download`) and the pipeline's
            (:func:`jobs.document_job.run_document_job`).
    """
    rq_job = get_current_job()
    if rq_job is None:
        raise RuntimeError("fetch_document must run in an RQ worker")
    return run_document_job(document_id, JobTracker(rq_job.id, rq_job), current_app.config, prepare=download)


def download(document: Document, tracker: JobTracker, config: Mapping[str, Any]) -> None:
    """Fetch ``document.source_url`` (:func:`webapp.core.egress.fetch`: at most ``MAX_CONTENT_LENGTH``
    bytes, ``FETCH_CONNECT_TIMEOUT``/``FETCH_READ_TIMEOUT`` seconds, at most 5 redirects, every URL
    on the way checked against ``FETCH_ALLOW_PRIVATE_NETWORKS``), detect its type from the bytes,
    store them under ``document.storage_key`` and record type, size, SHA-256, ETag, Last-Modified
    and a file name on the row (and on ``document``).

    Raises:
        JobError: ``not_found`` (the document has no URL); ``url_refused`` (an address on the way
            is not public, or the URL is invalid; transient only when the resolver failed for the
            moment); ``fetch_timeout`` (no connection or no answer within the timeouts; transient);
            ``fetch_failed`` (refused or broken connection, TLS; transient); ``http_error``
            (an HTTP error status; transient for 408, 425, 429 and 5xx); ``too_many_redirects``;
            ``file_too_large`` (over ``MAX_CONTENT_LENGTH`` bytes); ``empty_file``;
            ``unsupported_media_type`` (the bytes are no supported document);
            ``storage_unavailable`` (transient).
    """
    url = document.source_url
    if not url:
        raise JobError(f"document {document.id} has no URL to fetch", code="not_found")
    tracker.set_progress("fetch", 0)
    limit = int(config["MAX_CONTENT_LENGTH"])
    try:
        fetched = egress.fetch(url, max_bytes=limit, allow_private=config["FETCH_ALLOW_PRIVATE_NETWORKS"],
                               connect_timeout=config["FETCH_CONNECT_TIMEOUT"],
                               read_timeout=config["FETCH_READ_TIMEOUT"],
                               headers={"User-Agent": config["FETCH_USER_AGENT"]})
    except egress.DestinationRefused as exc:
        raise JobError(f"{url} cannot be fetched: {exc}", code="url_refused", transient=exc.transient) from exc
    except egress.RequestFailed as exc:
        if exc.timed_out:
            raise JobError(f"fetching {url} timed out ({exc}; FETCH_CONNECT_TIMEOUT {config['FETCH_CONNECT_TIMEOUT']} s, "
                           f"FETCH_READ_TIMEOUT {config['FETCH_READ_TIMEOUT']} s)", code="fetch_timeout",
                           transient=True) from exc
        raise JobError(f"fetching {url} failed: {exc}", code="fetch_failed", transient=True) from exc
    except egress.FetchStatusError as exc:
        raise JobError(f"fetching failed: {exc}", code="http_error", transient=exc.transient) from exc
    except egress.TooManyRedirects as exc:
        raise JobError(f"fetching {url} failed: {exc}", code="too_many_redirects") from exc
    except egress.FetchTooLarge as exc:
        raise JobError(f"{url} is too large to fetch: {exc} (MAX_CONTENT_LENGTH)",
                       code="file_too_large") from exc
    data = fetched.body
    if not data:
        raise JobError(f"{fetched.url} answered an empty document (0 bytes)", code="empty_file")
    filename = _filename(fetched, document.filename)
    content_type = filetypes.detect_content_type(data, filename)
    if content_type is None:
        declared = fetched.headers.get("content-type", "no Content-Type")
        raise JobError(f"{fetched.url} is not a supported document ({declared}); Docket reads "
                       f"{filetypes.SUPPORTED_SENTENCE}", code="unsupported_media_type")
    try:
        storage_from_config(config).put(document.storage_key, data)
    except StorageError as exc:
        raise JobError(f"the fetched file could not be stored: {exc}", code="storage_unavailable",
                       transient=exc.transient) from exc
    values = {"filename": filename, "content_type": content_type, "size_bytes": len(data),
              "sha256": hashlib.sha256(data).hexdigest(), "etag": (fetched.etag or "")[:200] or None,
              "last_modified": (fetched.last_modified or "")[:64] or None}
    Document.update(**values).where(Document.id == document.id).execute()
    for name, value in values.items():
        setattr(document, name, value)
    tracker.set_progress("fetch", 5)


def _filename(fetched: egress.Fetched, fallback: str) -> str:
    """The answer's ``Content-Disposition`` file name, else the last URL's path segment, else ``fallback``."""
    from email.message import Message

    from webapp.core.documents import url_filename

    disposition = fetched.headers.get("content-disposition")
    if disposition:
        message = Message()
        message["content-disposition"] = disposition
        name = message.get_filename()
        if name:
            return clean_filename(name)
    return url_filename(fetched.url) if fetched.redirects else fallback
