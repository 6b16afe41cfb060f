"""The document service: accept documents (validate, store their bytes, record rows, launch the
jobs), find duplicates, delete a document with everything it owns. In the core, so that every
producer — the API, the command line, and next the job path (a URL fetch, a source sync) — uses
the same rules; a refusal is a :class:`~webapp.core.service_errors.ServiceError` with its status, code and
sentence, which the edge answers as JSON. (A document as the API shows it: :mod:`webapp.edge.document_json`.)

Order matters (the job protocol, :mod:`webapp.core.protocol.launch`): bytes are stored, then the Batch,
Document and Job rows are committed in one transaction, then every job of the upload is
enqueued in one Redis transaction (job id = Job row id), then the rows get ``enqueued_at``.
If Redis refuses, the rows are marked ``failed`` and :class:`ServiceError` 503 is raised, so no row
is left saying ``queued`` forever and no file is left queued. No parsing happens on this path.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO, Callable, Iterable

from flask import current_app
from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob

from webapp.core import egress, filetypes
from webapp.core.db import db
from webapp.core.encryption import encrypt_secret
from webapp.core.extractor import EXTRACTOR_VERSION
from webapp.core.service_errors import ServiceError
from webapp.core.protocol.control import cancel_job
from webapp.core.protocol.states import FINISHED, STARTED, TERMINAL, WAITING, JobStateError
from webapp.core.owner_caps import check_queued_cap
from webapp.core.protocol.launch import QueueUnavailable, enqueue_jobs, new_job
from webapp.core.models import Batch, Chunk, Document, Job, Report, new_id
from webapp.core.report_files import launch_report, new_report
from webapp.core.queues import rq
from webapp.core.storage import StorageError, storage_from_config

MAX_FILENAME = 255
# A document in one of these states counts as already uploaded (finished or in flight).
DUPLICATE_STATUSES = tuple(WAITING | {STARTED, FINISHED})


@dataclass
class Upload:
    """One file of a request: the client's name and its bytes, as a readable, seekable binary
    file (a Werkzeug upload's spooled temporary file: never read whole into memory)."""

    filename: str
    file: BinaryIO


@dataclass
class ValidatedUpload:
    filename: str
    file: BinaryIO  # rewound
    content_type: str
    size: int  # bytes
    sha256: str  # hex digest of the bytes


def clean_filename(name: str | None) -> str:
    """The client's file name without folders, control characters or excess length (display only)."""
    name = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    return name[:MAX_FILENAME] or "upload"


def check_file_count(count: int) -> None:
    """Raise 413 ``too_many_files`` when ``count`` files are more than one upload may hold
    (``MAX_FILES_PER_UPLOAD``)."""
    limit = current_app.config["MAX_FILES_PER_UPLOAD"]
    if count > limit:
        raise ServiceError(413, "too_many_files", f"An upload may hold at most {limit} files; this one has more "
                                              f"({count}). Send them in several uploads; nothing was uploaded.")


@dataclass
class Refused:
    """A file of an upload that was not accepted, with the HTTP status, ``code`` and sentence
    it would have got on its own."""

    filename: str
    status: int
    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"filename": self.filename, "error_code": self.code, "error": self.message}


def validate_uploads(uploads: Iterable[Upload]) -> tuple[list[ValidatedUpload], list[Refused]]:
    """Check every upload before anything is stored; a bad file refuses only itself.

    Returns:
        ``(accepted, refused)``: the files to store with their detected content type, and the
        ones refused — ``empty_file`` (zero bytes) or ``unsupported_media_type`` (not a supported
        type) — each with its sentence. At least one file is accepted.

    Raises:
        ServiceError: 400 ``no_file`` when there is none, 413 ``too_many_files`` above
            ``MAX_FILES_PER_UPLOAD`` files, and the refusal itself (400 ``empty_file``, 415
            ``unsupported_media_type``) when no file is accepted.
    """
    uploads = list(uploads)
    check_file_count(len(uploads))
    validated, refused = [], []
    for upload in uploads:
        filename = clean_filename(upload.filename)
        size, digest, sample = inspect_upload(upload.file)
        if not size:
            refused.append(Refused(filename, 400, "empty_file", f"{filename} is empty (0 bytes)."))
            continue
        content_type = filetypes.detect_content_type(sample, filename)
        hint = filetypes.unsupported_hint(sample) if content_type is None else ""
        del sample
        if content_type is None:
            refused.append(Refused(filename, 415, "unsupported_media_type",
                                   f"{filename} is not a supported document; Docket accepts "
                                   f"{filetypes.SUPPORTED_SENTENCE}.{hint}"))
            continue
        validated.append(ValidatedUpload(filename, upload.file, content_type, size, digest))
    if not validated:
        if not refused:
            raise ServiceError(400, "no_file", "No file was sent; attach one or more files as form fields named 'file'.")
        first = refused[0]
        others = f" {len(refused) - 1} other file(s) were refused too." if len(refused) > 1 else ""
        raise ServiceError(first.status, first.code, f"{first.message}{others} Nothing was uploaded.")
    return validated, refused


@dataclass
class Accepted:
    """One file of an accepted upload: its document, and whether it is an earlier upload of the
    same bytes (``duplicate``: nothing was stored or enqueued for it)."""

    document: Document
    duplicate: bool = False


@dataclass
class UploadResult:
    """What :func:`accept_uploads` accepted, in the request's order of files."""

    files: list[Accepted]
    batch_id: str | None  # the batch of the new documents; None when every file was a duplicate
    refused: list[Refused]  # files refused on their own (empty, unsupported); the others went on
    report: Report | None = None  # the documents report asked for (the batch's callback)
    status: str = "queued"  # the new documents' jobs': queued, or scheduled (run_at)


def accept_uploads(uploads: Iterable[Upload], password: str | None = None, *, owner: str, reprocess: bool = False,
                   callback_url: str | None = None, run_at: datetime | None = None,
                   report: str | None = None) -> UploadResult:
    """Validate, store and launch uploads.

    A file that is empty or of an unsupported type is refused on its own (``refused``) and the
    others go on; storage and queue failures refuse the whole request (nothing is left half-done).

    Files whose bytes (SHA-256) match a document that finished or is still in flight are not
    processed again: the result points at that document (``duplicate``), unless ``reprocess``.
    The new documents form one batch; their jobs are enqueued in one Redis transaction.

    Args:
        uploads: files of one request (or one CLI call).
        password: for encrypted PDFs; kept with the document, encrypted with a key derived from
            ``SECRET_KEY`` (:mod:`webapp.core.encryption`), until its job reaches a terminal state.
        owner: whose documents, jobs and batch these are (duplicates are looked up among them only).
        reprocess: process files again even when the same bytes were uploaded before.
        callback_url: ``http(s)://`` URL that gets each job's final state (:mod:`webapp.core.webhooks`).
        run_at: planned start of the new documents' jobs (naive UTC, from
            :func:`webapp.core.protocol.delayed.start_time`); ``None``: at once.
        report: ``"documents"``: a documents report of the upload's files, made once every job
            of the batch ended, whatever their outcome (a chord, :mod:`webapp.core.workflows.chords`); at once
            when every file was a duplicate (there is no batch to wait for).

    Returns:
        The accepted files, the batch id and the refused files.

    Raises:
        ServiceError: 400/413/415 from :func:`validate_uploads` when no file is accepted (nothing stored); 400 ``invalid_callback_url``;
            429 ``owner_queue_full`` with ``Retry-After`` when the new documents would pass ``OWNER_MAX_QUEUED``
            (:func:`webapp.core.owner_caps.check_queued_cap`; nothing stored);
            503 ``storage_unavailable`` when the bytes cannot be stored; 503 ``queue_unavailable``
            when Redis refuses the jobs (their rows are marked ``failed``; none was enqueued).
    """
    if report not in (None, "documents"):
        raise ServiceError(400, "invalid_report_type", "'report' may only be \"documents\": a documents report of "
                                                   "the upload's files once every one of them ended.")
    validated, refused = validate_uploads(uploads)
    if callback_url is not None:
        callback_url = check_callback_url(callback_url)
    storage = storage_from_config(current_app.config)
    files: list[Accepted | None] = []
    new: list[tuple[int, ValidatedUpload, str]] = []
    seen: dict[str, int] = {}  # sha256 → index of the first new file with those bytes
    for upload in validated:
        digest = upload.sha256
        existing = None if reprocess else find_duplicate(digest, owner, finished_only=bool(password))
        if existing is not None:
            files.append(Accepted(existing, duplicate=True))
        elif not reprocess and digest in seen:
            files.append(None)  # the same bytes twice in one request: filled in below
        else:
            seen[digest] = len(files)
            new.append((len(files), upload, digest))
            files.append(None)

    check_queued_cap(current_app.config, owner, len(new))  # OWNER_MAX_QUEUED: 429 before anything is stored
    batch_id = new_id() if new else None
    sealed_password = encrypt_secret(current_app.config, password) if password and new else None
    jobs: list[Job] = []
    stored_keys: list[str] = []
    report_row: Report | None = None
    try:
        with db.database.atomic():
            if batch_id:
                Batch.create(id=batch_id, size=len(new), owner=owner)
            for index, upload, digest in new:
                document_id = new_id()
                key = f"documents/{document_id[:2]}/{document_id}"
                upload.file.seek(0)
                storage.put_stream(key, upload.file)  # in blocks: the upload is never held in memory
                stored_keys.append(key)
                job = new_job("document", {"document_id": document_id}, document_id=document_id,
                              batch_id=batch_id, callback_url=callback_url, owner=owner, run_at=run_at)
                document = Document.create(
                    id=document_id,
                    filename=upload.filename,
                    content_type=upload.content_type,
                    size_bytes=upload.size,
                    sha256=digest,
                    storage_key=key,
                    password=sealed_password,
                    job_id=job.id,
                    batch_id=batch_id,
                    owner=owner,
                )
                job.save(force_insert=True)
                files[index] = Accepted(document)
                jobs.append(job)
            if report and batch_id:  # the batch's callback, deferred until its jobs ended
                report_row, report_job = new_report(report, _report_params(files, owner), owner,
                                                    batch_id=batch_id)
                report_row.save(force_insert=True)
                report_job.save(force_insert=True)
    except StorageError as exc:
        for key in stored_keys:
            storage.delete(key)
        current_app.logger.error("storing an upload failed: %s", exc)
        raise ServiceError(503, "storage_unavailable", "The upload could not be stored; please try again later.") from exc
    except Exception:
        for key in stored_keys:
            storage.delete(key)
        raise

    for index, upload in enumerate(validated):  # repeated bytes within the request
        if files[index] is None:
            first = files[seen[upload.sha256]]
            files[index] = Accepted(first.document, duplicate=True)
    try:
        enqueue_jobs(jobs)
        if report and not batch_id:  # every file a duplicate: nothing to wait for
            report_row = launch_report(report, _report_params(files, owner), owner)
    except QueueUnavailable as exc:
        raise ServiceError(503, "queue_unavailable", str(exc)) from exc
    return UploadResult(files=[f for f in files if f is not None], batch_id=batch_id, refused=refused,
                        report=report_row, status=jobs[0].status if jobs else "queued")


def url_filename(url: str) -> str:
    """A display name for a fetched URL before its answer names one: the path's last segment
    (percent-decoded), else the host."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url)
    segment = unquote(parts.path.rstrip("/").rsplit("/", 1)[-1]) if parts.path.strip("/") else ""
    return clean_filename(segment or parts.hostname or "page")


def accept_urls(urls: Iterable[str], *, owner: str, callback_url: str | None = None,
                run_at: datetime | None = None) -> UploadResult:
    """Record and launch a ``fetch`` job for each URL: the job downloads it (SSRF-checked again at
    every redirect, :func:`webapp.core.egress.fetch`) and then runs the document pipeline on it.

    Each URL is checked now as the job will check it (:func:`webapp.core.egress.resolve` with
    ``FETCH_ALLOW_PRIVATE_NETWORKS``), so a refused address is answered at once; a refused URL
    refuses only itself. The new documents form one batch; their rows are committed before their
    jobs are enqueued (one Redis transaction). Nothing is deduplicated here: the bytes are not
    known until the job has fetched them.

    Args:
        urls: the request's URLs, at most ``MAX_FILES_PER_UPLOAD``.
        owner: whose documents and jobs these are.
        callback_url: webhook for each job's final state, as for an upload.
        run_at: planned start (naive UTC) or ``None``.

    Returns:
        An :class:`UploadResult` (``refused`` entries carry the URL as ``filename``).

    Raises:
        ServiceError: 400 ``no_url`` when there is none or one is not a string, 413
            ``too_many_files`` above ``MAX_FILES_PER_UPLOAD``, the refusal itself (400
            ``url_refused``) when every URL is refused, 400 ``invalid_callback_url``, 429
            ``owner_queue_full`` over ``OWNER_MAX_QUEUED``, 503
            ``queue_unavailable`` when Redis refuses the jobs (their rows are marked ``failed``).
    """
    urls = list(urls)
    if not urls or not all(isinstance(url, str) and url.strip() for url in urls):
        raise ServiceError(400, "no_url", "Send 'url' (a string) or 'urls' (a list of strings): the http:// or "
                                          "https:// addresses of the documents to fetch.")
    check_file_count(len(urls))
    if callback_url is not None:
        callback_url = check_callback_url(callback_url)
    allow_private = current_app.config["FETCH_ALLOW_PRIVATE_NETWORKS"]
    accepted: list[str] = []
    refused: list[Refused] = []
    for url in (url.strip() for url in urls):
        try:
            egress.resolve(url, allow_private)
        except egress.DestinationRefused as exc:
            refused.append(Refused(url, 400, "url_refused", f"{url} cannot be fetched: {exc}."))
            continue
        accepted.append(url)
    if not accepted:
        first = refused[0]
        others = f" {len(refused) - 1} other URL(s) were refused too." if len(refused) > 1 else ""
        raise ServiceError(first.status, first.code, f"{first.message}{others} Nothing was accepted.")
    check_queued_cap(current_app.config, owner, len(accepted))  # OWNER_MAX_QUEUED
    batch_id = new_id()
    jobs: list[Job] = []
    files: list[Accepted] = []
    with db.database.atomic():
        Batch.create(id=batch_id, size=len(accepted), owner=owner)
        for url in accepted:
            document_id = new_id()
            job = new_job("fetch", {"document_id": document_id}, document_id=document_id, batch_id=batch_id,
                          callback_url=callback_url, owner=owner, run_at=run_at)
            document = Document.create(
                id=document_id, filename=url_filename(url), content_type="", size_bytes=0, sha256="",
                storage_key=f"documents/{document_id[:2]}/{document_id}", source_url=url,
                job_id=job.id, batch_id=batch_id, owner=owner,
            )
            job.save(force_insert=True)
            files.append(Accepted(document))
            jobs.append(job)
    try:
        enqueue_jobs(jobs)
    except QueueUnavailable as exc:
        raise ServiceError(503, "queue_unavailable", str(exc)) from exc
    return UploadResult(files=files, batch_id=batch_id, refused=refused, status=jobs[0].status)


def _report_params(files: list["Accepted | None"], owner: str) -> dict[str, Any]:
    """A documents report's parameters for an upload's files (new ones and duplicates, once each)."""
    ids = [accepted.document.id for accepted in files if accepted is not None]
    return {"document_ids": list(dict.fromkeys(ids)), "owner": owner}


def find_duplicate(sha256: str, owner: str | None, finished_only: bool = False) -> Document | None:
    """The newest document of ``owner`` with these bytes whose current job finished or is still in flight
    (queued, scheduled, deferred, started); ``None`` otherwise (never uploaded, or every earlier
    copy failed, was stopped or canceled — then it is processed again).

    ``finished_only``: count only a finished copy — an upload that brings a PDF password must
    not be folded into an earlier copy still in flight without one (it would fail the same way).
    """
    statuses = (FINISHED,) if finished_only else DUPLICATE_STATUSES
    return (
        Document.select()
        .join(Job, on=(Job.id == Document.job_id))
        .where(Document.sha256 == sha256, Document.owner == owner, Job.status.in_(statuses))
        .order_by(Document.created_at.desc())
        .first()
    )


def delete_document(document_id: str) -> None:
    """Delete a document and everything made from it.

    In order: each of its jobs still waiting is canceled and a running one is stopped
    (:func:`webapp.core.protocol.control.cancel_job`, which waits up to 2 s for the worker), so no job
    writes chunks afterwards (a stopped job's final write is refused by the state machine, and
    with its row gone it has nothing to write to); then its chunks, jobs' rows and its own row are
    deleted in one transaction; then RQ's records of those jobs and the stored bytes (a failure
    there is logged: the ``orphans`` job deletes an unreferenced file later).

    Args:
        document_id: the Document row's id (the caller checked the owner).
    """
    document = Document.get_or_none(Document.id == document_id)
    if document is None:
        return
    jobs = list(Job.select(Job.id, Job.status).where(Job.document == document_id))
    for job in jobs:
        if job.status not in TERMINAL:
            try:
                cancel_job(job.id)
            except JobStateError:  # it ended meanwhile
                pass
    with db.database.atomic():
        Chunk.delete().where(Chunk.document == document_id).execute()
        # A big PDF's page-range parts and join name their document job, not the document.
        Job.delete().where(Job.parent_id.in_([job.id for job in jobs] or [""])).execute()
        Job.delete().where(Job.document == document_id).execute()
        Document.delete().where(Document.id == document_id).execute()
    for job in jobs:
        try:
            RQJob.fetch(job.id, connection=rq.connection).delete()
        except NoSuchJobError:
            pass
        except RedisError as exc:
            current_app.logger.warning("document %s deleted; RQ's record of job %s stays until it expires: %s",
                                       document_id, job.id, exc)
    try:
        storage_from_config(current_app.config).delete(document.storage_key)
    except StorageError as exc:
        current_app.logger.warning("document %s deleted; its file stays until the orphans job: %s", document_id, exc)


def check_callback_url(url: str) -> str:
    """``url`` if Docket may POST to it: an absolute ``http``/``https`` URL of at most 2000
    characters, without userinfo or backslashes, whose host resolves to public addresses only
    (:func:`webapp.core.egress.resolve`; any address with ``WEBHOOK_ALLOW_PRIVATE``). The delivery
    checks it again.

    Raises:
        ServiceError: 400 ``invalid_callback_url`` otherwise, with the reason.
    """
    url = url.strip()
    try:
        egress.resolve(url, current_app.config["WEBHOOK_ALLOW_PRIVATE"])
    except egress.DestinationRefused as exc:
        raise ServiceError(400, "invalid_callback_url", f"callback_url is refused: {exc}.") from None
    return url


def read_upload(file_storage) -> Upload:
    """An :class:`Upload` of a Werkzeug ``FileStorage``: its stream (in memory up to 500 KB,
    a temporary file above; the size is bounded by MAX_CONTENT_LENGTH), not a copy of its bytes."""
    return Upload(filename=file_storage.filename or "", file=file_storage.stream)


def read_path(path: str | os.PathLike[str]) -> Upload:
    """An :class:`Upload` from a local file (for ``flask ingest``; read into memory once)."""
    with open(path, "rb") as fh:
        return Upload(filename=os.path.basename(path), file=io.BytesIO(fh.read()))


# Bytes of an upload read at a time while it is hashed, and the head given to type detection:
# filetypes.detect_content_type looks at no more than 64 KiB past a header in the first KiB,
# except for a zip (.docx), whose directory is at its end: that one is read whole (once).
INSPECT_BLOCK = 1024 * 1024


def inspect_upload(file: BinaryIO) -> tuple[int, str, bytes]:
    """Read an upload once, in blocks of :data:`INSPECT_BLOCK` bytes: its size (bytes), SHA-256
    (hex) and the bytes type detection needs (the first block; the whole file when it is a zip).
    Leaves ``file`` rewound."""
    file.seek(0)
    digest = hashlib.sha256()
    size = 0
    head = b""
    while block := file.read(INSPECT_BLOCK):
        head = head or block
        digest.update(block)
        size += len(block)
    file.seek(0)
    if head[:4] == b"PK\x03\x04" and size > len(head):
        head = file.read()
        file.seek(0)
    return size, digest.hexdigest(), head


# --- a document's chunks, page by page ------------------------------------------------------------


def list_chunks(document_id: str, limit: int, after: int | None = None) -> tuple[list[Chunk], bool]:
    """A page of a document's chunks in reading order (keyset on ``ordinal``).

    Args:
        document_id: the document (the caller checked the owner).
        limit: at most this many chunks, ≥ 1.
        after: only chunks whose ordinal is greater (the last ordinal of the previous page);
            ``None``: from the first.

    Returns:
        ``(chunks, more)``: the chunks without their embeddings, and whether more follow.
    """
    query = (Chunk.select(Chunk.id, Chunk.ordinal, Chunk.page_start, Chunk.page_end, Chunk.text, Chunk.headings,
                          Chunk.ocr, Chunk.ocr_confidence)
             .where(Chunk.document == document_id).order_by(Chunk.ordinal))
    if after is not None:
        query = query.where(Chunk.ordinal > after)
    rows = list(query.limit(limit + 1))
    return rows[:limit], len(rows) > limit


def page_start_after(document_id: str, ordinal: int, page_size: int) -> int | None:
    """Where the page holding chunk ``ordinal`` starts, when a document's chunks are shown
    ``page_size`` at a time from the first: the ordinal just before that page (the ``after`` of
    :func:`list_chunks`), or ``None`` for the first page. A missing ordinal gives the page it
    would be on."""
    position = Chunk.select().where(Chunk.document == document_id, Chunk.ordinal < ordinal).count()
    start = (position // page_size) * page_size
    if start == 0:
        return None
    row = (Chunk.select(Chunk.ordinal).where(Chunk.document == document_id).order_by(Chunk.ordinal)
           .offset(start - 1).limit(1).first())
    return row.ordinal if row else None


def page_before(document_id: str, first_ordinal: int, page_size: int) -> tuple[bool, int | None]:
    """The page before the one that starts at chunk ``first_ordinal``: ``(exists, after)``, where
    ``after`` is that page's :func:`list_chunks` ``after`` (``None``: it is the first page)."""
    earlier = list(Chunk.select(Chunk.ordinal).where(Chunk.document == document_id, Chunk.ordinal < first_ordinal)
                   .order_by(Chunk.ordinal.desc()).limit(page_size + 1))
    if not earlier:
        return False, None
    return True, earlier[page_size].ordinal if len(earlier) > page_size else None


# --- reprocessing stored documents ----------------------------------------------------------------


def documents_to_reprocess(*, owner: str | None = None, content_type: str | None = None,
                           without_structure: bool = False):
    """The documents a reprocess run selects, oldest first (a query of :class:`Document`).

    Args:
        owner: only this owner's documents; ``None``: every owner's.
        content_type: only documents of this detected type (e.g. ``application/pdf``).
        without_structure: only documents whose chunks were made before the current readers
            (``extractor_version`` ``NULL`` or below :data:`~webapp.core.extractor.EXTRACTOR_VERSION`).
    """
    query = Document.select().order_by(Document.created_at, Document.id)
    if owner is not None:
        query = query.where(Document.owner == owner)
    if content_type is not None:
        query = query.where(Document.content_type == content_type)
    if without_structure:
        query = query.where(Document.extractor_version.is_null() | (Document.extractor_version < EXTRACTOR_VERSION))
    return query


def reprocess_document(document_id: str, *, new_version: dict[str, Any] | None = None,
                       in_transaction: Callable[[Job], None] | None = None) -> Job | None:
    """Launch a new ``document`` job for a stored document: its bytes are read, chunked and
    embedded again, and the job's final write replaces the old chunks (one transaction). A fetched
    document whose download never succeeded gets a ``fetch`` job instead.

    The job protocol's order: the new Job row and the document's ``job_id`` pointing at it are
    committed together — only if the document's current job has ended (guarded ``UPDATE …
    WHERE job_id = <the ended job>``, so two reprocess runs at once launch one job) — then it is
    enqueued.

    Args:
        document_id: the Document row's id.
        new_version: Document columns to set in the same guarded ``UPDATE`` (a source sync's new
            bytes: ``storage_key``, ``sha256``, ``size_bytes``, ``content_type``, ``etag``,
            ``last_modified``), so the document names its new bytes exactly when its new job is
            committed; ``None``: the same bytes again.
        in_transaction: called with the new job inside the same transaction once the move
            succeeded (a source sync marks its item there); its exception rolls everything back.

    Returns:
        The new job, enqueued; ``None`` when nothing was launched: there is no such document, or
        its current job is still waiting or running (not doubled).

    Raises:
        QueueUnavailable: Redis refused (the new row is marked ``failed``, the document points at it,
            so a later run launches it again).
    """
    document = Document.get_or_none(Document.id == document_id)
    if document is None:
        return None
    current = Job.find(document.job_id) if document.job_id else None
    if current is not None and current.status not in TERMINAL:
        return None
    # No batch: the upload's batch (and its deferred report) ended with its first jobs.
    # A fetched document whose bytes never arrived is fetched again; any other is read from storage.
    kind = "fetch" if document.awaiting_fetch else "document"
    job = new_job(kind, {"document_id": document.id}, document_id=document.id, owner=document.owner)
    with db.database.atomic() as transaction:
        job.save(force_insert=True)
        moved = (Document.update(job_id=job.id, **(new_version or {}))
                 .where(Document.id == document.id, Document.job_id == document.job_id if document.job_id
                        else Document.job_id.is_null())
                 .execute())
        if not moved:  # someone launched another job for it meanwhile
            transaction.rollback()
            return None
        if in_transaction is not None:
            in_transaction(job)
    enqueue_jobs([job])
    return job
