"""Hostile input and memory: documents whose parser would build gigabytes from a few MB — or KB —
of file, uploaded through the API and processed by a real worker command (the Procfile's
``flask rq worker``, burst mode).

The figure checked is the peak resident memory of the worker command's process tree: the pool,
its worker processes and their reader processes (``jobs/reader_process.py``), measured by
``tests/peak_memory.py``. Each document ends ``finished``, or ``failed`` once (never retried) with
an ``error_code`` and a sentence; none is left ``queued`` or ``started``. No timing is asserted.
Before the fixes, the nested HTML took a worker process to 1.3 GB and 650 MB, the PDFs to 1.1 GB
and 1.7 GB (``benchmarks/hostile_memory.py``).
"""

from __future__ import annotations

import subprocess
import sys

# The hostile files are the benchmark's, the ones the README's table measured.
from benchmarks.hostile_memory import docx_empty_paragraphs, pdf_form_bomb, pdf_text_operators
from tests.conftest import ROOT, post_text, process_env, upload

MB = 1024 * 1024
# WORKER_MAX_MEMORY's default (webapp/core/config.py): the peak after which a worker process is replaced.
WORKER_MAX_MEMORY_DEFAULT = 512 * MB


def run_worker_measured(config, tmp_path, **extra_env: str) -> tuple[str, int]:
    """Run the worker command in burst mode to completion; its log and its process tree's peak RSS (bytes)."""
    out = tmp_path / "peak-rss"
    result = subprocess.run(
        [sys.executable, "-m", "tests.peak_memory", str(out), sys.executable, "-m", "flask", "--app", "wsgi", "rq",
         "worker", "--burst"],
        cwd=ROOT, env=process_env(config, **extra_env), capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout + result.stderr, int(out.read_text())


def _post(client, data: bytes, name: str) -> dict:
    response = post_text(client, data, name=name)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["documents"][0]


def _details(client, document: dict) -> tuple[dict, dict]:
    return client.get(f"/api/documents/{document['id']}").get_json(), client.get(document["status_url"]).get_json()


def _nothing_left_running(client) -> None:
    jobs = client.get("/api/jobs?limit=100").get_json()["jobs"]
    assert jobs and all(job["status"] in ("finished", "failed") for job in jobs), jobs


def test_nested_html_is_read_without_growing_the_worker(client, config, tmp_path):
    spans = _post(client, b"<html><body>" + b"<span>" * 2_000_000 + b"x", "spans.html")  # 12 MB
    bold = _post(client, b"<html><body>" + b"<b>" * 1_000_000 + b"x" + b"</b>" * 1_000_000, "bold.html")  # 7 MB
    page = upload(client, "wikipedia-duck.html").get_json()["documents"][0]

    log, peak = run_worker_measured(config, tmp_path)

    assert "Traceback" not in log, log[-4000:]
    for document in (spans, bold):
        details, job = _details(client, document)
        assert details["status"] == "finished" and details["chars"] == 1 and details["chunks"] == 1, details
        assert job["attempts"] == 1, job
    details, _ = _details(client, page)
    assert details["status"] == "finished" and details["chunks"] >= 1, details
    _nothing_left_running(client)
    assert peak < WORKER_MAX_MEMORY_DEFAULT, f"the worker's process tree peaked at {peak / MB:,.0f} MB"


def test_documents_that_need_more_than_max_document_memory_fail_cleanly(client, config, tmp_path):
    hostile = {
        "PDF": [_post(client, pdf_text_operators(2_000_000), "operators.pdf"),
                _post(client, pdf_form_bomb(7), "forms.pdf")],
        "Word document": [_post(client, docx_empty_paragraphs(12 * MB), "paragraphs.docx")],
    }
    paper = upload(client, "dpr-paper-two-column.pdf").get_json()["documents"][0]

    log, peak = run_worker_measured(config, tmp_path, MAX_DOCUMENT_MEMORY="256")

    assert "Traceback" not in log, log[-4000:]
    for what, documents in hostile.items():
        for document in documents:
            details, job = _details(client, document)
            assert details["status"] == "failed" and details["error_code"] == "too_much_memory", details
            assert details["error"] == (f"Reading the {what} needed more than 256 MB of memory; the limit is 256 MB "
                                        "(MAX_DOCUMENT_MEMORY), so it was stopped."), details
            assert job["status"] == "failed" and job["rq_status"] == "failed" and job["attempts"] == 1, job
            assert f"job {document['job_id']} failed (too_much_memory)" in log, log[-4000:]
    # The worker process that ran them went on: a real document after them finishes.
    details, _ = _details(client, paper)
    assert details["status"] == "finished" and details["chunks"] >= 1, details
    _nothing_left_running(client)
    bound = WORKER_MAX_MEMORY_DEFAULT + 256 * MB
    assert peak < bound, f"the worker's process tree peaked at {peak / MB:,.0f} MB (bound {bound / MB:,.0f} MB)"
