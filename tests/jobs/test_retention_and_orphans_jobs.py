"""The maintenance jobs (jobs/retention_job.py, jobs/orphans_job.py) on real rows and real files, run by a real worker
process through the one launch: retention deletes what ended long ago and nothing a live job
needs; orphans deletes old unreferenced files, fails a waiting job whose upload is gone and lists
what is missing; a second run of each changes nothing — on SQLite and on PostgreSQL. Plus
storage's key listing."""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from rq.job import Job as RQJob

from tests.conftest import api_client, row, upload
from webapp import create_app
from webapp.core.db import connection, create_tables
from webapp.core.protocol.launch import launch, new_job
from webapp.core.models import Batch, Chunk, Document, Job, Report, Schedule, utcnow
from webapp.core.storage import LocalStorage

# One worker process: `high` (the maintenance job) is emptied before `default` is looked at.
ONE_PROCESS = {"WORKER_CONCURRENCY": "1", "HIGH_QUEUE_WORKERS": "0"}


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, app, config):
    """``(app, worker environment)`` on each database: the test's SQLite file, or a fresh
    PostgreSQL database (the production one; its query planner and type rules differ)."""
    if request.param == "sqlite":
        return app, {}
    url = request.getfixturevalue("postgres_url")
    pg_app = create_app({**config, "DATABASE_URL": url})
    with pg_app.app_context():
        create_tables()
    return pg_app, {"DATABASE_URL": url}


def run_job(app, run_worker, kind: str, params: dict, **worker_env: str) -> Job:
    """Launch a job of ``kind`` as the scheduler does, run a burst worker, return its row."""
    with app.app_context(), connection():
        job_id = launch(kind, params).id
    run_worker(**worker_env)
    return row(app, job_id)


def stored(config) -> set[str]:
    """Every file in the storage folder, as keys."""
    root = Path(config["STORAGE_PATH"])
    return {path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()}


def age_files(config, seconds: float, keys) -> None:
    when = time.time() - seconds
    for key in keys:
        os.utime(Path(config["STORAGE_PATH"]) / key, (when, when))


def test_retention_deletes_old_terminal_work_and_keeps_live_and_recent_work(backend, config, run_worker):
    app, env = backend
    client = api_client(app)
    old_batch = upload(client, "minimal-document.pdf", "pypdf-extract-text.md").get_json()
    recent = upload(client, "war-and-peace-ch1.txt").get_json()["documents"][0]
    report = client.post("/api/reports", json={"type": "activity", "params": {}}).get_json()
    run_worker(**env)
    old_documents = [d["id"] for d in old_batch["documents"]]
    old_jobs = [d["job_id"] for d in old_batch["documents"]] + [report["job_id"]]
    live = upload(client, "libreoffice-writer-password.pdf").get_json()["documents"][0]  # stays queued
    long_ago = utcnow() - timedelta(days=40)
    with app.app_context(), connection():
        report_files = set(Report.get_by_id(report["id"]).files.values())
        old_keys = {d.storage_key for d in Document.select().where(Document.id.in_(old_documents))}
        old_chunks = Chunk.select().where(Chunk.document.in_(old_documents)).count()
        assert old_chunks > 0 and len(report_files) == 4
        Job.update(created_at=long_ago, ended_at=long_ago).where(Job.id.in_(old_jobs)).execute()
        Document.update(created_at=long_ago).where(Document.id.in_(old_documents + [live["id"]])).execute()
        Batch.update(created_at=long_ago).where(Batch.id == old_batch["batch_id"]).execute()
        Report.update(created_at=long_ago).where(Report.id == report["id"]).execute()
        # The live document also has an older run that ended long ago: the document stays, that row goes.
        earlier = Job.create(kind="document", queue="default", params={"document_id": live["id"]}, status="failed",
                             document=live["id"], created_at=long_ago, ended_at=long_ago)
        # A job that ended long ago whose webhook is still to be delivered stays for the webhook.
        reported = Job.create(kind="reconcile", queue="high", params={}, status="finished", created_at=long_ago,
                              ended_at=long_ago)
        webhook = new_job("webhook", {"job_id": reported.id})
        webhook.save(force_insert=True)
        Schedule.create(id="nightly", job="retention", cron="30 3 * * *", last_job_id=report["job_id"])
    assert old_keys | report_files <= stored(config)

    first = run_job(app, run_worker, "retention", {}, **ONE_PROCESS, **env)
    assert first.status == "finished" and first.progress == 100, (first.error, first.error_code)
    counts = {key: value for key, value in first.result.items() if key != "cutoff"}
    assert counts == {"jobs": 4, "documents": 2, "chunks": old_chunks, "reports": 1, "batches": 1, "files": 6}
    cutoff = datetime.fromisoformat(first.result["cutoff"]).replace(tzinfo=None)
    assert abs(cutoff - (first.started_at - timedelta(days=30))) < timedelta(minutes=1)  # RETENTION_DAYS

    with app.app_context(), connection():
        assert not Job.select().where(Job.id.in_(old_jobs + [earlier.id])).exists()
        assert not Document.select().where(Document.id.in_(old_documents)).exists()
        assert not Chunk.select().where(Chunk.document.in_(old_documents)).exists()
        assert Report.get_or_none(Report.id == report["id"]) is None
        assert Batch.get_or_none(Batch.id == old_batch["batch_id"]) is None
        # Kept: the recent document with its chunks, the live one with its job, the job a webhook reports.
        assert Chunk.select().where(Chunk.document == recent["id"]).count() > 0
        assert Job.get_or_none(Job.id == recent["job_id"]) is not None
        assert Document.get_or_none(Document.id == live["id"]) is not None
        assert Job.get_or_none(Job.id == live["job_id"]) is not None
        assert Job.get_or_none(Job.id == reported.id) is not None
        kept_keys = {d.storage_key for d in Document.select().where(Document.id.in_([recent["id"], live["id"]]))}
        schedule = Schedule.get_by_id("nightly")  # untouched, though its last job is gone
        assert schedule.last_job_id == report["job_id"]
    files = stored(config)
    assert not files & (old_keys | report_files) and kept_keys <= files

    second = run_job(app, run_worker, "retention", {"max_age_days": 30}, **ONE_PROCESS, **env)
    assert second.status == "finished"
    assert {key: value for key, value in second.result.items() if key != "cutoff"} == dict.fromkeys(counts, 0)
    assert stored(config) == files

    invalid = run_job(app, run_worker, "retention", {"max_age_days": 0}, **ONE_PROCESS, **env)
    assert (invalid.status, invalid.error_code) == ("failed", "invalid_params") and "max_age_days" in invalid.error


def test_orphans_deletes_old_unreferenced_files_and_fails_a_waiting_job_whose_upload_is_gone(
    backend, config, redis, run_worker
):
    app, env = backend
    client = api_client(app)
    kept = upload(client, "pypdf-extract-text.md").get_json()["documents"][0]
    report = client.post("/api/reports", json={"type": "activity", "params": {}}).get_json()
    run_worker(**env)
    waiting = upload(client, "minimal-document.pdf").get_json()["documents"][0]  # queued, never run
    storage = LocalStorage(config["STORAGE_PATH"])
    with app.app_context(), connection():
        kept_key = Document.get_by_id(kept["id"]).storage_key
        waiting_key = Document.get_by_id(waiting["id"]).storage_key
        report_files = Report.get_by_id(report["id"]).files
    storage.delete(waiting_key)  # lost after the upload
    storage.delete(report_files["csv"])
    storage.put("documents/zz/stray", b"bytes of an upload whose row never committed")
    storage.put("documents/zz/young", b"an upload being accepted right now")
    crashed = Path(config["STORAGE_PATH"]) / "documents" / "zz" / ".upload-crashed1"  # a write that died
    crashed.write_bytes(b"half a file")
    age_files(config, 2 * 3600, stored(config) - {"documents/zz/young"})  # ORPHAN_GRACE is 3600 s

    first = run_job(app, run_worker, "orphans", {}, **ONE_PROCESS, **env)
    assert first.status == "finished" and first.progress == 100, (first.error, first.error_code)
    assert first.result == {
        "deleted_files": ["documents/zz/.upload-crashed1", "documents/zz/stray"],
        "missing_documents": [waiting["id"]],
        "failed_jobs": [waiting["job_id"]],
        "missing_report_files": [report["id"]],
        "deleted_file_count": 2, "missing_document_count": 1, "failed_job_count": 1, "missing_report_file_count": 1,
    }
    files = stored(config)
    assert {"documents/zz/young", kept_key} <= files and "documents/zz/stray" not in files
    job = row(app, waiting["job_id"])
    assert (job.status, job.error_code, job.attempts) == ("failed", "file_missing", 0)  # never started
    assert "missing from storage" in job.error and job.ended_at is not None
    assert RQJob.fetch(waiting["job_id"], connection=redis).get_status().value == "canceled"
    assert row(app, kept["job_id"]).status == "finished"

    second = run_job(app, run_worker, "orphans", {}, **ONE_PROCESS, **env)
    assert second.status == "finished"
    assert second.result == {
        "deleted_files": [], "missing_documents": [waiting["id"]], "failed_jobs": [],
        "missing_report_files": [report["id"]],
        "deleted_file_count": 0, "missing_document_count": 1, "failed_job_count": 0, "missing_report_file_count": 1,
    }
    assert stored(config) == files
    assert row(app, waiting["job_id"]).updated_at == job.updated_at


def test_orphans_changes_nothing_when_the_storage_lists_no_file_while_documents_exist(
    app, client, config, run_worker
):
    document = upload(client, "pypdf-extract-text.md").get_json()["documents"][0]
    run_worker()
    for key in stored(config):  # as an unmounted STORAGE_PATH looks
        (Path(config["STORAGE_PATH"]) / key).unlink()
    job = run_job(app, run_worker, "orphans", {}, **ONE_PROCESS)
    assert (job.status, job.error_code) == ("failed", "storage_unavailable") and "STORAGE_PATH" in job.error
    assert row(app, document["job_id"]).status == "finished"


def test_local_storage_lists_keys_with_their_modification_time(tmp_path):
    storage = LocalStorage(tmp_path / "store")
    assert list(storage.keys()) == []  # nothing stored yet: no folder, nothing listed
    for key in ("documents/ab/one", "documents/ab/two", "documents/cd/three", "reports/ab/r.html"):
        storage.put(key, key.encode())
    (tmp_path / "store" / "documents" / "ab" / ".upload-x1").write_bytes(b"left by a crashed write")
    (tmp_path / "store" / "documents" / "ab" / "not a key").write_bytes(b"not made by Docket")
    os.utime(tmp_path / "store" / "documents" / "ab" / "one", (1_000_000, 1_000_000))
    listed = dict(storage.keys())
    assert set(listed) == {"documents/ab/.upload-x1", "documents/ab/one", "documents/ab/two", "documents/cd/three",
                           "reports/ab/r.html"}
    assert listed["documents/ab/one"] == 1_000_000 and abs(listed["reports/ab/r.html"] - time.time()) < 60
    assert [key for key, _ in storage.keys("documents/ab/")] == ["documents/ab/.upload-x1", "documents/ab/one",
                                                                  "documents/ab/two"]
    assert [key for key, _ in storage.keys("documents/ab/t")] == ["documents/ab/two"]
    assert [key for key, _ in storage.keys("reports")] == ["reports/ab/r.html"]
    storage.delete("documents/ab/.upload-x1")
    assert "documents/ab/.upload-x1" not in dict(storage.keys())
