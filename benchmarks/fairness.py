"""Benchmark 12, fair share between owners: one owner's flood does not starve another's file.

Docket from its Procfile (web and a worker command of ``WORKER_CONCURRENCY`` processes) with
tokens for two owners. On each fresh service:

1. **idle**: owner B uploads one small file and waits for it: B's time on an idle service
   (upload → ``finished`` seen, polled every 50 ms);
2. **flood**: owner A uploads :data:`FLOOD` documents (the corpus's text PDFs and other formats,
   cycled, ``reprocess=true`` so that every copy is processed; 50 files per request), then B
   uploads the same small file again (``reprocess=true``) and waits for it: B's wait;
3. A's documents are followed to the end: A's throughput (documents ÷ first upload → last
   terminal status).

Sides: ``FAIR_SHARE=true`` and ``FAIR_SHARE=false`` (first in, first out), alternating, each
round on new services. Figures:

* **B's wait ÷ B's idle time**, fair share on (target ≤ 3×; with it off, for contrast, B waits
  for A's whole backlog);
* **A's throughput, on ÷ off** (target ≥ 0.95: the fair order costs the flooding owner nothing
  measurable — the same work, the same workers). On a shared machine this ratio moves with
  whatever else runs, so each side also measures the only thing fair share changes on A's path,
  the enqueue itself (:func:`push_cost`: milliseconds per job, in this process).

    .venv/bin/python -m benchmarks.fairness [--rounds 3] [--flood 300]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests

from benchmarks.common import CORPUS, CorpusFile, alternate, collect, manifest, private_redis, result, save, summary
from benchmarks.services import Service, docket_service, stop_on_sigterm
from benchmarks.tables import print_record

FLOOD = 300  # the issue's: owner A uploads 300 documents
PER_REQUEST = 50  # files per upload request of A's (MAX_FILES_PER_UPLOAD is 100)
WORKERS = "2"  # WORKER_CONCURRENCY: the 2-core machine's default
POLL = 0.05  # seconds between two status requests
TIMEOUT = 900.0  # seconds for one side's flood to end
TERMINAL = {"finished", "failed", "stopped", "canceled"}
OWNER_A, OWNER_B = "owner-a", "owner-b"


def flood_files() -> list[CorpusFile]:
    """A's files: the corpus's text PDFs and other formats (no scans: OCR would make one side's
    run minutes long without saying more about the order)."""
    return [CorpusFile(CORPUS / row["file"], row["kind"], max(int(row["pages"]), 1))
            for row in manifest() if row["kind"] in ("text", "other-format")]


def small_file() -> CorpusFile:
    """B's file: the smallest of the other formats (a short .txt/.md/.html)."""
    return min((f for f in flood_files() if f.kind == "other-format"), key=lambda f: f.path.stat().st_size)


def wait_terminal(session: requests.Session, url: str, job_id: str, deadline: float) -> tuple[str, float]:
    """Poll job ``job_id`` until it is terminal; returns its status and ``perf_counter()`` then."""
    while True:
        status = session.get(f"{url}/api/jobs/{job_id}", timeout=60).json()["status"]
        if status in TERMINAL:
            return status, time.perf_counter()
        if time.perf_counter() > deadline:
            raise TimeoutError(f"job {job_id} still {status} after {TIMEOUT} s")
        time.sleep(POLL)


def upload(session: requests.Session, url: str, files: list[tuple[str, bytes]]) -> list[str]:
    """One ``POST /api/documents`` of ``files`` (name, bytes) with ``reprocess=true``; returns job ids."""
    answer = session.post(f"{url}/api/documents", files=[("file", file) for file in files],
                          data={"reprocess": "true"}, timeout=120)
    if answer.status_code != 202:
        raise RuntimeError(f"upload answered {answer.status_code}: {answer.text[:300]}")
    return [document["job_id"] for document in answer.json()["documents"]]


def one_side(fair_share: bool, flood: int) -> dict[str, float]:
    """One fresh service with ``FAIR_SHARE`` on or off: B idle, A's flood, B during it."""
    files = flood_files()
    payloads = [(f.name, f.path.read_bytes()) for f in files]
    small = (small_file().name, small_file().path.read_bytes())
    with tempfile.TemporaryDirectory(prefix="docket-fairness-") as folder, docket_service(
            Path(folder), env_extra={"FAIR_SHARE": str(fair_share).lower(), "WORKER_CONCURRENCY": WORKERS},
            owners=(OWNER_A, OWNER_B)) as service:
        a, b = _session(service, OWNER_A), _session(service, OWNER_B)
        deadline = time.perf_counter() + TIMEOUT
        started = time.perf_counter()
        [job] = upload(b, service.url, [small])
        _, ended = wait_terminal(b, service.url, job, deadline)
        idle = ended - started

        flood_started = time.perf_counter()
        a_jobs: list[str] = []
        for first in range(0, flood, PER_REQUEST):
            batch = [payloads[(first + n) % len(payloads)] for n in range(min(PER_REQUEST, flood - first))]
            a_jobs += upload(a, service.url, batch)
        b_started = time.perf_counter()
        [job] = upload(b, service.url, [small])
        b_status, b_ended = wait_terminal(b, service.url, job, deadline)
        a_queued_when_b_ended = _owner_queued(service, OWNER_A)
        a_ended = [wait_terminal(a, service.url, job_id, deadline) for job_id in a_jobs]
        a_wall = max(ended for _, ended in a_ended) - flood_started
        return {
            "b_idle_s": idle,
            "b_wait_s": b_ended - b_started,
            "b_ratio": (b_ended - b_started) / idle,
            "a_docs_per_s": len(a_jobs) / a_wall,
            "a_wall_s": a_wall,
            "a_queued_when_b_finished": a_queued_when_b_ended,
            "a_finished": sum(status == "finished" for status, _ in a_ended),
            "b_finished": float(b_status == "finished"),
        }


def push_cost(fair_share: bool, jobs: int = 400, per_call: int = 50) -> dict[str, float]:
    """The enqueue itself, in this process: ``jobs`` committed rows of 3 owners (A's 300, then B's
    and C's 50) enqueued ``per_call`` at a time with ``enqueue_jobs`` into a private Redis, fair
    share on or off. Returns ``push_ms_per_job`` (milliseconds per job, the enqueue calls only)."""
    from webapp import create_app
    from webapp.core.db import connection, create_tables
    from webapp.core.protocol.launch import enqueue_jobs, new_job

    owners = ["a"] * (jobs - 2 * per_call) + ["b"] * per_call + ["c"] * per_call
    with tempfile.TemporaryDirectory(prefix="docket-push-") as folder, private_redis(Path(folder) / "redis") as url:
        app = create_app({"TESTING": True, "DATABASE_URL": f"sqlite:///{folder}/push.sqlite3", "REDIS_URL": url,
                          "STORAGE_PATH": f"{folder}/uploads", "FAIR_SHARE": fair_share})
        spent = 0.0
        with app.app_context():
            create_tables()
            with connection():
                for first in range(0, jobs, per_call):
                    rows = [new_job("document", {}, owner=owner) for owner in owners[first:first + per_call]]
                    for row in rows:
                        row.save(force_insert=True)
                    started = time.perf_counter()
                    enqueue_jobs(rows)
                    spent += time.perf_counter() - started
    return {"push_ms_per_job": spent * 1000 / jobs}


def _session(service: Service, owner: str) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {service.tokens[owner]}"
    return session


def _owner_queued(service: Service, owner: str) -> float:
    """``owner``'s queued jobs as ``GET /api/jobs?status=queued`` pages them (NaN if unreadable)."""
    session = _session(service, owner)
    count, cursor = 0, None
    while True:
        answer = session.get(f"{service.url}/api/jobs", params={"status": "queued", "limit": 100,
                                                                 **({"cursor": cursor} if cursor else {})}, timeout=60)
        if answer.status_code != 200:
            return float("nan")
        body = answer.json()
        count += len(body.get("jobs", []))
        cursor = body.get("next")
        if not cursor:
            return count


def run(rounds: int = 3, flood: int = FLOOD) -> dict[str, Any]:
    """Both sides for ``rounds`` rounds; the record for ``benchmarks/results/fairness.json``."""
    measured = alternate(rounds, {"fair": lambda: {**one_side(True, flood), **push_cost(True)},
                                  "fifo": lambda: {**one_side(False, flood), **push_cost(False)}})
    fair, fifo = measured["fair"], measured["fifo"]
    b_ratio = collect(fair, "b_ratio")["median"]
    throughput = [on["a_docs_per_s"] / off["a_docs_per_s"] for on, off in zip(fair, fifo)]
    throughput_ratio = sorted(throughput)[len(throughput) // 2]
    figures = {side: {key: collect(rounds_, key) for key in rounds_[0]} for side, rounds_ in measured.items()}
    figures["per_round"] = {"a_throughput_on_over_off": summary(throughput)}
    return result(
        "fairness", "Benchmark 12: fairness", figures, b_ratio,
        f"owner B's wait for one small file while owner A's {flood} documents are queued ÷ B's time on an idle "
        f"service (fair share on), median of rounds; A's throughput on ÷ off: {throughput_ratio:.3g}",
        "B ≤ 3× idle; A's throughput ≥ 0.95 of first-in-first-out",
        b_ratio <= 3 and throughput_ratio >= 0.95,
        notes=f"with fair share off B waited {collect(fifo, 'b_ratio')['median']:.3g}× its idle time; the fair push "
              f"costs {collect(fair, 'push_ms_per_job')['median']:.3g} ms per job against "
              f"{collect(fifo, 'push_ms_per_job')['median']:.3g} ms for RQ's own",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--flood", type=int, default=FLOOD)
    args = parser.parse_args()
    stop_on_sigterm()
    record = run(args.rounds, args.flood)
    print_record(record)
    print(f"saved {save(record)}")


if __name__ == "__main__":
    main()
