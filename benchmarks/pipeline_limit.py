"""The pipeline's own limit: the document job's body run in-process, one process per core.

Side (a) of benchmark 1 ("service vs its own limit", in ``benchmarks/http_ingest.py``): every
document is stored and its rows committed first (through the same ``accept_uploads`` the API
uses, untimed), then :func:`jobs.document_job.run_document_job` — extract → chunk → embed →
store, with the same database writes a worker makes — runs for each of them in a pool of
forked processes, one per core, prepared like a Docket worker. No HTTP, no queue, no fork per
job: what is left is the work itself, the ceiling the service is measured against.

    .venv/bin/python benchmarks/pipeline_limit.py [--copies 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from benchmarks.common import BENCH_SECRET_KEY, CorpusFile, cores, finishing_files, private_redis

_app = None  # the Flask app of a pool process (set by _start_process)


def run_limit(files: Sequence[CorpusFile], workdir: Path, processes: int | None = None) -> dict[str, float]:
    """Run the document pipeline in-process on ``files`` (each entry one document).

    Args:
        files: the documents, in the order a client would upload them (repeat entries for copies).
        workdir: an empty folder for the SQLite database, stored uploads and a private Redis.
        processes: pool size; one per core when omitted.

    Returns:
        ``{"wall_s", "docs_per_s", "pages_per_s", "cpu_s", "finished", "failed"}``: wall time
        in seconds from the first document started to the last one stored, throughput, and the
        CPU seconds the pool processes used.
    """
    from webapp import create_app
    from webapp.core.db import connection, create_tables, db
    from webapp.core.documents import accept_uploads, read_path

    processes = processes or cores()
    workdir.mkdir(parents=True, exist_ok=True)
    with private_redis(workdir / "redis") as redis_url:
        app = create_app({
            "DATABASE_URL": f"sqlite:///{workdir / 'limit.sqlite3'}",
            "STORAGE_PATH": str(workdir / "uploads"),
            "REDIS_URL": redis_url,
            "OPENAI_API_KEY": None,
            "SECRET_KEY": BENCH_SECRET_KEY,  # create_app refuses the public default outside tests
        })
        with app.app_context():
            create_tables()
            with connection():  # the rows and bytes, as an upload leaves them (not timed)
                documents = [accept_uploads([read_path(f.path)], reprocess=True, owner="bench").files[0].document for f in files]
        work = [(document.id, document.job_id) for document in documents]

        global _app
        _app = app
        from jobs.worker.warmup import prepare_worker_process

        prepare_worker_process(app)  # as the worker does, before forking
        with app.app_context():  # the database is bound per app
            db.database.close_idle()  # the pooled connection of the uploads must not cross the fork
        context = multiprocessing.get_context("fork")
        with context.Pool(processes, initializer=_start_process) as pool:
            pool.map(time.sleep, [0.01] * processes)  # every process is up before the clock starts
            cpu_before = _children_cpu_seconds()
            started = time.perf_counter()
            outcomes = list(pool.imap_unordered(_run_one, work, chunksize=1))
            wall = time.perf_counter() - started
            cpu_after = _children_cpu_seconds()
    pages = sum(f.pages for f in files)
    return {
        "wall_s": wall,
        "docs_per_s": len(files) / wall,
        "pages_per_s": pages / wall,
        "cpu_s": cpu_after - cpu_before,
        "finished": outcomes.count("finished"),
        "failed": outcomes.count("failed"),
    }


def _start_process() -> None:
    # The benchmark's own SIGTERM handler (benchmarks.services.stop_on_sigterm: SystemExit, so its
    # services stop on kill) is inherited by the fork. Pool.terminate() ends the pool with SIGTERM:
    # a process that turns it into SystemExit can exit holding the pool's task-queue lock and leave
    # its sibling waiting on that lock for ever, and the run hung at the end of a round (seen once
    # in about fifteen rounds). A pool process dies on SIGTERM, as multiprocessing expects.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _app.app_context().push()


def _children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's live child processes (the pool)."""
    import psutil

    total = 0.0
    for child in psutil.Process().children():
        times = child.cpu_times()
        total += times.user + times.system
    return total


def _run_one(ids: tuple[str, str]) -> str:
    from flask import current_app

    from jobs.document_job import run_document_job
    from jobs.document_errors import JobError
    from jobs.tracking import JobTracker

    document_id, job_id = ids
    try:
        result: dict[str, Any] = run_document_job(document_id, JobTracker(job_id), current_app.config)
    except JobError:
        return "failed"
    return "skipped" if "skipped" in result else "finished"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=3, help="copies of each corpus file")
    args = parser.parse_args()
    files = finishing_files() * args.copies
    with tempfile.TemporaryDirectory(prefix="docket-limit-") as tmp:
        figures = run_limit(files, Path(tmp))
    print(", ".join(f"{key}={value:.3g}" for key, value in figures.items()))


if __name__ == "__main__":
    main()
