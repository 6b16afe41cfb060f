"""The RQ worker command: ``flask --app wsgi rq worker [QUEUE ...]``.

The worker is started inside the Flask application context (like pallets-eco/flask-rq's
``flask rq worker``); every work horse is forked from it and so runs jobs in that context, with
the app's config, database binding and Redis connection. The parent process never connects to
the database before forking (Peewee connects lazily; jobs open their own connection).
"""

from __future__ import annotations

import logging

import click
from flask import current_app
from flask.cli import AppGroup
from rq import Worker

from jobs.tracking import on_work_horse_killed
from webapp.queues import QUEUE_NAMES, rq

rq_cli = AppGroup("rq", help="RQ worker for Docket's queues.")


def make_worker(queue_names: tuple[str, ...] | list[str] = QUEUE_NAMES, **kwargs) -> Worker:
    """A worker for the current app's queues, in the order given (``high`` before ``default``).

    The work-horse-killed handler marks the database row failed when a horse dies without
    running any of our code (SIGKILL, out of memory).

    Raises:
        click.BadParameter: a queue name is not one of Docket's.
    """
    unknown = [name for name in queue_names if name not in QUEUE_NAMES]
    if unknown:
        raise click.BadParameter(f"unknown queue(s) {', '.join(unknown)}; Docket's queues are {', '.join(QUEUE_NAMES)}")
    queues = [rq.get_queue(name) for name in queue_names]
    return Worker(
        queues,
        connection=rq.connection,
        work_horse_killed_handler=on_work_horse_killed,
        **kwargs,
    )


def configure_logging(level: str) -> None:
    """Send Docket's log lines to stderr; RQ configures its own (its loggers do not propagate)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("jobs", "webapp"):
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if not logger.handlers:
            logger.addHandler(handler)
        logger.propagate = False


@rq_cli.command("worker")
@click.argument("queues", nargs=-1)
@click.option("--burst", is_flag=True, help="Exit once the queues are empty.")
@click.option("--name", default=None, help="Worker name (default: host and pid).")
@click.option("--max-jobs", type=int, default=None, help="Exit after this many jobs.")
@click.option("--with-scheduler", is_flag=True, help="Also run RQ's scheduler (enqueue_in, retries).")
@click.option("--logging-level", default="INFO", show_default=True)
def worker_command(queues, burst, name, max_jobs, with_scheduler, logging_level) -> None:
    """Run a worker on QUEUES (default: high then default)."""
    configure_logging(logging_level.upper())
    worker = make_worker(tuple(queues) or QUEUE_NAMES, name=name)
    current_app.logger.info("worker %s listening on %s", worker.name, ", ".join(q.name for q in worker.queues))
    worker.work(burst=burst, max_jobs=max_jobs, with_scheduler=with_scheduler, logging_level=logging_level.upper())
