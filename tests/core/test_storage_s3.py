"""S3-compatible storage (``STORAGE_URL=s3://bucket/prefix``) against a real local S3 server:
moto's server mode, started by these tests as a subprocess on a free port, so the web process and
the real worker processes reach it over TCP as they would reach a bucket.

* :class:`S3Storage` itself: put, put_stream, get, open, delete, keys under the prefix, a missing
  key (not transient), an unreachable endpoint (transient), presigned URLs.
* End to end with real processes: uploads through the API land in the bucket, a real worker reads
  them from it and stores chunks, report files are written to it and downloaded through a 302 to a
  presigned URL, retention deletes the objects, orphans lists the bucket.
* Streaming: a 50 MB upload goes into storage without being held in memory (tracemalloc peak of
  the whole upload path, and the live web process's peak resident memory).
"""

from __future__ import annotations

import hashlib
import io
import tempfile
import time
import tracemalloc
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import boto3
import psutil
import pytest
import requests

from tests.conftest import CORPUS, api_client, make_token, row, upload
from tests.s3_server import bucket, s3_endpoint, s3_env  # noqa: F401  (fixtures, shared with tests/jobs/test_sync_job.py)
from webapp.core.config import load_config
from webapp.core.db import connection
from webapp.local.embedded_redis import free_port
from webapp.core.protocol.launch import launch
from webapp.core.models import Batch, Chunk, Document, Job, Report, utcnow
from webapp.core.storage import (PART_SIZE, LocalStorage, S3Storage, StorageError, parse_storage_url,
                            storage_from_config)

MB = 1024 * 1024
PREFIX = "docket"
@pytest.fixture
def config(config, s3_env, bucket):
    """The usual test config with ``STORAGE_URL=s3://<bucket>/docket``; the AWS variables are in
    it only so that conftest's ``process_env`` hands them to worker and web processes."""
    return {**config, "STORAGE_URL": f"s3://{bucket}/{PREFIX}", "REPORT_URL_EXPIRY": 120, **s3_env}


def objects(bucket: str) -> dict[str, bytes]:
    """Every object in ``bucket`` with its bytes, read with a client of its own."""
    client = boto3.client("s3")
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", ()):
            found[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return found


def big_text_file(size: int) -> tempfile.SpooledTemporaryFile:
    """A text file of ``size`` bytes on disk (as Werkzeug spools an upload above 500 KB), rewound."""
    fh = tempfile.SpooledTemporaryFile(max_size=500 * 1024, mode="w+b")
    line = b"Clause %07d. The parties agree that termination of this agreement requires written notice.\n"
    number = 0
    while fh.tell() < size:
        fh.write(line % number)
        number += 1
    fh.truncate(size)
    fh.seek(0)
    return fh


def sha256_of(fileobj) -> str:
    fileobj.seek(0)
    digest = hashlib.sha256()
    while block := fileobj.read(MB):
        digest.update(block)
    return digest.hexdigest()


# --- S3Storage on its own -----------------------------------------------------------------------

def test_s3_storage_stores_lists_and_deletes_under_its_prefix(bucket):
    storage = S3Storage(bucket, PREFIX)
    raw = boto3.client("s3")
    raw.put_object(Bucket=bucket, Key="elsewhere/documents/ab/x", Body=b"not under the prefix")
    raw.put_object(Bucket=bucket, Key=f"{PREFIX}/documents/ab/bad name", Body=b"not a key Docket makes")
    before = time.time()

    storage.put("documents/ab/one", b"first")
    storage.put_stream("documents/ab/two", io.BytesIO(b"second, streamed"))
    storage.put("reports/cd/r.html", b"<p>report</p>")
    assert raw.get_object(Bucket=bucket, Key=f"{PREFIX}/documents/ab/one")["Body"].read() == b"first"
    assert storage.get("documents/ab/two") == b"second, streamed"
    with storage.open("documents/ab/one") as fh:
        assert fh.read() == b"first"
        fh.seek(1)  # seekable: extraction may need that
        assert fh.read() == b"irst"

    listed = dict(storage.keys())
    assert sorted(listed) == ["documents/ab/one", "documents/ab/two", "reports/cd/r.html"]
    assert all(before - 5 <= modified <= time.time() + 5 for modified in listed.values())  # Unix seconds
    assert [key for key, _ in storage.keys("documents/ab/t")] == ["documents/ab/two"]
    assert [key for key, _ in storage.keys("reports/")] == ["reports/cd/r.html"]
    assert [key for key, _ in storage.keys("documents/ab/one")] == ["documents/ab/one"]

    storage.put("documents/ab/one", b"replaced")
    assert storage.get("documents/ab/one") == b"replaced"
    storage.delete("documents/ab/one")
    storage.delete("documents/ab/one")  # absent: no error
    for read in (storage.get, storage.open):
        with pytest.raises(StorageError) as missing:
            read("documents/ab/one")
        assert missing.value.transient is False and "documents/ab/one" in str(missing.value)
    with pytest.raises(ValueError):
        storage.put("../escape", b"x")
    assert sorted(objects(bucket)) == sorted(["elsewhere/documents/ab/x", f"{PREFIX}/documents/ab/bad name",
                                              f"{PREFIX}/documents/ab/two", f"{PREFIX}/reports/cd/r.html"])


def test_s3_storage_lists_more_than_one_page_lazily(bucket):
    storage = S3Storage(bucket)  # no prefix: keys are object names
    client = boto3.client("s3")
    for n in range(1005):  # ListObjectsV2 answers 1,000 keys a page
        client.put_object(Bucket=bucket, Key=f"documents/{n:04d}", Body=b"")
    listing = storage.keys("documents/")
    assert next(listing)[0] == "documents/0000"  # the first page, before the rest is asked for
    assert sum(1 for _ in listing) == 1004


def test_presigned_urls_carry_the_headers_and_expire_when_told(bucket):
    storage = S3Storage(bucket, PREFIX)
    storage.put("reports/ab/r.csv", b"a,b\n1,2\n")
    url = storage.presigned_url("reports/ab/r.csv", 90, content_type="text/csv; charset=utf-8",
                                content_disposition='attachment; filename="r.csv"')
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Expires"] == ["90"] and query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert "testing-secret-key" not in url
    answer = requests.get(url, timeout=10)
    assert answer.status_code == 200 and answer.content == b"a,b\n1,2\n"
    assert answer.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert answer.headers["Content-Disposition"] == 'attachment; filename="r.csv"'
    assert LocalStorage("/nonexistent").presigned_url("reports/ab/r.csv", 90, content_type="text/csv",
                                                      content_disposition="attachment") is None


def test_an_unreachable_endpoint_or_missing_bucket_is_a_transient_storage_error(s3_env, bucket):
    nowhere = S3Storage(bucket, PREFIX, endpoint_url=f"http://127.0.0.1:{free_port()}")
    no_bucket = S3Storage(f"{bucket}-missing", PREFIX)
    malformed = S3Storage(bucket, PREFIX, endpoint_url="not an endpoint")
    for storage in (nowhere, no_bucket, malformed):
        for action in (lambda s: s.get("documents/ab/x"), lambda s: s.put("documents/ab/x", b"x"),
                       lambda s: s.put_stream("documents/ab/x", io.BytesIO(b"x")),
                       lambda s: s.delete("documents/ab/x"), lambda s: list(s.keys())):
            with pytest.raises(StorageError) as failure:
                action(storage)
            assert failure.value.transient is True, failure.value
            assert "testing-secret-key" not in str(failure.value)


def test_storage_url_chooses_the_storage_and_refuses_what_it_cannot_use(tmp_path):
    assert isinstance(storage_from_config({"STORAGE_PATH": str(tmp_path)}), LocalStorage)
    local = storage_from_config({"STORAGE_URL": f"file://{tmp_path}/files", "STORAGE_PATH": "/unused"})
    assert isinstance(local, LocalStorage) and local.root == tmp_path / "files"
    s3 = storage_from_config({"STORAGE_URL": "s3://my-bucket/docket/prod/", "STORAGE_PATH": "/unused"})
    assert isinstance(s3, S3Storage) and (s3.bucket, s3.prefix) == ("my-bucket", "docket/prod")
    assert parse_storage_url("s3://my-bucket") == ("s3", "my-bucket", "")
    config = load_config(tmp_path, {"STORAGE_URL": "s3://my-bucket/docket"})
    assert config["STORAGE_URL"] == "s3://my-bucket/docket" and config["REPORT_URL_EXPIRY"] == 300
    assert not any("AWS" in key or "SECRET_ACCESS" in key for key in config)  # boto3 reads those itself
    for bad in ("s3://AKIAEXAMPLE:hunter2secret@my-bucket/docket", "s3:///docket", "gs://bucket", "file://host/x",
                "s3://my-bucket/../x"):
        with pytest.raises(ValueError) as refused:
            load_config(tmp_path, {"STORAGE_URL": bad})
        assert "STORAGE_URL" in str(refused.value) and "hunter2secret" not in str(refused.value)
    with pytest.raises(ValueError):
        load_config(tmp_path, {"REPORT_URL_EXPIRY": "0"})


def test_local_storage_streams_in_and_out(tmp_path):
    storage = LocalStorage(tmp_path / "store")
    storage.put_stream("documents/ab/big", big_text_file(3 * MB))
    with storage.open("documents/ab/big") as fh:
        assert sha256_of(fh) == sha256_of(big_text_file(3 * MB))
    assert [key for key, _ in storage.keys()] == ["documents/ab/big"]  # no temporary file left
    with pytest.raises(StorageError) as missing:
        storage.open("documents/ab/none")
    assert missing.value.transient is False


# --- Streaming: a 50 MB upload is never held in memory --------------------------------------------

def test_put_stream_of_50_mb_holds_a_few_parts_not_the_file(bucket):
    size = 50 * MB
    source = big_text_file(size)
    storage = S3Storage(bucket, PREFIX)
    storage.client  # made outside the measurement (boto3 loads its service model once)
    tracemalloc.start()
    try:
        storage.put_stream("documents/ab/big", source)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # boto3 holds ≈ 2 × TRANSFER_CONCURRENCY parts of PART_SIZE bytes (measured ≈ 28 MB for 8 MiB
    # parts); reading the file whole would take at least its 50 MB.
    assert peak < 4 * PART_SIZE + 4 * MB < size, f"peak {peak / MB:.1f} MB"
    with storage.open("documents/ab/big") as fh:
        assert sha256_of(fh) == sha256_of(source)

    # A job's read (get: the bytes extraction needs) holds them once, not once more on the way.
    tracemalloc.start()
    try:
        data = storage.get("documents/ab/big")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(data) == size and peak < size + 4 * MB, f"peak {peak / MB:.1f} MB"
    assert hashlib.sha256(data).hexdigest() == sha256_of(source)


def test_the_upload_path_streams_a_50_mb_file_into_the_bucket(app, bucket):
    """accept_uploads (validation, SHA-256 for duplicates, type detection, storing, rows,
    enqueue) with a 50 MB spooled upload, as the API hands it over, under tracemalloc."""
    from webapp.core.documents import Upload, accept_uploads

    size = 50 * MB
    source = big_text_file(size)
    digest = sha256_of(source)
    with app.test_request_context(), connection():
        S3Storage(bucket, PREFIX).client
        tracemalloc.start()
        try:
            result = accept_uploads([Upload("big.txt", source)], owner="tester")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        document = result.files[0].document
        assert (document.size_bytes, document.sha256, document.content_type) == (size, digest, "text/plain")
    assert peak < 4 * PART_SIZE + 8 * MB < size, f"peak {peak / MB:.1f} MB"
    with S3Storage(bucket, PREFIX).open(document.storage_key) as fh:
        assert sha256_of(fh) == digest


def test_the_live_web_process_takes_a_49_mb_upload_without_holding_it(web, app, bucket):
    """Through the Procfile's web process (gunicorn): its worker's peak resident memory (VmHWM,
    reset first through /proc/<pid>/clear_refs) grows by less than the upload's size."""
    token = make_token(app, "tester", admin=True)
    port = f":{urlsplit(web).port}"
    gunicorn = [p for p in psutil.process_iter(["cmdline"])
                if "gunicorn" in " ".join(p.info["cmdline"] or ()) and port in " ".join(p.info["cmdline"] or ())]
    worker = next(p for p in gunicorn if p.ppid() in {q.pid for q in gunicorn})  # the master's child
    headers = {"Authorization": f"Bearer {token}"}
    # A first upload loads what the first use of S3 loads once per process (boto3's service model).
    warm_up = requests.post(f"{web}/api/documents", headers=headers, timeout=60,
                            files={"file": ("warm-up.txt", big_text_file(2 * MB), "text/plain")})
    assert warm_up.status_code == 202, warm_up.text
    clear_refs = Path(f"/proc/{worker.pid}/clear_refs")
    try:
        clear_refs.write_text("5")  # reset the peak resident set size (Linux ≥ 4.0, own or root processes)
    except OSError as exc:
        pytest.skip(f"cannot reset the web worker's peak memory: {exc}")

    def peak_rss() -> int:
        for line in Path(f"/proc/{worker.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM")

    baseline = worker.memory_info().rss
    size = 49 * MB  # a file and its form fields within MAX_CONTENT_LENGTH (50 MB)
    source = big_text_file(size)
    answer = requests.post(f"{web}/api/documents", headers=headers, files={"file": ("big.txt", source, "text/plain")},
                           timeout=120)
    assert answer.status_code == 202, answer.text
    grown = peak_rss() - baseline
    # The spooled upload, its SHA-256, type detection and a multipart upload of ≈ 4 parts of 8 MiB:
    # well under the file's 50 MB, which reading it whole would add at least once.
    assert grown < 0.8 * size, f"the web worker's peak grew by {grown / MB:.1f} MB"
    document = answer.json()["documents"][0]
    with app.app_context(), connection():
        key = Document.get_by_id(document["id"]).storage_key
    with S3Storage(bucket, PREFIX).open(key) as fh:
        assert sha256_of(fh) == sha256_of(source)


# --- End to end: API, real worker processes, the bucket -------------------------------------------

def run_job(app, run_worker, kind: str, params: dict, **worker_env: str) -> Job:
    """Launch a maintenance job as the scheduler does, run a burst worker, return its row."""
    with app.app_context(), connection():
        job_id = launch(kind, params).id
    run_worker(WORKER_CONCURRENCY="1", HIGH_QUEUE_WORKERS="0", **worker_env)
    return row(app, job_id)


def test_uploads_jobs_reports_retention_and_orphans_through_the_bucket(app, config, bucket, run_worker):
    client = api_client(app)
    body = upload(client, "minimal-document.pdf", "war-and-peace-ch1.txt")
    assert body.status_code == 202, body.get_json()
    documents = body.get_json()["documents"]
    lost = upload(client, "pypdf-extract-text.md").get_json()["documents"][0]
    with app.app_context(), connection():
        keys = {d["id"]: Document.get_by_id(d["id"]).storage_key for d in documents + [lost]}
    stored = objects(bucket)
    for document in documents:  # the bytes are in the bucket, under the prefix; nothing on local disk
        name = next(n for n in ("minimal-document.pdf", "war-and-peace-ch1.txt") if n == document["filename"])
        assert stored[f"{PREFIX}/{keys[document['id']]}"] == (CORPUS / name).read_bytes()
    assert not Path(config["STORAGE_PATH"]).exists()
    boto3.client("s3").delete_object(Bucket=bucket, Key=f"{PREFIX}/{keys[lost['id']]}")  # lost after the upload

    run_worker()  # a real worker process, which reads the uploads from the bucket
    for document in documents:
        job = row(app, document["job_id"])
        assert job.status == "finished", (job.error_code, job.error)
    missing = row(app, lost["job_id"])
    assert (missing.status, missing.error_code) == ("failed", "file_missing"), missing.error
    with app.app_context(), connection():
        assert all(Chunk.select().where(Chunk.document == d["id"]).count() > 0 for d in documents)

    report = client.post("/api/reports", json={"type": "documents",
                                               "params": {"document_ids": [d["id"] for d in documents]}})
    assert report.status_code == 202
    report = report.get_json()
    run_worker()
    report = client.get(f"/api/reports/{report['id']}").get_json()
    assert report["status"] == "finished", report
    stored = objects(bucket)
    for fmt, url in report["downloads"].items():
        answer = client.get(url)
        assert answer.status_code == 302 and answer.headers["Cache-Control"] == "no-store"
        location = answer.headers["Location"]
        assert parse_qs(urlsplit(location).query)["X-Amz-Expires"] == ["120"]  # REPORT_URL_EXPIRY
        fetched = requests.get(location, timeout=30)
        assert fetched.status_code == 200
        assert fetched.content == stored[f"{PREFIX}/reports/{report['id'][:2]}/{report['id']}.{fmt}"]
        disposition = "inline" if fmt == "html" else "attachment"
        assert fetched.headers["Content-Disposition"] == \
            f'{disposition}; filename="docket-documents-{report["id"]}.{fmt}"'
        assert fetched.headers["Content-Type"].split(";")[0] == {
            "html": "text/html", "csv": "text/csv", "json": "application/json", "pdf": "application/pdf"}[fmt]
    assert b"war-and-peace-ch1.txt" in requests.get(client.get(report["downloads"]["csv"]).headers["Location"]).content

    # Orphans: lists the bucket, deletes what no row names, reports the lost upload.
    boto3.client("s3").put_object(Bucket=bucket, Key=f"{PREFIX}/documents/zz/stray", Body=b"no row names me")
    orphans = run_job(app, run_worker, "orphans", {}, ORPHAN_GRACE="0")
    assert orphans.status == "finished", (orphans.error_code, orphans.error)
    assert orphans.result["deleted_files"] == ["documents/zz/stray"]
    assert orphans.result["missing_documents"] == [lost["id"]]
    assert f"{PREFIX}/documents/zz/stray" not in objects(bucket)

    # Retention: rows older than RETENTION_DAYS go, and so do their objects in the bucket.
    long_ago = utcnow() - timedelta(days=40)
    with app.app_context(), connection():
        ids = [d["id"] for d in documents + [lost]]
        Job.update(created_at=long_ago, ended_at=long_ago).where(
            Job.id.in_([d["job_id"] for d in documents + [lost]] + [report["job_id"]])).execute()
        Document.update(created_at=long_ago).where(Document.id.in_(ids)).execute()
        Batch.update(created_at=long_ago).execute()
        Report.update(created_at=long_ago).where(Report.id == report["id"]).execute()
    retention = run_job(app, run_worker, "retention", {})
    assert retention.status == "finished", (retention.error_code, retention.error)
    assert retention.result["documents"] == 3 and retention.result["reports"] == 1
    assert retention.result["files"] == 3 + 4  # the lost upload's delete succeeds too: S3 deletes are idempotent
    assert objects(bucket) == {}
    with app.app_context(), connection():
        assert not Document.select().where(Document.id.in_(ids)).exists()
