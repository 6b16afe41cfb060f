"""``docket``: Docket's command-line client, over the public HTTP API only.

Configured by ``DOCKET_URL`` (default http://127.0.0.1:5000) and ``DOCKET_TOKEN`` (an API token,
sent as ``Authorization: Bearer``), or ``--url``/``--token``. Results go to stdout (tables, or
the server's JSON with ``--json``); progress bars and error sentences to stderr.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table
from rich.text import Text

from docket_client import __version__
from docket_client.follow import TERMINAL_STATUSES, describe_state, follow_job, follow_jobs
from docket_client.http import (DEFAULT_TIMEOUT, DEFAULT_URL, EXIT_JOBS_FAILED, EXIT_OK, DocketClient,
                                DocketError)

EXIT_STATUSES = """\b
Exit status:
  0  done (with --wait: every job finished)
  1  a job ended failed, stopped or canceled; a file or URL was refused; --wait-timeout passed
  2  a bad command line
  3  the server refused the request (400, 401, 403, 404, 409, 413, 415): repeating it will not help
  4  no answer, a timeout, 429 or a 5xx (503: Docket unavailable): the same command may work later"""


class DocketGroup(click.Group):
    """A click group that turns a :class:`DocketError` from any command into its sentence on
    stderr and its exit status: no traceback ever reaches the user."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DocketError as exc:
            click.echo(f"Error: {exc.message}", err=True)
            ctx.exit(exc.exit_status)


class Output:
    """Where results go: stdout as rich tables, or the server's JSON (``--json``); stderr for
    progress and notices."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.out = Console(highlight=False)
        if not self.out.is_terminal:  # piped: one line per table row, whatever the width
            self.out = Console(width=1000, highlight=False)
        self.err = Console(stderr=True, highlight=False)

    def json(self, value: Any) -> None:
        """Print ``value`` as indented JSON on stdout."""
        click.echo(json.dumps(value, indent=2, ensure_ascii=False))

    def table(self, columns: list[str], rows: list[list[Any]], title: str | None = None) -> None:
        """Print a table; cells are shown as plain text (never read as rich markup)."""
        table = Table(title=title)
        for column in columns:
            table.add_column(column, overflow="fold")
        for cells in rows:
            table.add_row(*(Text(_text(cell)) for cell in cells))
        self.out.print(table)

    def record(self, fields: dict[str, Any], skip: tuple[str, ...] = ()) -> None:
        """Print a JSON object as aligned ``name  value`` lines, whatever fields it has: those of
        :data:`FIRST_FIELDS` first, then the others in the server's order; empty ones (null, "",
        [], {}) left out; nested values as compact JSON."""
        names = [name for name in FIRST_FIELDS if name in fields]
        names += [name for name in fields if name not in names]
        shown = [(name, fields[name]) for name in names if name not in skip and fields[name] not in (None, "", [], {})]
        width = max((len(name) for name, _ in shown), default=0)
        for name, value in shown:
            line = Text(name.ljust(width), style="bold")
            line.append("  " + _text(value))
            self.out.print(line)

    def line(self, text: str) -> None:
        self.out.print(Text(text))


# The fields of a job or source a person looks for first (the rest follow as the server sent them).
FIRST_FIELDS = ("id", "name", "kind", "status", "stage", "progress", "error", "error_code", "attempts", "retry_at",
                "run_at", "url", "urls", "schedule", "last_sync", "result", "document_id", "batch_id")


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _client(ctx: click.Context) -> DocketClient:
    return ctx.find_object(Settings).client


def _output(ctx: click.Context) -> Output:
    return ctx.find_object(Settings).output


class Settings:
    """The group's options, handed to every command through click's context object."""

    def __init__(self, url: str, token: str | None, timeout: float, as_json: bool) -> None:
        self.client = DocketClient(url, token, timeout)
        self.output = Output(as_json)


@click.group(cls=DocketGroup, epilog=EXIT_STATUSES, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="DOCKET_URL", default=DEFAULT_URL, show_default=True, metavar="URL",
              help="The Docket server (env DOCKET_URL).")
@click.option("--token", envvar="DOCKET_TOKEN", default=None, metavar="TOKEN",
              help="An API token (env DOCKET_TOKEN), sent as 'Authorization: Bearer'.")
@click.option("--timeout", envvar="DOCKET_TIMEOUT", default=DEFAULT_TIMEOUT, show_default=True, type=click.FloatRange(min=1),
              help="Seconds to wait for each answer of the server (env DOCKET_TIMEOUT).")
@click.option("--json", "as_json", is_flag=True, help="Print the server's JSON instead of tables.")
@click.version_option(__version__, prog_name="docket")
@click.pass_context
def main(ctx: click.Context, url: str, token: str | None, timeout: float, as_json: bool) -> None:
    """Docket's command-line client: upload documents and follow their jobs, search the chunks,
    manage sources, against any Docket server through its public HTTP API."""
    ctx.obj = Settings(url, token, timeout, as_json)


# --- upload and fetch ------------------------------------------------------------------------------------

def _start_options(func):
    """The options shared by upload and fetch: what the server does with the new documents."""
    options = [
        click.option("--wait", is_flag=True, help="Follow every job until it ends, with a progress bar."),
        click.option("--wait-timeout", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
                     help="With --wait: give up waiting after this long (the jobs keep running)."),
        click.option("--reprocess", is_flag=True, help="Process again even if the same document was uploaded before."),
        click.option("--callback-url", metavar="URL", help="A webhook: each job POSTs its final state there."),
        click.option("--delay", type=click.FloatRange(min=0), metavar="SECONDS", help="Start the jobs this much later."),
        click.option("--run-at", metavar="TIME", help="Start the jobs at this ISO-8601 time (UTC without an offset)."),
        click.option("--report", type=click.Choice(["documents"]),
                     help="Make a documents report of the batch once every job ended."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _start_fields(reprocess: bool, callback_url: str | None, delay: float | None, run_at: str | None,
                  report: str | None) -> dict[str, Any]:
    fields: dict[str, Any] = {"reprocess": "true" if reprocess else None, "callback_url": callback_url,
                              "delay": None if delay is None else f"{delay:g}", "run_at": run_at, "report": report}
    return {name: value for name, value in fields.items() if value is not None}


def collect_files(paths: tuple[str, ...]) -> list[Path]:
    """The files named by ``paths``; folders are walked recursively, hidden entries skipped,
    in name order — as the server's ``flask ingest`` does (``webapp/cli/ingest.py``), written
    again here because the client imports nothing of the server."""
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


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, readable=True))
@_start_options
@click.option("--password", envvar="DOCKET_PDF_PASSWORD", metavar="PASSWORD",
              help="The password of encrypted PDFs (env DOCKET_PDF_PASSWORD).")
@click.pass_context
def upload(ctx: click.Context, paths: tuple[str, ...], wait: bool, wait_timeout: float | None, password: str | None,
           **start: Any) -> None:
    """Upload the files at PATHS (folders are walked) as one batch.

    Prints each document's id, job id and status, and the files the server refused with the
    reason. With --wait, follows every job until it ends and exits 1 if one did not finish.
    """
    output, client = _output(ctx), _client(ctx)
    files = collect_files(paths)
    if not files:
        raise click.UsageError("There is no file to upload in the given folders.")
    fields = _start_fields(**start)
    if password:
        fields["password"] = password
    columns = (TextColumn("Uploading"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=output.err, transient=True, disable=not output.err.is_terminal) as progress:
        task = progress.add_task("upload", total=None)
        answer = client.upload(files, fields, lambda sent, total: progress.update(task, completed=sent, total=total))
    _accepted(ctx, answer, wait, wait_timeout)


@main.command()
@click.argument("urls", nargs=-1, required=True)
@_start_options
@click.pass_context
def fetch(ctx: click.Context, urls: tuple[str, ...], wait: bool, wait_timeout: float | None, **start: Any) -> None:
    """Have the server fetch the documents at URLS (http or https) as one batch.

    Prints the same as upload; a URL the server will not fetch (e.g. a private address) is listed
    as refused with the reason.
    """
    fields = _start_fields(**start)
    if "delay" in fields:
        fields["delay"] = start["delay"]  # a number in JSON
    answer = _client(ctx).fetch(list(urls), fields)
    _accepted(ctx, answer, wait, wait_timeout)


def _accepted(ctx: click.Context, answer: dict, wait: bool, wait_timeout: float | None) -> None:
    """Show an upload's or fetch's 202 answer, follow its jobs with ``wait``, and exit 1 when
    something was refused or a job did not finish."""
    output = _output(ctx)
    documents = answer.get("documents") or []
    refused = answer.get("refused") or []
    report = answer.get("report")
    jobs: dict[str, dict] = {}
    complete = True
    if not output.as_json:
        rows = [[d.get("filename") or d.get("url"), d.get("id"), d.get("job_id"),
                 d.get("status", "") + (" (duplicate)" if d.get("duplicate") else "")] for d in documents]
        rows += [[_refused_name(r), "", "", f"refused: {_refused_reason(r)}"] for r in refused]
        output.table(["Document", "Id", "Job", "Status"], rows,
                     title=f"Batch {answer['batch_id']}" if answer.get("batch_id") else None)
        if report:
            output.line(f"Report {report.get('id')}: job {report.get('job_id')} (runs once every job ended)")
    if wait and documents:
        labels = {d["job_id"]: str(d.get("filename") or d.get("url") or d["job_id"]) for d in documents}
        jobs, complete = follow_jobs(_client(ctx), labels, output.err, wait_timeout)
        if not output.as_json:
            rows = []
            for d in documents:
                job = jobs.get(d["job_id"], {})
                result = job.get("result") if isinstance(job.get("result"), dict) else {}
                note = job.get("error") or "; ".join(map(str, result.get("warnings") or []))
                rows.append([d.get("filename") or d.get("url"), job.get("status"), result.get("pages"),
                             result.get("chunks"), note])
            output.table(["Document", "Status", "Pages", "Chunks", "Note"], rows)
        if not complete:
            output.err.print(Text(f"Gave up waiting after {wait_timeout:g} s; the jobs still running go on "
                                  "(follow them with 'docket status JOB --wait')."))
    if output.as_json:
        output.json({**answer, "jobs": list(jobs.values())} if wait else answer)
    unfinished = any(job.get("status") != "finished" for job in jobs.values())
    ctx.exit(EXIT_JOBS_FAILED if refused or unfinished or not complete else EXIT_OK)


def _refused_name(entry: dict) -> str:
    return str(entry.get("filename") or entry.get("url") or "?")


def _refused_reason(entry: dict) -> str:
    """The sentence of a refused file or URL: ``message`` (fetch) or ``error`` (upload)."""
    reason = entry.get("message") or entry.get("error") or entry.get("error_code") or "refused"
    return str(reason)


# --- jobs ------------------------------------------------------------------------------------------------

@main.command()
@click.argument("job_id", metavar="JOB")
@click.option("--wait", is_flag=True, help="Follow the job until it ends (exit 1 unless it finished).")
@click.pass_context
def status(ctx: click.Context, job_id: str, wait: bool) -> None:
    """Show job JOB: status (RQ's words), stage, progress, error, result and times."""
    output, client = _output(ctx), _client(ctx)
    job = client.job(job_id)
    if wait and job.get("status") not in TERMINAL_STATUSES:
        job = follow_job(client, job_id, output.err)
    if output.as_json:
        output.json(job)
    else:
        output.record(job)
    ctx.exit(EXIT_JOBS_FAILED if wait and job.get("status") != "finished" else EXIT_OK)


@main.command()
@click.argument("job_id", metavar="JOB")
@click.pass_context
def cancel(ctx: click.Context, job_id: str) -> None:
    """Cancel job JOB: a queued or scheduled job is canceled (it never runs), a running one is
    stopped. Refused (exit 3) when it already ended."""
    output = _output(ctx)
    job = _client(ctx).cancel(job_id)
    if output.as_json:
        output.json(job)
    else:
        how = {"canceled": "canceled before it ran", "stopped": "stopped while it ran"}
        output.line(f"Job {job.get('id', job_id)} {how.get(job.get('status'), job.get('status'))}.")


@main.command()
@click.argument("job_id", metavar="JOB")
@click.option("--wait", is_flag=True, help="Follow the job until it ends (exit 1 unless it finished).")
@click.pass_context
def retry(ctx: click.Context, job_id: str, wait: bool) -> None:
    """Run job JOB again (a failed, stopped or canceled one): same id, its attempts count on.
    Refused (exit 3) for a job in any other state."""
    output, client = _output(ctx), _client(ctx)
    job = client.retry(job_id)
    if wait:
        job = follow_job(client, job_id, output.err)
    if output.as_json:
        output.json(job)
    else:
        output.line(f"Job {job.get('id', job_id)}: {describe_state(job)} (attempts so far: {job.get('attempts')}).")
    ctx.exit(EXIT_JOBS_FAILED if wait and job.get("status") != "finished" else EXIT_OK)


# --- search ----------------------------------------------------------------------------------------------

EXCERPT_CHARS = 300


@main.command()
@click.argument("query")
@click.option("-k", "k", type=click.IntRange(min=1), default=5, show_default=True, help="How many chunks.")
@click.option("--mode", type=click.Choice(["hybrid", "vector", "text"]), default=None,
              help="The ranking (the server's default: hybrid).")
@click.option("--document", "document_id", metavar="ID", help="Only this document's chunks.")
@click.option("--batch", "batch_id", metavar="ID", help="Only this batch's chunks.")
@click.pass_context
def search(ctx: click.Context, query: str, k: int, mode: str | None, document_id: str | None,
           batch_id: str | None) -> None:
    """Search your documents' chunks for QUERY: score, document, pages, headings and an excerpt."""
    output = _output(ctx)
    answer = _client(ctx).search(query, k, mode, document_id, batch_id)
    if output.as_json:
        output.json(answer)
        return
    results = answer.get("results") or []
    if not results:
        output.line("No chunk matches.")
    for rank, result in enumerate(results, 1):
        pages = _pages(result.get("page_start"), result.get("page_end"))
        headings = " › ".join(map(str, result.get("headings") or []))
        title = Text(f"{rank}. ", style="bold")
        title.append(f"{result.get('score')}  {result.get('filename')}", style="bold")
        title.append("".join(f"  {part}" for part in (pages, headings) if part))
        output.out.print(title)
        text = " ".join(str(result.get("text") or "").split())
        output.out.print(Text("   " + (text[:EXCERPT_CHARS] + "…" if len(text) > EXCERPT_CHARS else text)))


def _pages(start: Any, end: Any) -> str:
    if start is None:
        return ""
    return f"p. {start}" if end in (None, start) else f"pp. {start}–{end}"


# --- sources ---------------------------------------------------------------------------------------------

@main.group()
def sources() -> None:
    """Sources the server ingests from and keeps in sync: S3 prefixes, web pages, sitemaps."""


@sources.command("list")
@click.pass_context
def sources_list(ctx: click.Context) -> None:
    """Every source: id, kind, where, schedule, last sync."""
    output = _output(ctx)
    answer = _client(ctx).sources()
    if output.as_json:
        output.json(answer)
        return
    rows = [[s.get("id"), s.get("kind"), s.get("name"), _where(s), _cron(s.get("schedule")),
             _last_sync(s.get("sync_job") or s.get("last_sync"))]
            for s in answer.get("sources") or []]
    output.table(["Id", "Kind", "Name", "Where", "Schedule", "Last sync"], rows)


def _where(source: dict) -> str:
    return str(source.get("url") or ", ".join(map(str, source.get("urls") or [])))


def _cron(schedule: Any) -> str:
    """A source's schedule as the server gives it (``{"cron": …}``, or a bare string) as its cron text."""
    return str(schedule.get("cron") or "") if isinstance(schedule, dict) else _text(schedule)


def _last_sync(value: Any) -> str:
    if isinstance(value, dict):
        return " ".join(str(value[key]) for key in ("status", "ended_at", "started_at") if value.get(key))
    return _text(value)


@sources.command("add")
@click.argument("urls", nargs=-1, required=True)
@click.option("--kind", type=click.Choice(["s3", "web", "sitemap"]), default=None,
              help="What URLS are (default: s3 for s3:// URLs, else web pages).")
@click.option("--schedule", metavar="CRON", help="Sync on this cron schedule (five fields, UTC).")
@click.option("--name", help="A name to tell the source by.")
@click.pass_context
def sources_add(ctx: click.Context, urls: tuple[str, ...], kind: str | None, schedule: str | None,
                name: str | None) -> None:
    """Add a source: one s3://bucket/prefix/, one sitemap URL, or web page URLS."""
    kind = kind or ("s3" if all(url.startswith("s3://") for url in urls) else "web")
    if kind in ("s3", "sitemap") and len(urls) != 1:
        raise click.UsageError(f"A {kind} source has one URL; give web page URLs with --kind web.")
    body: dict[str, Any] = {"kind": kind, **({"urls": list(urls)} if kind == "web" else {"url": urls[0]})}
    body.update({key: value for key, value in (("cron", schedule), ("name", name)) if value})
    _show_source(_output(ctx), _client(ctx).add_source(body))


@sources.command("show")
@click.argument("source_id", metavar="SOURCE")
@click.pass_context
def sources_show(ctx: click.Context, source_id: str) -> None:
    """One source and its syncs (each sync job's status and counts)."""
    _show_source(_output(ctx), _client(ctx).source(source_id))


def _show_source(output: Output, source: dict) -> None:
    if output.as_json:
        output.json(source)
        return
    output.record(source, skip=("syncs",))
    syncs = source.get("syncs")
    if isinstance(syncs, list) and syncs:
        names = ("listed", "ingested", "changed", "deleted", "unchanged", "failed")
        rows = [[s.get("job_id"), s.get("status"),
                 *((s.get("counts") or {}).get(name) for name in names), s.get("started_at"), s.get("ended_at")]
                for s in syncs if isinstance(s, dict)]
        output.table(["Job", "Status", *(name.capitalize() for name in names), "Started", "Ended"], rows, "Syncs")


@sources.command("sync")
@click.argument("source_id", metavar="SOURCE")
@click.option("--wait", is_flag=True, help="Follow the sync job until it ends (exit 1 unless it finished).")
@click.pass_context
def sources_sync(ctx: click.Context, source_id: str, wait: bool) -> None:
    """Sync source SOURCE now: a job lists it and ingests what is new or changed."""
    output, client = _output(ctx), _client(ctx)
    answer = client.sync_source(source_id)
    job_id = answer.get("job_id")
    job = None
    if wait and job_id:
        job = follow_job(client, job_id, output.err, f"sync {source_id}")
    if output.as_json:
        output.json({**answer, "job": job} if job else answer)
    elif job:
        output.record(job)
    else:
        output.line(f"Sync of source {source_id} started: job {job_id}.")
    ctx.exit(EXIT_JOBS_FAILED if job and job.get("status") != "finished" else EXIT_OK)


@sources.command("delete")
@click.argument("source_id", metavar="SOURCE")
@click.option("--delete-documents", is_flag=True, help="Delete the documents it brought in too.")
@click.pass_context
def sources_delete(ctx: click.Context, source_id: str, delete_documents: bool) -> None:
    """Delete source SOURCE (its documents stay unless --delete-documents)."""
    _client(ctx).delete_source(source_id, delete_documents)
    output = _output(ctx)
    if output.as_json:
        output.json({"id": source_id, "deleted": True, "documents_deleted": delete_documents})
    else:
        output.line(f"Source {source_id} deleted" + (" with its documents." if delete_documents else "."))


def run() -> None:
    """The console script's entry point (``docket``)."""
    main(prog_name="docket")

