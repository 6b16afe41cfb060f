"""Benchmark 5: ``POST /api/documents`` of a 10 MB PDF — latency and web-process memory growth.

A valid PDF of at least 10 MiB is made once per run from long corpus PDFs (pypdfium2 imports their
pages into a new document) and checked to pass Docket's type detection. It is uploaded
sequentially over loopback, as one multipart part ``file`` encoded once beforehand, to Docket's
Procfile ``web`` process (gunicorn) and to the baseline, the two alternating for several rounds;
each round is 3 untimed warm-up uploads, then 30 timed ones.

Baseline: the same bytes, POSTed the same way to the same gunicorn command line (the Procfile's
``web`` command: same worker class and threads) serving :func:`drain_body_app`, a WSGI app
that reads the whole body and throws it away — the cost of getting 10 MB through gunicorn on this
machine, which any upload endpoint pays. (A rejected upload, or an endpoint that does not read the
body, is no baseline: the server answers before the client has sent the bytes.)

Docket's uploads authenticate as every ``/api`` request must (``Authorization: Bearer <token>``,
a token of owner ``bench`` made with ``flask --app wsgi tokens create`` in each fresh service:
one indexed SELECT of the token and its ``last_used_at`` written at most once a minute). The
baseline is sent an ``Authorization`` header of the same length (and ignores it), so both
receive as many request bytes.

Only the web process runs, with one gunicorn worker (``WEB_CONCURRENCY=1``) for both servers:
a sequential client only ever reaches one worker, and the worker would process each 10 MB PDF
(hundreds of pages) on the same 2 cores during the measurement. The jobs stay queued.

Memory: each Docket round starts a fresh web process and reads its gunicorn worker's RSS (psutil)
before the first upload and after the last (``rss_growth``: what the uploads left behind), and the
kernel's peak-RSS mark, reset before the first upload (``peak_growth``: the most it held), both
also as multiples of the file size.

Targets: p95 ≤ 100 ms on loopback; memory growth (both figures) ≤ 2× the file size.

    .venv/bin/python -m benchmarks.upload_path [--rounds 3]
"""

from __future__ import annotations

import itertools
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil
import requests
from urllib3.filepost import encode_multipart_formdata

from benchmarks.common import CORPUS, alternate, collect, command_line, percentile, result, summary
from benchmarks.services import docket_service, procfile_web_serving, web_worker_pids
from benchmarks.tables import print_record
from webapp.core.filetypes import PDF, detect_content_type

MIB = 1024 * 1024
PDF_MIN_BYTES = 10 * MIB
# Long real documents (text, fonts, some figures); not the corpus's synthetic stress files.
SOURCE_PDFS = ("geotopo-117p-de.pdf", "metapost-manual-ru.pdf", "federal-register-2020-17221.pdf",
               "dpr-paper-two-column.pdf")
UPLOADS, WARMUPS = 30, 3  # timed and untimed uploads per round and side
# One gunicorn worker: a sequential client only ever reaches one, and when /readyz answers it has
# surely finished booting, so its RSS before the first upload is a clean starting point.
ONE_WORKER = {"WEB_CONCURRENCY": "1"}
TARGET_P95_MS, TARGET_GROWTH_X = 100.0, 2.0
REQUEST_TIMEOUT = 60.0  # seconds for one upload
BASELINE_APP = "benchmarks.upload_path:drain_body_app"
# What the baseline is sent instead of Docket's token: a header of the same length (dkt_ + 43
# characters), so both servers receive as many bytes; the baseline ignores it.
_SAME_SIZE_HEADER = {"Authorization": "Bearer dkt_" + "x" * 43}
READ_SIZE = 64 * 1024  # bytes the baseline reads at a time


def drain_body_app(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
    """Baseline WSGI app: read the whole request body and discard it; 200 ``{"received": bytes}``."""
    stream, received = environ["wsgi.input"], 0
    while chunk := stream.read(READ_SIZE):
        received += len(chunk)
    body = json.dumps({"received": received}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def make_large_pdf(path: Path, min_bytes: int = PDF_MIN_BYTES) -> Path:
    """Write a valid PDF of at least ``min_bytes`` bytes to ``path``, built from corpus pages.

    Imports all pages of :data:`SOURCE_PDFS` into one new document, one file after another and
    round after round (each import copies the pages' objects), saving after each import until the
    file is large enough: it overshoots by at most one source's share (about 1.5 MB).
    """
    import pypdfium2 as pdfium

    output = pdfium.PdfDocument.new()
    sources = itertools.cycle(SOURCE_PDFS)
    try:
        while not path.exists() or path.stat().st_size < min_bytes:
            output.import_pages(pdfium.PdfDocument(CORPUS / next(sources)))
            output.save(path)
    finally:
        output.close()
    return path


class Uploader:
    """Sequential uploads of one pre-encoded multipart body to ``url`` over one keep-alive connection."""

    def __init__(self, url: str, body: bytes, content_type: str, expected_status: int,
                 headers: dict[str, str] | None = None) -> None:
        self.url, self.body, self.expected_status = url, body, expected_status
        self.headers = {"Content-Type": content_type, **(headers or {})}
        self.session = requests.Session()

    def __enter__(self) -> "Uploader":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.session.close()

    def upload(self) -> requests.Response:
        """One POST; raises ``RuntimeError`` unless the answer has the expected status."""
        response = self.session.post(self.url, data=self.body, headers=self.headers, timeout=REQUEST_TIMEOUT)
        if response.status_code != self.expected_status:
            raise RuntimeError(f"POST {self.url} answered {response.status_code}: {response.text[:500]}")
        return response

    def timed_uploads(self) -> dict[str, float]:
        """``WARMUPS`` untimed uploads, then ``UPLOADS`` timed ones: ``p50_ms`` and ``p95_ms``, from
        sending an upload to having its whole answer (milliseconds)."""
        for _ in range(WARMUPS):
            self.upload()
        latencies = []
        for _ in range(UPLOADS):
            started = time.perf_counter()
            self.upload()
            latencies.append((time.perf_counter() - started) * 1000)
        return {"p50_ms": percentile(latencies, 0.50), "p95_ms": percentile(latencies, 0.95)}


def docket_round(workdir: Path, body: bytes, content_type: str, file_bytes: int) -> dict[str, float]:
    """One Docket round on a fresh web process: :meth:`Uploader.timed_uploads` and the worker's memory.

    Returns the latency figures plus ``rss_growth_mib`` (RSS after the uploads minus before the
    first one), ``peak_growth_mib`` (peak RSS while uploading minus RSS before the first one), and
    both as multiples of ``file_bytes`` (``rss_growth_x_file``, ``peak_growth_x_file``).
    """
    with docket_service(workdir, processes=("web",), env_extra=ONE_WORKER) as service:
        (pid,) = web_worker_pids(workdir)
        worker = psutil.Process(pid)
        rss_before = worker.memory_info().rss
        _reset_peak_rss(pid)
        with Uploader(f"{service.url}/api/documents", body, content_type, 202, service.headers) as docket:
            figures = docket.timed_uploads()
        rss_growth = worker.memory_info().rss - rss_before
        peak_growth = _peak_rss(pid) - rss_before
    shutil.rmtree(workdir)  # about 330 MB of stored uploads per round
    return {
        **figures,
        "rss_growth_mib": rss_growth / MIB,
        "peak_growth_mib": peak_growth / MIB,
        "rss_growth_x_file": rss_growth / file_bytes,
        "peak_growth_x_file": peak_growth / file_bytes,
    }


def _reset_peak_rss(pid: int) -> None:
    """Reset the kernel's peak-RSS mark (VmHWM) of ``pid`` to its current RSS (Linux ≥ 4.0)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _peak_rss(pid: int) -> int:
    """Peak RSS (VmHWM) of ``pid`` in bytes since the last :func:`_reset_peak_rss`."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def run(rounds: int = 3) -> dict[str, Any]:
    """Benchmark 5; returns the result record (see :func:`benchmarks.common.result`)."""
    with tempfile.TemporaryDirectory(prefix="docket-bench-upload-") as tmp:
        workdir = Path(tmp)
        pdf = make_large_pdf(workdir / "large.pdf")
        data = pdf.read_bytes()
        if detect_content_type(data, pdf.name) != PDF:
            raise RuntimeError(f"{pdf} does not pass Docket's type detection as a PDF")
        body, content_type = encode_multipart_formdata({"file": (pdf.name, data, PDF), "reprocess": "true"})
        docket_folders = (workdir / f"docket-{index}" for index in itertools.count(1))
        with procfile_web_serving(workdir / "baseline", BASELINE_APP, env_extra=ONE_WORKER) as baseline_url, \
                Uploader(f"{baseline_url}/upload", body, content_type, 200, _SAME_SIZE_HEADER) as baseline:
            received = baseline.upload().json()["received"]
            if received != len(body):
                raise RuntimeError(f"the baseline read {received} of {len(body)} bytes")
            measured = alternate(rounds, {
                "docket": lambda: docket_round(next(docket_folders), body, content_type, len(data)),
                "baseline": baseline.timed_uploads,
            })
    ratio = summary([d["p95_ms"] / b["p95_ms"] for d, b in zip(measured["docket"], measured["baseline"])])
    p95 = collect(measured["docket"], "p95_ms")
    rss_x = collect(measured["docket"], "rss_growth_x_file")
    peak_x = collect(measured["docket"], "peak_growth_x_file")
    docket_keys = ("p50_ms", "p95_ms", "rss_growth_mib", "peak_growth_mib", "rss_growth_x_file", "peak_growth_x_file")
    record = result(
        name="upload_path",
        title=f"Benchmark 5: POST /api/documents of a {len(data) / MIB:.1f} MiB PDF, {UPLOADS} sequential "
              f"uploads per round, Procfile web process vs gunicorn reading the same body",
        figures={
            "docket": {key: collect(measured["docket"], key) for key in docket_keys},
            "baseline": {key: collect(measured["baseline"], key) for key in ("p50_ms", "p95_ms")},
            "ratio": {"docket/baseline p95": ratio},
        },
        ratio=ratio["median"],
        ratio_meaning="Docket upload p95 / baseline (gunicorn reading the same body) p95, median of per-round ratios",
        target=f"Docket p95 <= {TARGET_P95_MS:g} ms; memory growth <= {TARGET_GROWTH_X:g}x the file size",
        met=(p95["median"] <= TARGET_P95_MS and rss_x["median"] <= TARGET_GROWTH_X
             and peak_x["median"] <= TARGET_GROWTH_X),
        notes=(f"file {len(data)} bytes (multipart body {len(body)}); web process only, WEB_CONCURRENCY=1 "
               "for both servers (jobs stay queued). Baseline: the Procfile's gunicorn command serving a "
               "WSGI app that reads and discards the body, i.e. the cost of receiving the bytes. Memory: the "
               "gunicorn worker of a fresh Docket web process per round, from before its first upload "
               f"({WARMUPS} warm-ups + {UPLOADS} timed) to after the last (rss_growth) and to its peak "
               "(VmHWM, peak_growth)."),
    )
    print_record(record)
    return record


if __name__ == "__main__":
    command_line(run, __doc__)
