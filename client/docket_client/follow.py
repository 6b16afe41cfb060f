"""Following jobs until they end, with a rich progress bar per job."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from docket_client.http import DocketClient

# RQ's status names: a job in one of these will not change again by itself.
TERMINAL_STATUSES = frozenset({"finished", "failed", "stopped", "canceled"})
POLL_INTERVAL = 1.0  # seconds between two looks at the jobs still running
POLL_RETRIES = 5  # a look that got no answer or a 502/503/504 is retried (urllib3's backoff: 0+2+4+8+16 = 30 s)


def follow_jobs(client: DocketClient, labels: dict[str, str], console: Console,
                timeout: float | None = None) -> tuple[dict[str, dict], bool]:
    """Poll ``GET /api/jobs/<id>`` for every job in ``labels`` (job id → what to call it, e.g. a
    file name) until each reached a terminal status, drawing one progress bar per job on
    ``console`` (its ``stage`` and ``progress`` 0–100).

    A look that finds the server briefly unreachable or answering 502/503/504 is retried with
    backoff (a web process restarting), so a long wait survives it.

    Returns:
        ``(jobs, complete)``: the last JSON seen of each job, and whether all ended (``False``
        when ``timeout`` seconds passed first; the jobs keep running on the server).

    Raises:
        DocketError: a look that still failed after its retries, or any other error answer.
    """
    poller = client.with_retries(POLL_RETRIES)
    deadline = None if timeout is None else time.monotonic() + timeout
    states: dict[str, dict] = {}
    columns = (TextColumn("{task.description}", style="bold"), BarColumn(), TaskProgressColumn(),
               TextColumn("{task.fields[state]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        tasks = {job_id: progress.add_task(label, total=100, state="…") for job_id, label in labels.items()}
        while True:
            for job_id in labels:
                if states.get(job_id, {}).get("status") in TERMINAL_STATUSES:
                    continue
                job = states[job_id] = poller.job(job_id)
                ended = job.get("status") in TERMINAL_STATUSES
                progress.update(tasks[job_id], completed=100 if ended else job.get("progress") or 0,
                                state=describe_state(job))
            if all(job.get("status") in TERMINAL_STATUSES for job in states.values()):
                return states, True
            if deadline is not None and time.monotonic() >= deadline:
                return states, False
            time.sleep(POLL_INTERVAL)


def follow_job(client: DocketClient, job_id: str, console: Console, label: str | None = None) -> dict:
    """Follow one job as :func:`follow_jobs` does, without a time limit; returns its last JSON
    (terminal). Raises :class:`DocketError` as :func:`follow_jobs` does."""
    return follow_jobs(client, {job_id: label or job_id}, console)[0][job_id]


def describe_state(job: dict) -> str:
    """A few words on a job's state: ``started: embed``, ``scheduled until 15:10:00Z``, ``failed: …``."""
    status = job.get("status") or "unknown"
    if status == "started" and job.get("stage"):
        return f"started: {job['stage']}"
    if status == "scheduled" and (job.get("run_at") or job.get("retry_at")):
        return f"scheduled until {job.get('retry_at') or job.get('run_at')}"
    if status in ("failed", "stopped", "canceled") and job.get("error"):
        return f"{status}: {job['error']}"
    return status
