"""Benchmark 6, remote embeddings: the corpus ingested against an embedding API that takes 200 ms.

A local OpenAI-compatible server (a threaded Werkzeug server in this process) answers
``POST /v1/embeddings`` after :data:`DELAY_S` seconds with small deterministic vectors (base64
when asked, as OpenAI does), and
counts the requests and how many were in flight at once. Docket's worker command (the
Procfile's) ingests the corpus files that should finish, uploaded through ``accept_uploads``,
with ``OPENAI_API_KEY``/``OPENAI_BASE_URL`` pointing at it.

The ideal is the time the embedding requests alone need: requests at the API's batch limits
(2048 inputs, 300,000 tokens) × 200 ms ÷ the concurrency allowed (the worker processes, each of
which has at most one request in flight). The figure is the measured wall time ÷ that ideal.
For contrast, one round with one request per chunk (``EMBEDDING_BATCH_SIZE=1``).

    .venv/bin/python -m benchmarks.remote_embeddings [--rounds 3]
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from benchmarks.common import (
    alternate,
    collect,
    finishing_files,
    private_redis,
    result,
    save,
    summary,
    wait_until,
    worker_app,
    worker_process,
)
from benchmarks.tables import print_record
from webapp.core.config import default_worker_concurrency
from webapp.local.embedded_redis import free_port

DELAY_S = 0.2
DIMENSIONS = 64


class SlowEmbeddingServer:
    """An OpenAI-compatible ``/v1/embeddings`` answering after ``delay`` seconds, in a thread."""

    def __init__(self, delay: float = DELAY_S) -> None:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
        self.delay = delay
        self.requests = 0
        self.inputs = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._server = make_server("127.0.0.1", free_port(), self._wsgi, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "SlowEmbeddingServer":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()

    def reset(self) -> None:
        with self._lock:
            self.requests = self.inputs = self.max_in_flight = 0

    @Request.application
    def _wsgi(self, request: Request) -> Response:
        body = request.get_json(force=True, silent=True) or {}
        inputs = body.get("input") or []
        with self._lock:
            self.requests += 1
            self.inputs += len(inputs)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.delay)
        finally:
            with self._lock:
                self.in_flight -= 1
        vectors = (np.arange(len(inputs))[:, None] + np.arange(DIMENSIONS)[None, :]) % 7 + 1.0
        if body.get("encoding_format") == "base64":  # as OpenAI answers: little-endian float32
            encoded = [base64.b64encode(row.astype("<f4").tobytes()).decode() for row in vectors]
        else:
            encoded = vectors.tolist()
        data = [{"object": "embedding", "index": index, "embedding": vector} for index, vector in enumerate(encoded)]
        body = {"object": "list", "data": data, "model": "bench-embedding",
                "usage": {"prompt_tokens": 0, "total_tokens": 0}}
        return Response(json.dumps(body), mimetype="application/json")


def ingest(server: SlowEmbeddingServer, workdir: Path, concurrency: int, batch_size: int = 2048) -> dict[str, float]:
    """Ingest the corpus once with a fresh worker pool; wall seconds and the server's counts."""
    from webapp.core.db import connection
    from webapp.core.documents import accept_uploads, read_path
    from webapp.core.models import TERMINAL_STATUSES, Job

    workdir.mkdir(parents=True, exist_ok=True)
    files = finishing_files()
    settings = {"OPENAI_API_KEY": "benchmark", "OPENAI_BASE_URL": server.url}
    with private_redis(workdir / "redis") as redis_url:
        app = worker_app(workdir, redis_url, **settings)
        with worker_process("docket", redis_url, workdir, WORKER_CONCURRENCY=str(concurrency),
                            EMBEDDING_BATCH_SIZE=str(batch_size), **settings):
            server.reset()
            with app.app_context(), connection():
                started = time.perf_counter()
                job_ids = [accept_uploads([read_path(f.path)], reprocess=True, owner="bench").files[0].document.job_id for f in files]
                wait_until(lambda: Job.select().where(Job.id.in_(job_ids), Job.status.in_(TERMINAL_STATUSES)).count()
                           == len(job_ids), 900, interval=0.05, what="the corpus to be ingested")
                wall = time.perf_counter() - started
                failed = Job.select().where(Job.id.in_(job_ids), Job.status != "finished").count()
    ideal = server.requests * DELAY_S / concurrency
    return {"wall_s": wall, "requests": server.requests, "inputs": server.inputs, "ideal_s": ideal,
            "wall_over_ideal": wall / ideal if ideal else float("nan"), "max_in_flight": server.max_in_flight,
            "failed": failed}


def run(rounds: int = 3, concurrency: int | None = None) -> dict:
    """Measure ``rounds`` rounds at the API's batch limits and one at one request per chunk."""
    concurrency = concurrency or default_worker_concurrency(remote_embeddings=True)  # the Procfile's setup
    with tempfile.TemporaryDirectory(prefix="docket-embeddings-") as tmp, SlowEmbeddingServer() as server:
        workdir = Path(tmp)
        counter = iter(range(10**6))
        print(f"benchmark 6: remote embeddings ({DELAY_S * 1000:.0f} ms per request, "
              f"{concurrency} worker processes)", flush=True)
        measured = alternate(rounds, {
            "batched": lambda: ingest(server, workdir / f"run-{next(counter)}", concurrency),
        })
        per_chunk = ingest(server, workdir / "per-chunk", concurrency, batch_size=1)
        print("    one request per chunk: " + ", ".join(f"{k}={v:.4g}" for k, v in per_chunk.items()), flush=True)
    rows = measured["batched"]
    figures = {
        "batched": {key: collect(rows, key) for key in rows[0]},
        "per_chunk": {key: summary([value]) for key, value in per_chunk.items()},
    }
    ratio = figures["batched"]["wall_over_ideal"]["median"]
    record = result(
        name="remote_embeddings",
        title=f"Benchmark 6: the corpus against an embedding API answering in {DELAY_S * 1000:.0f} ms",
        figures=figures,
        ratio=ratio,
        ratio_meaning="wall time ÷ (requests at batch limits × 200 ms ÷ worker processes)",
        target="≤ 1.2× the ideal",
        met=ratio <= 1.2,
        notes=(f"{concurrency} worker processes (WORKER_CONCURRENCY), so at most {concurrency} requests in flight. "
               "The ideal leaves out the jobs' own CPU work (extraction), which shares the cores. "
               "per_chunk: one round with EMBEDDING_BATCH_SIZE=1, for contrast."),
    )
    print_record(record)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=None,
                        help="worker processes (default: Docket's default with remote embeddings, 2 per core)")
    args = parser.parse_args()
    record = run(args.rounds, args.concurrency)
    print(f"saved {save(record)}")


if __name__ == "__main__":
    main()
