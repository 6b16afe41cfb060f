"""Benchmark 7, memory: a worker process's peak RSS while it processes one large document.

Documents: a 400-page text PDF made here from the corpus's own text PDFs (pages imported with
pypdfium2, so its text is real), and the largest document of the corpus that should finish.
Each runs alone through the Procfile's worker command (``WORKER_CONCURRENCY=1``: one worker
process), uploaded through ``accept_uploads``. The figure is the worker process's peak resident
memory (``VmHWM`` from ``/proc``, exact rather than sampled) after the job, against the same
process's peak before it (idle, everything loaded: the same-run baseline).

Since 0a6bdcd a PDF is parsed in a reader process forked from the worker process
(``jobs/reader_process.py``): the parser's memory is that process's, not in this figure, and
is bounded by ``MAX_DOCUMENT_MEMORY``. What stays here is the worker process's own part (the
text received, chunks, vectors). Benchmark 9 (``benchmarks/hostile_memory.py``) measures the
whole process tree.

    .venv/bin/python -m benchmarks.memory [--rounds 3]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import psutil

from benchmarks.common import (
    command_line,
    CORPUS,
    alternate,
    collect,
    largest_file,
    private_redis,
    process_upload,
    result,
    worker_app,
    worker_process,
)
from benchmarks.tables import print_record

MB = 1024 * 1024
GENERATED_PAGES = 400
SOURCE_PDFS = ("geotopo-117p-de.pdf", "metapost-manual-ru.pdf", "dpr-paper-two-column.pdf")
TARGET_MB = 300


def make_text_pdf(path: Path, pages: int = GENERATED_PAGES) -> Path:
    """Write a ``pages``-page text PDF made of corpus pages (the sources repeated in turn)."""
    import pypdfium2 as pdfium

    target = pdfium.PdfDocument.new()
    sources = [pdfium.PdfDocument(CORPUS / name) for name in SOURCE_PDFS]
    try:
        while len(target) < pages:
            for source in sources:
                take = min(len(source), pages - len(target))
                if take:
                    target.import_pages(source, list(range(take)))
        target.save(path)
    finally:
        for source in sources:
            source.close()
        target.close()
    return path


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set size in bytes (``VmHWM`` in ``/proc/<pid>/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def measure_document(document: Path, workdir: Path) -> dict[str, float]:
    """Process ``document`` alone in a one-process Docket worker; peak RSS before and after (MB)."""
    from webapp.core.db import connection

    workdir.mkdir(parents=True, exist_ok=True)
    with private_redis(workdir / "redis") as redis_url:
        app = worker_app(workdir, redis_url)
        with worker_process("docket", redis_url, workdir, WORKER_CONCURRENCY="1", HIGH_QUEUE_WORKERS="0") as (pid, _):
            worker_pid = _pool_worker_pid(pid)
            idle = peak_rss_bytes(worker_pid)
            with app.app_context(), connection():
                job = process_upload(app, document, interval=0.1)
            peak = peak_rss_bytes(worker_pid)
    if job.status != "finished":
        raise RuntimeError(f"{document.name} did not finish: {job.error}")
    return {"idle_peak_mb": idle / MB, "peak_mb": peak / MB, "growth_mb": (peak - idle) / MB}


def _pool_worker_pid(pool_pid: int) -> int:
    """The pid of the pool's one worker process (RQ's scheduler process is that worker's child)."""
    workers = psutil.Process(pool_pid).children()
    if len(workers) != 1:
        raise RuntimeError(f"expected one worker process under pid {pool_pid}, found {len(workers)}")
    return workers[0].pid


def run(rounds: int = 3) -> dict:
    """Measure both documents for ``rounds`` rounds; return the result record."""
    with tempfile.TemporaryDirectory(prefix="docket-memory-") as tmp:
        workdir = Path(tmp)
        generated = make_text_pdf(workdir / f"generated-{GENERATED_PAGES}-pages.pdf")
        largest = largest_file().path
        documents = {f"{GENERATED_PAGES}-page PDF": generated, largest.name: largest}
        counter = iter(range(10**6))
        print("benchmark 7: worker peak memory", flush=True)
        measured = alternate(rounds, {
            label: (lambda path=path: measure_document(path, workdir / f"run-{next(counter)}"))
            for label, path in documents.items()
        })
    figures = {label: {key: collect(rows, key) for key in rows[0]} for label, rows in measured.items()}
    worst = max(values["peak_mb"]["median"] for values in figures.values())
    idle = max(values["idle_peak_mb"]["median"] for values in figures.values())
    record = result(
        name="memory",
        title="Benchmark 7: a worker process's peak memory on one large document",
        figures=figures,
        ratio=worst / idle,
        ratio_meaning="worst peak RSS ÷ the idle worker process's peak RSS",
        target=f"worker peak RSS ≤ {TARGET_MB} MB",
        met=worst <= TARGET_MB,
        notes="RSS counts the pages the worker process shares with the pool process it was forked from; "
              "the PDF's reader process (jobs/reader_process.py) is not in the figure.",
    )
    print_record(record)
    return record


if __name__ == "__main__":
    command_line(run, __doc__)
