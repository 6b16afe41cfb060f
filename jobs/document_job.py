"""The document job (queue ``default``): extract → chunk → embed → store.

Launched by the upload path (:mod:`webapp.core.documents`) through :mod:`webapp.core.protocol.launch` as kind
``document`` with ``params={"document_id": …}``; the RQ job id is the Job row's id. Runs in a
worker process of the pool (``jobs/worker/``), inside the app context.

Idempotent: RQ delivers at least once, and a second run for the same document replaces the
first run's chunks in one transaction, leaving exactly one set.
"""

from __future__ import annotations

import io
import logging
from dataclasses import replace
from typing import Any, Callable, Iterator, Mapping

from flask import current_app
from peewee import InterfaceError, OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from rq import get_current_job
from rq.timeouts import JobTimeoutException

from jobs.chunking import chunk_pages, embedding_text
from jobs.document_errors import DocumentError, JobError
from jobs.extract import Limits, extract
from jobs.readers.base import EXTRACTOR_VERSION, OCR_NEXT, OCR_STAGE
from jobs.tracking import NOT_RUNNING, JobTracker
from webapp.core import filetypes, metrics
from webapp.core.db import connection
from webapp.core.encryption import DecryptionError, decrypt_secret
from webapp.core.compat.rq_private import extend_time_limit
from webapp.core.embeddings import EmbeddingError, embedder_from_config, embedder_kind, to_blob
from webapp.core.indexing import index_digest
from webapp.core.logs import begin_stage, end_stage
from webapp.core.models import Chunk, Document
from webapp.core.protocol.kinds import get_kind
from webapp.core.protocol.launch import QueueUnavailable
from webapp.core.workflows.page_parts import PARTS_START, PARTS_STAGE, split_document
from webapp.core.vector_index import ensure_vector_index, store_vectors
from webapp.core.storage import StorageError, storage_from_config

log = logging.getLogger(__name__)

# Share of the 0–100 % progress bar each stage ends at.
EXTRACT_END, CHUNK_END, EMBED_END = 40, 50, 90
INSERT_BATCH = 200  # rows per INSERT (SQLite's bound-parameter limit is 32766 since 3.32)


def process_document(document_id: str) -> dict[str, Any]:
    """The RQ job: turn a stored upload into chunks with embeddings.

    Args:
        document_id: :class:`~webapp.core.models.Document` id; the current RQ job's id is its Job row.

    Returns:
        See :func:`run_document_job`.

    Raises:
        RuntimeError: called outside an RQ worker.
        JobError: see :func:`run_document_job`; RQ's failure callback records it on the row.
    """
    rq_job = get_current_job()
    if rq_job is None:
        raise RuntimeError("process_document must run in an RQ worker")
    return run_document_job(document_id, JobTracker(rq_job.id, rq_job), current_app.config)


def run_document_job(document_id: str, tracker: JobTracker, config: Mapping[str, Any],
                     prepare: Callable[[Document, JobTracker, Mapping[str, Any]], None] | None = None) -> dict[str, Any]:
    """Extract → chunk → embed → store one document, keeping its Job row up to date.

    The body of :func:`process_document`, callable without RQ (``benchmarks/pipeline_limit.py``
    runs it in-process to measure the pipeline's own limit).

    Args:
        document_id: :class:`~webapp.core.models.Document` id.
        tracker: the job's tracker (its ``job_id`` is the Job row).
        config: the app's configuration (chunk sizes, embedder, storage).
        prepare: called as ``prepare(document, tracker, config)`` once the row says run, before
            the stored bytes are read — a fetch job downloads and stores them there
            (:func:`jobs.fetch_job.download`); its :class:`JobError` is the job's failure.

    Returns:
        ``{"document_id", "pages", "chars", "chunks", "ocr_pages", "warnings", "embedding_model"}`` — also
        stored as the Job row's ``result``. ``{"skipped": reason}`` if the row says not to run.

    Raises:
        DocumentError: the document cannot be read (encrypted, damaged, no text): permanent.
        DocumentTooLarge: (a ``DocumentError``) the document passes a configured limit:
            ``too_many_pages`` (``MAX_PDF_PAGES``), ``too_many_chars`` (``MAX_DOCUMENT_CHARS``),
            ``too_many_chunks`` (``MAX_DOCUMENT_CHUNKS``), ``decompression_bomb``
            (``MAX_UNCOMPRESSED_SIZE``, ``MAX_COMPRESSION_RATIO``) or ``too_much_memory``
            (``MAX_DOCUMENT_MEMORY``): permanent, logged in one line.
        JobError: with ``transient`` set when trying again may help (embedding service, storage
            or database briefly unavailable); ``timeout`` past the time limit.
        JobStopped: the row was canceled or stopped while the job ran.
        Under RQ, the state machine's failure callback records each on the row
        (:func:`webapp.core.protocol.states.on_job_failure`); without RQ, call it yourself.
    """
    with connection():
        if not tracker.start():
            return NOT_RUNNING
        return run_guarded(tracker, config, lambda: _run(document_id, tracker, config, prepare))


def run_guarded(tracker: JobTracker, config: Mapping[str, Any], body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``body()`` of a started job of the document pipeline (a document job, a big document's
    part or join: ``jobs/document_parts.py``), its exceptions made the errors the state machine
    records: :class:`JobError` as it is; the database or Redis away raised as is (transient);
    RQ's time limit as ``timeout``; anything else ``internal_error`` with its type and message.

    Returns:
        What ``body`` returned.

    Raises:
        JobError, OperationalError, InterfaceError, redis ConnectionError: see above.
    """
    try:
        return body()
    except JobError:
        raise
    except (OperationalError, InterfaceError, RedisConnectionError):
        # The database or Redis is away: raised as is, so the failure callback counts it
        # transient (webapp.core.protocol.states.describe_failure) and RQ retries the job.
        raise
    except JobTimeoutException as exc:
        limit = getattr(tracker.rq_job, "timeout", None) or get_kind("document").time_limit(config)
        rule = (f", {tracker.ocr_pages} of them for pages read by OCR (OCR_SECONDS_PER_PAGE)"
                if tracker.ocr_pages else "")
        raise JobError(f"processing took longer than the {limit} s limit{rule} "
                       f"(stopped during {tracker.stage or 'start-up'})", code="timeout") from exc
    except Exception as exc:
        log.exception("job %s: unexpected error", tracker.job_id)
        raise JobError(f"unexpected error during {tracker.stage or 'start-up'}: {type(exc).__name__}: {exc}",
                       code="internal_error") from exc


def _run(document_id: str, tracker: JobTracker, config: Mapping[str, Any],
         prepare: Callable[[Document, JobTracker, Mapping[str, Any]], None] | None = None) -> dict[str, Any]:
    document = Document.get_or_none(Document.id == document_id)
    if document is None:
        raise JobError(f"document {document_id} does not exist", code="not_found")
    if prepare is not None:
        prepare(document, tracker, config)

    tracker.set_progress("extract", 0)
    begin_stage("extract")  # one log line per stage as it ends (webapp/core/logs.py)
    try:
        data = storage_from_config(config).get(document.storage_key)
    except StorageError as exc:
        raise JobError(f"the uploaded file could not be read from storage: {exc}",
                       code="storage_unavailable" if exc.transient else "file_missing", transient=exc.transient) from exc
    extraction = extract(
        data,
        document.content_type,
        password=document_password(document, config),
        on_page=lambda done, total, stage=None: _page_read(tracker, config, done, total, stage),
        # A PDF of more than SPLIT_PDF_PAGES pages is only counted, then read in parts (_split).
        limits=replace(Limits.from_config(config), split_above=config.get("SPLIT_PDF_PAGES") or None),
        web_page=(document.source_url or "").startswith(("http://", "https://")),
    )
    if extraction.split:
        return _split(document, tracker, config, extraction.page_count)

    tracker.set_progress("chunk", EXTRACT_END)
    begin_stage("chunk")
    chunks = chunk_pages(extraction.pages, config["CHUNK_SIZE"], config["CHUNK_OVERLAP"],
                         max_chunks=config["MAX_DOCUMENT_CHUNKS"])

    tracker.set_progress("embed", CHUNK_END)
    begin_stage("embed")
    embedder = embedder_from_config(config)
    try:
        vectors = embedder.embed(
            [embedding_text(chunk) for chunk in chunks],
            on_batch=lambda done, total: tracker.set_progress(
                "embed", CHUNK_END + (EMBED_END - CHUNK_END) * done // max(total, 1)
            ),
        )
    except EmbeddingError as exc:
        raise JobError(f"embedding failed: {exc}", code="embedding_unavailable" if exc.transient else "embedding_failed",
                       transient=exc.transient) from exc

    tracker.set_progress("store", EMBED_END)
    begin_stage("store")
    result = document_result(document.id, extraction, len(chunks), embedder.name)
    if not store_chunk_set(document.id, chunks, vectors, embedder.name, extraction, config,
                           finish=lambda: bool(tracker.finish_query(result).execute())):
        # Canceled or ended by someone else meanwhile: the database was kept as it was.
        return {"skipped": "the job row changed while the job ran"}
    tracker.finished()
    end_stage()
    metrics.count_document(pages=extraction.page_count, chunks=len(chunks))
    return result


def _split(document: Document, tracker: JobTracker, config: Mapping[str, Any], pages: int) -> dict[str, Any]:
    """A PDF of more than ``SPLIT_PDF_PAGES`` pages: this job becomes its coordinator. Its
    page-range parts and deferred join are committed and the parts enqueued
    (:func:`webapp.core.workflows.page_parts.split_document`); this run ends there, its row
    staying ``started`` (stage ``parts``, ``pages_done``/``pages_total``) until the join
    (``jobs/document_parts.py``) finishes it with the document's chunks.

    Returns:
        ``{"document_id", "pages", "split": True, "parts_started": [part job ids]}`` (RQ's result
        of this run; the row's ``result`` is the join's).

    Raises:
        JobError: ``queue_unavailable`` (transient) when Redis refused the parts.
    """
    try:
        started = split_document(tracker.job_id, document.id, pages, int(config["SPLIT_PART_PAGES"]))
    except QueueUnavailable as exc:
        raise JobError(str(exc), code="queue_unavailable", transient=True) from exc
    if tracker.rq_job is not None:  # what the API shows of RQ's meta while the row is started
        tracker.rq_job.meta.update(stage=PARTS_STAGE, progress=PARTS_START)
        tracker.rq_job.save_meta()
    end_stage()
    return {"document_id": document.id, "pages": pages, "split": True, "parts_started": started}


def _page_read(tracker: JobTracker, config: Mapping[str, Any], done: int, total: int, stage: str | None) -> None:
    """Progress of the extraction (``on_page`` of :func:`jobs.extract.extract`): stage ``ocr``
    while pages are read by OCR, ``extract`` otherwise. Before each page read by OCR, the job's
    time limit grows by ``OCR_SECONDS_PER_PAGE`` seconds: the limit is ``DOCUMENT_JOB_TIMEOUT`` +
    ``OCR_SECONDS_PER_PAGE`` × pages read by OCR so far (RQ fixes it at enqueue, when no one
    has read the file; :func:`webapp.core.compat.rq_private.extend_time_limit`).

    Raises:
        JobStopped: the row was canceled or stopped meanwhile (:meth:`JobTracker.set_progress`).
    """
    if stage == OCR_NEXT:
        tracker.ocr_pages += 1
        extend_time_limit(tracker.rq_job, int(config.get("OCR_SECONDS_PER_PAGE", 30)))
    tracker.set_progress(OCR_STAGE if stage in (OCR_STAGE, OCR_NEXT) else "extract", EXTRACT_END * done // total)


def document_password(document: Document, config: Mapping[str, Any]) -> str | None:
    """The document's PDF password, decrypted (it rests encrypted, :mod:`webapp.core.encryption`),
    for the document job and its page-range parts (:mod:`jobs.document_parts`); ``None`` when the
    upload gave none or the job ended and it was forgotten.

    Raises:
        JobError: ``password_unreadable`` when no configured key decrypts it (``SECRET_KEY``
            changed without ``SECRET_KEY_FALLBACKS``); upload the file again with its password.
    """
    if not document.password:
        return None
    try:
        return decrypt_secret(config, document.password)
    except DecryptionError as exc:
        raise JobError(f"{exc}; upload the file again with its password", code="password_unreadable") from None


def warm_up(app) -> None:
    """The document kind's ``warm_up`` (run by the worker command before it forks): every parser
    (pypdfium2, python-docx, lxml, charset-normalizer), the chunker and the configured embedder run
    once on a tiny document of each type made here in memory, so their lazy imports and caches
    are filled in the process the worker processes are forked from. Opens no socket and no
    database connection (an OpenAI embedder is built and its client's parts loaded, never called).

    Args:
        app: the Flask app whose configuration selects the embedder and chunk sizes.
    """
    config = app.config
    texts = []
    for content_type, data in _samples().items():
        try:
            # In this process (no memory limit, so no reader process): the lazy imports and caches
            # filled here are the ones every reader process forked from a worker process inherits.
            extraction = extract(data, content_type, limits=Limits(max_memory=None))
        except DocumentError:  # the sample PDF is a blank page: "no readable text"
            continue
        texts.extend(chunk.text for chunk in chunk_pages(extraction.pages, config["CHUNK_SIZE"], config["CHUNK_OVERLAP"]))
    embedder = embedder_from_config(config)
    if embedder_kind(config) != "openai":  # embedding with OpenAI would send a request
        embedder.embed(texts)
    else:
        embedder.load()
    filetypes.detect_content_type(b"warm-up text", "warm-up.txt")
    log.info("document job warmed up (parsers, chunker, %s)", embedder.name)


def _samples() -> dict[str, bytes]:
    """A tiny document of every supported type, made in memory with the parsers' own libraries."""
    import docx
    import pypdfium2 as pdfium

    from webapp.core import filetypes

    pdf = pdfium.PdfDocument.new()
    pdf.new_page(200, 200)
    pdf_bytes = io.BytesIO()
    pdf.save(pdf_bytes)
    pdf.close()
    word = docx.Document()
    word.add_paragraph("Docket warms up its Word parser.")
    word.add_table(rows=1, cols=2).rows[0].cells[0].text = "cell"
    word_bytes = io.BytesIO()
    word.save(word_bytes)
    return {
        filetypes.PDF: pdf_bytes.getvalue(),
        filetypes.DOCX: word_bytes.getvalue(),
        filetypes.HTML: b"<!doctype html><html><body><p>Docket warms up its HTML parser.</p></body></html>",
        filetypes.TEXT: "Docket warms up its text decoder. Ünïcödé.".encode(),
    }


def stored_uploads() -> Iterator[str]:
    """The document kind's ``owns`` hook: the storage key of every document's upload (the orphans
    job keeps them). One pass over the column."""
    for (key,) in Document.select(Document.storage_key).tuples().iterator():
        yield key


def document_result(document_id: str, extraction: Any, chunks: int, model: str) -> dict[str, Any]:
    """A finished document job's result (its row's ``result``, RQ's return value), the same for
    a document read whole and one joined from page-range parts (:mod:`jobs.document_parts`, which
    adds ``parts`` and ``reused``).

    Args:
        document_id: the document.
        extraction: what the readers found (page count, characters, OCR'd pages, warnings).
        chunks: how many chunks were stored.
        model: the embedder's name (the vector space).

    Returns:
        ``{"document_id", "pages", "chars", "chunks", "ocr_pages", "warnings", "embedding_model"}``.
    """
    return {
        "document_id": document_id,
        "pages": extraction.page_count,
        "chars": extraction.chars,
        "chunks": chunks,
        "ocr_pages": extraction.ocr_pages,
        "warnings": extraction.warnings,
        "embedding_model": model,
    }


def store_chunk_set(document_id: str, chunks: list, vectors: Any, model: str, extraction: Any,
                    config: Mapping[str, Any], finish: Callable[[], bool]) -> bool:
    """Replace document ``document_id``'s chunks with ``chunks`` in one transaction — exactly one
    chunk set: ordinals 0…n−1, ``chunk_count`` = n — together with the document's facts and the
    job's guarded finish. Used by the document job and by the join of a split document
    (:mod:`jobs.document_parts`).

    Args:
        document_id: the document.
        chunks: its chunks (``jobs.chunking.Chunk``), in ordinal order.
        vectors: their embeddings, one row per chunk (a NumPy array, ``(n, dimensions)``).
        model: the embedder's name (the vector space the vectors belong to).
        extraction: what the readers found (page count, characters, OCR'd pages, warnings).
        config: the app's configuration (for the document's index digest).
        finish: called inside the transaction after the writes; runs the guarded ``UPDATE … WHERE``
            of the job(s) that end here and returns whether they all matched.

    Returns:
        ``True`` once committed; ``False`` when ``finish`` said no (the job was canceled or ended
        meanwhile): the transaction was rolled back, the database is as it was.

    Raises:
        peewee.DatabaseError: the database failed (nothing was written).
    """
    rows = [
        {
            "document": document_id, "ordinal": chunk.ordinal, "page_start": chunk.page_start,
            "page_end": chunk.page_end, "text": chunk.text, "headings": chunk.headings, "ocr": chunk.ocr,
            "ocr_confidence": chunk.ocr_confidence, "embedding_model": model,
            "dimensions": int(vectors.shape[1]), "embedding": to_blob(vector),
        }
        for chunk, vector in zip(chunks, vectors)
    ]
    database = Document._meta.database
    if rows:  # PostgreSQL: the vector space's HNSW index, before (not inside) the writing transaction
        ensure_vector_index(database, model, int(vectors.shape[1]))
    with database.atomic() as transaction:
        Chunk.delete().where(Chunk.document == document_id).execute()
        for start in range(0, len(rows), INSERT_BATCH):
            Chunk.insert_many(rows[start:start + INSERT_BATCH]).execute()
        store_vectors(database, document_id, [chunk.ordinal for chunk in chunks], vectors)
        Document.update(
            pages=extraction.page_count,
            chars=extraction.chars,
            chunk_count=len(chunks),
            warnings=extraction.warnings,
            ocr_pages=extraction.ocr_pages,
            extractor_version=EXTRACTOR_VERSION,
            # What made these chunks, committed with them: a reindex finds the document current.
            index_digest=index_digest(config),
            password=None,
        ).where(Document.id == document_id).execute()
        if not finish():
            transaction.rollback()
            return False
    return True
