"""Benchmark 3, per-job overhead: trivial jobs through the real queue, and a tiny document's CPU.

Three worker setups, each started as its own long-running process on a private Redis and
measured in the same run, alternating for several rounds:

* ``rq-worker``: RQ's forking ``Worker`` (``rq worker``): a work horse per job;
* ``rq-simpleworker``: RQ's ``SimpleWorker`` (``rq worker -w rq.worker.SimpleWorker``);
* ``docket``: the Procfile's command, ``flask --app wsgi rq worker`` (Docket's pool).

For each: enqueue → finished latency of a trivial job (``jobs.ping_job.ping``) sent one at a
time to an idle worker, p50/p95 in ms from RQ's own ``enqueued_at``/``ended_at``; and
throughput of a burst of trivial jobs in jobs/s per worker process. For Docket also the CPU
floor of a tiny text document: CPU ms (all of the worker command's processes) per document
uploaded through ``accept_uploads``, against the same document's pipeline run in-process.

    .venv/bin/python -m benchmarks.job_overhead [--rounds 3]
"""

from __future__ import annotations

import io
import tempfile
import time
from pathlib import Path

from redis import Redis
from rq import Queue
from rq.registry import FinishedJobRegistry

from benchmarks.common import (
    command_line,
    alternate,
    collect,
    percentile,
    private_redis,
    result,
    summary,
    wait_until,
    worker_app,
    worker_process,
)
from benchmarks.tables import print_record

TRIVIAL_JOB = "jobs.ping_job.ping"
LATENCY_JOBS = 200
BURST_JOBS = 500
TINY_DOCUMENTS = 100
TINY_TEXT = b"Docket measures what a tiny document costs. It has two sentences."
SETUPS = ("rq-worker", "rq-simpleworker", "docket")


def trivial_latency(connection: Redis) -> list[float]:
    """Enqueue → finished seconds of :data:`LATENCY_JOBS` trivial jobs, sent one at a time."""
    queue = Queue("default", connection=connection)
    latencies = []
    for _ in range(LATENCY_JOBS):
        job = queue.enqueue(TRIVIAL_JOB, result_ttl=600)
        if job.latest_result(timeout=10) is None:  # blocks on RQ's result stream: no polling
            raise TimeoutError(f"job {job.id} did not finish")
        job.refresh()
        latencies.append((job.ended_at - job.enqueued_at).total_seconds())
    return latencies


def trivial_throughput(connection: Redis) -> float:
    """Jobs per second for a burst of :data:`BURST_JOBS` trivial jobs enqueued at once."""
    queue = Queue("default", connection=connection)
    registry = FinishedJobRegistry("default", connection=connection)
    before = registry.count
    started = time.perf_counter()
    queue.enqueue_many([Queue.prepare_data(TRIVIAL_JOB, result_ttl=600) for _ in range(BURST_JOBS)])
    wait_until(lambda: registry.count - before >= BURST_JOBS, 120, interval=0.02, what="the burst to finish")
    return BURST_JOBS / (time.perf_counter() - started)


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid``, its descendants and their reaped children."""
    import psutil

    total = 0.0
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def tiny_document_cpu(app, pid: int) -> float:
    """CPU seconds the worker command's processes spend per tiny text document."""
    from webapp.core.db import connection
    from webapp.core.documents import Upload, accept_uploads
    from webapp.core.models import TERMINAL_STATUSES, Job

    with app.app_context(), connection():
        before = tree_cpu_seconds(pid)
        for index in range(TINY_DOCUMENTS):
            document = accept_uploads([Upload(f"tiny-{index}.txt", io.BytesIO(TINY_TEXT))], reprocess=True, owner="bench").files[0].document
            wait_until(lambda: Job.get_by_id(document.job_id).status in TERMINAL_STATUSES, 30, interval=0.002,
                       what="a tiny document")
        return (tree_cpu_seconds(pid) - before) / TINY_DOCUMENTS


def tiny_document_pipeline_cpu(app) -> float:
    """CPU seconds of the tiny document's pipeline run in this process (the floor's baseline)."""
    from jobs.document_job import run_document_job
    from jobs.worker.warmup import prepare_worker_process
    from jobs.tracking import JobTracker
    from webapp.core.db import connection
    from webapp.core.documents import Upload, accept_uploads

    with app.app_context():
        prepare_worker_process(app)
        with connection():
            documents = [accept_uploads([Upload(f"base-{i}.txt", io.BytesIO(TINY_TEXT))], reprocess=True, owner="bench").files[0].document
                         for i in range(TINY_DOCUMENTS)]
        started = time.process_time()
        for document in documents:
            run_document_job(document.id, JobTracker(document.job_id), app.config)
        return (time.process_time() - started) / TINY_DOCUMENTS


def run(rounds: int = 3) -> dict:
    """Measure every setup for ``rounds`` rounds; return the result record."""
    with tempfile.TemporaryDirectory(prefix="docket-overhead-") as tmp:
        workdir = Path(tmp)
        with private_redis(workdir / "redis") as redis_url:
            connection = Redis.from_url(redis_url)
            app = worker_app(workdir, redis_url)

            def measure(setup: str):
                def side() -> dict[str, float]:
                    with worker_process(setup, redis_url, workdir) as (pid, workers):
                        latencies = trivial_latency(connection)
                        figures = {
                            "trivial_p50_ms": percentile(latencies, 0.5) * 1000,
                            "trivial_p95_ms": percentile(latencies, 0.95) * 1000,
                            "jobs_per_s_per_worker": trivial_throughput(connection) / workers,
                        }
                        if setup == "docket":
                            figures["tiny_document_cpu_ms"] = tiny_document_cpu(app, pid) * 1000
                    connection.flushdb()
                    return figures
                return side

            print("benchmark 3: per-job overhead", flush=True)
            measured = alternate(rounds, {setup: measure(setup) for setup in SETUPS})
            baseline_cpu = [tiny_document_pipeline_cpu(app) * 1000 for _ in range(rounds)]

    figures = {
        setup: {key: collect(rows, key) for key in rows[0]} for setup, rows in measured.items()
    }
    figures["pipeline_in_process"] = {"tiny_document_cpu_ms": summary(baseline_cpu)}
    docket = figures["docket"]
    p50 = docket["trivial_p50_ms"]["median"]
    floor = docket["tiny_document_cpu_ms"]["median"]
    ratio = floor / figures["pipeline_in_process"]["tiny_document_cpu_ms"]["median"]
    record = result(
        name="job_overhead",
        title="Benchmark 3: per-job overhead (trivial jobs through the real queue; a tiny document's CPU)",
        figures=figures,
        ratio=ratio,
        ratio_meaning="tiny document: CPU in the service ÷ CPU of its pipeline run in-process",
        target="trivial job p50 ≤ 5 ms in the production setup; tiny-document CPU floor ≤ 30 ms",
        met=p50 <= 5 and floor <= 30,
        notes=("Docket runs every job in its pool's worker processes without a fork per job; crash isolation "
               "is per process (the pool fails the job of a process that dies and starts a new one)."),
    )
    print_record(record)
    return record


if __name__ == "__main__":
    command_line(run, __doc__)
