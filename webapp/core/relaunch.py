"""Launching stored documents' jobs again, many of them, at a bounded rate: the loop shared by
``flask --app wsgi documents reprocess``, ``documents reindex`` and the ``reindex`` job.

Each document goes the way of every job (:func:`webapp.core.documents.reprocess_document`: row
committed, then enqueued, guarded so that a document whose job is waiting or running is skipped,
never doubled — two runs at once launch each document once). Launches are paced evenly at
``rate`` per second (:class:`Pacer`: a monotonic clock, no burst at the start of each second,
nothing shared between processes), and wait while the caller's backlog is full (the command:
the document queue's length; the reindex job: its own launched jobs still waiting), so a
library of 100,000 documents never floods the queue.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

from redis.exceptions import RedisError

from webapp.core.documents import reprocess_document
from webapp.core.models import Job
from webapp.core.protocol.launch import QueueUnavailable

QUEUE_POLL_SECONDS = 1.0  # how often a full backlog is looked at again


class Pacer:
    """Evenly spaced moments at ``rate`` per second on a monotonic clock: :meth:`wait` returns
    at the earliest at the previous moment plus ``1 / rate`` s (never earlier than now: time
    spent elsewhere, e.g. waiting for the queue, is not made up by a burst)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.interval, self.clock, self.sleep = 1.0 / rate, clock, sleep
        self.next_at: float | None = None

    def wait(self) -> None:
        now = self.clock()
        if self.next_at is not None and now < self.next_at:
            self.sleep(self.next_at - now)
            now = self.next_at
        self.next_at = now + self.interval


def relaunch_documents(
    document_ids: Iterable[str],
    rate: float,
    full: Callable[[], bool] = lambda: False,
    on_wait: Callable[[bool], None] | None = None,
    on_result: Callable[[str, Job | None], None] | None = None,
    on_refused: Callable[[str, Exception], None] | None = None,
    poll_seconds: float = QUEUE_POLL_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, int]:
    """Launch a new document job for each document, in order, paced and bounded.

    Before each launch: while ``full()`` is true, ``on_wait(first)`` is called (``first``: the
    first poll of this wait) and the loop sleeps ``poll_seconds``; then the :class:`Pacer` waits
    its turn (``rate`` per second); then :func:`~webapp.core.documents.reprocess_document`.

    Args:
        document_ids: the documents, in launch order.
        rate: launches per second, at most (> 0).
        full: whether the backlog is full now (the caller's bound); never full by default.
        on_wait: called on every poll of a wait (e.g. to show it, or to write the job's progress,
            which also ends the reindex job when it was canceled: it raises).
        on_result: called after each launch with the new job, or ``None`` when the document was
            skipped (its job is waiting or running, or it was deleted meanwhile).
        on_refused: called once if Redis refused a launch; the loop stops there.
        poll_seconds: seconds between two looks at a full backlog.
        sleep: the sleep function (tests pass their own).

    Returns:
        ``{"launched", "skipped", "refused"}`` counts (``refused`` is 0 or 1: the loop stops at
        the first refusal; launched documents are not launched twice by the next run).

    Raises:
        Whatever ``full``, ``on_wait`` or ``on_result`` raise (e.g. ``JobStopped``).
    """
    counts = {"launched": 0, "skipped": 0, "refused": 0}
    pacer = Pacer(rate, sleep=sleep)
    for document_id in document_ids:
        try:
            first = True
            while full():
                if on_wait is not None:
                    on_wait(first)
                first = False
                sleep(poll_seconds)
            pacer.wait()
            job = reprocess_document(document_id)
        except (QueueUnavailable, RedisError) as exc:
            counts["refused"] += 1
            if on_refused is not None:
                on_refused(document_id, exc)
            break
        counts["launched" if job is not None else "skipped"] += 1
        if on_result is not None:
            on_result(document_id, job)
    return counts
