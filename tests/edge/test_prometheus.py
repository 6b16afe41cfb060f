"""``GET /metrics``: Prometheus's text format from the real web process (the Procfile's gunicorn
line), summed over real worker processes — one of which is stopped and replaced mid-test, so
its counts must survive it (prometheus_client's multiprocess mode, :mod:`webapp.core.metrics`)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import requests
from rq import Queue
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import CORPUS, make_token, row, wait_for
from webapp.core.db import connection
from webapp.core.models import Document, Job

WORKER_ENV = {"WORKER_CONCURRENCY": "1", "HIGH_QUEUE_WORKERS": "0"}
TERMINAL = {"finished", "failed", "stopped", "canceled"}


def scrape(web: str, token: str) -> dict[str, dict[tuple, float]]:
    """``{sample name: {sorted label items: value}}`` of one scrape as an admin."""
    response = requests.get(f"{web}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain; version="), response.headers
    return parse(response.text)


def parse(text: str) -> dict[str, dict[tuple, float]]:
    """Prometheus's text format, parsed by prometheus_client's own parser."""
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    """The sample ``name`` with exactly ``labels``; 0 when absent (a counter never incremented)."""
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def total(samples, name: str, **labels: str) -> float:
    """The sum of the samples ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for key, v in samples.get(name, {}).items() if wanted <= set(key))


def recorded(samples, kind: str, jobs: int):
    """``samples`` once ``jobs`` jobs of ``kind`` are in the queue-wait histogram, else ``None``."""
    return samples if value(samples, "docket_job_queue_wait_seconds_count", kind=kind) >= jobs else None


def upload(web: str, token: str, *names: str) -> list[dict]:
    handles = [open(CORPUS / name, "rb") for name in names]
    try:
        response = requests.post(f"{web}/api/documents", headers={"Authorization": f"Bearer {token}"},
                                 files=[("file", (name, fh)) for name, fh in zip(names, handles)], timeout=60)
    finally:
        for fh in handles:
            fh.close()
    assert response.status_code == 202, response.text
    return response.json()["documents"]


def wait_until_ended(app, documents: list[dict]) -> dict[str, str]:
    def statuses():
        found = {d["job_id"]: row(app, d["job_id"]).status for d in documents}
        return found if set(found.values()) <= TERMINAL else None

    return wait_for(statuses, 180, "the document jobs to end")


def test_metrics_sum_every_worker_process_even_a_replaced_one(app, web, config, tmp_path, start_worker):
    admin = make_token(app, "ops", admin=True)
    user = make_token(app, "someone", admin=False)

    # Admins only: a scraper sends its bearer token; without one 401, a non-admin's 403.
    anonymous = requests.get(f"{web}/metrics", timeout=30)
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "authentication_required"
    refused = requests.get(f"{web}/metrics", headers={"Authorization": f"Bearer {user}"}, timeout=30)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "admin_required"

    first = upload(web, admin, "minimal-document.pdf", "korean-report-4p.pdf")
    waiting = scrape(web, admin)  # no worker yet: both wait in the queue, as RQ and the rows say
    assert value(waiting, "docket_queue_jobs", queue="default", registry="queued") == 2
    assert value(waiting, "docket_jobs", kind="document", status="queued") == 2
    assert value(waiting, "docket_scrape_source_up", source="redis") == 1
    assert value(waiting, "docket_scrape_source_up", source="database") == 1

    worker_a = start_worker(**WORKER_ENV)
    assert set(wait_until_ended(app, first).values()) == {"finished"}
    worker_a.terminate()  # a deploy: the whole worker command goes; its processes' files stay
    assert worker_a.wait(30) == 0

    worker_b = start_worker(**WORKER_ENV)
    second = upload(web, admin, "wikipedia-duck.html", "aes128-r4-user-password.pdf")  # the PDF needs its password
    ended = wait_until_ended(app, second)
    assert ended == {second[0]["job_id"]: "finished", second[1]["job_id"]: "failed"}, ended
    assert worker_b.poll() is None

    # The row ends (state machine) a moment before the worker records the job's duration.
    samples = wait_for(lambda: recorded(scrape(web, admin), "document", 4), 30, "the worker to record the last job")
    # Jobs by kind and status (the Job table) and RQ's registries (Redis), read at scrape time.
    assert value(samples, "docket_jobs", kind="document", status="finished") == 3
    assert value(samples, "docket_jobs", kind="document", status="failed") == 1
    assert value(samples, "docket_jobs", kind="report", status="finished") == 0  # every kind × status is there
    assert value(samples, "docket_queue_jobs", queue="default", registry="queued") == 0
    assert value(samples, "docket_queue_jobs", queue="default", registry="finished") == 3
    assert value(samples, "docket_queue_jobs", queue="default", registry="failed") == 1
    assert value(samples, "docket_queue_jobs", queue="default", registry="started") == 0
    assert value(samples, "docket_queue_workers", queue="default") == 1  # worker B's one process

    # Histograms observed in the worker processes as each job ended: 2 jobs in worker A's process
    # (gone now), 2 in worker B's — 4 in all, by kind and RQ status.
    assert value(samples, "docket_job_duration_seconds_count", kind="document", status="finished") == 3
    assert value(samples, "docket_job_duration_seconds_count", kind="document", status="failed") == 1
    assert value(samples, "docket_job_queue_wait_seconds_count", kind="document") == 4
    assert value(samples, "docket_job_duration_seconds_bucket", kind="document", status="finished", le="+Inf") == 3
    assert value(samples, "docket_job_queue_wait_seconds_sum", kind="document") > 0
    histogram_pids = {path.stem.rsplit("_", 1)[1] for path in (tmp_path / "instance" / "prometheus").glob("histogram_*.db")}
    assert len(histogram_pids) >= 2, histogram_pids  # two processes observed jobs, one of them dead

    # Documents, pages and chunks: what the finished documents' rows say.
    with app.app_context(), connection():
        done = [Document.get_by_id(d["id"]) for d in first + second[:1]]
    assert value(samples, "docket_documents_processed_total") == 3
    assert value(samples, "docket_pages_processed_total") == sum(d.pages or 0 for d in done) == 5  # HTML has none
    assert value(samples, "docket_chunks_stored_total") == sum(d.chunk_count for d in done) > 3
    # Embedding calls, by embedder: at least one per finished document (each worker command
    # also warms its embedder up once), none failed; the texts are at least the chunks.
    assert total(samples, "docket_embedding_requests_total") >= 3
    assert total(samples, "docket_embedding_texts_total") >= sum(d.chunk_count for d in done)
    assert total(samples, "docket_embedding_errors_total") == 0
    embedders = {dict(key)["embedder"] for key in samples["docket_embedding_requests_total"]}
    assert len(embedders) == 1 and embedders <= {row_.embedding_model for row_ in _chunks_models(app)}


def test_a_job_whose_worker_process_was_killed_is_counted_by_the_pool(app, web, redis, start_worker):
    """A SIGKILLed process records nothing: the pool, which fails its job, observes it instead."""
    admin = make_token(app, "ops", admin=True)
    queue = Queue("default", connection=redis)
    with app.app_context(), connection():
        row_ = Job.create(kind="test", queue="default")
    killed = queue.enqueue("tests.jobs_for_tests.report_pid_and_sleep", 60, job_id=row_.id, job_timeout=120,
                           meta={"kind": "sleeper"})
    worker = start_worker(**WORKER_ENV)

    def process_pid():
        killed.refresh()
        return killed.meta.get("pid")

    pid = wait_for(process_pid, 60, "the job to start")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: killed.get_status(refresh=True).value == "failed", 60, "the pool to fail the job")
    second = queue.enqueue("tests.jobs_for_tests.report_pid_and_sleep", 0, meta={"kind": "sleeper"})
    wait_for(lambda: second.get_status(refresh=True).value == "finished", 60, "the replacement process to run a job")
    assert worker.poll() is None

    samples = wait_for(lambda: recorded(scrape(web, admin), "sleeper", 2), 30, "the jobs to be recorded")
    assert value(samples, "docket_job_duration_seconds_count", kind="sleeper", status="failed") == 1
    assert value(samples, "docket_job_duration_seconds_count", kind="sleeper", status="finished") == 1
    assert value(samples, "docket_job_queue_wait_seconds_count", kind="sleeper") == 2
    assert value(samples, "docket_job_duration_seconds_sum", kind="sleeper", status="failed") > 0


def _chunks_models(app):
    from webapp.core.models import Chunk

    with app.app_context(), connection():
        return list(Chunk.select(Chunk.embedding_model).distinct())


def test_metrics_files_of_an_earlier_run_are_wiped_at_start(tmp_path: Path):
    """The run command's supervisor empties the folder before it starts the processes, and hands
    the same folder to all of them; only metric files go."""
    from webapp.local.supervisor import wipe_metrics

    folder = tmp_path / "instance" / "prometheus"
    folder.mkdir(parents=True)
    (folder / "counter_123.db").write_bytes(b"x")
    (folder / "histogram_124.db").write_bytes(b"x")
    (folder / "notes.txt").write_text("kept")
    saved = os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    try:
        assert wipe_metrics(tmp_path, {"DOCKET_INSTANCE_PATH": str(tmp_path / "instance")}) == folder
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(folder)
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        if saved is not None:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = saved
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_a_scrape_answers_when_redis_is_away_and_says_so(config, unused_redis_url):
    """The queue gauges are left out and ``docket_scrape_source_up{source="redis"}`` is 0; the
    job counts (the database) are still there. Never a 500 to the scraper."""
    from tests.conftest import api_client
    from webapp import create_app
    from webapp.core.db import create_tables

    app = create_app({**config, "REDIS_URL": unused_redis_url})
    with app.app_context():
        create_tables()
    response = api_client(app, "ops", admin=True).get("/metrics")
    assert response.status_code == 200, response.get_data(as_text=True)
    samples = parse(response.get_data(as_text=True))
    assert value(samples, "docket_scrape_source_up", source="redis") == 0
    assert value(samples, "docket_scrape_source_up", source="database") == 1
    assert "docket_queue_jobs" not in samples
    assert value(samples, "docket_jobs", kind="document", status="queued") == 0
