"""How Docket's worker processes run jobs (the README's "Worker model" says why).

* **Load once, before any fork.** :func:`prepare_worker_process` imports every parser, the
  chunker and the embedder, and runs each once on a tiny built-in sample, in the worker
  command's process. The pool's worker processes are forked from it and inherit all of it:
  a job starts with nothing left to import or build. Nothing loaded here holds a socket or a
  database connection — each worker process opens its own.
* **One job at a time per process, no fork per job.** :class:`DocketWorker` runs each job in
  its own (pool) process, as RQ's ``SimpleWorker`` does: RQ's forking ``Worker`` spends ≈20 ms
  of CPU per job on ``fork()``, copy-on-write faults and exit (``benchmarks/job_overhead.py``),
  more than a small document's whole pipeline.
* **Crash isolation per process.** :class:`DocketWorkerPool` (RQ's ``WorkerPool``) supervises
  the worker processes. A parser that segfaults or is killed for memory takes down only the
  process running that one job: the pool marks the job failed — its row with a readable
  reason, RQ's record through RQ's own failure handling — and starts a fresh process. A job
  stuck in native code past its time limit (where RQ's in-process alarm cannot interrupt it)
  is killed the same way ``JOB_KILL_GRACE`` seconds later. A process whose peak memory passed
  ``WORKER_MAX_MEMORY`` leaves after its job, so memory a large document left behind is given
  back.
* **A killed worker is noticed in seconds.** RQ's ``SimpleWorker`` sends no heartbeat while a
  job runs, and its records live for the job's whole time limit + 60 s (11 minutes for a
  document). :class:`DocketWorker` beats every ``WORKER_HEARTBEAT_INTERVAL`` seconds from a
  thread while its job runs, with records that expire 3 beats later; the reconcile job then
  hands a vanished worker's job to RQ's own abandoned-job handling (retry or fail).
* **A used-up rate limit reschedules, never fails.** A job of a kind with a budget in
  ``JOB_RATE_LIMITS`` takes a unit right before its function runs; an OpenAI request inside it
  takes from ``openai.requests`` and ``openai.tokens`` (:mod:`webapp.core.workflows.rate_limits`: shared by every
  process on every machine). Not free within ``RATE_LIMIT_MAX_WAIT`` seconds, the job is given to
  RQ's scheduler for when the budget frees units — its row ``scheduled`` with ``error_code``
  ``rate_limited``, RQ's retries untouched — and the worker takes the next job.
* **SIGTERM hands the job back.** Every deploy and restart sends SIGTERM, and platforms send
  SIGKILL ≈30 s later. The running job gets ``SHUTDOWN_GRACE`` seconds to finish; then it is
  interrupted and handed back — its row ``queued`` again, its RQ job at the front of its queue —
  and another worker runs it from the start (every stage is idempotent). RQ's ``HerokuWorker``
  interrupts the job the same way but fails it.
"""

from __future__ import annotations

import gc
import importlib
from multiprocessing.context import ForkProcess
import logging
import multiprocessing
import os
import resource
import signal
import threading
import math
import time
from datetime import timedelta
from typing import Any

from flask import Flask, current_app, has_app_context
from rq.callbacks import execute_stopped_callback
from rq.job_lifecycle import call_exception_handlers
from rq.job import Job as RQJob
from rq.queue import Queue
from rq.utils import now
from redis.exceptions import RedisError
from rq import worker_registration
from rq.worker import WorkerStatus
from rq.worker.worker_classes import SimpleWorker
from rq.worker_pool import WorkerData, WorkerPool, run_worker

from webapp.core.db import db
from webapp.core.protocol.errors import JobError, JobStopped, RateLimited, WorkerProcessDied
from webapp.core.protocol.states import mark_handed_back, mark_rate_limited, on_job_failure
from webapp.core.workflows.rate_limits import acquire, begin_run
from webapp.core import metrics
from webapp.core.logs import end_stage, log_context
from webapp.core.processes import children_die_with_this_process, die_with_parent

log = logging.getLogger(__name__)

MB = 1024 * 1024
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
REDIS_WAIT_MAX = 5.0  # seconds between a starting worker process's attempts to reach Redis
# Interrupts the job running in a worker process's main thread on RQ's stop-job command.
STOP_JOB_SIGNAL = signal.SIGUSR1

_job_in_body: str | None = None  # the id of the job whose function is running in this process


class JobHandedBack(BaseException):
    """Raised in a job's function when its worker shuts down before the job finished: the job
    goes back to its queue instead of failing. A ``BaseException``, so that no ``except
    Exception`` in a job or a parser turns it into the job's own failure."""


class DocketJob(RQJob):
    """RQ's job, noting while its function runs, so a stop request interrupts only the job's
    own code and never RQ's bookkeeping before or after it; its live progress (``meta``) is
    best effort."""

    def _execute(self) -> Any:
        global _job_in_body
        _job_in_body = self.id
        try:
            begin_run()  # nothing of an outside service's budget spent by this run yet
            self._take_kind_budget()
            return super()._execute()
        finally:
            _job_in_body = None

    def _take_kind_budget(self) -> None:
        """Take one unit of the job kind's budget (``JOB_RATE_LIMITS``), before the job's function
        runs: a budget used up for longer than ``RATE_LIMIT_MAX_WAIT`` raises :class:`RateLimited`,
        which :class:`DocketWorker` turns into a rescheduled job. Free for an unlimited kind."""
        kind = self.meta.get("kind")
        if kind and has_app_context():
            acquire(current_app.config, f"job.{kind}")

    def save_meta(self) -> None:
        """Write ``meta`` (a running job's live stage and progress) to Redis, unless Redis is
        unreachable: then the job goes on — its row is the truth, and the next write (every
        0.5 s) tries again. Without this, a Redis restart failed every running job with an
        "unexpected" (permanent) error although its work could complete."""
        try:
            super().save_meta()
        except RedisError as exc:
            log.warning("job %s: live progress not saved, Redis is unavailable: %s", self.id, exc)


def _log_fields(job: RQJob) -> dict[str, Any]:
    """The ids every log line of ``job`` carries: its id, kind, launching request and document."""
    try:
        document_id = (job.kwargs or {}).get("document_id")
    except Exception:  # arguments that cannot be read: RQ fails the job with the reason
        document_id = None
    return {"job_id": job.id, "kind": job.meta.get("kind"), "request_id": job.meta.get("request_id"),
            "document_id": document_id}


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
        if _job_in_body is None:
            return
        if _job_in_body == self._handback_job_id:
            raise JobHandedBack()
        if _job_in_body == self._stopped_job_id:
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
            with log_context(**_log_fields(job)):
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
                    pipe.execute()
            except RedisError as exc:  # Redis briefly away: the next beat tries again
                self.log.warning("Worker %s: heartbeat failed: %s", self.name, exc)

    # --- shutdown: hand the running job back ---------------------------------------------------
    def request_stop(self, signum: int, frame: Any) -> None:
        """First SIGTERM/SIGINT (RQ's warm shutdown: no new job). A job still running
        ``shutdown_grace`` seconds later is handed back to its queue."""
        super().request_stop(signum, frame)
        job_id = _job_in_body
        if job_id is not None and self._handback_timer is None:
            self.log.info("Worker %s: shutting down; job %s has %s s to finish before it is handed back",
                          self.name, job_id, self.shutdown_grace)
            self._handback_timer = threading.Timer(self.shutdown_grace, self._hand_back_now, args=(job_id,))
            self._handback_timer.daemon = True
            self._handback_timer.start()

    def request_force_stop(self, signum: int, frame: Any) -> None:
        """Second SIGTERM/SIGINT (cold shutdown): hand the running job back at once."""
        if _job_in_body is not None and (now() - self._shutdown_requested_date).total_seconds() >= 1:
            self._cancel_handback()
            self._handback_job_id = _job_in_body
            raise JobHandedBack()  # a signal handler runs in the main thread, inside the job
        super().request_force_stop(signum, frame)

    def _hand_back_now(self, job_id: str) -> None:
        if _job_in_body == job_id:
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
            queue._enqueue_job(job, pipeline=pipe, at_front=True)
            pipe.execute()

    def reschedule(self, job: RQJob, queue: Queue, execution: Any, limited: RateLimited) -> None:
        """Give a job whose rate limit is used up to RQ's scheduler: its row ``queued/started →
        scheduled`` (``error_code`` ``rate_limited``; a cut-short run's attempt taken back), then
        in one Redis transaction its execution removed and the job put in its queue's
        ``ScheduledJobRegistry`` for when the budget frees units (at least 1 s on: RQ's scheduler
        works in whole seconds). RQ's retry count is untouched: waiting is not a failure."""
        retry_at = now() + timedelta(seconds=max(1, math.ceil(limited.retry_after)))
        message = (f"waiting for the {limited.name} rate limit" + (f" ({limited.limit})" if limited.limit else "")
                   + f"; runs again at {retry_at:%Y-%m-%d %H:%M:%S} UTC")
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



class DocketWorkerPool(WorkerPool):
    """RQ's ``WorkerPool`` of :class:`DocketWorker` processes that also fails the job of a worker
    process that died, and kills one whose job overran its time limit by ``kill_grace`` seconds.

    Args:
        queues: queue names, in the order workers listen on them.
        connection: the Redis client (the pool's processes open their own connections).
        num_workers: worker processes to keep running on all ``queues``.
        reserved: further processes that take jobs of the first queue only (``high``), so that
            its jobs start at once even while every other process runs a long job. Ignored
            with a single queue.
        kill_grace: seconds past a job's timeout before its process is killed (RQ's forking
            worker waits 60 s before it kills an overdue work horse).
    """

    def __init__(self, queues: list[str], connection, num_workers: int, kill_grace: float = 60,
                 reserved: int = 0) -> None:
        super().__init__(queues, connection=connection, num_workers=num_workers + reserved,
                         worker_class=DocketWorker, job_class=DocketJob)
        self.kill_grace = kill_grace
        # Processes that listen on the first queue only (``high``), beside the ones that take
        # every queue: RQ's queue order only decides what a *free* worker takes next, so
        # without them a report would wait behind long document jobs on every process.
        self.reserved = reserved if len(self._queue_names) > 1 else 0
        self.num_workers = num_workers + self.reserved
        self._reserved_names: set[str] = set()
        self._overdue: dict[str, int] = {}  # worker name → the time limit its job overran (s)

    def check_workers(self, respawn: bool = True) -> None:
        # RQ's pool loop has no error handling: a Redis error here used to end the supervisor
        # (its worker processes ran on, unsupervised, and the command hung in exit). Redis
        # away only postpones the overdue check; reaping and respawning need no Redis.
        try:
            self.kill_overdue_workers()
        except RedisError as exc:
            self.log.warning("Worker pool: Redis is unavailable, overdue jobs not checked: %s", exc)
        super().check_workers(respawn)

    def start_worker(self, *args: Any, **kwargs: Any) -> None:
        # RQ forks the new process with the pool's SIGINT/SIGTERM handlers; a stop signal that
        # reached it before it installed its own would run the pool's handler there and be lost.
        # So the signals stay blocked across the fork: here they are delivered once the process
        # is in worker_dict (and gets signalled with the others), in the new process once
        # DocketWorker has its own handlers.
        if self.status == self.Status.STOPPED:
            return
        db.database.close_idle()  # a pooled connection must not cross the fork (fail_current_job opens one)
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            super().start_worker(*args, **kwargs)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def get_worker_process(self, name: str, burst: bool, _sleep: float = 0, logging_level: str = "INFO"):
        # RQ's own method with one change: the queues of a reserved process are the first only.
        self._reserved_names &= set(self.worker_dict)  # forget processes that are gone
        queue_names = self._queue_names
        if len(self._reserved_names) < self.reserved:
            self._reserved_names.add(name)
            queue_names = queue_names[:1]
        return ForkProcess(
            target=run_worker,
            args=(name, queue_names, self._connection_class, self._pool_class, self._pool_kwargs),
            kwargs={"_sleep": _sleep, "burst": burst, "logging_level": logging_level,
                    "worker_class": self.worker_class, "job_class": self.job_class, "queue_class": self.queue_class,
                    "serializer": self.serializer, "exception_handlers": self.exception_handlers},
            name=f"Worker {name} (WorkerPool {self.name})",
        )

    def _find_worker(self, name: str) -> DocketWorker | None:
        """Worker process ``name``'s RQ record, or ``None`` while it has none.

        Not ``Worker.find_by_key``: for a missing record it also removes the name from RQ's set
        of workers (``EXISTS``, then ``SREM``: two commands). Asked about a process that was just
        starting, it removed the registration made between the two, and the live worker was
        missing from ``Worker.all()`` (rq-dashboard, ``flask rq ping``) for good — seen in about
        1 of 4 starts of three worker commands (benchmarks/rate_limit.py).
        """
        key = DocketWorker.redis_worker_namespace_prefix + name
        if not self.connection.exists(key):
            return None
        worker = DocketWorker([], name, connection=self.connection, prepare_for_work=False)
        worker.refresh()
        return worker

    def kill_overdue_workers(self) -> None:
        """SIGKILL every worker process whose job has run ``kill_grace`` s past its timeout."""
        for data in list(self.worker_dict.values()):
            worker = self._find_worker(data.name)
            execution = worker.execution if worker else None
            if execution is None or data.name in self._overdue:
                continue
            job = worker.get_current_job()
            if job is None or job.timeout is None or job.timeout < 0:
                continue
            running = (now() - execution.created_at).total_seconds()
            if running > job.timeout + self.kill_grace:
                self.log.warning("Worker %s: job %s is %d s past its %d s time limit; killing pid %d",
                                 data.name, job.id, running - job.timeout, job.timeout, data.pid)
                self._overdue[data.name] = int(job.timeout)
                os.kill(data.pid, signal.SIGKILL)

    def handle_dead_worker(self, worker_data: WorkerData) -> None:
        exitcode = worker_data.process.exitcode
        overdue = self._overdue.pop(worker_data.name, None)
        if exitcode:  # killed by a signal (negative) or crashed; 0 is a clean exit
            try:
                self.fail_current_job(worker_data.name, describe_death(exitcode, overdue))
            except Exception:  # never let bookkeeping take the pool down
                self.log.exception("Worker %s: could not record the job of the dead worker", worker_data.name)
        super().handle_dead_worker(worker_data)

    def fail_current_job(self, worker_name: str, error: JobError) -> str | None:
        """Fail the job a dead worker process was running: its row, through the state machine's
        failure callback (``scheduled`` for a retry if the kind allows, else ``failed`` with
        the error's sentence and code), and RQ's record (RQ's own failure handling: retry,
        failed registry, dependents).

        Returns:
            The job's id, or ``None`` when the worker was idle or is unknown to Redis.
        """
        worker = self._find_worker(worker_name)
        if worker is None:
            return None
        execution = worker.execution
        job = worker.get_current_job()
        if job is not None:
            self.log.warning("Worker %s: died running job %s: %s", worker_name, job.id, error.message)
            on_job_failure(job, self.connection, type(error), error, None)
            job.ended_at = now()
            worker.handle_job_failure(job, Queue(job.origin, connection=self.connection), exc_string=error.message,
                                      execution=execution)
            # Its process died before it could record the job: the pool does (its own metric file).
            metrics.observe_job(job.meta.get("kind"), job.get_status(refresh=False), job.started_at, job.ended_at,
                                job.enqueued_at)
        worker.register_death()
        return job.id if job is not None else None


def describe_death(exitcode: int, overdue_limit: int | None = None) -> JobError:
    """Why a worker process died mid-job, as the error its job ends with.

    Args:
        exitcode: ``multiprocessing``'s exit code: ``-N`` for signal N, else the exit status.
        overdue_limit: the time limit in seconds the job overran, when the pool killed it for that.

    Returns:
        ``JobError`` code ``timeout`` (permanent) for an overrun; otherwise
        :class:`WorkerProcessDied` (transient: retried if the job's kind allows).
    """
    if overdue_limit is not None:
        return JobError(f"processing took longer than the {overdue_limit} s limit and could not be interrupted, "
                        "so its worker process was stopped", code="timeout")
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return WorkerProcessDied(f"the worker process running this job was killed ({name}); "
                                 "it may have run out of memory")
    return WorkerProcessDied(f"the worker process running this job exited unexpectedly (status {exitcode})")


def prepare_worker_process(app: Flask) -> float:
    """Load and warm everything a job needs, once, in the worker command's process.

    Imports the module of every declared kind's function (:data:`webapp.core.protocol.kinds.JOB_KINDS`)
    and runs each kind's ``warm_up`` (the document kind's runs its parsers, chunker and embedder
    on tiny samples, so their lazy imports and caches are filled too), then moves every object
    into the garbage collector's permanent generation (``gc.freeze()``), so that collections in
    the forked worker processes do not touch — and copy — the pages they share with this one.

    Opens no socket and no database connection (the OpenAI client connects on first use).

    Args:
        app: the Flask app whose configuration selects the embedder and chunk sizes.

    Returns:
        Seconds it took.
    """
    from webapp.core.protocol.kinds import JOB_KINDS, hook

    started = time.perf_counter()
    for kind in JOB_KINDS.values():
        importlib.import_module(kind.function.rpartition(".")[0])
    warmed = []
    for kind in JOB_KINDS.values():
        if kind.warm_up:
            hook(kind.warm_up)(app)
            warmed.append(kind.name)
    gc.collect()
    gc.freeze()
    elapsed = time.perf_counter() - started
    log.info("worker process prepared in %.2f s (%d kinds; warmed up: %s)", elapsed, len(JOB_KINDS),
             ", ".join(warmed) or "none")
    return elapsed
