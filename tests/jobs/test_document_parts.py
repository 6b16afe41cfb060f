"""Big documents read by page-range parts (jobs/document_parts.py, webapp/core/workflows/page_parts.py),
end to end with real workers, Redis and the database: the same chunks as the single job; cancel;
a failed part, named by its pages, and a retry of only that part; a worker process SIGKILLed
during a part; reconcile after FLUSHALL with parts in flight."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
from rq import Worker

from tests.conftest import CORPUS, make_token, post_text, row, wait_for
from tests.edge.test_sse import EventStream, bearer
from tests.local_services import openai_worker_env
from webapp.core.db import connection
from webapp.core.embeddings import from_blobs
from webapp.core.models import Chunk, Document, Job, PartPages

PAGES, SPLIT_ABOVE, PART_PAGES = 40, "20", "8"  # 5 parts: pages 1–8, 9–16, 17–24, 25–32, 33–40
SPLIT = {"SPLIT_PDF_PAGES": SPLIT_ABOVE, "SPLIT_PART_PAGES": PART_PAGES}
TERMINAL = ("finished", "failed", "stopped", "canceled")


def big_pdf(tmp_path: Path) -> bytes:
    """A 40-page text PDF made of corpus pages (German geodesy lecture notes, then a Russian
    manual: two body sizes, headings by font size across the parts' boundaries)."""
    import pypdfium2 as pdfium

    target = pdfium.PdfDocument.new()
    for name, count in (("geotopo-117p-de.pdf", 24), ("metapost-manual-ru.pdf", PAGES - 24)):
        source = pdfium.PdfDocument(CORPUS / name)
        target.import_pages(source, list(range(count)))
        source.close()
    path = tmp_path / "big.pdf"
    target.save(path)
    target.close()
    return path.read_bytes()


def page_text(data: bytes, page: int) -> str:
    """The text of 1-based ``page`` of the PDF ``data``."""
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument(data)
    try:
        textpage = pdf[page - 1].get_textpage()
        return textpage.get_text_bounded()
    finally:
        pdf.close()


def chunks_of(app, document_id: str) -> list[tuple]:
    with app.app_context(), connection():
        return [(c.ordinal, c.text, c.page_start, c.page_end, c.headings, c.ocr)
                for c in Chunk.select().where(Chunk.document == document_id).order_by(Chunk.ordinal)]


def vectors_of(app, document_id: str) -> np.ndarray:
    with app.app_context(), connection():
        rows = list(Chunk.select().where(Chunk.document == document_id).order_by(Chunk.ordinal))
    return from_blobs([r.embedding for r in rows], rows[0].dimensions)


def children(app, job_id: str) -> list[Job]:
    with app.app_context(), connection():
        return list(Job.select().where(Job.parent_id == job_id).order_by(Job.created_at, Job.id))


def parts_of(app, job_id: str) -> list[Job]:
    return sorted((job for job in children(app, job_id) if job.kind == "document_part"),
                  key=lambda job: job.params["first_page"])


def join_of(app, job_id: str) -> Job:
    (join,) = [job for job in children(app, job_id) if job.kind == "document_join"]
    return join


def assert_one_chunk_set(app, document_id: str) -> int:
    with app.app_context(), connection():
        document = Document.get_by_id(document_id)
        ordinals = [c.ordinal for c in Chunk.select(Chunk.ordinal).where(Chunk.document == document_id)
                    .order_by(Chunk.ordinal)]
        staged = PartPages.select().where(PartPages.document == document_id).count()
    assert ordinals == list(range(len(ordinals))) and document.chunk_count == len(ordinals) > 0
    assert staged == 0  # the join deleted what the parts staged
    return len(ordinals)


def test_a_split_pdf_gets_the_single_jobs_chunks_ordinals_and_pages(app, client, tmp_path, run_worker):
    data = big_pdf(tmp_path)
    whole = post_text(client, data, name="whole.pdf").get_json()["documents"][0]
    run_worker(SPLIT_PDF_PAGES="0")  # 0: never split
    split = post_text(client, data, name="split.pdf", reprocess="true").get_json()["documents"][0]
    run_worker(**SPLIT)

    single_job = client.get(whole["status_url"]).get_json()
    assert single_job["status"] == "finished" and single_job["pages_total"] is None
    assert not children(app, whole["job_id"])
    job = client.get(split["status_url"]).get_json()
    assert job["status"] == "finished", job
    assert job["pages_done"] == job["pages_total"] == PAGES and job["progress"] == 100
    assert job["result"]["parts"] == 5 and job["result"]["chunks"] == single_job["result"]["chunks"]
    for key in ("pages", "chars", "ocr_pages", "warnings", "embedding_model"):
        assert job["result"][key] == single_job["result"][key], key
    parts = parts_of(app, split["job_id"])
    assert [(p.params["first_page"], p.params["last_page"]) for p in parts] == \
        [(1, 8), (9, 16), (17, 24), (25, 32), (33, 40)]
    assert all(p.status == "finished" and p.queue == "default" and p.owner == job_row_owner(app, split["job_id"])
               for p in parts)
    assert join_of(app, split["job_id"]).status == "finished"
    part_json = client.get(f"/api/jobs/{parts[1].id}").get_json()
    assert part_json["parent_id"] == split["job_id"] and part_json["pages_done"] == 8

    # The same chunks, ordinals, pages and headings as the single job; vectors of the same space.
    assert chunks_of(app, split["id"]) == chunks_of(app, whole["id"])
    assert_one_chunk_set(app, split["id"]) == single_job["result"]["chunks"]
    assert np.allclose(vectors_of(app, split["id"]), vectors_of(app, whole["id"]), atol=1e-5)
    with app.app_context(), connection():
        a, b = Document.get_by_id(whole["id"]), Document.get_by_id(split["id"])
    assert (a.pages, a.chars, a.chunk_count, a.warnings) == (b.pages, b.chars, b.chunk_count, b.warnings)


def job_row_owner(app, job_id: str) -> str | None:
    return row(app, job_id).owner


def _slow_split_worker(server, delay: float, **extra: str) -> dict[str, str]:
    """Two worker processes whose embeddings take ``delay`` s per chunk (local OpenAI server)."""
    server.delay = delay
    return openai_worker_env(server, EMBEDDING_BATCH_SIZE="1", WORKER_CONCURRENCY="2", HIGH_QUEUE_WORKERS="0",
                             **SPLIT, **extra)


def _running_part(app, job_id: str) -> Job | None:
    return next((p for p in parts_of(app, job_id) if p.status == "started"), None)


def test_cancel_of_a_split_document_stops_every_part_and_its_join(
        openai_app, openai_client, openai_server, tmp_path, start_worker, web):
    document = post_text(openai_client, big_pdf(tmp_path), name="big.pdf").get_json()["documents"][0]
    start_worker(**_slow_split_worker(openai_server, delay=0.2))
    stream = EventStream(web, f"/api/jobs/{document['job_id']}/events", headers=bearer(make_token(openai_app)))
    events = stream.events()
    wait_for(lambda: any(p.status == "finished" for p in parts_of(openai_app, document["job_id"])), 120,
             "a part to finish")
    assert _running_part(openai_app, document["job_id"]) is not None

    # The document job's pages_done follows a finished part just after that part's commit (its
    # job_ended receiver, webapp/core/workflows/page_parts.py): read right after the part's row
    # said finished, it could still be 0 (seen once in CI).
    live = wait_for(lambda: (answer := openai_client.get(document["status_url"]).get_json())["pages_done"] and answer,
                    30, "the document job's pages_done to follow its finished part")
    assert live["status"] == "started" and live["stage"] == "parts" and live["pages_total"] == PAGES
    assert 8 <= live["pages_done"] < PAGES

    canceled = openai_client.post(f"/api/jobs/{document['job_id']}/cancel")
    assert canceled.status_code == 200, canceled.get_json()
    assert canceled.get_json()["status"] == "stopped"
    seen = []
    for name, data in events:  # the stream: per-page progress, then the stop, then its end
        seen.append((name, data))
        if name == "end":
            break
    stream.close()
    jobs = [data for name, data in seen if name == "job"]
    assert jobs[-1]["status"] == "stopped" and seen[-1][0] == "end"
    assert any(data["pages_total"] == PAGES and data["pages_done"] >= 8 for data in jobs)

    def all_ended():
        jobs = children(openai_app, document["job_id"])
        return jobs if all(job.status in TERMINAL for job in jobs) else None

    ended = wait_for(all_ended, 60, "every part and the join to end")
    assert {job.status for job in ended} <= {"canceled", "stopped", "finished"}
    assert join_of(openai_app, document["job_id"]).status == "canceled"
    assert any(job.status in ("canceled", "stopped") for job in ended if job.kind == "document_part")
    assert row(openai_app, document["job_id"]).status == "stopped"
    with openai_app.app_context(), connection():
        assert Chunk.select().where(Chunk.document == document["id"]).count() == 0
    finished_before = {job.id for job in ended if job.status == "finished"}

    # A retry runs the parts that did not finish, and a new join (the canceled one stays canceled).
    openai_server.delay = 0
    assert openai_client.post(f"/api/jobs/{document['job_id']}/retry").status_code == 202
    wait_for(lambda: row(openai_app, document["job_id"]).status in TERMINAL, 120, "the retry to end")
    job = openai_client.get(document["status_url"]).get_json()
    assert job["status"] == "finished", job
    assert all(row(openai_app, part_id).attempts == 1 for part_id in finished_before)
    assert sorted(j.status for j in children(openai_app, document["job_id"]) if j.kind == "document_join") == \
        ["canceled", "finished"]
    assert assert_one_chunk_set(openai_app, document["id"]) == job["result"]["chunks"]


def test_a_failed_part_names_its_pages_and_a_retry_reruns_only_that_part(
        openai_app, openai_client, openai_server, tmp_path, start_worker):
    data = big_pdf(tmp_path)
    # Four words of the longest line of page 12: in part 2 (pages 9–16) only.
    line = max(page_text(data, 12).splitlines(), key=len).split()
    marker = " ".join(line[len(line) // 2 - 2:len(line) // 2 + 2])
    assert len(marker) > 10
    assert all(marker not in page_text(data, page) for page in range(1, PAGES + 1) if page != 12)
    openai_server.fail_containing = marker
    document = post_text(openai_client, data, name="big.pdf").get_json()["documents"][0]
    start_worker(**_slow_split_worker(openai_server, delay=0))

    def parts_ended():
        parts = parts_of(openai_app, document["job_id"])
        return parts if parts and all(p.status in TERMINAL for p in parts) else None

    parts = wait_for(parts_ended, 120, "every part to end")
    assert [p.status for p in parts] == ["finished", "failed", "finished", "finished", "finished"]
    job = openai_client.get(document["status_url"]).get_json()
    assert job["status"] == "failed" and job["error"].startswith("pages 9–16: "), job
    assert job["error_code"] == parts[1].error_code == "embedding_failed"
    assert join_of(openai_app, document["job_id"]).status == "deferred"
    attempts = {p.id: p.attempts for p in parts}

    openai_server.fail_containing = ""
    retried = openai_client.post(f"/api/jobs/{document['job_id']}/retry")
    assert retried.status_code == 202, retried.get_json()
    wait_for(lambda: row(openai_app, document["job_id"]).status in TERMINAL, 120, "the retry to end")
    job = openai_client.get(document["status_url"]).get_json()
    assert job["status"] == "finished", job
    after = parts_of(openai_app, document["job_id"])
    assert [p.attempts - attempts[p.id] for p in after] == [0, 1, 0, 0, 0]  # only pages 9–16 ran again
    assert len(children(openai_app, document["job_id"])) == 6  # no part or join made twice
    assert assert_one_chunk_set(openai_app, document["id"]) == job["result"]["chunks"]


def test_a_worker_process_killed_during_a_part_loses_only_that_part(
        openai_app, openai_client, openai_server, redis, tmp_path, start_worker):
    document = post_text(openai_client, big_pdf(tmp_path), name="big.pdf").get_json()["documents"][0]
    start_worker(**_slow_split_worker(openai_server, delay=0.1))
    part = wait_for(lambda: _running_part(openai_app, document["job_id"]), 120, "a part to run")

    def its_process():
        return next((w.pid for w in Worker.all(connection=redis) if w.get_current_job_id() == part.id), None)

    os.kill(wait_for(its_process, 30, "the worker process running the part"), signal.SIGKILL)
    wait_for(lambda: row(openai_app, document["job_id"]).status in TERMINAL, 180, "the document to end")
    job = openai_client.get(document["status_url"]).get_json()
    assert job["status"] == "finished", job
    killed = row(openai_app, part.id)
    assert killed.status == "finished" and killed.attempts == 2  # run again after worker_died
    others = [p for p in parts_of(openai_app, document["job_id"]) if p.id != part.id]
    assert all(p.status == "finished" and p.attempts == 1 for p in others)
    assert assert_one_chunk_set(openai_app, document["id"]) == job["result"]["chunks"]


def test_reconcile_after_flushall_with_parts_in_flight_finishes_the_document(
        openai_app, openai_client, openai_server, redis, tmp_path, start_worker, start_scheduler):
    document = post_text(openai_client, big_pdf(tmp_path), name="big.pdf").get_json()["documents"][0]
    first = start_worker(**_slow_split_worker(openai_server, delay=0.1))
    wait_for(lambda: any(p.status == "finished" for p in parts_of(openai_app, document["job_id"])), 120,
             "a part to finish")
    first.terminate()  # a deploy: the running parts are handed back (queued)
    first.wait(30)
    assert any(p.status not in TERMINAL for p in parts_of(openai_app, document["job_id"]))
    redis.flushall()  # and Redis restarted empty: every queued part is gone from it

    start_scheduler(RECONCILE_INTERVAL="5")
    start_worker(**_slow_split_worker(openai_server, delay=0, RECONCILE_GRACE="0"))
    wait_for(lambda: row(openai_app, document["job_id"]).status in TERMINAL, 180, "the document to end")
    job = openai_client.get(document["status_url"]).get_json()
    assert job["status"] == "finished", job
    assert job["pages_done"] == PAGES and all(p.status == "finished" for p in parts_of(openai_app, document["job_id"]))
    assert assert_one_chunk_set(openai_app, document["id"]) == job["result"]["chunks"]
    with openai_app.app_context(), connection():
        restored = [j.result for j in Job.select().where(Job.kind == "reconcile", Job.status == "finished")]
    assert sum(result["restored_count"] for result in restored) >= 1


def test_a_pdf_read_by_page_ranges_equals_the_pdf_read_whole(tmp_path):
    """The readers' side, in this process: every corpus PDF with pages enough, read in ranges of 7
    pages (each through JSON, as staged) and finished together, gives the whole reading's
    pages, structure, warnings and chunks; over ``split_above`` pages a PDF is only counted."""
    import json

    import pytest

    from jobs.chunking import chunk_pages
    from jobs.extract import Limits, extract, extract_pdf_pages
    from jobs.readers.pdf import PdfPages, finish_pdf
    from webapp.core import filetypes

    limits = Limits(max_memory=None)
    for data in (big_pdf(tmp_path), *((CORPUS / name).read_bytes() for name in
                                      ("geotopo-117p-de.pdf", "federal-register-2020-17221.pdf", "jlreq-manual-ja.pdf"))):
        whole = extract(data, filetypes.PDF, limits=limits)
        total = whole.page_count
        parts = [PdfPages.from_json(json.loads(json.dumps(extract_pdf_pages(data, None, first, min(total, first + 6),
                                                                            limits=limits).to_json())))
                 for first in range(1, total + 1, 7)]
        joined = finish_pdf(parts, limits.max_chars)
        assert (joined.page_count, joined.chars, joined.warnings) == (total, whole.chars, whole.warnings)
        assert [(p.number, p.text, p.structure()) for p in joined.pages] == \
            [(p.number, p.text, p.structure()) for p in whole.pages]
        assert chunk_pages(joined.pages, 1500, 150) == chunk_pages(whole.pages, 1500, 150)

    counted = extract(big_pdf(tmp_path), filetypes.PDF, limits=Limits(max_memory=None, split_above=39))
    assert counted.split and counted.page_count == PAGES and counted.pages == []
    assert not extract(big_pdf(tmp_path), filetypes.PDF, limits=Limits(max_memory=None, split_above=40)).split
    with pytest.raises(Exception) as refused:
        extract_pdf_pages(big_pdf(tmp_path), None, 35, 41, limits=limits)
    assert getattr(refused.value, "code", None) == "damaged_file"


def test_the_split_settings_are_checked_at_start(tmp_path):
    import pytest

    from webapp.core.config import load_config

    config = load_config(tmp_path, env={})
    assert (config["SPLIT_PDF_PAGES"], config["SPLIT_PART_PAGES"]) == (200, 100)
    for env, sentence in (({"SPLIT_PDF_PAGES": "-1"}, "SPLIT_PDF_PAGES must not be negative"),
                          ({"SPLIT_PART_PAGES": "0"}, "SPLIT_PART_PAGES must be at least 1"),
                          ({"SPLIT_PART_PAGES": "1"}, "more than 1000 parts")):
        with pytest.raises(ValueError, match=sentence):
            load_config(tmp_path, env=env)
    assert load_config(tmp_path, env={"SPLIT_PDF_PAGES": "0", "SPLIT_PART_PAGES": "1"})["SPLIT_PDF_PAGES"] == 0
