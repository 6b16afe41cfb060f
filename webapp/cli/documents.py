"""``flask --app wsgi documents reprocess`` and ``documents reindex``: process stored documents
again through ordinary document jobs, at a bounded rate.

* ``reprocess`` — after the readers improved (``--without-structure``: documents made before
  headings, tables and OCR were kept), or for one owner or one type;
* ``reindex`` — the documents a settings change left stale (``EMBEDDER``, ``CHUNK_SIZE``, …:
  :mod:`webapp.core.indexing`), from this command's configuration.

Both share one launch loop (:func:`webapp.core.relaunch.relaunch_documents`): each document goes
the way of every job (row committed, then enqueued); a document whose job is still waiting or
running is skipped, not doubled. The launches are paced evenly at ``--rate`` per second and stop
while the ``default`` queue (the document jobs' queue) holds more than ``--max-queued`` jobs, so a
library of 100,000 documents does not bury the uploads behind it.
"""

from __future__ import annotations

import sys

import click
from flask import current_app
from flask.cli import with_appcontext

from webapp.core.db import connection
from webapp.core.documents import documents_to_reprocess
from webapp.core.indexing import in_flight, index_digest, index_recipe, stale_documents
from webapp.core.models import Document
from webapp.core.protocol.kinds import get_kind
from webapp.core.queues import rq
from webapp.core.relaunch import Pacer, relaunch_documents  # noqa: F401  (Pacer: the tests read it here)


@click.group("documents")
def documents_cli() -> None:
    """Stored documents: reprocess them, or reindex the ones a settings change left stale."""


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
        skipped = in_flight(selection)
    if dry_run:
        console.print(f"Would launch {len(document_ids) - skipped} document job(s): {len(document_ids)} "
                      f"document(s) selected, {skipped} skipped (still queued or running).")
        return
    counts = _launch(console, document_ids, rate, max_queued)
    _print_summary(len(document_ids), counts, "Docket reprocess")
    sys.exit(1 if counts["refused"] else 0)


@documents_cli.command("reindex")
@click.option("--owner", default=None, help="Only this owner's documents.")
@click.option("--rate", default=5.0, show_default=True, type=click.FloatRange(min=0.01, max=1000),
              help="Documents launched per second, at most.")
@click.option("--max-queued", default=100, show_default=True, type=click.IntRange(min=0),
              help="Launch nothing while the document jobs' queue holds more jobs than this (0: no bound).")
@click.option("--limit", default=None, type=click.IntRange(min=1),
              help="Launch at most this many documents (the oldest stale ones first).")
@click.option("--dry-run", is_flag=True, help="Only print the recipe and how many documents would be launched.")
@with_appcontext
def reindex_command(owner: str | None, rate: float, max_queued: int, limit: int | None, dry_run: bool) -> None:
    """Process again the documents a settings change left stale, RATE per second at most.

    Stale: documents with chunks made under other settings than this command's configuration
    (EMBEDDER and its model, CHUNK_SIZE, CHUNK_OVERLAP, OCR, PDF_TABLES, the extractor's version),
    or before digests were kept. Run it with the workers' settings. A document whose job is still
    queued or running is skipped. Search keeps answering from each document's old chunks until
    its new ones are stored. Prints the counts; exits 1 when the queue (Redis) refused a job.
    """
    from rich.console import Console

    console = Console(stderr=True)
    config = current_app.config
    recipe, digest = index_recipe(config), index_digest(config)
    console.print("Recipe " + digest[:12] + ": " + ", ".join(f"{key}={value}" for key, value in recipe.items()))
    with connection():
        selection = stale_documents(digest, owner=owner)
        document_ids = [row.id for row in selection.select(Document.id)]
        skipped = in_flight(selection)
    stale = len(document_ids)
    if limit is not None:
        document_ids = document_ids[:limit]
    if dry_run:
        console.print(f"Would launch at most {min(len(document_ids), stale - skipped)} document job(s): {stale} stale "
                      f"document(s), {skipped} of them still queued or running.")
        return
    counts = _launch(console, document_ids, rate, max_queued)
    _print_summary(len(document_ids), counts, "Docket reindex")
    sys.exit(1 if counts["refused"] else 0)


def _launch(console, document_ids: list[str], rate: float, max_queued: int) -> dict[str, int]:
    """Launch the documents' jobs with a progress bar (:func:`~webapp.core.relaunch.relaunch_documents`);
    counts of ``launched``, ``skipped`` (in flight, or deleted meanwhile) and ``refused`` (Redis
    refused: the run stops there)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    queue = rq.get_queue(get_kind("document").queue)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress, connection():
        task = progress.add_task("Launching", total=len(document_ids))

        def full() -> bool:
            return bool(max_queued) and queue.count > max_queued

        def waiting(first: bool) -> None:
            count = queue.count
            if first:
                console.print(f"The {queue.name} queue holds {count} jobs, more than --max-queued "
                              f"{max_queued}: waiting for the workers.")
            progress.update(task, description=f"Waiting ({count} queued > {max_queued})")

        def launched(document_id: str, job) -> None:
            progress.update(task, description="Launching")
            progress.advance(task)

        def refused(document_id: str, exc: Exception) -> None:
            console.print(f"[red]The queue refused document {document_id}: {exc} Stopped; run the command "
                          "again later (launched documents are not launched twice).[/red]")

        return relaunch_documents(document_ids, rate, full=full, on_wait=waiting, on_result=launched,
                                  on_refused=refused)


def _print_summary(selected: int, counts: dict[str, int], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in ("Selected", "Launched", "Skipped (in flight)", "Refused by the queue", "Not reached"):
        table.add_column(column, justify="right")
    reached = counts["launched"] + counts["skipped"] + counts["refused"]
    table.add_row(str(selected), str(counts["launched"]), str(counts["skipped"]), str(counts["refused"]),
                  str(selected - reached))
    stdout = Console()
    if not stdout.is_terminal:
        stdout = Console(width=1000)
    stdout.print(table)
