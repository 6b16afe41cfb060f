"""Benchmark 8, rate limits: worker processes on several worker commands share OpenAI's budget.

OpenAI limits an organisation's requests and tokens per minute, whichever processes and machines
send them; Docket's ``OPENAI_REQUESTS_PER_MINUTE`` and ``OPENAI_TOKENS_PER_MINUTE``
(``webapp/core/workflows/rate_limits.py``: a moving window in Redis) hold that budget for all its worker
processes together. This benchmark checks both halves of the promise:

* **never over**: the most requests (tokens) that reached the API in any 60 s window, and in any
  calendar minute, ÷ the limit — must be ≤ 1.00;
* **and not far under** when there is enough work: what reached the API from the first request
  over the whole minutes until the backlog ran dry (the last request) ÷ the limit — target ≥ 0.9.

A local OpenAI-compatible server (:class:`benchmarks.remote_embeddings.SlowEmbeddingServer`,
answering after 200 ms) records the arrival time (this process's ``time.time()``), inputs and
tokens of every request; tokens are counted as Docket's limiter counts them,
:func:`webapp.core.embeddings.token_upper_bound` (UTF-8 bytes: never fewer than OpenAI's). Two
worker commands (the Procfile's ``worker``: "two machines") of three pool processes each
share one private Redis and one SQLite database; the corpus files the service finishes are
uploaded (``accept_uploads`` with ``reprocess``, as ``flask ingest`` does), taken in corpus
order and cycled until the work is :data:`WORK_MINUTES` windows of the limit (what each file
costs is worked out first by the job's own extraction, chunking and batching, in this
process): more than twice what the limit lets through in a minute, so the workers wait on the
budget all the while.

Besides the verdict: the shortest span that held more than the limit (``window`` minus it is
how early the request over the limit came: milliseconds of clock and network jitter, or seconds
of a real overrun), the requests made ÷ those the work needs (a job rescheduled after it made
requests makes them again), the reschedules seen (rows ``scheduled`` with ``rate_limited``,
polled every 0.5 s), and the most in any 1 s ÷ the limit's per-second share — a moving window
lets a minute's budget through in a burst, while OpenAI says it may enforce a per-minute limit
over shorter periods. Every request's arrival goes to ``results/rate_limit-arrivals.json``.

Two variants, each on fresh processes:

* ``requests``: ``OPENAI_REQUESTS_PER_MINUTE=120`` with ``EMBEDDING_BATCH_SIZE=2`` (2 chunks a
  request, so the corpus makes hundreds of requests); tokens unlimited.
* ``tokens``: ``OPENAI_TOKENS_PER_MINUTE=300000`` with ``EMBEDDING_BATCH_SIZE=8``; requests
  unlimited.

Each runs ≈2 minutes (the window is a minute: a shorter run says nothing of it), so the
benchmark takes ≈5 minutes and ignores ``--rounds``: its figures are counts against a limit,
not timings on a noisy machine. ``--window`` shortens the limits' window
(``OPENAI_RATE_WINDOW``) for a quicker look; the headline figures are per minute.

    .venv/bin/python -m benchmarks.rate_limit [--machines 2] [--processes 3] [--variants requests tokens]
        [--rpm 120] [--tpm 300000] [--minutes 2.5] [--window 60]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from benchmarks.common import (
    BENCH_OWNER,
    BENCH_SECRET_KEY,
    RESULTS_DIR,
    CorpusFile,
    finishing_files,
    private_redis,
    result,
    save,
    summary,
    wait_until,
    worker_process,
)
from benchmarks.remote_embeddings import SlowEmbeddingServer
from benchmarks.services import log_tail
from benchmarks.tables import print_record

WINDOW_S = 60  # OpenAI's window: limits are per minute
WORK_MINUTES = 2.5  # work per variant, in windows' worth of the limit ("enough work")
MACHINES = 2  # worker commands, each standing for a machine
PROCESSES = 3  # pool processes per worker command (WORKER_CONCURRENCY)
# Environment knobs for `bin/bench --only rate_limit` (the command line overrides them).
MACHINES_ENV, PROCESSES_ENV = "RATE_BENCH_MACHINES", "RATE_BENCH_PROCESSES"


@dataclass(frozen=True)
class Variant:
    """One run: the budget that binds (``unit`` ``requests`` or ``tokens``), its limit per window
    and the inputs per request (``EMBEDDING_BATCH_SIZE``)."""

    unit: str
    limit: int
    batch_size: int

    def settings(self, window: int) -> dict[str, str]:
        """The worker commands' environment for this variant (the other budget unlimited)."""
        return {
            "EMBEDDER": "openai",
            "OPENAI_API_KEY": "benchmark",
            "OPENAI_REQUESTS_PER_MINUTE": str(self.limit if self.unit == "requests" else 0),
            "OPENAI_TOKENS_PER_MINUTE": str(self.limit if self.unit == "tokens" else 0),
            "OPENAI_RATE_WINDOW": str(window),
            "EMBEDDING_BATCH_SIZE": str(self.batch_size),
        }


@dataclass(frozen=True)
class Arrival:
    """One request at the embeddings server: when (Unix time, s), its inputs and tokens."""

    at: float
    inputs: int
    tokens: int


class CountingEmbeddingServer(SlowEmbeddingServer):
    """:class:`SlowEmbeddingServer` that also records every request's :class:`Arrival`."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[Arrival] = []

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self.arrivals = []

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        from webapp.core.embeddings import token_upper_bound

        at = time.time()
        raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(raw)  # the answering server reads the body again
        try:
            inputs = json.loads(raw).get("input") or []
        except (ValueError, AttributeError):
            inputs = []
        inputs = [inputs] if isinstance(inputs, str) else inputs
        arrival = Arrival(at, len(inputs), sum(token_upper_bound(str(text)) for text in inputs))
        with self._lock:
            self.arrivals.append(arrival)
        return super()._wsgi(environ, start_response)


# --- the work ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Workload:
    """The uploads of one variant and what they should cost: requests and tokens."""

    files: list[CorpusFile]
    requests: int
    tokens: int


def costs(files: Sequence[CorpusFile], config: dict[str, Any], batch_size: int) -> dict[Path, tuple[int, int]]:
    """``{path: (requests, tokens)}`` one upload of each file makes, from the document job's own
    extraction, chunking and request batching run in this process with ``config``'s settings."""
    from jobs.chunking import chunk_pages
    from jobs.extract import Limits, extract
    from webapp.core.embeddings import batches, token_upper_bound
    from webapp.core.filetypes import detect_content_type

    found = {}
    for file in files:
        data = file.path.read_bytes()
        pages = extract(data, detect_content_type(data, file.name), limits=Limits.from_config(config)).pages
        texts = [chunk.text for chunk in chunk_pages(pages, config["CHUNK_SIZE"], config["CHUNK_OVERLAP"],
                                                     max_chunks=config["MAX_DOCUMENT_CHUNKS"])]
        found[file.path] = (len(list(batches(texts, max_inputs=batch_size))),
                            sum(token_upper_bound(text) for text in texts))
    return found


def plan(variant: Variant, config: dict[str, Any], minutes: float) -> Workload:
    """Corpus files in corpus order, cycled, until they cost ``minutes`` windows of the limit.

    Raises:
        ValueError: the corpus makes no work for this variant.
    """
    files = finishing_files()
    cost = costs(files, config, variant.batch_size)
    if not any(cost.values()):
        raise ValueError("the corpus makes no embedding requests")
    target = minutes * variant.limit
    chosen: list[CorpusFile] = []
    requests = tokens = 0
    while (requests if variant.unit == "requests" else tokens) < target:
        for file in files:
            chosen.append(file)
            requests, tokens = requests + cost[file.path][0], tokens + cost[file.path][1]
            if (requests if variant.unit == "requests" else tokens) >= target:
                break
    return Workload(chosen, requests, tokens)


# --- the worker commands -------------------------------------------------------------------------

@contextmanager
def worker_commands(machines: int, redis_url: str, workdir: Path, **env: str) -> Iterator[int]:
    """``machines`` Docket worker commands (:func:`benchmarks.common.worker_process`) on one
    Redis and one database, as on that many machines; yields once all their processes listen.

    Each command lives in a thread of its own: :func:`worker_process` waits on leaving until no
    worker is registered, which holds only once every command has stopped, so they stop together.

    Yields:
        The worker processes registered in Redis (pool processes and ``high``-only ones); fewer
        than expected after 60 s is printed with the commands' processes, not raised.
    """
    import psutil
    from redis import Redis
    from rq import Worker

    from webapp.core.config import load_config

    stop = threading.Event()
    started: list[threading.Event] = []
    errors: list[BaseException] = []
    commands: list[int] = []  # the worker commands' pids

    def machine(ready: threading.Event) -> None:
        try:
            with worker_process("docket", redis_url, workdir, **env) as (pid, _):
                commands.append(pid)
                ready.set()
                stop.wait()
        except BaseException as exc:  # noqa: BLE001 - reported by the caller's thread
            errors.append(exc)
            ready.set()

    config = load_config(str(workdir / "instance"), {**os.environ, **env})
    expected = machines * (config["WORKER_CONCURRENCY"] + config["HIGH_QUEUE_WORKERS"])
    threads = []
    for _ in range(machines):
        ready = threading.Event()
        thread = threading.Thread(target=machine, args=(ready,), daemon=True)
        thread.start()
        started.append(ready)
        threads.append(thread)
    connection = Redis.from_url(redis_url)
    try:
        for ready in started:
            ready.wait(120)
        if errors:
            raise errors[0]
        try:
            count = wait_until(lambda: (found := Worker.count(connection=connection)) >= expected and found, 60,
                               what=f"{expected} worker processes to listen")
        except TimeoutError as exc:
            # Seen with 3 commands × 2 processes, in 3 of about 12 starts: a pool process works
            # (blocked in its dequeue) yet is missing from RQ's worker set. The run goes on; the
            # figures are the budget's, whoever takes the jobs.
            registered = sorted((worker.pid, ",".join(worker.queue_names())) for worker in Worker.all(connection=connection))
            children = {pid: sorted(child.pid for child in psutil.Process(pid).children()) for pid in commands}
            print(f"  {exc}; going on: registered {registered}, worker commands and their processes {children}"
                  f"{log_tail(workdir / 'docket.log', 10)}", flush=True)
            count = Worker.count(connection=connection)
        yield count
    finally:
        stop.set()
        for thread in threads:
            thread.join(90)
        connection.close()
        if errors:
            raise errors[0]


def ingest(server: CountingEmbeddingServer, workdir: Path, variant: Variant, machines: int, processes: int,
           minutes: float, window: int) -> dict[str, Any]:
    """One variant on fresh processes: plan the uploads, upload them, wait until every job is
    terminal; the server's arrivals and the jobs' outcome."""
    from webapp import create_app
    from webapp.core.db import connection, create_tables
    from webapp.core.documents import accept_uploads, read_path
    from webapp.core.models import TERMINAL_STATUSES, Job

    workdir.mkdir(parents=True, exist_ok=True)
    settings = {**variant.settings(window), "OPENAI_BASE_URL": server.url}
    with private_redis(workdir / "redis") as redis_url:
        app = create_app({"DATABASE_URL": f"sqlite:///{workdir / 'docket.sqlite3'}", "REDIS_URL": redis_url,
                          "STORAGE_PATH": str(workdir / "uploads"), "SECRET_KEY": BENCH_SECRET_KEY,
                          "EMBEDDER": "openai", "OPENAI_API_KEY": "benchmark", "OPENAI_BASE_URL": server.url})
        work = plan(variant, app.config, minutes)
        print(f"  {variant.unit}: {variant.limit} per {window} s, {len(work.files)} uploads making "
              f"{work.requests} requests and {work.tokens} tokens ({variant.batch_size} inputs a request)", flush=True)
        with app.app_context():
            create_tables()
        with worker_commands(machines, redis_url, workdir, WORKER_CONCURRENCY=str(processes), **settings) as workers:
            server.reset()
            with app.app_context(), connection():
                started = time.time()
                job_ids = [accept_uploads([read_path(file.path)], reprocess=True, owner=BENCH_OWNER)
                           .files[0].document.job_id for file in work.files]
                # The work takes its windows of the limit; past a fifth longer and two windows more, the jobs left are counted as not finished (the figures say so).
                expected_s = (work.requests if variant.unit == "requests" else work.tokens) / variant.limit * window
                reschedules: set[tuple[str, Any]] = set()  # (job, retry_at): each time a job was rescheduled

                def ended() -> bool:
                    reschedules.update(Job.select(Job.id, Job.retry_at).where(
                        Job.id.in_(job_ids), Job.status == "scheduled", Job.error_code == "rate_limited").tuples())
                    return Job.select().where(Job.id.in_(job_ids), Job.status.in_(TERMINAL_STATUSES)).count() \
                        == len(job_ids)

                try:
                    wait_until(ended, 1.2 * expected_s + 2 * window, interval=0.5, what="the uploads' jobs to end")
                except TimeoutError as exc:
                    print(f"  {exc}: counting the jobs left as not finished", flush=True)
                finished_at = time.time()
                outcomes = Counter(job.status for job in Job.select(Job.status).where(Job.id.in_(job_ids)))
    return {"work": work, "workers": workers, "arrivals": list(server.arrivals), "started": started,
            "ended": finished_at, "outcomes": dict(outcomes), "reschedules": len(reschedules)}


# --- the figures ---------------------------------------------------------------------------------

def most_in_window(times: Sequence[float], amounts: Sequence[int], window: float) -> int:
    """The largest sum of ``amounts`` over arrivals in any ``[t, t + window)`` (sorted ``times``,
    seconds); a window that holds the most starts at an arrival, so only those are tried."""
    best = total = 0
    end = 0
    for start, at in enumerate(times):
        while end < len(times) and times[end] < at + window:
            total += amounts[end]
            end += 1
        best = max(best, total)
        total -= amounts[start]
    return best


def shortest_over(times: Sequence[float], amounts: Sequence[int], limit: int) -> float:
    """The shortest span (seconds) from an arrival to the one that brings the sum of ``amounts``
    over ``limit``; ``inf`` when the whole run stays within it. Shorter than the window: the
    window held more than the limit, and the difference says by how much time (milliseconds of
    jitter, or seconds of a real overrun)."""
    shortest = math.inf
    total = end = 0
    for start, at in enumerate(times):
        while end < len(times) and total <= limit:
            total += amounts[end]
            end += 1
        if total <= limit:
            break
        shortest = min(shortest, times[end - 1] - at)
        total -= amounts[start]
    return shortest


def per_calendar_window(times: Sequence[float], amounts: Sequence[int], window: int) -> dict[int, int]:
    """``{window start (Unix time, a multiple of window): sum of amounts}`` (calendar minutes at 60 s)."""
    found: dict[int, int] = {}
    for at, amount in zip(times, amounts):
        start = int(at // window) * window
        found[start] = found.get(start, 0) + amount
    return found


def figures_of(variant: Variant, run: dict[str, Any], window: int) -> tuple[dict[str, float], dict[int, tuple[int, int]]]:
    """The variant's figures and ``{calendar window start: (requests, tokens)}``."""
    arrivals = sorted(run["arrivals"], key=lambda arrival: arrival.at)
    times = [arrival.at for arrival in arrivals]
    tokens = [arrival.tokens for arrival in arrivals]
    amounts = [1] * len(arrivals) if variant.unit == "requests" else tokens
    work: Workload = run["work"]
    figures: dict[str, float] = {
        "limit": variant.limit,
        "uploads": len(work.files),
        "planned_requests": work.requests,
        "requests": len(arrivals),
        "useful_share": work.requests / len(arrivals) if arrivals else float("nan"),
        "planned_tokens": work.tokens,
        "tokens": sum(tokens),
        "worker_processes": run["workers"],
        "finished": run["outcomes"].get("finished", 0),
        "not_finished": sum(count for status, count in run["outcomes"].items() if status != "finished"),
        "reschedules": run["reschedules"],
        "wall_s": run["ended"] - run["started"],
    }
    calendar = per_calendar_window(times, [1] * len(times), window)
    calendar_tokens = per_calendar_window(times, tokens, window)
    table = {start: (calendar.get(start, 0), calendar_tokens.get(start, 0)) for start in sorted(calendar)}
    if not arrivals:
        return figures, table
    saturated_s = times[-1] - times[0]
    whole = int(saturated_s // window)
    in_whole = sum(amount for at, amount in zip(times, amounts) if at < times[0] + whole * window)
    figures.update({
        "max_window_ratio": most_in_window(times, amounts, window) / variant.limit,
        "shortest_over_limit_s": shortest_over(times, amounts, variant.limit),
        # Bursts: OpenAI may enforce a per-minute limit over shorter periods ("60,000
        # requests/minute may be enforced as 1,000 requests/second"); not judged here.
        "max_second_ratio": most_in_window(times, amounts, 1.0) / (variant.limit / window),
        "max_calendar_ratio": max(per_calendar_window(times, amounts, window).values()) / variant.limit,
        "saturated_s": saturated_s,
        "saturated_windows": whole,
        "achieved_ratio": in_whole / (whole * variant.limit) if whole else float("nan"),
        "first_request_after_s": times[0] - run["started"],
    })
    return figures, table


def print_calendar(variant: Variant, table: dict[int, tuple[int, int]], window: int) -> None:
    """Requests and tokens per calendar window (minute), against the limit."""
    print(f"\n  {variant.unit} variant: per calendar {'minute' if window == 60 else f'{window} s'} "
          f"(limit {variant.limit} {variant.unit})")
    print(f"  {'window (UTC)':<14} {'requests':>9} {'tokens':>10} {'÷ limit':>8}")
    for start, (requests, tokens) in table.items():
        amount = requests if variant.unit == "requests" else tokens
        print(f"  {time.strftime('%H:%M:%S', time.gmtime(start)):<14} {requests:>9} {tokens:>10} "
              f"{amount / variant.limit:>8.3f}")


def run(rounds: int = 1, machines: int | None = None, processes: int | None = None,
        variants: Sequence[str] = ("requests", "tokens"), rpm: int = 120, tpm: int = 300_000,
        minutes: float = WORK_MINUTES, window: int = WINDOW_S) -> dict[str, Any]:
    """Run each variant once (``rounds`` is ignored: see the module docstring); the record.

    Args:
        rounds: ignored (each variant is minutes long and its figures are counts, not timings).
        machines: worker commands (default ``RATE_BENCH_MACHINES`` or 2).
        processes: pool processes per worker command (default ``RATE_BENCH_PROCESSES`` or 3).
        variants: ``requests`` and/or ``tokens``.
        rpm: ``OPENAI_REQUESTS_PER_MINUTE`` of the requests variant.
        tpm: ``OPENAI_TOKENS_PER_MINUTE`` of the tokens variant.
        minutes: work per variant in windows' worth of its limit (≥ 2 for a whole saturated window
            and a tail).
        window: the limits' window in seconds (``OPENAI_RATE_WINDOW``; OpenAI's is 60).
    """
    machines = machines or int(os.environ.get(MACHINES_ENV) or MACHINES)
    processes = processes or int(os.environ.get(PROCESSES_ENV) or PROCESSES)
    chosen = {"requests": Variant("requests", rpm, 2), "tokens": Variant("tokens", tpm, 8)}
    measured: dict[str, dict[str, Any]] = {}
    arrivals: dict[str, list[list[float]]] = {}
    print(f"benchmark 8: rate limits ({machines} worker commands × {processes} processes, "
          f"window {window} s, {minutes} windows of work per variant)", flush=True)
    with tempfile.TemporaryDirectory(prefix="docket-rate-limit-") as tmp, CountingEmbeddingServer() as server:
        for name in variants:
            variant = chosen[name]
            outcome = ingest(server, Path(tmp) / name, variant, machines, processes, minutes, window)
            figures, table = figures_of(variant, outcome, window)
            print_calendar(variant, table, window)
            print("    " + ", ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                                     for key, value in figures.items()), flush=True)
            measured[name] = figures
            arrivals[name] = [[arrival.at, arrival.inputs, arrival.tokens] for arrival in outcome["arrivals"]]
    # Every request's (Unix time, inputs, tokens), for a closer look at a window over the limit.
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "rate_limit-arrivals.json").write_text(json.dumps(arrivals) + "\n")
    over = [figures.get("max_window_ratio", math.inf) for figures in measured.values()]
    achieved = [figures.get("achieved_ratio", float("nan")) for figures in measured.values()]
    finished = all(figures["not_finished"] == 0 for figures in measured.values())
    judged = all(not math.isnan(value) for value in achieved)
    met = (all(value <= 1.0 for value in over) and all(value >= 0.9 for value in achieved) and finished
           if judged else None)
    headline = measured.get("requests") or next(iter(measured.values()))
    unit = "requests" if "requests" in measured else "tokens"
    record = result(
        name="rate_limit",
        title=(f"Benchmark 8: {machines} worker commands × {processes} processes under one OpenAI budget "
               f"({', '.join(f'{chosen[name].limit} {name}' for name in measured)} per "
               f"{'minute' if window == 60 else f'{window} s'})"),
        figures={name: {key: summary([float(value)]) for key, value in figures.items()}
                 for name, figures in measured.items()},
        ratio=headline.get("max_window_ratio"),
        ratio_meaning=f"most {unit} in any {window} s window ÷ the limit",
        target="≤ 1.00 in every window; ≥ 0.9 of the limit over the saturated windows; every job finished",
        met=met,
        notes=(
            "; ".join(f"{name}: most in a {window} s window {figures.get('max_window_ratio', math.nan):.3f}, "
                      f"in a calendar one {figures.get('max_calendar_ratio', math.nan):.3f}, achieved "
                      f"{figures.get('achieved_ratio', math.nan):.3f} of the limit over "
                      f"{figures.get('saturated_windows', 0)} whole windows"
                      for name, figures in measured.items())
            + ". Tokens as the limiter counts them (UTF-8 bytes, an upper bound of OpenAI's count). "
            "One run per variant: --rounds does not apply."
            + ("" if judged else " Not judged: too little work for a whole saturated window.")),
    )
    print_record(record)
    return record


def main() -> None:
    from benchmarks.services import stop_on_sigterm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="ignored: one run per variant")
    parser.add_argument("--machines", type=int, default=None,
                        help=f"worker commands (default {MACHINES_ENV} or {MACHINES})")
    parser.add_argument("--processes", type=int, default=None,
                        help=f"pool processes per worker command (default {PROCESSES_ENV} or {PROCESSES})")
    parser.add_argument("--variants", nargs="+", choices=("requests", "tokens"), default=["requests", "tokens"])
    parser.add_argument("--rpm", type=int, default=120, help="OPENAI_REQUESTS_PER_MINUTE (default 120)")
    parser.add_argument("--tpm", type=int, default=300_000, help="OPENAI_TOKENS_PER_MINUTE (default 300000)")
    parser.add_argument("--minutes", type=float, default=WORK_MINUTES,
                        help=f"work per variant in windows of its limit (default {WORK_MINUTES})")
    parser.add_argument("--window", type=int, default=WINDOW_S,
                        help="the limits' window in seconds, OPENAI_RATE_WINDOW (default 60: per minute)")
    args = parser.parse_args()
    stop_on_sigterm()
    record = run(args.rounds, args.machines, args.processes, args.variants, args.rpm, args.tpm, args.minutes,
                 args.window)
    print(f"saved {save(record)}")


if __name__ == "__main__":
    main()
