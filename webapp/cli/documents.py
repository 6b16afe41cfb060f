"""``flask --app wsgi documents reprocess``: process stored documents again — after the readers
improved (``--without-structure``: documents made before headings, tables and OCR were kept), or
for one owner or one type — through ordinary document jobs, at a bounded rate.

Each document goes the way of every job (:func:`webapp.core.documents.reprocess_document`: row
committed, then enqueued); a document whose job is still waiting or running is skipped, not
doubled. The launches are paced evenly at ``--rate`` per second (a monotonic clock: no burst at
the start of each second, nothing to share between processes), and stop while the ``default``
queue (the document jobs' queue) holds more than ``--max-queued`` jobs, so a library of 100,000
documents does not bury the uploads behind it.
"""

from __future__ import annotations

import sys
import time
from typing import Callable

import click
from flask.cli import with_appcontext
from redis.exceptions import RedisError

from webapp.core.db import connection
from webapp.core.documents import documents_to_reprocess, reprocess_document
from webapp.core.models import Document, Job
from webapp.core.protocol.kinds import get_kind
from webapp.core.protocol.launch import QueueUnavailable
from webapp.core.protocol.states import TERMINAL
from webapp.core.queues import rq

QUEUE_POLL_SECONDS = 1.0  # how often a full queue is looked at again


@click.group("documents")
def documents_cli() -> None:
    """Stored documents: reprocess them."""


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


@documents_cli.command("reprocess")
@click.option("--all", "everything", is_flag=True, help="Every stored document (of every owner).")
@click.option("--owner", default=None, help="Only this owner's documents.")
@click.option("--content-type", default=None, help="Only documents of this type, e.g. application/pdf.")
@click.option("--without-structure", is_flag=True,
              help="Only documents whose chunks were made before the current readers (no headings or OCR marks).")
@click.option("--rate", default=5.0, show_default=True, type=click.FloatRange(min=0.01, max=1000),
              help="Documents launched per second, at most.")
@click.option("--max-queued", default=100, show_default=True, type=click.IntRange(min=0),
              help="Launch nothing while the document jobs' queue holds more jobs than this (0: no bound).")
@click.option("--dry-run", is_flag=True, help="Only print how many documents would be launched.")
@with_appcontext
def reprocess_command(everything: bool, owner: str | None, content_type: str | None, without_structure: bool,
                      rate: float, max_queued: int, dry_run: bool) -> None:
    """Process stored documents again with ordinary document jobs, RATE per second at most.

    Say which: --all, or one or more of --owner, --content-type, --without-structure (they
    combine). A document whose job is still queued or running is skipped. Shows a progress bar,
    then a summary; exits 1 when the queue (Redis) refused a job.
    """
    from rich.console import Console

    if not (everything or owner or content_type or without_structure):
        raise click.UsageError("Say which documents: --all, or --owner, --content-type and/or --without-structure.")
    console = Console(stderr=True)
    with connection():
        selection = documents_to_reprocess(owner=owner, content_type=content_type, without_structure=without_structure)
        document_ids = [row.id for row in selection.select(Document.id)]
        in_flight = (selection.select(Document.id).join(Job, on=(Job.id == Document.job_id))
                     .where(Job.status.not_in(tuple(TERMINAL))).count())
    if dry_run:
        console.print(f"Would launch {len(document_ids) - in_flight} document job(s): {len(document_ids)} "
                      f"document(s) selected, {in_flight} skipped (still queued or running).")
        return
    counts = _launch(console, document_ids, rate, max_queued)
    _print_summary(len(document_ids), counts)
    sys.exit(1 if counts["refused"] else 0)


def _launch(console, document_ids: list[str], rate: float, max_queued: int) -> dict[str, int]:
    """Launch the documents' jobs with a progress bar; counts of ``launched``, ``skipped``
    (in flight, or deleted meanwhile) and ``refused`` (Redis refused: the run stops there)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    counts = {"launched": 0, "skipped": 0, "refused": 0}
    queue = rq.get_queue(get_kind("document").queue)
    pacer = Pacer(rate)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress, connection():
        task = progress.add_task("Launching", total=len(document_ids))
        for document_id in document_ids:
            try:
                if max_queued and queue.count > max_queued:
                    console.print(f"The {queue.name} queue holds {queue.count} jobs, more than --max-queued "
                                  f"{max_queued}: waiting for the workers.")
                    while queue.count > max_queued:
                        progress.update(task, description=f"Waiting ({queue.count} queued > {max_queued})")
                        time.sleep(QUEUE_POLL_SECONDS)
                progress.update(task, description="Launching")
                pacer.wait()
                job = reprocess_document(document_id)
            except (QueueUnavailable, RedisError) as exc:
                counts["refused"] += 1
                console.print(f"[red]The queue refused document {document_id}: {exc} Stopped; run the command "
                              "again later (launched documents are not launched twice).[/red]")
                break
            counts["launched" if job is not None else "skipped"] += 1
            progress.advance(task)
    return counts


def _print_summary(selected: int, counts: dict[str, int]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Docket reprocess")
    for column in ("Selected", "Launched", "Skipped (in flight)", "Refused by the queue", "Not reached"):
        table.add_column(column, justify="right")
    reached = counts["launched"] + counts["skipped"] + counts["refused"]
    table.add_row(str(selected), str(counts["launched"]), str(counts["skipped"]), str(counts["refused"]),
                  str(selected - reached))
    stdout = Console()
    if not stdout.is_terminal:
        stdout = Console(width=1000)
    stdout.print(table)
