"""Benchmarks 1 and 2: corpus uploads over HTTP until every job is terminal.

* ``service_limit`` (benchmark 1): Docket started from its Procfile, fed the finishing corpus files
  over HTTP (:func:`ingest_over_http`), against the limit of the same machine — the document
  pipeline called in-process on the same files, over as many processes as cores
  (``benchmarks.pipeline_limit.run_limit``). Ratio = service pages/s ÷ limit pages/s; target ≥ 0.9.
* ``celery_peer`` (benchmark 2): the same upload run against Docket and against the Celery peer
  (``../shared/peers/celery-seed000``). Ratio = Docket wall time ÷ peer wall time; target ≤ 0.8
  (Docket ≥ 1.25× faster).

Every round of every side starts fresh services (new folder, Redis, database) and measures from
the first upload to the last terminal job, so start-up time is excluded; the sides alternate.
Docket's requests carry its bearer token (each upload and status request authenticates: one
indexed SELECT of the token); the peer has no authentication.

    .venv/bin/python -m benchmarks.http_ingest [--rounds 3] [--benchmark limit|peer|both]
"""

from __future__ import annotations

import argparse
import itertools
import queue
import sys
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import CorpusFile, alternate, collect, finishing_files, percentile, result, save, summary
from benchmarks.services import Service, celery_peer, docket_service, stop_on_sigterm
from benchmarks.tables import print_record

TERMINAL_STATUSES = frozenset({"finished", "failed", "stopped", "canceled"})  # both services use RQ's words
POLL_INTERVAL = 0.1  # seconds a client waits before asking again about a job that is not terminal
REQUEST_TIMEOUT = 60.0  # seconds for one HTTP request
RUN_TIMEOUT = 900.0  # seconds for a whole upload run before it is abandoned
COPIES, CLIENTS = 3, 4  # the run: 3 copies of the 29 finishing files from 4 clients


@dataclass(frozen=True)
class _Outcome:
    """One uploaded document: its terminal status and ``time.perf_counter()`` marks (seconds)."""

    status: str
    upload_started: float
    terminal_seen: float


def ingest_over_http(
    service: Service,
    files: Sequence[CorpusFile],
    copies: int = COPIES,
    clients: int = CLIENTS,
) -> dict[str, float]:
    """Upload every file ``copies`` times and wait until every job is terminal.

    ``clients`` threads, each with its own ``requests.Session`` (sending ``service``'s bearer
    token, as every ``/api`` request to Docket must; the peer has none), take uploads from one shared
    queue (one file per ``POST /api/documents`` request, multipart field ``file``; the bytes are
    read before the clock starts), then each polls ``GET /api/jobs/<job_id>`` for its own jobs,
    oldest first: a terminal answer moves it to the next job at once, any other answer makes it
    wait ``POLL_INTERVAL`` seconds. So at most ``clients`` status requests per 0.1 s hit the server
    while jobs run, and a job that ends before an older one of the same client is seen when that
    older one ends (its latency is an upper bound; the wall time is exact within one poll).

    Returns:
        ``wall_s`` (first upload start → last terminal status seen, seconds), ``docs_per_s``,
        ``pages_per_s`` (pages as :class:`CorpusFile` counts them), ``p50_s`` / ``p95_s`` (per
        document, upload start → terminal status seen, seconds), ``finished`` and ``failed``
        (terminal but not finished) counts.

    Raises:
        RuntimeError: an upload was not accepted (not 202) or a status request failed.
        TimeoutError: jobs were still not terminal after ``RUN_TIMEOUT`` seconds.
    """
    payloads = {file.path: file.path.read_bytes() for file in files}
    uploads: queue.SimpleQueue[CorpusFile] = queue.SimpleQueue()
    for file in list(files) * copies:
        uploads.put(file)
    abort = threading.Event()
    deadline = time.perf_counter() + RUN_TIMEOUT

    def client() -> list[_Outcome]:
        try:
            return _upload_and_follow(service, uploads, payloads, abort, deadline)
        except BaseException:
            abort.set()  # the other clients stop too; the error is raised below
            raise

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client) for _ in range(clients)]
        outcomes = [outcome for future in futures for outcome in future.result()]

    wall = max(o.terminal_seen for o in outcomes) - min(o.upload_started for o in outcomes)
    latencies = [o.terminal_seen - o.upload_started for o in outcomes]
    pages = sum(file.pages for file in files) * copies
    finished = sum(o.status == "finished" for o in outcomes)
    return {
        "wall_s": wall,
        "docs_per_s": len(outcomes) / wall,
        "pages_per_s": pages / wall,
        "p50_s": percentile(latencies, 0.50),
        "p95_s": percentile(latencies, 0.95),
        "finished": finished,
        "failed": len(outcomes) - finished,
    }


def _upload_and_follow(
    service: Service,
    uploads: queue.SimpleQueue[CorpusFile],
    payloads: dict[Path, bytes],
    abort: threading.Event,
    deadline: float,
) -> list[_Outcome]:
    """One client: upload from the shared queue until it is empty, then follow its jobs to the end."""
    outcomes: list[_Outcome] = []
    base_url = service.url
    with service.session() as session:  # Docket's bearer token on every request; the peer has none
        pending: deque[tuple[str, float]] = deque()  # (job id, upload start), oldest first
        while not abort.is_set():
            try:
                file = uploads.get_nowait()
            except queue.Empty:
                break
            started = time.perf_counter()
            # reprocess: every copy is processed, as the peer (which does not detect duplicates) does.
            response = session.post(f"{base_url}/api/documents", files={"file": (file.name, payloads[file.path])},
                                    data={"reprocess": "true"}, timeout=REQUEST_TIMEOUT)
            if response.status_code != 202:
                raise RuntimeError(f"uploading {file.name} answered {response.status_code}: {response.text[:500]}")
            if response.json()["documents"][0].get("duplicate"):
                raise RuntimeError(f"{file.name} was taken as a duplicate: the copies must all be processed")
            pending.append((response.json()["documents"][0]["job_id"], started))
        while pending and not abort.is_set():
            job_id, started = pending[0]
            response = session.get(f"{base_url}/api/jobs/{job_id}", timeout=REQUEST_TIMEOUT)
            if response.status_code != 200:
                raise RuntimeError(f"GET /api/jobs/{job_id} answered {response.status_code}: {response.text[:500]}")
            status = response.json()["status"]
            if status in TERMINAL_STATUSES:
                outcomes.append(_Outcome(status, started, time.perf_counter()))
                pending.popleft()
            elif time.perf_counter() > deadline:
                raise TimeoutError(f"{len(pending)} jobs were not terminal after {RUN_TIMEOUT} s "
                                   f"(job {job_id}: {status})")
            else:
                time.sleep(POLL_INTERVAL)
    return outcomes


def run_vs_limit(rounds: int = 3, copies: int = COPIES, clients: int = CLIENTS) -> dict[str, Any]:
    """Benchmark 1: Docket over HTTP against the in-process pipeline limit on the same files."""
    from benchmarks.pipeline_limit import run_limit  # written alongside; imported only when this runs

    files = finishing_files()
    with tempfile.TemporaryDirectory(prefix="docket-bench-limit-") as tmp:
        folders = _fresh_folders(Path(tmp))

        def limit() -> dict[str, float]:
            return run_limit(list(files) * copies, next(folders))

        measured = alternate(rounds, {
            "limit": limit,
            "docket": lambda: _ingest_fresh(docket_service, next(folders), files, copies, clients),
        })
    ratios = [d["pages_per_s"] / l["pages_per_s"] for d, l in zip(measured["docket"], measured["limit"])]
    failed = sum(r["failed"] for r in measured["docket"])
    ratio = summary(ratios)
    record = result(
        name="service_limit",
        title=f"Benchmark 1: Docket over HTTP vs the in-process pipeline limit "
              f"({len(files)} files x {copies} copies, {clients} clients)",
        figures={
            "limit": _figures(measured["limit"], ("wall_s", "docs_per_s", "pages_per_s", "finished", "failed")),
            "docket": _figures(measured["docket"], _HTTP_FIGURES),
            "ratio": {"service/limit pages/s": ratio},
        },
        ratio=ratio["median"],
        ratio_meaning="Docket pages/s over HTTP / pipeline-limit pages/s, median of per-round ratios",
        target=">= 0.9",
        met=ratio["median"] >= 0.9 and failed == 0,
        notes=_failure_note(failed, "Docket"),
    )
    print_record(record)
    return record


def run_vs_peer(rounds: int = 3, copies: int = COPIES, clients: int = CLIENTS) -> dict[str, Any]:
    """Benchmark 2: the same upload run against Docket and the Celery peer, fresh services each round."""
    files = finishing_files()
    with tempfile.TemporaryDirectory(prefix="docket-bench-peer-") as tmp:
        folders = _fresh_folders(Path(tmp))
        measured = alternate(rounds, {
            "docket": lambda: _ingest_fresh(docket_service, next(folders), files, copies, clients),
            "peer": lambda: _ingest_fresh(celery_peer, next(folders), files, copies, clients),
        })
    ratios = [d["wall_s"] / p["wall_s"] for d, p in zip(measured["docket"], measured["peer"])]
    ratio = summary(ratios)
    failed_docket = sum(r["failed"] for r in measured["docket"])
    failed_peer = sum(r["failed"] for r in measured["peer"])
    record = result(
        name="celery_peer",
        title=f"Benchmark 2: Docket vs the Celery peer over HTTP "
              f"({len(files)} files x {copies} copies, {clients} clients)",
        figures={
            "docket": _figures(measured["docket"], _HTTP_FIGURES),
            "peer": _figures(measured["peer"], _HTTP_FIGURES),
            "ratio": {"docket/peer wall": ratio},
        },
        ratio=ratio["median"],
        ratio_meaning="Docket wall time / peer wall time, median of per-round ratios (lower is better)",
        target="<= 0.8",
        met=ratio["median"] <= 0.8 and failed_docket == 0,
        notes=" ".join(filter(None, [_failure_note(failed_docket, "Docket"), _failure_note(failed_peer, "the peer")])),
    )
    print_record(record)
    return record


_HTTP_FIGURES = ("wall_s", "docs_per_s", "pages_per_s", "p50_s", "p95_s", "finished", "failed")


def _ingest_fresh(
    service: Callable[[Path], AbstractContextManager[Service]],
    workdir: Path,
    files: Sequence[CorpusFile],
    copies: int,
    clients: int,
) -> dict[str, float]:
    """Start ``service`` in ``workdir``, run :func:`ingest_over_http` against it, stop it."""
    with service(workdir) as running:
        return ingest_over_http(running, files, copies, clients)


def _fresh_folders(parent: Path):
    """An endless supply of new, distinct folders under ``parent`` (one per service start)."""
    return (parent / f"run-{index}" for index in itertools.count(1))


def _figures(rounds: list[dict[str, float]], keys: Sequence[str]) -> dict[str, dict[str, float]]:
    return {key: collect(rounds, key) for key in keys}


def _failure_note(failed: int, who: str) -> str:
    return f"{failed} uploads ended not finished on {who} (over all rounds)." if failed else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side, sides alternating (default 3)")
    parser.add_argument("--benchmark", choices=("limit", "peer", "both"), default="both")
    parser.add_argument("--copies", type=int, default=COPIES, help="uploads of each corpus file per run")
    parser.add_argument("--clients", type=int, default=CLIENTS, help="concurrent upload clients")
    args = parser.parse_args()
    stop_on_sigterm()
    if args.benchmark in ("limit", "both"):
        print(f"saved {save(run_vs_limit(args.rounds, args.copies, args.clients))}")
    if args.benchmark in ("peer", "both"):
        print(f"saved {save(run_vs_peer(args.rounds, args.copies, args.clients))}")


if __name__ == "__main__":
    main()
