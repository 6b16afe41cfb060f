"""Benchmark 11, big document: one PDF of 400+ pages read by page-range parts on two worker
processes against one (issue 19: "big documents use every worker").

The document: a 400-page text PDF made here, at run time, from the corpus's own text PDFs
(:func:`benchmarks.memory.make_text_pdf`: pages imported with pypdfium2, never committed).
Each side runs it alone through the Procfile's worker command on a private Redis and SQLite
file, uploaded through ``accept_uploads``; the figure is the wall time from the upload to the
document job's ``finished`` row (coordinator, parts, join: everything the user waits for).

Sides, alternating each round:

* ``split, 2 workers`` — ``WORKER_CONCURRENCY=2`` (this machine's cores), the default split
  settings (``SPLIT_PDF_PAGES=200``, ``SPLIT_PART_PAGES=100``: 4 parts);
* ``split, 1 worker`` — the same with ``WORKER_CONCURRENCY=1``: the baseline of the ratio;
* ``whole, 1 worker`` — ``SPLIT_PDF_PAGES=0``, the single job as before: the baseline of memory
  (and of what splitting costs on one worker).

Ratio: the median wall time of ``split, 2 workers`` ÷ that of ``split, 1 worker`` (target ≤ 0.60;
0.5 would be perfect scaling). Memory: every worker process's peak RSS (``VmHWM``) after the
document, the largest per side; the split sides' must stay within 10 % of the whole document's
(a part holds 25 pages; the join holds the whole text, chunks and vectors as the single job does).

    .venv/bin/python -m benchmarks.big_document [--rounds 3]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import psutil

from benchmarks.common import alternate, collect, command_line, private_redis, process_upload, result, worker_app, \
    worker_process
from benchmarks.memory import MB, make_text_pdf, peak_rss_bytes
from benchmarks.tables import print_record

PAGES = 400
TARGET_RATIO = 0.60
MEMORY_SLACK = 1.10  # "unchanged": within 10 %
SIDES = {
    "split, 2 workers": {"WORKER_CONCURRENCY": "2", "SPLIT_PDF_PAGES": "200", "SPLIT_PART_PAGES": "100"},
    "split, 1 worker": {"WORKER_CONCURRENCY": "1", "SPLIT_PDF_PAGES": "200", "SPLIT_PART_PAGES": "100"},
    "whole, 1 worker": {"WORKER_CONCURRENCY": "1", "SPLIT_PDF_PAGES": "0"},
}


def measure(document: Path, workdir: Path, env: dict[str, str]) -> dict[str, float]:
    """Process ``document`` alone on a Docket worker with ``env``: wall seconds from the upload to
    the finished row, the parts it was read in, and the largest worker process's peak RSS (MB)."""
    from webapp.core.db import connection

    workdir.mkdir(parents=True, exist_ok=True)
    with private_redis(workdir / "redis") as redis_url:
        app = worker_app(workdir, redis_url)
        with worker_process("docket", redis_url, workdir, HIGH_QUEUE_WORKERS="0", **env) as (pid, _):
            workers = [child.pid for child in psutil.Process(pid).children()]
            with app.app_context(), connection():
                started = time.perf_counter()
                job = process_upload(app, document, interval=0.02)
                wall = time.perf_counter() - started
            peak = max(peak_rss_bytes(worker) for worker in workers)
    if job.status != "finished":
        raise RuntimeError(f"{document.name} did not finish: {job.error}")
    return {"wall_s": wall, "parts": float((job.result or {}).get("parts", 0)), "peak_mb": peak / MB,
            "reused_share": (job.result or {}).get("reused", 0) / max(job.result.get("chunks", 1), 1)}


def run(rounds: int = 3) -> dict:
    """Measure the three sides for ``rounds`` rounds; return the result record."""
    with tempfile.TemporaryDirectory(prefix="docket-big-document-") as tmp:
        workdir = Path(tmp)
        document = make_text_pdf(workdir / f"generated-{PAGES}-pages.pdf", PAGES)
        counter = iter(range(10**6))
        print(f"benchmark 11: a {PAGES}-page PDF on 2 worker processes vs 1", flush=True)
        measured = alternate(rounds, {
            side: (lambda env=env: measure(document, workdir / f"run-{next(counter)}", env))
            for side, env in SIDES.items()
        })
    figures = {side: {key: collect(rows, key) for key in rows[0]} for side, rows in measured.items()}
    two, one, whole = (figures[side]["wall_s"]["median"] for side in SIDES)
    ratio = two / one
    memory = max(figures[side]["peak_mb"]["median"] for side in list(SIDES)[:2]) / \
        figures["whole, 1 worker"]["peak_mb"]["median"]
    record = result(
        name="big_document",
        title="Benchmark 11: a 400-page PDF's wall time on 2 worker processes vs 1 (page-range parts)",
        figures=figures,
        ratio=ratio,
        ratio_meaning="wall time, WORKER_CONCURRENCY=2 ÷ 1 (both split)",
        target=f"≤ {TARGET_RATIO} (ideal 0.5); peak RSS per worker ≤ {MEMORY_SLACK:.2f} × the whole document's",
        met=ratio <= TARGET_RATIO and memory <= MEMORY_SLACK,
        notes=f"peak worker RSS, split ÷ whole: {memory:.2f}; split on 2 workers ÷ whole on 1: {two / whole:.2f}",
    )
    print_record(record)
    return record


if __name__ == "__main__":
    command_line(run, __doc__)
