"""Chords: a batch's callback job, run once after every document job of the batch ended.

A multi-file upload may ask for a ``documents`` report of its files (``report=documents``): the
group is the batch's document jobs, the callback the report job (Celery's ``chord``). The
design is the database's, not RQ's ``depends_on``:

* **The row waits, not Redis.** The callback's Job row is committed with the batch, status
  ``deferred`` (RQ's word for a job waiting on others) and the batch's ``batch_id``; nothing is
  in Redis until it may run, so a Redis wipe loses nothing and no RQ record has dependencies
  (rq-dashboard 0.9 answers 500 on the page of a job created with ``depends_on``).
* **Released exactly once.** Whenever a job of the batch enters a terminal state (finished,
  failed, stopped, canceled: :data:`webapp.core.protocol.states.job_ended`, after its commit,
  received by :func:`release_on_end`), :func:`release_callbacks` runs one guarded ``UPDATE … SET status = 'queued' WHERE id = ? AND
  status = 'deferred' AND NOT EXISTS (a job of the batch that is not terminal)``. The status
  guard lets one caller win however many jobs end at once or run twice; the ``NOT EXISTS`` is
  evaluated in the same statement, and the last job to commit always sees every other one
  ended. A member retried after the release (by a user, or by RQ delivering it twice) finds the
  callback no longer deferred: the report is not made again.
* **Failures count as ended.** RQ's dependencies wait for success (or need
  ``allow_failure``); a batch's report must also come when some documents failed, and says
  which (``not_finished`` in the report).
* **Nothing is stranded.** A trigger lost with its process (killed between the member's commit
  and the release) is made good by reconcile, which releases the deferred callback of a batch
  that has ended.
"""

from __future__ import annotations

import logging

from typing import Any

from flask import Flask
from peewee import fn

from webapp.core.protocol.states import DEFERRED, QUEUED, TERMINAL, job_ended, transition
from webapp.core.protocol.launch import QueueUnavailable, enqueue_jobs
from webapp.core.models import Document, Job

log = logging.getLogger(__name__)


def init_app(app: Flask) -> None:
    """Release ``app``'s batch callbacks as batches end: connect :func:`release_on_end` to
    :data:`webapp.core.protocol.states.job_ended` for this app."""
    job_ended.connect(release_on_end, sender=app)


def release_on_end(app: Flask, row: dict[str, Any], **_: Any) -> None:
    """``job_ended`` receiver: a job of a batch ended, so the batch's deferred callbacks may
    run now (:func:`release_callbacks`; one ``SELECT`` when the batch has none waiting, e.g.
    when the callback itself ended). Needs a database connection (the state machine's)."""
    if row["batch_id"]:
        release_callbacks(row["batch_id"])


def release_callbacks(batch_id: str) -> list[str]:
    """Enqueue the deferred callback jobs of batch ``batch_id`` if every document job of the
    batch is terminal (see the module docstring). Needs an app context and a database connection.

    Returns:
        The ids of the callback jobs released now (empty: none deferred, the batch has not
        ended, or another caller released them).

    Raises:
        peewee.DatabaseError: the database is unavailable (reconcile tries again later).
    """
    waiting = [row.id for row in Job.select(Job.id).where(Job.batch_id == batch_id, Job.status == DEFERRED)]
    if not waiting:
        return []
    member = Job.alias("member")
    still_running = (Document.select(Document.id)
                     .join(member, on=(member.id == Document.job_id))
                     .where(Document.batch_id == batch_id, member.status.not_in(tuple(TERMINAL))))
    released = [job_id for job_id in waiting
                if transition(job_id, QUEUED, from_=frozenset({DEFERRED}), when=~fn.EXISTS(still_running))]
    if released:
        try:
            enqueue_jobs(list(Job.by_id(released).values()))
        except QueueUnavailable:
            log.error("batch %s: callback job(s) %s could not be enqueued (marked failed)", batch_id, released)
            return released
        log.info("batch %s ended: callback job(s) %s enqueued", batch_id, released)
    return released
