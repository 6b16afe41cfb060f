"""Big documents: a PDF's page-range parts and their join (kinds ``document_part``, ``document_join``).

A document job whose PDF has more than ``SPLIT_PDF_PAGES`` pages becomes their coordinator
(:func:`jobs.document_job._split`; the rows, triggers, cancel and retry are
:mod:`webapp.core.workflows.page_parts`'s). Each **part** (:func:`process_part`) reads pages
``first_page``–``last_page`` in a reader process (:func:`jobs.extract.extract_pdf_pages`, under
``MAX_DOCUMENT_MEMORY`` like a whole document), chunks and embeds them as if they were a document
of their own, and stages what it read in ``part_pages`` (one row per part, replaced by a second
run, so double delivery leaves one). The **join** (:func:`join_parts`), released once every part
finished, makes the document's one chunk set in one transaction and finishes the document job.

Why chunks equal the single job's: the chunker reads sections across pages (a section, a
paragraph, a chunk may run over a page break, and a heading's path is the document's), and the
headings found by font size need the whole document's body size. So the join does not glue the
parts' chunks: it joins what the parts *read* — each page's text and structure notes — finishes the
structure over the whole document (:func:`jobs.readers.pdf.finish_pdf`) and chunks it whole
(:func:`jobs.chunking.chunk_pages`, ≈2 % of a text PDF's time): chunks, ordinals, pages and
headings are the single job's by construction (``tests/jobs/test_document_parts.py`` compares them).
What the parts' own chunks buy is their **vectors** (embedding is ≈ a quarter of the time): the
join reuses the vector of every chunk whose embedded text (headings + text,
:func:`jobs.chunking.embedding_text`) a part embedded, keyed by its SHA-256, and embeds only the
others — the chunks a part boundary or a heading path begun before the part changed
(``reused`` of ``chunks`` in the document job's result: 97–100 % on geotopo-117p-de.pdf repeated
to 420 pages, 33 % on benchmark 11's PDF, three documents of different body font sizes whose
headings by font size a part alone finds differently).
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any, Mapping

import numpy as np
from flask import current_app

from jobs.chunking import chunk_pages, embedding_text
from jobs.document_errors import DocumentError, JobError
from jobs.document_job import (EMBED_END, EXTRACT_END, document_password, document_result, run_guarded,
                               store_chunk_set)
from jobs.extract import Limits, extract_pdf_pages
from jobs.readers.base import OCR_NEXT, OCR_STAGE
from jobs.readers.pdf import PdfPages, finish_pdf
from jobs.tracking import NOT_RUNNING, ROW_INTERVAL, JobTracker
from webapp.core import metrics
from webapp.core.compat.rq_private import extend_time_limit
from webapp.core.db import connection
from webapp.core.embeddings import EmbeddingError, embedder_from_config
from webapp.core.logs import begin_stage, end_stage
from webapp.core.models import Document, Job, PartPages
from webapp.core.protocol.job_errors import JobStopped
from webapp.core.protocol.states import FINISHED, after_terminal, finish_query, record_progress
from webapp.core.storage import StorageError, storage_from_config
from webapp.core.workflows.page_parts import PARTS_END, pages_label, record_part_pages

log = logging.getLogger(__name__)

JOIN_STAGE = "join"  # the document job's stage while its join runs


def process_part(document_id: str, first_page: int, last_page: int) -> dict[str, Any]:
    """The RQ job of kind ``document_part``: read, chunk and embed pages ``first_page``–``last_page``
    (1-based, inclusive) of document ``document_id``'s PDF and stage them for the join.

    Returns:
        ``{"document_id", "first_page", "last_page", "chars", "chunks", "ocr_pages"}`` (also the
        row's ``result``); ``{"skipped": reason}`` when the row or its document job says not to run.

    Raises:
        RuntimeError: called outside an RQ worker.
        JobError: as the document job's (:func:`jobs.document_job.run_document_job`), for these
            pages; the document job then fails with a sentence naming them
            (:mod:`webapp.core.workflows.page_parts`).
    """
    tracker = JobTracker.for_current_job("process_part")
    config = current_app.config
    with connection():
        row = Job.find(tracker.job_id)
        parent = Job.find(row.parent_id) if row is not None and row.parent_id else None
        if parent is None or parent.status == FINISHED:
            return {"skipped": "its document job is gone or has finished"}
        if not tracker.start():
            return NOT_RUNNING
        return run_guarded(tracker, config, lambda: _run_part(document_id, first_page, last_page, parent.id,
                                                              tracker, config))


def _run_part(document_id: str, first: int, last: int, parent_id: str, tracker: JobTracker,
              config: Mapping[str, Any]) -> dict[str, Any]:
    document = _document(document_id)
    count = last - first + 1
    record_part_pages(tracker.job_id, parent_id, 0)
    tracker.set_progress("extract", 0)
    begin_stage("extract")
    data = _upload(document, config)
    reported = [time.monotonic()]

    def on_page(done: int, total: int, stage: str | None = None) -> None:
        if stage == OCR_NEXT:  # as the document job: each page read by OCR grows the time limit
            tracker.ocr_pages += 1
            extend_time_limit(tracker.rq_job, int(config.get("OCR_SECONDS_PER_PAGE", 30)))
        read = max(0, min(count, done - first + 1))
        tracker.set_progress(OCR_STAGE if stage in (OCR_STAGE, OCR_NEXT) else "extract", EXTRACT_END * read // count)
        if time.monotonic() - reported[0] >= ROW_INTERVAL:
            reported[0] = time.monotonic()
            if not record_part_pages(tracker.job_id, parent_id, read):
                raise JobStopped(f"the job was stopped during {tracker.stage}")

    pages = extract_pdf_pages(data, document_password(document, config), first, last, on_page=on_page,
                              limits=Limits.from_config(config))
    staged = pages.to_json()

    tracker.set_progress("chunk", EXTRACT_END)
    begin_stage("chunk")
    try:  # these pages as a document of their own: the join reuses the vectors that match
        chunks = chunk_pages(finish_pdf([pages]).pages, config["CHUNK_SIZE"], config["CHUNK_OVERLAP"])
    except DocumentError:  # no text here (the join decides about the whole document)
        chunks = []
    texts = [embedding_text(chunk) for chunk in chunks]

    tracker.set_progress("embed", EXTRACT_END + 10)
    begin_stage("embed")
    embedder = embedder_from_config(config)
    vectors = _embed(embedder, texts, tracker, EXTRACT_END + 10) if texts else None

    tracker.set_progress("store", EMBED_END)
    begin_stage("store")
    result = {"document_id": document.id, "first_page": first, "last_page": last, "chars": sum(
        len("".join(page.text.split())) for page in pages.pages), "chunks": len(chunks),
        "ocr_pages": sum(1 for page in pages.pages if page.ocr)}
    database = Document._meta.database
    with database.atomic() as transaction:
        PartPages.delete().where(PartPages.id == tracker.job_id).execute()
        PartPages.insert(
            id=tracker.job_id, document=document.id, parent_id=parent_id, first_page=first, last_page=last,
            pages=staged, embedding_model=embedder.name if vectors is not None else None,
            dimensions=int(vectors.shape[1]) if vectors is not None else None,
            vector_keys=[_key(text) for text in texts],
            vectors=np.asarray(vectors, dtype="<f4").tobytes() if vectors is not None else None,
        ).execute()
        Job.update(pages_done=count).where(Job.id == tracker.job_id).execute()
        if not tracker.finish_query(result).execute():
            transaction.rollback()
            return {"skipped": "the job row changed while the job ran"}
    tracker.finished()  # job_ended: the document job's pages_done follows; the last part releases the join
    end_stage()
    return result


def join_parts(document_id: str, job_id: str) -> dict[str, Any]:
    """The RQ job of kind ``document_join``: the document's one chunk set from its parts' staged
    pages (see the module docstring), stored with the document and document job ``job_id``'s
    ``finished`` in one transaction that rolls back if either row changed meanwhile; the staged
    pages are deleted in it too.

    Returns:
        The document job's result, as a single document job's
        (:func:`jobs.document_job.run_document_job`) plus ``parts`` (how many) and ``reused``
        (chunks whose vector a part had made); ``{"skipped": reason}`` when the row says not to run.

    Raises:
        RuntimeError: called outside an RQ worker.
        JobError: ``internal_error`` when the parts' staged pages do not cover the document;
            ``too_many_chars``/``too_many_chunks``/``no_text`` for the whole document; the
            embedder's errors as the document job's. The document job then fails with it.
        JobStopped: the document job is no longer running (canceled, failed meanwhile).
    """
    tracker = JobTracker.for_current_job("join_parts")
    config = current_app.config
    with connection():
        if not tracker.start():
            return NOT_RUNNING
        return run_guarded(tracker, config, lambda: _join(document_id, job_id, tracker, config))


def _join(document_id: str, job_id: str, tracker: JobTracker, config: Mapping[str, Any]) -> dict[str, Any]:
    document = _document(document_id)
    if not record_progress(job_id, JOIN_STAGE, PARTS_END):
        raise JobStopped("its document job is no longer running")
    tracker.set_progress("chunk", 0)
    begin_stage("chunk")
    rows = list(PartPages.select().where(PartPages.parent_id == job_id).order_by(PartPages.first_page))
    parts = [PdfPages.from_json(row.pages) for row in rows]
    _check_cover(parts)
    extraction = finish_pdf(parts, config["MAX_DOCUMENT_CHARS"])
    chunks = chunk_pages(extraction.pages, config["CHUNK_SIZE"], config["CHUNK_OVERLAP"],
                         max_chunks=config["MAX_DOCUMENT_CHUNKS"])

    tracker.set_progress("embed", 30)
    begin_stage("embed")
    embedder = embedder_from_config(config)
    known: dict[str, np.ndarray] = {}
    for row in rows:
        if row.embedding_model == embedder.name and row.vectors and row.vector_keys:
            staged = np.frombuffer(row.vectors, dtype="<f4").reshape(len(row.vector_keys), row.dimensions)
            known.update(zip(row.vector_keys, staged))
    texts = [embedding_text(chunk) for chunk in chunks]
    keys = [_key(text) for text in texts]
    missing = [index for index, key in enumerate(keys) if key not in known]
    if chunks and not missing:
        vectors = np.stack([known[key] for key in keys])
    else:
        fresh = _embed(embedder, [texts[index] for index in missing], tracker, 30)
        vectors = np.zeros((len(chunks), fresh.shape[1]), dtype=np.float32)
        for index, vector in zip(missing, fresh):
            vectors[index] = vector
        for index, key in enumerate(keys):
            if key in known:
                vectors[index] = known[key]

    tracker.set_progress("store", EMBED_END)
    begin_stage("store")
    result = {**document_result(document.id, extraction, len(chunks), embedder.name),
              "parts": len(parts), "reused": len(chunks) - len(missing)}

    def finish() -> bool:  # the document job's and this join's guarded finish, the staged pages gone
        Job.update(pages_done=Job.pages_total).where(Job.id == job_id).execute()
        if not finish_query(job_id, result).execute() or not tracker.finish_query(result).execute():
            return False
        PartPages.delete().where(PartPages.parent_id == job_id).execute()
        return True

    # As the document job stores (one chunk set, ordinals 0..n-1, chunk_count = n), plus the
    # document job's finish and the staged pages' deletion.
    if not store_chunk_set(document.id, chunks, vectors, embedder.name, extraction, config, finish):
        return {"skipped": "the document job or the join's row changed while the join ran"}
    after_terminal(job_id)  # the document job's event, webhook, batch report
    tracker.finished()
    end_stage()
    metrics.count_document(pages=extraction.page_count, chunks=len(chunks))
    return result


def _check_cover(parts: list[PdfPages]) -> None:
    """Raise ``internal_error`` unless ``parts`` cover pages 1 to the PDF's last, each once, in order."""
    expected = 1
    for part in parts:
        if part.first != expected:
            break
        expected = part.last + 1
    else:
        if parts and expected == parts[-1].total + 1:
            return
    raise JobError(f"the parts' pages are incomplete: {pages_label(expected, expected)} was not read by any part",
                   code="internal_error")


def _document(document_id: str) -> Document:
    document = Document.get_or_none(Document.id == document_id)
    if document is None:
        raise JobError(f"document {document_id} does not exist", code="not_found")
    return document


def _upload(document: Document, config: Mapping[str, Any]) -> bytes:
    """The stored upload's bytes. Raises :class:`JobError` as the document job does."""
    try:
        return storage_from_config(config).get(document.storage_key)
    except StorageError as exc:
        raise JobError(f"the uploaded file could not be read from storage: {exc}",
                       code="storage_unavailable" if exc.transient else "file_missing", transient=exc.transient) from exc


def _embed(embedder, texts: list[str], tracker: JobTracker, start: int) -> np.ndarray:
    """``texts`` embedded, progress from ``start`` to ``EMBED_END``. Raises :class:`JobError` as
    the document job does (``embedding_unavailable`` transient, ``embedding_failed``)."""
    try:
        return embedder.embed(texts, on_batch=lambda done, total: tracker.set_progress(
            "embed", start + (EMBED_END - start) * done // max(total, 1)))
    except EmbeddingError as exc:
        raise JobError(f"embedding failed: {exc}", code="embedding_unavailable" if exc.transient else "embedding_failed",
                       transient=exc.transient) from exc


def _key(text: str) -> str:
    """A chunk's embedded text's key among the staged vectors: its SHA-256, hex."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
