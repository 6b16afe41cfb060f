"""The pool (RQ's ``worker_pool`` seam): :class:`DocketWorkerPool` supervises the worker processes,
fails the job of a process that died (with a sentence saying how), kills one whose job overran
its time limit by ``JOB_KILL_GRACE`` seconds, and starts every process with the stop signals
blocked until it has its own handlers. (The worker model as a whole: :mod:`jobs.worker`.)
"""

from __future__ import annotations

import logging
import os
import signal
from multiprocessing.context import ForkProcess
from typing import Any

from redis.exceptions import RedisError
from rq.queue import Queue
from rq.utils import now
from rq.worker_pool import WorkerData, WorkerPool, run_worker

from jobs.worker.job import DocketJob
from jobs.worker.worker import STOP_SIGNALS, DocketWorker
from webapp.core import metrics
from webapp.core.db import db
from webapp.core.protocol.job_errors import JobError, WorkerProcessDied
from webapp.core.protocol.states import on_job_failure

log = logging.getLogger(__name__)


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
