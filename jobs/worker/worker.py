"""The worker process (RQ's ``worker`` seam): :class:`DocketWorker` runs one job at a time in
its own process without forking a work horse, beats while a job runs, hands the running job back
on SIGTERM, reschedules a job whose rate limit is used up, and leaves once its peak memory passed
``WORKER_MAX_MEMORY``. (The worker model as a whole: :mod:`jobs.worker`.)
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import resource
import signal
import threading
import time
from datetime import timedelta
from typing import Any

from flask import current_app, has_app_context
from redis.exceptions import RedisError
from rq import worker_registration
from rq.callbacks import execute_stopped_callback
from rq.job import Job as RQJob
from rq.job_lifecycle import call_exception_handlers
from rq.queue import Queue
from rq.utils import now
from rq.worker import WorkerStatus
from rq.worker.worker_classes import SimpleWorker

from jobs.worker.job import STOP_JOB_SIGNAL, JobHandedBack, log_fields, job_in_body
from webapp.core.compat.rq_private import enqueue_at_front
from webapp.core import metrics
from webapp.core.logs import end_stage, log_context
from webapp.core.owner_caps import refresh_running_slot
from webapp.core.processes import children_die_with_this_process, die_with_parent
from webapp.core.protocol.job_errors import JobError, JobStopped, RateLimited
from webapp.core.protocol.states import mark_handed_back, mark_rate_limited

log = logging.getLogger(__name__)

MB = 1024 * 1024
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
REDIS_WAIT_MAX = 5.0  # seconds between a starting worker process's attempts to reach Redis


def peak_memory_bytes() -> int:
    """Peak resident memory of this process in bytes (``getrusage``'s ``ru_maxrss``, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class DocketWorker(SimpleWorker):
    """An RQ worker that runs each job in its own process, without forking a work horse (as
    RQ's ``SimpleWorker``), and leaves after a job once its peak memory passed
    ``WORKER_MAX_MEMORY`` megabytes (the pool then starts a fresh process)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        config = current_app.config if has_app_context() else {}
        limit = config.get("WORKER_MAX_MEMORY")
        self.max_memory_bytes: int | None = limit * MB if limit else None
        self.heartbeat_interval: float = config.get("WORKER_HEARTBEAT_INTERVAL", 5)
        # RQ's public setting (600 s by default): also how soon a process takes over RQ's
        # scheduler after the one that ran it died (its scheduler dies with it and frees the lock).
        self.maintenance_interval = config.get("WORKER_MAINTENANCE_INTERVAL", 30)
        # An idle worker wakes from its BLPOP every worker_ttl - 15 s (RQ's dequeue_timeout; 405 s
        # by default) and runs its maintenance then at the earliest: wake as often as it is due.
        self.worker_ttl = self.maintenance_interval + 15
        self.shutdown_grace: float = config.get("SHUTDOWN_GRACE", 10)
        self._burst = False
        self._handback_job_id: str | None = None
        self._handback_timer: threading.Timer | None = None

    def work(self, burst: bool = False, *args: Any, **kwargs: Any) -> bool:
        self._burst = burst
        # DocketWorkerPool.start_worker forked this process with SIGINT/SIGTERM blocked: until
        # RQ installs its handlers, a stop signal only asks the work loop not to start.
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._stop_before_start)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        pool = multiprocessing.parent_process()  # None when not forked by the pool (a test's worker)
        die_with_parent(signal.SIGTERM, pool.pid if pool else None)  # a warm shutdown if the pool is killed
        children_die_with_this_process(signal.SIGTERM)  # RQ's scheduler process, if this one holds the lock
        signal.signal(STOP_JOB_SIGNAL, self._stop_job_in_body)
        if not self._wait_for_redis():
            return False
        return super().work(burst, *args, **kwargs)

    def _wait_for_redis(self) -> bool:
        """Wait until Redis answers before RQ registers the worker (which it cannot retry): a
        process the pool starts while Redis is away waits here instead of exiting at once and
        being started again every second. Returns ``False`` if told to stop meanwhile."""
        delay = 0.5
        while not self._stop_requested:
            try:
                self.connection.ping()
                return True
            except RedisError as exc:
                self.log.warning("Worker %s: Redis is unavailable, waiting %.1f s: %s", self.name, delay, exc)
                time.sleep(delay)
                delay = min(delay * 2, REDIS_WAIT_MAX)
        return False

    def _stop_before_start(self, signum: int, frame: Any) -> None:
        self._stop_requested = True

    def kill_horse(self, sig: Any = None) -> None:
        """RQ's stop-job command, from the pubsub thread after it set ``_stopped_job_id``: with
        no work horse to kill, interrupt the job in this process's main thread instead (it
        raises :class:`JobStopped` at its next Python instruction)."""
        signal.pthread_kill(threading.main_thread().ident, STOP_JOB_SIGNAL)

    def _stop_job_in_body(self, signum: int, frame: Any) -> None:
        if job_in_body() is None:
            return
        if job_in_body() == self._handback_job_id:
            raise JobHandedBack()
        if job_in_body() == self._stopped_job_id:
            raise JobStopped()

    def handle_exception(self, job: RQJob, *exc_info: Any) -> None:
        """RQ logs every failure with its traceback. A :class:`JobError` is an expected outcome
        (a PDF without its password, a damaged file, an API rate limit): one line with its code
        and sentence. Anything else, ``internal_error`` included, keeps RQ's traceback."""
        error = exc_info[1]
        if isinstance(error, JobError) and error.code != "internal_error":
            self.log.warning("Worker %s: job %s failed (%s): %s", self.name, job.id, error.code, error.message)
            call_exception_handlers(self._exc_handlers, job, *exc_info)
            return
        super().handle_exception(job, *exc_info)

    # --- heartbeats -------------------------------------------------------------------------
    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        """RQ's heartbeat, in one round trip, registering the worker again when Redis lost its
        record (restarted empty, ``FLUSHALL``): RQ registers a worker only at birth, so one that
        lived through a Redis restart would go on taking jobs unseen by ``Worker.all``,
        ``flask rq ping`` and the pool, its record holding nothing but ``last_heartbeat``."""
        if pipeline is not None:  # part of RQ's own transaction (a job starting)
            super().heartbeat(timeout, pipeline=pipeline)
            return
        with self.connection.pipeline() as pipe:
            # "birth": the job's heartbeat thread may have recreated the record meanwhile with
            # nothing but last_heartbeat.
            pipe.hexists(self.key, "birth")
            super().heartbeat(timeout, pipeline=pipe)
            registered = pipe.execute()[0]
        if not registered and self.birth_date is not None:
            self.log.warning("Worker %s: its record in Redis was lost (Redis restarted or emptied); "
                             "registering again", self.name)
            with self.connection.pipeline() as pipe:
                pipe.delete(self.key)
                pipe.hset(self.key, mapping=self.serialize())
                worker_registration.register(self, pipe)
                pipe.expire(self.key, timeout or self.worker_ttl + 60)
                pipe.execute()

    def get_heartbeat_ttl(self, job: RQJob, working_time: float = 0.0) -> int:
        """Seconds the worker's, the job's and its execution's records live without a beat:
        3 heartbeats (RQ's SimpleWorker: the job's whole time limit + 60 s)."""
        return int(3 * self.heartbeat_interval) + 1

    def execute_job(self, job: RQJob, queue: Queue) -> None:
        # SimpleWorker.execute_job, with a heartbeat thread while the job runs.
        execution = self.prepare_execution(job)
        done = threading.Event()
        beat = threading.Thread(target=self._beat_until, args=(done, job, execution), daemon=True,
                                name=f"heartbeat {job.id}")
        beat.start()
        try:
            # Every line logged while the job runs carries its ids (webapp/core/logs.py).
            with log_context(**log_fields(job)):
                self.perform_job(job, queue, execution)
                # The stage a failed job was in: its line says "failed" (a finished one closed its own).
                status = job.get_status(refresh=False)
                end_stage("ok" if status == "finished" else "rescheduled" if status == "scheduled" else "failed")
        finally:
            done.set()
            beat.join()
            self._cancel_handback()
        metrics.observe_job(job.meta.get("kind"), job.get_status(refresh=False), job.started_at, job.ended_at,
                            job.enqueued_at)
        self.set_state(WorkerStatus.IDLE)
        # In burst mode the pool starts no replacement, so a burst worker never leaves early.
        if not self._burst and self.max_memory_bytes and peak_memory_bytes() > self.max_memory_bytes:
            self.log.info("Worker %s: peak memory %d MB is over WORKER_MAX_MEMORY (%d MB); leaving for a fresh process",
                          self.name, peak_memory_bytes() // MB, self.max_memory_bytes // MB)
            self._stop_requested = True

    def _beat_until(self, done: threading.Event, job: RQJob, execution: Any) -> None:
        """Every ``heartbeat_interval`` s until ``done``: extend the worker's record and the
        execution's entry in the started registry (what RQ's abandoned-job cleanup reads)."""
        while not done.wait(self.heartbeat_interval):
            ttl = self.get_heartbeat_ttl(job)
            try:
                with self.connection.pipeline() as pipe:
                    self.heartbeat(ttl, pipeline=pipe)
                    execution.heartbeat(job.started_job_registry, ttl, pipeline=pipe)
                    refresh_running_slot(pipe, job.meta.get("owner"), job.id, ttl)  # OWNER_MAX_RUNNING
                    pipe.execute()
            except RedisError as exc:  # Redis briefly away: the next beat tries again
                self.log.warning("Worker %s: heartbeat failed: %s", self.name, exc)

    # --- shutdown: hand the running job back ---------------------------------------------------
    def request_stop(self, signum: int, frame: Any) -> None:
        """First SIGTERM/SIGINT (RQ's warm shutdown: no new job). A job still running
        ``shutdown_grace`` seconds later is handed back to its queue."""
        super().request_stop(signum, frame)
        job_id = job_in_body()
        if job_id is not None and self._handback_timer is None:
            self.log.info("Worker %s: shutting down; job %s has %s s to finish before it is handed back",
                          self.name, job_id, self.shutdown_grace)
            self._handback_timer = threading.Timer(self.shutdown_grace, self._hand_back_now, args=(job_id,))
            self._handback_timer.daemon = True
            self._handback_timer.start()

    def request_force_stop(self, signum: int, frame: Any) -> None:
        """Second SIGTERM/SIGINT (cold shutdown): hand the running job back at once."""
        if job_in_body() is not None and (now() - self._shutdown_requested_date).total_seconds() >= 1:
            self._cancel_handback()
            self._handback_job_id = job_in_body()
            raise JobHandedBack()  # a signal handler runs in the main thread, inside the job
        super().request_force_stop(signum, frame)

    def _hand_back_now(self, job_id: str) -> None:
        if job_in_body() == job_id:
            self._handback_job_id = job_id
            signal.pthread_kill(threading.main_thread().ident, STOP_JOB_SIGNAL)

    def _cancel_handback(self) -> None:
        if self._handback_timer is not None:
            self._handback_timer.cancel()
            self._handback_timer = None

    def hand_back(self, job: RQJob, queue: Queue, execution: Any) -> None:
        """Give an unfinished job back: its row ``started → queued`` (state machine), then in one
        Redis transaction its execution removed and the job pushed to the front of its queue
        (status ``queued``; RQ's retry count untouched). Another worker runs it from the start."""
        self._handback_job_id = None
        self.log.warning("Worker %s: handing job %s back to queue %s", self.name, job.id, queue.name)
        try:
            mark_handed_back(job.id)
        except Exception:  # the database is away: reconcile brings the row along once the job restarts
            self.log.exception("Worker %s: could not mark job %s handed back", self.name, job.id)
        job.ended_at = None
        with self.connection.pipeline() as pipe:
            self.cleanup_execution(job, pipeline=pipe, execution=execution)
            enqueue_at_front(queue, job, pipeline=pipe)  # rq's Queue._enqueue_job: webapp/core/compat
            pipe.execute()

    def reschedule(self, job: RQJob, queue: Queue, execution: Any, limited: RateLimited) -> None:
        """Give a job whose rate limit is used up to RQ's scheduler: its row ``queued/started →
        scheduled`` (``error_code`` ``rate_limited``; a cut-short run's attempt taken back), then
        in one Redis transaction its execution removed and the job put in its queue's
        ``ScheduledJobRegistry`` for when the budget frees units (at least 1 s on: RQ's scheduler
        works in whole seconds). RQ's retry count is untouched: waiting is not a failure."""
        retry_at = now() + timedelta(seconds=max(1, math.ceil(limited.retry_after)))
        message = f"waiting for {limited.reason}; runs again at {retry_at:%Y-%m-%d %H:%M:%S} UTC"
        self.log.info("Worker %s: job %s rescheduled for %s: %s", self.name, job.id, retry_at.isoformat(), message)
        try:
            mark_rate_limited(job.id, retry_at, message)
        except Exception:  # the database is away: the job still runs later and its start brings the row along
            self.log.exception("Worker %s: could not mark job %s rate limited", self.name, job.id)
        job.ended_at = None
        with self.connection.pipeline() as pipe:
            self.cleanup_execution(job, pipeline=pipe, execution=execution)
            queue.schedule_job(job, retry_at, pipeline=pipe)
            pipe.execute()

    def _finalize_failure(self, job: RQJob, queue: Queue, execution: Any, exc_info: Any) -> None:
        if isinstance(exc_info[1], JobHandedBack):
            self.hand_back(job, queue, execution)
            return
        if isinstance(exc_info[1], RateLimited):
            self.reschedule(job, queue, execution, exc_info[1])
            return
        # A job that stopped itself (its row was canceled or stopped meanwhile) ends as RQ's
        # stop command would end it: STOPPED, never retried.
        if isinstance(exc_info[1], JobStopped):
            self._stopped_job_id = job.id
        super()._finalize_failure(job, queue, execution, exc_info)

    def handle_job_failure(self, job: RQJob, queue: Queue, *args: Any, **kwargs: Any) -> None:
        if self._stopped_job_id == job.id:
            # RQ's forking Worker runs the on_stopped callback when it kills a horse on request;
            # its SimpleWorker never does. Do it here, so the row follows RQ on every path.
            try:
                execute_stopped_callback(job, self.death_penalty_class)
            except Exception:
                self.log.exception("Worker %s: stopped callback for job %s raised", self.name, job.id)
        super().handle_job_failure(job, queue, *args, **kwargs)
