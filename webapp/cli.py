"""CLI commands: ``flask --app wsgi ingest PATH...`` and ``flask --app wsgi dev``.

(``init-db`` lives in :mod:`webapp.db`, ``rq worker`` in :mod:`jobs.worker`.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext
from rq import Worker

from webapp.db import connection, create_tables, redact_url
from webapp.documents import accept_uploads, read_path
from webapp.errors import ApiError
from webapp.job_status import job_to_dict
from webapp.models import TERMINAL_STATUSES, Document, Job
from webapp.queues import rq

PROJECT_ROOT = Path(__file__).resolve().parent.parent


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
            except ApiError as exc:
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


def port_is_free(host: str, port: int) -> bool:
    """Whether a TCP server could listen on ``host:port`` now (nothing else listens there)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As servers do (gunicorn too): a port whose last server just stopped is free again.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


@click.command("dev")
@click.option("--port", default=lambda: int(os.environ.get("PORT", 5000)), show_default="$PORT or 5000", type=int)
@with_appcontext
def dev_command(port: int) -> None:
    """Run the whole service locally: Redis (REDIS_URL if it answers, else an embedded one of
    its own), the database, and the Procfile's web, worker and scheduler processes under honcho
    (:mod:`webapp.supervisor`: a worker or scheduler process that exits is restarted after a
    backoff of 1 s doubling to 30 s; the web process exiting stops everything, and the command
    exits with a non-zero status). Refuses to start (status 1) when the port is taken or another
    run command serves this instance. Prints a fresh admin token and a sign-in link at every start
    (revoking the previous start's token). Ctrl-C stops everything.
    """
    from webapp.embedded_redis import EmbeddedRedis, redis_answers
    from webapp.tokens import rotate_local_admin_token

    from webapp.config import EMBEDDED_REDIS_URL_FILE, embedded_redis_url

    app = current_app
    env = dict(os.environ)
    host = os.environ.get("HOST", "127.0.0.1")  # a local run is not exposed to the network
    instance = Path(app.instance_path)
    # Refuse before starting anything: a second run command would start a second Redis on the
    # same data folder and then see gunicorn fail.
    if not port_is_free(host, port):
        raise click.ClickException(f"Port {port} on {host} is already in use (another run command, or another "
                                   "server): stop it, or choose another port with --port.")
    running = embedded_redis_url(instance)
    if running and redis_answers(running):
        raise click.ClickException(f"Another run command for this instance ({instance}) is running: its Redis "
                                   f"answers at {running}. Stop it first.")
    embedded = None
    explicit = os.environ.get("REDIS_URL")
    if explicit and redis_answers(explicit):
        redis_url = explicit
        click.echo(f"Using the Redis at {redact_url(explicit)} (REDIS_URL).")
    else:
        # Unset REDIS_URL: a Redis of our own, never the db 0 of whatever answers on localhost.
        embedded = EmbeddedRedis(instance / "redis", persist=True)
        redis_url = embedded.start()
        why = f"No Redis answered at {redact_url(explicit)}" if explicit else "REDIS_URL is not set"
        click.echo(f"{why}; started an embedded one at {redis_url} (data in {embedded.data_dir}). Other commands "
                   f"for this instance find it through {instance / EMBEDDED_REDIS_URL_FILE}.")
        (instance / EMBEDDED_REDIS_URL_FILE).write_text(redis_url + "\n")
    env.update(
        REDIS_URL=redis_url,
        DATABASE_URL=app.config["DATABASE_URL"],
        STORAGE_PATH=app.config["STORAGE_PATH"],
        DOCKET_INSTANCE_PATH=app.instance_path,
        PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
        PYTHONUNBUFFERED="1",
        HOST=host,
    )
    # honcho SIGKILLs what has not exited 5 s after its SIGTERM: a stopping worker hands its
    # job back before that (a platform waits ≈30 s; there the default grace is 10 s).
    env.setdefault("SHUTDOWN_GRACE", "3")
    # A local run serves plain http://127.0.0.1: a Secure cookie would never come back.
    env.setdefault("SESSION_COOKIE_SECURE", "false")
    # A person reads this terminal: the same log fields as text (a platform's log service gets JSON).
    env.setdefault("LOG_FORMAT", "text")
    env.pop("FLASK_RUN_FROM_CLI", None)

    def stop_on_signal(signum, frame):  # kill, a closed terminal: shut down like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop_on_signal)
    signal.signal(signal.SIGHUP, stop_on_signal)
    honcho = None
    status = 0
    try:
        create_tables()  # the scheduler process syncs the schedules itself when it starts
        with connection():
            token = rotate_local_admin_token()
        click.echo(f"Database ready at {redact_url(app.config['DATABASE_URL'])}. Serving on http://127.0.0.1:{port}/")
        click.echo(f"Admin token for this run (the previous run's is revoked): {token}\n"
                   f"Sign in: http://127.0.0.1:{port}/signin#token={token}\n"
                   f"API: curl -H 'Authorization: Bearer {token}' http://127.0.0.1:{port}/api/documents\n"
                   "Tokens that outlive restarts: flask --app wsgi tokens create NAME [--admin]")
        honcho = subprocess.Popen(_supervisor_command(port), env=env)
        status = honcho.wait()
    except KeyboardInterrupt:
        if honcho is not None and honcho.poll() is None:
            honcho.send_signal(signal.SIGINT)  # honcho stops web, worker and scheduler, then exits
            honcho.wait()
    finally:
        if embedded is not None:
            (instance / EMBEDDED_REDIS_URL_FILE).unlink(missing_ok=True)
            embedded.stop()
            click.echo("Stopped the embedded Redis.")
    if status:  # the web process stopped, so everything did: say so in the exit status too
        click.echo(f"The processes stopped on their own (honcho's status {status}).", err=True)
        sys.exit(status)


def _supervisor_command(port: int) -> list[str]:
    """honcho ``start`` for the Procfile's web, worker and scheduler, restarting worker and scheduler."""
    return [sys.executable, "-m", "webapp.supervisor", "--procfile", str(PROJECT_ROOT / "Procfile"),
            "--app-root", str(PROJECT_ROOT), "--port", str(port), "--restart", "worker,scheduler",
            "web", "worker", "scheduler"]
