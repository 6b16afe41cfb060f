"""``flask --app wsgi schedule sync|list|run``: the periodic jobs from the command line — write the
timetable from the schedule table, list it, run the scheduler process (the Procfile's
``scheduler``). The table and the process: :mod:`webapp.core.schedules`."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup, with_appcontext

from webapp.core.db import connection
from webapp.core.logs import configure_logging
from webapp.core.models import Job, Schedule
from webapp.core.schedules.table import next_run_times, sync_schedules
from webapp.core.schedules.scheduler import run_scheduler


schedule_cli = AppGroup("schedule", help="Periodic jobs (rq-scheduler).")


@schedule_cli.command("sync")
@with_appcontext
def sync_command() -> None:
    """Write the built-in schedules into the database and every schedule into rq-scheduler
    (idempotent: run at every release; also done by the scheduler process when Redis lost them)."""
    result = sync_schedules()
    click.echo(f"Schedules: added {len(result.added)}, updated {len(result.updated)}, "
               f"removed {len(result.removed)}, unchanged {len(result.kept)}.")
    for label, ids in (("added", result.added), ("updated", result.updated), ("removed", result.removed)):
        for schedule_id in ids:
            click.echo(f"  {label}: {schedule_id}")


@schedule_cli.command("list")
@with_appcontext
def list_command() -> None:
    """Print every schedule with its timetable, next run (UTC) and last run."""
    with connection():
        rows = list(Schedule.select().order_by(Schedule.builtin.desc(), Schedule.id))
        last = Job.by_id(row.last_job_id for row in rows)
    nexts = next_run_times([row.id for row in rows])
    for row in rows:
        when = f"cron {row.cron}" if row.cron else f"every {row.interval} s"
        nxt = nexts.get(row.id)
        job = last.get(row.last_job_id)
        click.echo(f"{row.id:<24} {row.job:<16} {when:<22} "
                   f"next {nxt.isoformat(timespec='seconds') + 'Z' if nxt else '-':<22} "
                   f"last {job.status if job else '-'}{' (paused)' if row.paused else ''}")


@schedule_cli.command("run")
@click.option("--interval", type=float, default=None,
              help="Seconds between polls (default: SCHEDULER_INTERVAL).")
@click.option("--burst", is_flag=True, help="Start what is due once, then exit.")
@with_appcontext
def scheduler_command(interval: float | None, burst: bool) -> None:
    """Run rq-scheduler: start every periodic job when it is due (one process per deployment;
    a second one waits for rq-scheduler's lock)."""
    app = current_app._get_current_object()
    # Docket's and rq-scheduler's lines on stderr, one handler (webapp/core/logs.py; create_app did it once too).
    configure_logging(app.config["LOG_LEVEL"], app.config["LOG_FORMAT"])
    run_scheduler(app, interval or app.config["SCHEDULER_INTERVAL"], burst=burst)
