"""``flask --app wsgi ingest PATH...``: upload files or folders from the command line, follow the
jobs with a progress bar and end with a summary table (``--no-wait`` only enqueues)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click
from flask.cli import with_appcontext
from rq import Worker

from webapp.core.db import connection
from webapp.core.models import TERMINAL_STATUSES, Document, Job
from webapp.core.queues import rq
from webapp.core.documents import accept_uploads, read_path
from webapp.core.service_errors import ServiceError
from webapp.edge.job_json import job_to_dict


def collect_files(paths: tuple[str, ...]) -> list[Path]:
    """Files named by ``paths``; folders are walked recursively (hidden entries skipped), sorted."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                files.extend(Path(root) / name for name in sorted(names) if not name.startswith("."))
        else:
            files.append(path)
    return files


@click.command("ingest")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--password", default=None, help="Password for encrypted PDFs (used for every file).")
@click.option("--reprocess", is_flag=True, help="Process files again even if the same bytes were uploaded before.")
@click.option("--no-wait", is_flag=True, help="Only enqueue; do not wait for the jobs to end.")
@click.option("--timeout", default=1800, show_default=True, type=int, help="Seconds to wait for the jobs before giving up.")
@click.option("--owner", default="admin", show_default=True,
              help="Whose documents they are: the owner of the tokens that should see them.")
@with_appcontext
def ingest_command(paths: tuple[str, ...], password: str | None, reprocess: bool, no_wait: bool, timeout: int,
                   owner: str) -> None:
    """Upload the documents at PATHS (files or folders) for OWNER and follow their jobs.

    Shows a progress bar until every job has ended, then a summary table. Exits with status 1
    if a file was rejected or a job failed.
    """
    from rich.console import Console

    console = Console(stderr=True)
    accepted: list[tuple[Path, Document]] = []
    rejected: list[tuple[Path, str]] = []
    with connection():
        for path in collect_files(paths):
            try:
                result = accept_uploads([read_path(path)], password=password, reprocess=reprocess, owner=owner)
                accepted.append((path, result.files[0].document))
            except ServiceError as exc:
                rejected.append((path, exc.message))
                if exc.status >= 500:
                    break
            except OSError as exc:
                rejected.append((path, f"could not be read: {exc.strerror}"))
    console.print(f"Enqueued {len(accepted)} document(s); rejected {len(rejected)}.")
    if no_wait or not accepted:
        _print_summary(console, accepted, rejected, {})
        sys.exit(1 if rejected else 0)

    if Worker.count(connection=rq.connection) == 0:
        console.print(
            "[yellow]No RQ worker is running: start one with "
            "'flask --app wsgi rq worker' (or the run command); waiting anyway.[/yellow]"
        )
    jobs = _wait_for_jobs(console, [document.job_id for _, document in accepted], timeout)
    _print_summary(console, accepted, rejected, jobs)
    failed = any(job.get("status") != "finished" for job in jobs.values())
    sys.exit(1 if rejected or failed or len(jobs) < len(accepted) else 0)


def _wait_for_jobs(console, job_ids: list[str], timeout: int) -> dict[str, dict]:
    """Poll the jobs every 0.5 s with a progress bar; return the last state of each job."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    states: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("Processing", total=100 * len(job_ids))
        while True:
            with connection():
                for job in Job.select().where(Job.id.in_(job_ids)):
                    states[job.id] = job_to_dict(job)
            done = [s for s in states.values() if s["status"] in TERMINAL_STATUSES]
            completed = sum(100 if s["status"] in TERMINAL_STATUSES else s["progress"] for s in states.values())
            progress.update(task, completed=completed, description=f"Processing ({len(done)}/{len(job_ids)} ended)")
            if len(done) == len(job_ids):
                break
            if time.monotonic() > deadline:
                console.print(f"[red]Gave up waiting after {timeout} s; the remaining jobs keep running.[/red]")
                break
            time.sleep(0.5)
    return states


def _print_summary(console, accepted, rejected, jobs: dict[str, dict]) -> None:
    from rich.table import Table

    table = Table(title="Docket ingest")
    for column in ("File", "Status", "Pages", "Chars", "Chunks", "Note"):
        table.add_column(column, overflow="fold")
    with connection():
        for path, document in accepted:
            document = Document.get_by_id(document.id)
            job = jobs.get(document.job_id, {})
            note = job.get("error") or "; ".join(document.warnings or [])
            table.add_row(str(path), job.get("status", "queued"), _text(document.pages), _text(document.chars),
                          _text(document.chunk_count), note)
    for path, reason in rejected:
        table.add_row(str(path), "rejected", "", "", "", reason)
    from rich.console import Console

    stdout = Console()
    if not stdout.is_terminal:  # piped or redirected: one line per row, whatever the width
        stdout = Console(width=1000)
    stdout.print(table)  # the table goes to stdout, progress and notices to stderr


def _text(value) -> str:
    return "" if value is None else str(value)
