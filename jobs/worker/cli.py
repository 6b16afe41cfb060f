"""The RQ worker command: ``flask --app wsgi rq worker [QUEUE ...]``.

The worker is started inside the Flask application context (like pallets-eco/flask-rq's
``flask rq worker``); every worker process of the pool is forked from it
and so runs jobs in that context, with the app's config, database binding and Redis
connection. Before any fork it loads what jobs need (:func:`jobs.worker.warmup.prepare_worker_process`);
it never connects to the database (Peewee connects lazily; jobs open their own connection).

The command runs a :class:`~jobs.worker.pool.DocketWorkerPool` (RQ's ``WorkerPool``) of
``WORKER_CONCURRENCY`` (or ``--concurrency``) worker processes — one per core by default — each
running one job at a time; the pool replaces a process that dies and fails its job.
"""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup
from rq.results import Result

from jobs.worker.pool import DocketWorkerPool
from jobs.worker.warmup import prepare_worker_process
from webapp.core.logs import configure_logging as configure_process_logging
from webapp.core.queues import QUEUE_NAMES, rq

rq_cli = AppGroup("rq", help="RQ worker for Docket's queues.")


def check_queue_names(queue_names: tuple[str, ...] | list[str]) -> None:
    """Raise ``click.BadParameter`` unless every name is one of Docket's queues."""
    unknown = [name for name in queue_names if name not in QUEUE_NAMES]
    if unknown:
        raise click.BadParameter(f"unknown queue(s) {', '.join(unknown)}; Docket's queues are {', '.join(QUEUE_NAMES)}")


def make_worker_pool(queue_names: tuple[str, ...] | list[str], concurrency: int,
                     reserved: int = 0) -> DocketWorkerPool:
    """A pool of ``concurrency`` worker processes on the current app's queues, listening in the
    order given (``high`` before ``default``), plus ``reserved`` processes on the first queue
    only (with more than one queue).

    Raises:
        click.BadParameter: a queue name is not one of Docket's.
    """
    check_queue_names(queue_names)
    return DocketWorkerPool(list(queue_names), connection=rq.connection, num_workers=concurrency,
                            kill_grace=current_app.config["JOB_KILL_GRACE"], reserved=reserved)


def configure_logging(level: str) -> None:
    """Docket's, RQ's and the jobs' log lines at ``level``, on stderr in ``LOG_FORMAT``
    (:func:`webapp.core.logs.configure_logging`: one handler; RQ then adds none of its own)."""
    configure_process_logging(level, current_app.config["LOG_FORMAT"])


@rq_cli.command("worker")
@click.argument("queues", nargs=-1)
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=None,
              help="Worker processes to run (default: WORKER_CONCURRENCY, one per core).")
@click.option("--reserved", type=click.IntRange(min=0), default=None,
              help="Further processes that take only the first queue's jobs (default: HIGH_QUEUE_WORKERS).")
@click.option("--burst", is_flag=True, help="Exit once the queues are empty.")
@click.option("--logging-level", default=None, help="Log level (default: LOG_LEVEL, INFO).")
def worker_command(queues, concurrency, reserved, burst, logging_level) -> None:
    """Run a pool of workers on QUEUES (default: high then default).

    With several queues, HIGH_QUEUE_WORKERS (or --reserved) more processes listen on the first
    one only, so a `high` job starts at once even while every other process runs a long job.
    """
    level = (logging_level or current_app.config["LOG_LEVEL"]).upper()
    configure_logging(level)
    queue_names = tuple(queues) or QUEUE_NAMES
    concurrency = concurrency or current_app.config["WORKER_CONCURRENCY"]
    reserved = current_app.config["HIGH_QUEUE_WORKERS"] if reserved is None else reserved
    pool = make_worker_pool(queue_names, concurrency, reserved)
    prepare_worker_process(current_app)
    current_app.logger.info("worker pool of %d listening on %s, %d more on %s only", concurrency,
                            ", ".join(queue_names), pool.reserved, queue_names[0])
    pool.start(burst=burst, logging_level=level)


PING_JOB = "jobs.ping_job.ping"


@rq_cli.command("ping")
@click.argument("queues", nargs=-1)
@click.option("--timeout", default=10, show_default=True, type=click.IntRange(min=1),
              help="Seconds to wait for each answer.")
def ping_command(queues, timeout: int) -> None:
    """Enqueue a ping job on each of QUEUES (default: all) and wait for a worker to run it.

    Prints, per queue, the worker that answered and the time from enqueue to finished (ms).
    Exits with status 1 if a queue got no answer within TIMEOUT seconds (or the job failed).
    """
    queue_names = tuple(queues) or QUEUE_NAMES
    check_queue_names(queue_names)
    unanswered = []
    for name in queue_names:
        job = rq.get_queue(name).enqueue(PING_JOB, result_ttl=600, failure_ttl=600, description="ping")
        result = job.latest_result(timeout=timeout)  # blocks on RQ's result stream
        if result is None or result.type != Result.Type.SUCCESSFUL:
            unanswered.append(name)
            if result is None:
                job.cancel()  # a worker that comes later need not run it
                click.echo(f"{name}: no worker answered within {timeout} s")
            else:
                reason = (result.exc_string or "").strip().splitlines()[-1:] or ["no reason given"]
                click.echo(f"{name}: the ping job failed: {reason[0]}")
            continue
        job.refresh()
        answer = result.return_value or {}
        took = (job.ended_at - job.enqueued_at).total_seconds() * 1000
        click.echo(f"{name}: answered by {answer.get('worker')} (pid {answer.get('pid')}) in {took:.1f} ms")
    if unanswered:
        raise SystemExit(1)
