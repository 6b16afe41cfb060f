"""Big documents: a PDF read by page-range parts whose results join exactly once.

A document job whose PDF has more than ``SPLIT_PDF_PAGES`` pages becomes the **coordinator**
(``jobs/document_parts.py``): it reads no page, but commits, in one transaction, a ``document_part``
row per ``SPLIT_PART_PAGES`` pages (params ``{document_id, first_page, last_page}``, on ``default``,
the document's owner) and one ``document_join`` row, ``deferred`` — both with ``parent_id`` = the
document job — then enqueues the parts through :func:`webapp.core.protocol.launch.enqueue_jobs`
(row committed before enqueue, job id = row id). Its RQ job then ends; its row stays ``started``
(the document is being processed) with ``stage`` ``parts`` and ``pages_done``/``pages_total``,
until the join finishes it. Every part is an ordinary job: any worker process runs it, its
automatic retries, cancel, reconcile and the worker pool's crash handling are the protocol's.

* **The join is released exactly once**, like a batch's callback (:mod:`webapp.core.workflows.chords`):
  whenever a part finishes (:data:`~webapp.core.protocol.states.job_ended`, after its commit),
  :func:`release_join` runs one guarded ``UPDATE job SET status = 'queued' WHERE id = <join> AND
  status = 'deferred' AND NOT EXISTS (a part of the document job not finished) AND EXISTS (the
  document job, started)``. However many parts finish at once or run twice, one caller wins.
* **A part that fails fails the document job** with a sentence naming its pages
  (``"pages 101–125: …"``) and the part's ``error_code``; the other parts go on, so that a retry of
  the document job (``POST /api/jobs/<id>/retry``) re-runs only the parts that did not finish
  (failed, stopped or canceled ones; finished ones keep what they staged) and then the join.
* **Cancel stops every part**: the document job ``stopped`` or ``canceled`` cancels its waiting
  parts and its join, and stops its running parts (RQ's stop-job command, :mod:`webapp.core.protocol.control`).
* **A killed worker loses only its part**: the part's row is retried by the protocol (the pool's
  dead-process handling, reconcile), the others are untouched.
* **Nothing is stranded**: reconcile (``jobs/reconcile_job.py``) calls :func:`reconcile_parent`
  for a started document job that has parts (instead of comparing it with its RQ job, which has
  ended): a lost trigger (a part's end, the join's release) is made good there; parts lost with
  Redis are ordinary rows that reconcile enqueues again.

This module is the core's part of it (rows, transitions, triggers); reading, chunking, embedding
and storing are the job path's (``jobs/document_parts.py``).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask
from peewee import fn

from webapp.core.db import connection, db
from webapp.core.models import Job, utcnow
from webapp.core.protocol import events as job_events
from webapp.core.protocol.control import cancel_job
from webapp.core.protocol.launch import QueueUnavailable, enqueue_jobs, new_job
from webapp.core.protocol.states import (
    DEFERRED, FAILED, FINISHED, QUEUED, RETRYABLE, STARTED, STOPPED, CANCELED, TERMINAL, JobStateError,
    after_terminal, job_ended, mark_requeued, transition,
)

log = logging.getLogger(__name__)

PART_KIND = "document_part"
JOIN_KIND = "document_join"
PARTS_STAGE = "parts"  # the document job's stage while its parts run
# The document job's progress (0–100 %) while its parts run: from PARTS_START to PARTS_END as
# pages are read; the join goes on from there.
PARTS_START, PARTS_END = 5, 85


def init_app(app: Flask) -> None:
    """Follow parts and joins as they end: connect :func:`on_job_end` to ``job_ended`` for ``app``."""
    job_ended.connect(on_job_end, sender=app)


def page_ranges(total: int, part_pages: int) -> list[tuple[int, int]]:
    """``[(first, last), …]``: pages 1–``total`` in consecutive ranges of ``part_pages`` pages
    (the last one shorter), 1-based and inclusive."""
    return [(first, min(total, first + part_pages - 1)) for first in range(1, total + 1, part_pages)]


def pages_label(first: int, last: int) -> str:
    """``"pages 101–125"`` (``"page 7"`` for one page): how a part is named in sentences."""
    return f"page {first:,}" if first == last else f"pages {first:,}–{last:,}"


def split_document(job_id: str, document_id: str, total_pages: int, part_pages: int) -> list[str]:
    """The coordinator's work: make document job ``job_id`` wait for page-range parts, and start them.

    The first time (no parts yet): the part rows and the deferred join are committed in one
    transaction with the document job's ``pages_total``, ``pages_done`` = 0 and stage ``parts``
    (guarded: the document job must still be ``started``; canceled meanwhile, nothing is made),
    then the parts are enqueued. Again (a retry of the document job, or RQ delivering it twice):
    nothing new is made; parts that did not finish and are not running or waiting (failed,
    stopped, canceled) go back to ``queued`` and are enqueued, a join that ended without finishing
    is replaced by a new deferred one, and the join is released if every part has finished already.
    Needs an app context and a database connection, and no open transaction.

    Args:
        job_id: the document job (its row ``started``, run by the caller).
        document_id: its document.
        total_pages: the PDF's pages.
        part_pages: pages per part (``SPLIT_PART_PAGES``).

    Returns:
        The ids of the parts enqueued now.

    Raises:
        QueueUnavailable: Redis refused the parts (they are marked ``failed``, and so is the
            document job, by :func:`on_job_end`); the document job's retry starts them again.
        peewee.DatabaseError: the database is unavailable (the document job is retried).
    """
    parent = Job.find(job_id)
    if parent is None:
        return []
    existing = list(Job.select().where(Job.parent_id == job_id))
    if not existing:
        # No ``document`` on these rows: the state machine forgets a document's PDF password when
        # a job of it ends, and the parts still to run need it (the document job's end forgets it).
        parts = [new_job(PART_KIND, {"document_id": document_id, "first_page": first, "last_page": last},
                         owner=parent.owner) for first, last in page_ranges(total_pages, part_pages)]
        join = new_job(JOIN_KIND, {"document_id": document_id, "job_id": job_id}, owner=parent.owner, status=DEFERRED)
        for row in (*parts, join):
            row.parent_id = job_id
        with db.database.atomic() as transaction:
            marked = (Job.update(pages_total=total_pages, pages_done=0, stage=PARTS_STAGE, progress=PARTS_START,
                                 updated_at=utcnow())
                      .where(Job.id == job_id, Job.status == STARTED).execute())
            if not marked:
                transaction.rollback()
                return []
            for row in (*parts, join):
                row.save(force_insert=True)
        _publish(job_id)
        enqueue_jobs(parts)
        log.info("document job %s: %d pages split into %d parts", job_id, total_pages, len(parts))
        return [part.id for part in parts]
    again = [row.id for row in existing if row.kind == PART_KIND and row.status in RETRYABLE and mark_requeued(row.id)]
    if not any(row.kind == JOIN_KIND and row.status not in RETRYABLE for row in existing):
        # Its join ended unfinished (canceled with the document job, failed): a new one waits.
        # (The state machine never moves a canceled or stopped row but to queued on request.)
        join = new_job(JOIN_KIND, {"document_id": document_id, "job_id": job_id}, owner=parent.owner, status=DEFERRED)
        join.parent_id = job_id
        with db.database.atomic():
            join.save(force_insert=True)
    Job.update(pages_total=total_pages, stage=PARTS_STAGE, updated_at=utcnow()).where(
        Job.id == job_id, Job.status == STARTED).execute()
    refresh_pages(job_id)
    if again:
        enqueue_jobs(list(Job.by_id(again).values()))
        log.info("document job %s: parts %s started again", job_id, again)
    release_join(job_id)
    return again


def release_join(job_id: str) -> str | None:
    """Enqueue document job ``job_id``'s deferred join if every one of its parts has finished and
    the document job is still ``started`` (one guarded ``UPDATE``: exactly once, see the module
    docstring). Needs an app context and a database connection.

    Returns:
        The join's id if it was released now, else ``None``.

    Raises:
        peewee.DatabaseError: the database is unavailable (reconcile tries again later).
    """
    join_id = (Job.select(Job.id).where(Job.parent_id == job_id, Job.kind == JOIN_KIND, Job.status == DEFERRED)
               .scalar())
    if join_id is None:
        return None
    part, parent = Job.alias("part"), Job.alias("parent")
    unfinished = part.select(part.id).where(part.parent_id == job_id, part.kind == PART_KIND, part.status != FINISHED)
    running = parent.select(parent.id).where(parent.id == job_id, parent.status == STARTED)
    if not transition(join_id, QUEUED, from_=frozenset({DEFERRED}), when=~fn.EXISTS(unfinished) & fn.EXISTS(running)):
        return None
    try:
        enqueue_jobs([Job.find(join_id)])
    except QueueUnavailable:
        log.error("document job %s: its join %s could not be enqueued (marked failed)", job_id, join_id)
        return join_id
    log.info("document job %s: every part finished; join %s enqueued", job_id, join_id)
    return join_id


def refresh_pages(job_id: str) -> None:
    """Set document job ``job_id``'s ``pages_done`` to the pages its parts have read (each part's
    ``pages_done``: all of its pages once it finished), its progress accordingly, and publish the
    change as a live event. Only while it is ``started``. Needs a database connection."""
    part = Job.alias("part")
    done = part.select(fn.COALESCE(fn.SUM(part.pages_done), 0)).where(part.parent_id == job_id,
                                                                       part.kind == PART_KIND)
    total = Job.select(Job.pages_total).where(Job.id == job_id).scalar() or 0
    if not total:
        return
    pages = done.scalar() or 0
    changed = (Job.update(pages_done=pages, progress=PARTS_START + (PARTS_END - PARTS_START) * pages // total,
                          updated_at=utcnow())
               .where(Job.id == job_id, Job.status == STARTED, Job.stage == PARTS_STAGE).execute())
    if changed:
        _publish(job_id)


def record_part_pages(part_id: str, parent_id: str, pages_done: int) -> bool:
    """A running part read ``pages_done`` of its pages: its row and its document job's
    ``pages_done`` follow (:func:`refresh_pages`). Needs a database connection.

    Returns:
        ``False`` when the part's row is no longer ``started`` (canceled or stopped: the part stops).
    """
    changed = Job.update(pages_done=pages_done, updated_at=utcnow()).where(
        Job.id == part_id, Job.status == STARTED).execute()
    if changed:
        refresh_pages(parent_id)
    return bool(changed)


def fail_parent(job_id: str, message: str, code: str) -> bool:
    """Document job ``job_id`` (``started``) → ``failed`` with ``message`` and ``code``, and what
    follows a terminal state (:func:`~webapp.core.protocol.states.after_terminal`). Returns whether
    the row changed (not when it is no longer ``started``: stopped, failed already, or queued for
    its retry, which starts the part again)."""
    with connection() as database:
        with database.atomic():
            changed = transition(job_id, FAILED, from_=frozenset({STARTED}), error=message[:1000], error_code=code,
                                 ended_at=utcnow(), retry_at=None)
        if changed:
            after_terminal(job_id)
    return changed


def on_job_end(app: Flask, row: dict[str, Any], **_: Any) -> None:
    """``job_ended`` receiver (after the row's commit; needs a database connection):

    * a part finished: its document job's ``pages_done`` follows and the join may be released;
    * a part or the join failed, stopped or was canceled: its document job fails, naming the
      part's pages (``"pages 101–125: …"``) — only a ``started`` one;
    * a document job with parts stopped or was canceled: every part and the join that has not
      ended is canceled (waiting) or stopped (running).
    """
    parent_id = row.get("parent_id")
    kind, status = row.get("kind"), row.get("status")
    if parent_id and kind == PART_KIND:
        if status == FINISHED:
            refresh_pages(parent_id)
            release_join(parent_id)
            return
        params = Job.select(Job.params).where(Job.id == row["id"]).scalar() or {}
        where = pages_label(params.get("first_page", 0), params.get("last_page", 0))
        if fail_parent(parent_id, f"{where}: {row.get('error') or status}", row.get("error_code") or status):
            log.warning("document job %s failed: its part %s (%s) %s", parent_id, row["id"], where, status)
        return
    if parent_id and kind == JOIN_KIND:
        if status != FINISHED:
            fail_parent(parent_id, row.get("error") or f"the join of its parts was {status}",
                        row.get("error_code") or status)
        return
    if status in (STOPPED, CANCELED):
        stop_parts(row["id"])


def stop_parts(job_id: str) -> list[str]:
    """Cancel (waiting) or stop (running) every part and the join of document job ``job_id`` that
    has not ended (:func:`webapp.core.protocol.control.cancel_job`, without waiting for a running
    part's worker). Needs an app context and a database connection.

    Returns:
        The ids canceled or stopped.
    """
    ended = []
    for part_id in [row.id for row in Job.select(Job.id).where(Job.parent_id == job_id,
                                                               Job.status.not_in(tuple(TERMINAL)))]:
        try:
            cancel_job(part_id, wait=0)
            ended.append(part_id)
        except JobStateError:
            pass  # it ended meanwhile
    if ended:
        log.info("document job %s ended: its parts/join %s canceled or stopped", job_id, ended)
    return ended


def reconcile_parent(job_id: str) -> list[str]:
    """Reconcile's check of a ``started`` document job with parts (its RQ job has ended by
    design): a part that ended without finishing fails it (that part's end was lost with its
    process), every part finished releases the join. Needs an app context and a database connection.

    Returns:
        The join's id if it was released, else ``[]``.
    """
    failed = (Job.select(Job.id, Job.kind, Job.status, Job.error, Job.error_code, Job.parent_id)
              .where(Job.parent_id == job_id, Job.kind.in_((PART_KIND, JOIN_KIND)),
                     Job.status.in_((FAILED, STOPPED, CANCELED))).dicts().first())
    if failed is not None:
        on_job_end(None, failed)
        return []
    released = release_join(job_id)
    return [released] if released else []


def parents_among(job_ids: list[str]) -> set[str]:
    """The ids among ``job_ids`` that have parts (document jobs split into page ranges)."""
    if not job_ids:
        return set()
    return {parent for (parent,) in Job.select(Job.parent_id).where(Job.parent_id.in_(job_ids))
            .distinct().tuples()}


def _publish(job_id: str) -> None:
    """Publish document job ``job_id``'s row as a live event (its pages changed)."""
    row = (Job.select(*[getattr(Job, name) for name in job_events.EVENT_COLUMNS]).where(Job.id == job_id)
           .dicts().first())
    if row is not None:
        job_events.publish(row)
