"""``flask --app wsgi ingest PATH...``: upload local files and folders, follow their jobs, summarise.

Each test runs the real command as a subprocess against the session's Redis and the test's
SQLite file, with real worker processes (a long-running one, or a burst run afterwards).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rq import Queue

from tests.conftest import CORPUS, ROOT, process_env
from webapp.core.models import Chunk, Document, Job

INGEST_DEADLINE = 240  # seconds; only to avoid hanging, never asserted as a speed


def ingest(config, *args: str | Path) -> subprocess.CompletedProcess:
    """Run ``flask --app wsgi ingest ARGS...``; stdout holds the summary table, stderr the notices."""
    # A wide console so that rich prints each table row on one line (it folds long cells to fit
    # the width, which is 80 columns when stdout is not a terminal).
    env = process_env(config, COLUMNS="400")
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "ingest", "--timeout", "200", *map(str, args)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=INGEST_DEADLINE,
    )


def describe(result: subprocess.CompletedProcess) -> str:
    return f"\n--- exit status {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"


def table_row(stdout: str, name: str) -> list[str]:
    """The cells of the summary table's row for the file whose path ends with ``name``."""
    rows = [line for line in stdout.splitlines() if "/" + name + " " in line or "/" + name + "│" in line]
    assert len(rows) == 1, f"expected one table row for {name}, got {rows}\n{stdout}"
    cells = [cell.strip() for cell in rows[0].strip().strip("│┃|").split("│")]
    assert len(cells) == 6, f"a row has File, Status, Pages, Chars, Chunks, Note; got {cells}"
    return cells


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A folder with an empty PDF, a text file, and hidden entries the command must skip."""
    folder = tmp_path / "inbox"
    folder.mkdir()
    shutil.copyfile(CORPUS / "empty.pdf", folder / "empty.pdf")
    shutil.copyfile(CORPUS / "war-and-peace-ch1.txt", folder / "war-and-peace-ch1.txt")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1\x00\x00\x10\x00" + bytes(64))
    hidden = folder / ".cache"
    hidden.mkdir()
    shutil.copyfile(CORPUS / "war-and-peace-ch1.txt", hidden / "copy.txt")  # would be accepted if walked
    return folder


def test_ingest_waits_for_the_jobs_and_summarises_exiting_1_when_a_file_was_rejected(
    app, config, start_worker, folder
):
    start_worker()
    result = ingest(config, CORPUS / "minimal-document.pdf", folder)

    assert result.returncode == 1, describe(result)  # empty.pdf was rejected
    assert "Traceback" not in result.stderr, describe(result)
    assert "Enqueued 2 document(s); rejected 1." in result.stderr, describe(result)
    assert "Docket ingest" in result.stdout, describe(result)
    for column in ("File", "Status", "Pages", "Chars", "Chunks", "Note"):
        assert column in result.stdout, describe(result)

    pdf = table_row(result.stdout, "minimal-document.pdf")
    assert pdf[1] == "finished" and pdf[2] == "1" and int(pdf[4]) >= 1, pdf
    text = table_row(result.stdout, "war-and-peace-ch1.txt")
    assert text[1] == "finished" and int(text[3]) > 0 and int(text[4]) >= 1, text
    empty = table_row(result.stdout, "empty.pdf")
    assert empty[1] == "rejected" and "empty.pdf is empty (0 bytes)" in empty[5], empty
    assert ".DS_Store" not in result.stdout and "copy.txt" not in result.stdout, describe(result)

    with app.app_context():
        documents = {d.filename: d for d in Document.select()}
        assert sorted(documents) == ["minimal-document.pdf", "war-and-peace-ch1.txt"]
        for document in documents.values():
            job = Job.get_by_id(document.job_id)
            assert job.status == "finished" and job.error is None, (document.filename, job.status, job.error)
            assert document.chunk_count >= 1
            assert Chunk.select().where(Chunk.document == document.id).count() == document.chunk_count
        assert Job.select().count() == 2
        assert documents["war-and-peace-ch1.txt"].content_type.startswith("text/plain")


def test_no_wait_only_enqueues_and_a_worker_later_finishes_the_jobs(app, config, redis, run_worker, tmp_path):
    result = ingest(config, "--no-wait", CORPUS / "minimal-document.pdf", CORPUS / "war-and-peace-ch1.txt")

    assert result.returncode == 0, describe(result)
    assert "Enqueued 2 document(s); rejected 0." in result.stderr, describe(result)
    assert table_row(result.stdout, "minimal-document.pdf")[1] == "queued"
    assert table_row(result.stdout, "war-and-peace-ch1.txt")[1] == "queued"
    with app.app_context():
        jobs = list(Job.select())
        assert len(jobs) == 2
        assert all(job.status == "queued" and job.enqueued_at is not None and job.started_at is None for job in jobs)
        job_ids = {job.id for job in jobs}
    assert set(Queue("default", connection=redis).job_ids) == job_ids

    run_worker()

    with app.app_context():
        for job_id in job_ids:
            job = Job.get_by_id(job_id)
            assert job.status == "finished", (job.status, job.error)
            assert Document.get_by_id(job.document_id).chunk_count >= 1
    assert Queue("default", connection=redis).count == 0


def test_failed_job_exits_1_with_its_reason_and_password_option_decrypts(app, config, start_worker):
    start_worker()
    encrypted = CORPUS / "doclaynet-p3-password.pdf"

    without = ingest(config, encrypted)
    assert without.returncode == 1, describe(without)  # the job failed
    row = table_row(without.stdout, "doclaynet-p3-password.pdf")
    assert row[1] == "failed" and "password required" in row[5], row

    with_password = ingest(config, "--password", "1234", encrypted)
    assert with_password.returncode == 0, describe(with_password)
    row = table_row(with_password.stdout, "doclaynet-p3-password.pdf")
    assert row[1] == "finished" and row[2] == "1" and int(row[4]) >= 1, row

    with app.app_context():
        finished = [d for d in Document.select() if Job.get_by_id(d.job_id).status == "finished"]
        assert len(finished) == 1
        assert finished[0].password is None  # not kept once the job has ended
