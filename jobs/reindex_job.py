"""The reindex job (kind ``reindex``, queue ``high``): process again, at a bounded rate, every
document a settings change left stale (:mod:`webapp.core.indexing`).

``POST /api/admin/reindex`` launches it (one at a time). A run:

1. **selects** the stale documents against the worker's own configuration (the one its document
   jobs embed and chunk with), oldest first;
2. **launches** a document job for each through the shared loop
   (:func:`webapp.core.relaunch.relaunch_documents`): ``REINDEX_RATE`` per second at most, and
   never more than ``REINDEX_MAX_QUEUED`` of the jobs it launched waiting at once (it waits while
   that many are queued, so a reindex of 100,000 documents never floods the queue or buries the
   uploads); a document whose job is waiting or running is skipped, not doubled;
3. **waits** until every job it launched has ended, and finishes with the counts.

Progress: the row's ``stage`` (``launching``, ``waiting_for_queue``, ``waiting_for_documents``)
and ``progress`` (documents done of those selected, %), and in the RQ job's meta ``reindex``:
``{"selected", "launched", "skipped", "finished", "failed"}`` (``GET /api/admin/reindex`` shows
them). Cancel (``POST /api/jobs/<id>/cancel``) stops the run where it is: nothing more is
launched, and the document jobs already launched go on.

The run holds one worker process while it paces and waits (sleeping), so the document jobs need
another one: the pool's other processes, or ``HIGH_QUEUE_WORKERS`` taking this job. Before each
wait the run checks whether its own process is the only one listening on the document jobs' queue
(``WORKER_CONCURRENCY=1`` with this job on the pool's only process): waiting would never end, so the
run fails at once with ``no_document_worker`` and says so — the document jobs it launched run as
soon as this process is free, and the next reindex goes on with the documents still stale.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import current_app

from jobs.document_errors import JobError
from jobs.tracking import NOT_RUNNING, JobTracker
from webapp.core.db import connection
from webapp.core.indexing import index_digest, index_recipe, stale_documents
from webapp.core.models import Document, Job
from webapp.core.protocol.kinds import get_kind
from webapp.core.protocol.states import TERMINAL, WAITING
from webapp.core.relaunch import relaunch_documents

log = logging.getLogger(__name__)

DRAIN_POLL_SECONDS = 1.0  # how often the ending of the launched jobs is looked at
WORKER_CHECK_SECONDS = 10.0  # how often a waiting run looks again for another worker of the document jobs
ID_BATCH = 500  # job ids per status query


class LaunchedJobs:
    """The document jobs a run launched that have not ended yet, and how the ended ones ended.

    Only the jobs not yet ended are kept (at most ``REINDEX_MAX_QUEUED`` waiting plus those
    running), so memory and each status query stay small whatever the number of documents.
    """

    def __init__(self) -> None:
        self.pending: set[str] = set()
        self.finished = 0
        self.failed = 0  # failed, stopped or canceled (or their row is gone)
        self.waiting = 0  # of the pending ones, still queued or scheduled at the last look

    def add(self, job_id: str) -> None:
        self.pending.add(job_id)
        self.waiting += 1

    def refresh(self) -> None:
        """Read the pending jobs' statuses: move the ended ones to the counts, count the waiting ones."""
        ids = sorted(self.pending)
        statuses: dict[str, str] = {}
        for start in range(0, len(ids), ID_BATCH):
            batch = ids[start:start + ID_BATCH]
            statuses.update(Job.select(Job.id, Job.status).where(Job.id.in_(batch)).tuples())
        self.waiting = 0
        for job_id in ids:
            status = statuses.get(job_id)
            if status is None or status in TERMINAL:
                self.pending.discard(job_id)
                if status == "finished":
                    self.finished += 1
                else:
                    self.failed += 1
            elif status in WAITING:
                self.waiting += 1


class DocumentWorkerCheck:
    """Whether this job's worker process is the only one listening on the document jobs' queue (RQ's
    worker registry) — then waiting for them can never end — looked at no more than every
    :data:`WORKER_CHECK_SECONDS`."""

    def __init__(self, rq_job, queue_name: str) -> None:
        self.rq_job, self.queue_name, self.checked_at = rq_job, queue_name, float("-inf")

    def require(self, launched: int) -> None:
        """Raise :class:`JobError` ``no_document_worker`` when the only worker that would run the
        document jobs this run waits for is its own (``launched`` so far, for the sentence)."""
        if self.rq_job is None or time.monotonic() - self.checked_at < WORKER_CHECK_SECONDS:
            return
        from rq import Queue, Worker

        connection = self.rq_job.connection
        own = self.rq_job.worker_name
        names = {worker.name for worker in Worker.all(connection=connection,
                                                      queue=Queue(self.queue_name, connection=connection))}
        self.checked_at = time.monotonic()
        # Only this process would take them, and it is busy waiting: a deadlock. (With no worker on
        # that queue at all, the jobs wait like any job until one starts: nothing to say here.)
        if own in names and names == {own}:
            raise JobError(f"no other worker process takes {self.queue_name} jobs, so the {launched} document job(s) "
                           "this reindex launched cannot run while it waits for them; they run once this process is "
                           "free. Run the reindex again then (it goes on with the documents still stale), or give "
                           "the worker more processes (WORKER_CONCURRENCY ≥ 2, or HIGH_QUEUE_WORKERS ≥ 1 for this job)",
                           code="no_document_worker")


def reindex() -> dict[str, Any]:
    """The RQ job: launch a document job for every stale document, bounded, then wait for them.

    Returns:
        ``{"digest", "recipe", "selected", "launched", "skipped", "finished", "failed"}`` — the
        configuration reindexed to, documents selected as stale, document jobs launched, documents
        skipped (their job was waiting or running, or they were deleted), and how the launched
        jobs ended; also the Job row's ``result``. ``{"skipped": reason}`` when the row says not
        to run.

    Raises:
        JobError: ``queue_unavailable`` (transient: retried, and the next run resumes, as the
            documents already done are no longer stale) when Redis refused a launch;
            ``no_document_worker`` when the run would wait for document jobs that no other
            worker process takes (:class:`DocumentWorkerCheck`).
        JobStopped: the job was canceled or stopped (launched document jobs go on).
        RuntimeError: called outside an RQ worker.
    """
    tracker = JobTracker.for_current_job("reindex")
    config = current_app.config
    rate, max_queued = float(config["REINDEX_RATE"]), int(config["REINDEX_MAX_QUEUED"])
    with connection():
        if not tracker.start():
            return NOT_RUNNING
        digest = index_digest(config)
        document_ids = [row.id for row in stale_documents(digest).select(Document.id)]
        launched = LaunchedJobs()
        workers = DocumentWorkerCheck(tracker.rq_job, get_kind("document").queue)
        counts = {"selected": len(document_ids), "launched": 0, "skipped": 0, "finished": 0, "failed": 0}
        log.info("reindex %s: %d stale document(s) to launch at %.2f/s, at most %d waiting", tracker.job_id,
                 len(document_ids), rate, max_queued)

        def report(stage: str) -> None:
            counts.update(finished=launched.finished, failed=launched.failed)
            done = counts["skipped"] + launched.finished + launched.failed
            if tracker.rq_job is not None:
                tracker.rq_job.meta["reindex"] = dict(counts)
            tracker.set_progress(stage, 100 * done // max(counts["selected"], 1))  # raises JobStopped if canceled

        def full() -> bool:
            if not max_queued:
                return False
            if launched.waiting < max_queued:
                return False
            launched.refresh()
            if launched.waiting >= max_queued:
                workers.require(counts["launched"])
                return True
            return False

        def one_launched(document_id: str, job: Job | None) -> None:
            if job is None:
                counts["skipped"] += 1
            else:
                counts["launched"] += 1
                launched.add(job.id)
            report("launching")

        refusal: list[Exception] = []
        relaunch_documents(document_ids, rate, full=full, on_wait=lambda first: report("waiting_for_queue"),
                           on_result=one_launched, on_refused=lambda _id, exc: refusal.append(exc))
        if refusal:
            raise JobError(f"the queue refused a document job ({refusal[0]}); the reindex is retried and resumes "
                           "with the documents still stale", code="queue_unavailable", transient=True)
        launched.refresh()
        while launched.pending:
            workers.require(counts["launched"])
            report("waiting_for_documents")
            time.sleep(DRAIN_POLL_SECONDS)
            launched.refresh()
        result = {"digest": digest, "recipe": index_recipe(config), **counts,
                  "finished": launched.finished, "failed": launched.failed}
        if not tracker.finish_query(result).execute():
            return {"skipped": "the job row changed while the job ran"}
    tracker.finished()
    log.info("reindex %s: %s", tracker.job_id, result)
    return result
