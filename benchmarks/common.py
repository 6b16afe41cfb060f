"""Shared pieces of Docket's benchmarks: the corpus, private servers, rounds, results on disk.

Every benchmark compares Docket against a baseline measured in the same run on the same data
(these machines are shared and noisy, so only same-run ratios mean something), alternates the
two sides for several rounds, and reports the median and the range of each figure.

A benchmark module exposes ``run(rounds: int) -> dict`` returning a result made with
:func:`result`; ``benchmarks/run.py`` runs them all, prints one table and writes JSON.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
CORPUS = ROOT.parent / "shared" / "corpus"
PEER = ROOT.parent / "shared" / "peers" / "celery-seed000"
RESULTS_DIR = ROOT / "benchmarks" / "results"
PYTHON = sys.executable

# create_app refuses to start with the public default SECRET_KEY outside debug and tests: every
# Docket process a benchmark starts (web, workers, CLI) and every in-process app gets this one,
# fixed for the run, random per run.
BENCH_SECRET_KEY = secrets.token_urlsafe(48)
BENCH_OWNER = "bench"  # owner of the benchmarks' uploads and of their API token

# The kinds of corpus file the service should finish (MANIFEST.tsv's `kind` column): 29 files,
# 359 pages when a file without pages (.docx, .html, .txt, .md) counts as one.
FINISHING_KINDS = ("text", "scanned", "encrypted-empty-pw", "other-format")


@dataclass(frozen=True)
class CorpusFile:
    """One corpus document: its path, manifest kind and page count (1 for formats without pages)."""

    path: Path
    kind: str
    pages: int

    @property
    def name(self) -> str:
        return self.path.name


def manifest() -> list[dict[str, str]]:
    """Rows of ``../shared/corpus/MANIFEST.tsv``."""
    with open(CORPUS / "MANIFEST.tsv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def finishing_files() -> list[CorpusFile]:
    """The corpus files the service should finish (text, scans, empty-password PDFs, other formats)."""
    return [
        CorpusFile(CORPUS / row["file"], row["kind"], max(int(row["pages"]), 1))
        for row in manifest()
        if row["kind"] in FINISHING_KINDS
    ]


def largest_file() -> CorpusFile:
    """The largest finishing corpus document by bytes."""
    return max(finishing_files(), key=lambda f: f.path.stat().st_size)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` (0–1) percentile of ``values`` by linear interpolation; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(values: Sequence[float]) -> dict[str, float]:
    """``{"median", "min", "max", "rounds"}`` of one figure over rounds."""
    return {
        "median": statistics.median(values) if values else float("nan"),
        "min": min(values) if values else float("nan"),
        "max": max(values) if values else float("nan"),
        "rounds": len(values),
    }


def alternate(rounds: int, sides: dict[str, Callable[[], dict[str, float]]]) -> dict[str, list[dict[str, float]]]:
    """Run each side once per round, alternating their order every round (A B, B A, A B, …).

    Returns ``{side: [figures of round 1, round 2, …]}``.
    """
    names = list(sides)
    measured: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for index in range(rounds):
        order = names if index % 2 == 0 else list(reversed(names))
        for name in order:
            figures = sides[name]()
            measured[name].append(figures)
            print(f"    round {index + 1} {name}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in figures.items()),
                  flush=True)
    return measured


def collect(rounds: list[dict[str, float]], key: str) -> dict[str, float]:
    """The :func:`summary` of figure ``key`` over a side's rounds."""
    return summary([figures[key] for figures in rounds if key in figures])


def result(
    name: str,
    title: str,
    figures: dict[str, Any],
    ratio: float | None,
    ratio_meaning: str,
    target: str,
    met: bool | None,
    notes: str = "",
) -> dict[str, Any]:
    """A benchmark's result record (printed in the table and saved as JSON)."""
    return {
        "name": name,
        "title": title,
        "figures": figures,
        "ratio": ratio,
        "ratio_meaning": ratio_meaning,
        "target": target,
        "met": met,
        "notes": notes,
    }


def command_line(run: Callable[[int], dict[str, Any]], doc: str) -> None:
    """A benchmark module's ``__main__``: ``--rounds N`` (default 3), run it, save its record."""
    import argparse

    from benchmarks.services import stop_on_sigterm

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side, sides alternating (default 3)")
    args = parser.parse_args()
    stop_on_sigterm()
    print(f"saved {save(run(args.rounds))}")


def save(record: dict[str, Any]) -> Path:
    """Write ``record`` to ``benchmarks/results/<name>.json`` with the commit it measured."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    record = {**record, "commit": git_commit(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path = RESULTS_DIR / f"{record['name']}.json"
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return path


def git_commit() -> str:
    """The checked-out commit (with ``+dirty`` when the work tree has changes), or ``unknown``."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@contextmanager
def private_redis(data_dir: Path) -> Iterator[str]:
    """A private, non-persistent redis-server on a free port for one benchmark; yields its URL."""
    from webapp.local.embedded_redis import EmbeddedRedis

    server = EmbeddedRedis(data_dir, persist=False)
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


WORKER_COMMANDS = {
    "rq-worker": ["-m", "rq.cli", "worker", "--quiet", "default"],
    "rq-simpleworker": ["-m", "rq.cli", "worker", "--quiet", "-w", "rq.worker.SimpleWorker", "default"],
    "docket": ["-m", "flask", "--app", "wsgi", "rq", "worker", "--logging-level", "WARNING", "high", "default"],
}


@contextmanager
def worker_process(setup: str, redis_url: str, workdir: Path, **env_extra: str) -> Iterator[tuple[int, int]]:
    """Start a worker command on a private Redis and a SQLite file under ``workdir``.

    Args:
        setup: ``rq-worker`` (RQ's forking ``Worker``), ``rq-simpleworker`` or ``docket`` (the
            Procfile's ``worker`` command).
        redis_url: the private Redis.
        workdir: folder for the database, uploads and the log ``<setup>.log``.
        env_extra: more environment variables (e.g. ``WORKER_CONCURRENCY``, ``OPENAI_API_KEY``;
            the caller's own ``OPENAI_*`` variables are not passed on).

    Yields:
        ``(pid, worker processes)`` once every worker process has registered in Redis.
    """
    from redis import Redis
    from rq import Worker

    from webapp.core.config import load_config

    env = {key: value for key, value in os.environ.items() if not key.startswith("OPENAI_")}
    env.update(REDIS_URL=redis_url, DATABASE_URL=f"sqlite:///{workdir / 'docket.sqlite3'}",
               STORAGE_PATH=str(workdir / "uploads"), DOCKET_INSTANCE_PATH=str(workdir / "instance"),
               SECRET_KEY=BENCH_SECRET_KEY, PYTHONUNBUFFERED="1", **env_extra)
    command = [PYTHON, *WORKER_COMMANDS[setup]]
    if setup.startswith("rq-"):
        command += ["--url", redis_url]
    expected = load_config(env["DOCKET_INSTANCE_PATH"], env)["WORKER_CONCURRENCY"] if setup == "docket" else 1
    connection = Redis.from_url(redis_url)
    with open(workdir / f"{setup}.log", "ab") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: Worker.count(connection=connection) >= expected, 60, what=f"{setup} to start")
        yield process.pid, expected
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        wait_until(lambda: Worker.count(connection=connection) == 0, 30, what=f"{setup} to unregister")


def worker_app(workdir: Path, redis_url: str, **settings: Any):
    """The Flask app a benchmark uses beside :func:`worker_process` on the same ``workdir`` (the
    same SQLite file and upload folder, the private Redis at ``redis_url``, no OpenAI key unless
    ``settings`` give one), with its tables created. ``settings`` add to or override the config."""
    from webapp import create_app
    from webapp.core.db import create_tables

    app = create_app({"DATABASE_URL": f"sqlite:///{workdir / 'docket.sqlite3'}", "REDIS_URL": redis_url,
                      "STORAGE_PATH": str(workdir / "uploads"), "OPENAI_API_KEY": None,
                      "SECRET_KEY": BENCH_SECRET_KEY, **settings})
    with app.app_context():
        create_tables()
    return app


def process_upload(app, document: Path, interval: float = 0.05, timeout: float = 600) -> Any:
    """Upload ``document`` as owner ``bench`` (``reprocess``: never taken as a duplicate) through
    ``accept_uploads``, as the API does, and wait until its job ends; a worker must be running.
    Needs an app context and a database connection of ``app``.

    Returns:
        The job's row (``webapp.core.models.Job``) in its terminal state.

    Raises:
        TimeoutError: the job had not ended after ``timeout`` seconds (polled every ``interval``).
    """
    from webapp.core.documents import accept_uploads, read_path
    from webapp.core.models import TERMINAL_STATUSES, Job

    uploaded = accept_uploads([read_path(document)], reprocess=True, owner="bench").files[0].document
    return wait_until(lambda: (row := Job.get_by_id(uploaded.job_id)).status in TERMINAL_STATUSES and row,
                      timeout, interval=interval, what=f"{document.name} to be processed")


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "a condition") -> Any:
    """Poll ``predicate`` until it returns something true; raise ``TimeoutError`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def cores() -> int:
    """CPU cores this process may use (what Docket's worker pool sizes itself by)."""
    from webapp.core.config import default_worker_concurrency

    return default_worker_concurrency()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
