"""A chaos run anyone can repeat: Docket from its Procfile, the corpus uploaded over HTTP while
processes are killed and Redis is restarted empty; at the end, proof that no accepted document
was lost.

    .venv/bin/python -m bench.chaos [--rounds 2] [--duration 300] [--seed N] [--database-url URL]

Everything runs on this machine, on loopback, in a temporary folder, and is stopped at the end:

* **Processes as production starts them** (the ``Procfile``): the ``release`` step, then ``web``
  (gunicorn), two ``worker`` commands (each a pool of ``--concurrency`` processes plus the
  ``high``-only one) and the ``scheduler``, each in a session of its own, against a private
  embedded Redis and a SQLite file (or ``--database-url``). ``RECONCILE_INTERVAL`` is 10 s;
  every other setting (heartbeats, grace periods, retries) is the default. Every process gets a
  random ``SECRET_KEY`` fixed for the run (Docket refuses the public default), and after the
  release step ``flask --app wsgi tokens create bench`` makes the API token the clients send
  (``Authorization: Bearer``) with every upload.
* **Load:** every corpus file (``../shared/corpus``) uploaded ``--rounds`` times with
  ``reprocess=true``, one file per request from two clients, in bursts: one as each
  fault (so that every fault meets jobs running and queued) and one after the last. A ``503``
  is counted *refused* (the client was told to try later), not accepted.
* **Faults**, in a random order (``--seed``) at evenly spaced times during the uploads:
  ``--horse-kills`` SIGKILLs of a pool's worker process while it runs a job; one whole worker
  command SIGKILLed with all its processes (stopped first, as a lost machine) and a replacement
  started; one worker told SIGTERM (a rolling restart: its job is handed back) and a replacement
  started, SIGKILLed 30 s later if still there; Redis stopped for ``--redis-down`` seconds and
  started again, empty, on the same port.
* **End:** wait until every accepted document's job is terminal (at most until ``--duration``
  is over), run one reconcile pass, then print and save (``bench/results/chaos-<date>.json``):

  - *accepted* (202), *refused* (503), *rejected* (other 4xx, e.g. the empty file; a ``401``
    means the harness's token was refused, and makes the exit status 1);
  - *finished*, and *failed* by ``error_code`` (the corpus holds password-protected and damaged
    files: those fail by design);
  - **lost**: accepted, but at the end its job row is missing or not terminal. Must be 0; the
    exit status is 1 otherwise;
  - **rows disagreeing with RQ after one reconcile pass**: a live row (queued, scheduled,
    deferred, started) whose RQ job is missing or terminal in RQ. Must be 0;
  - *stranded*: a live row whose RQ job says ``queued`` but is on no queue's list (a worker
    process popped it and died before starting it; RQ puts it back only in its 10-minute
    maintenance). Counted apart: the definition above does not see it;
  - per fault, the time to recovery: from the fault until every job it hit (the job a killed
    process ran; every live row for Redis) is terminal, or waiting in RQ again, or started again
    after the fault on a live worker — and the pools run all their processes again (and, for
    Redis, ``/readyz`` answers 200).
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
BURST_LEAD = 0.0  # seconds a burst of uploads starts before its fault (which waits for work in flight)
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

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "target": self.target, "at_s": self.offset,
                "at_utc": self.at_utc.isoformat() if self.at_utc else None,
                "affected_jobs": len(self.affected), "recovered_after_s": self.recovered_after, "note": self.note,
                "last_waited_for": self.waiting_for}


class Service:
    """Docket's Procfile processes, each started by hand (not under honcho, which stops them all
    when one exits), so single ones can be killed and replaced."""

    def __init__(self, workdir: Path, database_url: str | None, concurrency: int) -> None:
        self.workdir = workdir
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
        fault.affected = [found[pid]]
    else:
        pids = [p.pid for name in service.workers() for p in service.pool_processes(name)]
        pid = rng.choice(pids)
        fault.note = "idle process"
    fault.target = f"pid {pid}"
    _mark(fault)
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
    name, fault.affected = _busy_worker(service, rng)
    fault.target = name
    process = service.processes[name]
    tree = [psutil.Process(process.pid)] + psutil.Process(process.pid).children(recursive=True)
    service.intended_exits.add(name)
    _mark(fault)
    for member in tree:
        member.send_signal(signal.SIGSTOP)
    for member in tree:
        member.send_signal(signal.SIGKILL)
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


def _mark(fault: Fault) -> None:
    fault.at, fault.at_utc = time.monotonic(), utcnow()


# --- load ------------------------------------------------------------------------------------

@dataclass
class Upload:
    name: str
    at: float  # seconds after the start of the run
    status: int | None = None
    code: str | None = None
    job_id: str | None = None


def run_uploads(base_url: str, token: str, uploads: list[Upload], start: float, stop: threading.Event) -> None:
    """``CLIENTS`` threads post the uploads at their planned times (one file per request), each
    with ``Authorization: Bearer <token>``."""
    payloads = {upload.name: (CORPUS / upload.name).read_bytes() for upload in uploads}
    lock = threading.Lock()
    queue = iter(uploads)

    def client() -> None:
        with requests.Session() as session:
            session.headers["Authorization"] = f"Bearer {token}"
            while not stop.is_set():
                with lock:
                    upload = next(queue, None)
                if upload is None:
                    return
                delay = start + upload.at - time.monotonic()
                if delay > 0 and stop.wait(delay):
                    return
                try:
                    response = session.post(f"{base_url}/api/documents", data={"reprocess": "true"},
                                            files={"file": (upload.name, payloads[upload.name])},
                                            timeout=REQUEST_TIMEOUT)
                except requests.RequestException as exc:
                    upload.code = f"client error: {type(exc).__name__}"
                    continue
                upload.status = response.status_code
                body = response.json() if response.headers.get("content-type", "").startswith("application/json") \
                    else {}
                if response.status_code == 202:
                    upload.job_id = body["documents"][0]["job_id"]
                else:
                    upload.code = (body.get("error") or {}).get("code", "no JSON error")

    threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


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
        return [job_id for job_id, job in self.rows(statuses=LIVE).items() if job.kind == "document"]

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
        if fault.kind == "redis_restart":
            try:
                if requests.get(f"{self.service.base_url}/readyz", timeout=5).status_code != 200:
                    fault.waiting_for = "/readyz"
                    return False
            except requests.RequestException:
                fault.waiting_for = "/readyz"
                return False
        if not fault.affected:
            return True
        rows = self.rows(fault.affected)
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

def chaos(rounds: int, duration: float, seed: int, horse_kills: int, redis_down: float, concurrency: int,
          database_url: str | None, workdir: Path) -> dict[str, Any]:
    rng = random.Random(seed)
    files = [row["file"] for row in manifest()]
    plan = [name for _ in range(rounds) for name in rng.sample(files, len(files))]
    kinds = ["horse_kill"] * horse_kills + ["worker_kill", "worker_sigterm", "redis_restart"]
    rng.shuffle(kinds)
    # Faults evenly spaced over 10–55 % of the duration; the uploads come in bursts, one
    # BURST_LEAD s before each fault and one after the last, so that every fault meets work in
    # flight and a backlog (the corpus alone keeps two processes busy for only ≈10 s).
    first, last = 0.1 * duration, 0.55 * duration
    step = (last - first) / max(len(kinds) - 1, 1)
    bursts = [max(0.0, first + index * step - BURST_LEAD) for index in range(len(kinds))] + [last + step / 2]
    uploads = [Upload(name, bursts[index % len(bursts)]) for index, name in enumerate(plan)]
    uploads.sort(key=lambda upload: upload.at)
    faults = [Fault(kind) for kind in kinds]
    service = Service(workdir, database_url, concurrency)
    print(f"chaos: seed {seed}, {len(uploads)} uploads in {len(bursts)} bursts, faults {', '.join(kinds)} "
          f"from {first:.0f} s, every {step:.0f} s; in {workdir}", flush=True)
    stop = threading.Event()
    faulting_done, release = threading.Event(), threading.Event()
    try:
        service.start()
    except BaseException:
        service.stop()
        raise
    observer = Observer(service)
    start = time.monotonic()
    loader = threading.Thread(target=run_uploads, args=(service.base_url, service.token, uploads, start, stop), daemon=True)
    loader.start()

    def inject() -> None:
        try:
            for index, fault in enumerate(faults):
                if stop.wait(max(0.0, start + first + index * step - time.monotonic())):
                    return
                if fault.kind == "horse_kill":
                    kill_horse(service, rng, fault)
                elif fault.kind == "worker_kill":
                    kill_whole_worker(service, rng, fault)
                elif fault.kind == "worker_sigterm":
                    terminate_worker(service, rng, fault)
                else:
                    restart_redis(service, redis_down, observer.live_document_rows, fault)
                fault.offset = round(fault.at - start, 1)
                print(f"  {fault.at - start:6.1f} s  {fault.kind:<15} {fault.target:<26} "
                      f"{len(fault.affected)} job(s) hit", flush=True)
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
            if not loader.is_alive() and faulting_done.is_set() and all(f.recovered_after is not None for f in faults):
                accepted = [u.job_id for u in uploads if u.job_id]
                if all(row.status in TERMINAL for row in observer.rows(accepted).values()):
                    break
            time.sleep(1.0)
        stop.set()
        loader.join(REQUEST_TIMEOUT)
        faulting_done.wait(REQUEST_TIMEOUT)
        elapsed = time.monotonic() - start
        reconcile = observer.reconcile_once()
        disagreeing = observer.disagreeing()
        stranded = observer.stranded()
        accepted = [u.job_id for u in uploads if u.job_id]
        rows = observer.rows(accepted)
        exits = service.unexpected_exits()
    finally:
        stop.set()
        service.stop()
        release.set()
    lost = [job_id for job_id in accepted if job_id not in rows or rows[job_id].status not in TERMINAL]
    failed = Counter(rows[j].error_code or "?" for j in accepted if j in rows and rows[j].status == "failed")
    ended = Counter(rows[j].status for j in accepted if j in rows and rows[j].status in TERMINAL)
    return {
        "name": "chaos",
        "commit": git_commit(),
        "measured_at": utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"),
        "settings": {"rounds": rounds, "duration_s": duration, "seed": seed, "horse_kills": horse_kills,
                     "redis_down_s": redis_down, "worker_concurrency": concurrency,
                     "database": "sqlite" if database_url is None else database_url.split(":", 1)[0],
                     "reconcile_interval_s": 10},
        "elapsed_s": round(elapsed, 1),
        "uploads": len(uploads),
        "accepted": len(accepted),
        "refused_503": sum(u.status == 503 for u in uploads),
        "rejected_4xx": dict(Counter(u.code for u in uploads if u.status and 400 <= u.status < 500)),
        "not_sent": sum(u.status is None for u in uploads),
        "finished": ended.get("finished", 0),
        "failed_by_error_code": dict(sorted(failed.items())),
        "failed_files": dict(sorted({u.name: rows[u.job_id].error_code for u in uploads
                                     if u.job_id in rows and rows[u.job_id].status == "failed"}.items())),
        "stopped_or_canceled": ended.get("stopped", 0) + ended.get("canceled", 0),
        "lost": len(lost),
        "lost_jobs": lost[:50],
        "disagreeing_after_reconcile": len(disagreeing),
        "disagreeing_jobs": dict(list(disagreeing.items())[:50]),
        "stranded_in_rq": len(stranded),
        "stranded_jobs": dict(list(stranded.items())[:50]),
        "final_reconcile": {k: v for k, v in reconcile.items() if k.endswith("_count") or k in ("checked", "rq_cleanup")},
        "unexpected_process_exits": exits,
        "faults": [fault.as_dict() for fault in faults],
    }


def print_table(record: dict[str, Any]) -> None:
    lines = [
        ("uploads (corpus x rounds)", record["uploads"]),
        ("accepted (202)", record["accepted"]),
        ("refused (503)", record["refused_503"]),
        ("rejected (4xx)", ", ".join(f"{k} {v}" for k, v in record["rejected_4xx"].items()) or 0),
        ("finished", record["finished"]),
        ("failed, by error_code", ", ".join(f"{k} {v}" for k, v in record["failed_by_error_code"].items()) or 0),
        ("stopped or canceled", record["stopped_or_canceled"]),
        ("LOST (must be 0)", record["lost"]),
        ("rows disagreeing with RQ after one reconcile (must be 0)", record["disagreeing_after_reconcile"]),
        ("rows queued in RQ but on no queue (stranded)", record["stranded_in_rq"]),
        ("unexpected process exits", ", ".join(f"{k} ({v})" for k, v in record["unexpected_process_exits"].items())
         or 0),
    ]
    print(f"\nChaos run at {record['commit']}, seed {record['settings']['seed']}, "
          f"{record['settings']['rounds']} round(s), {record['elapsed_s']} s")
    width = max(len(label) for label, _ in lines)
    for label, value in lines:
        print(f"  {label:<{width}}  {value}")
    print(f"\n  {'at':>7}  {'fault':<15} {'target':<26} {'jobs hit':>8} {'recovered after':>16}  note")
    for fault in record["faults"]:
        after = "NOT RECOVERED" if fault["recovered_after_s"] is None else f"{fault['recovered_after_s']:.1f} s"
        at = "-" if fault["at_s"] is None else f"{fault['at_s']:.1f} s"
        print(f"  {at:>7}  {fault['kind']:<15} {fault['target']:<26} {fault['affected_jobs']:>8} {after:>16}  "
              f"{fault['note']}")


def save(record: dict[str, Any]) -> Path:
    """``bench/results/chaos-<date>.json``: one file per day, the day's last run (a small folder)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"chaos-{record['measured_at'][:10]}.json"
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="uploads of the whole corpus (default 2)")
    parser.add_argument("--duration", type=float, default=300.0,
                        help="seconds for uploads, faults and convergence (default 300)")
    parser.add_argument("--seed", type=int, default=None, help="random seed: fault order and targets (default: new)")
    parser.add_argument("--horse-kills", type=int, default=3, help="worker processes SIGKILLed mid-job (default 3)")
    parser.add_argument("--redis-down", type=float, default=5.0, help="seconds Redis stays down (default 5)")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="WORKER_CONCURRENCY of each of the two worker commands (default 1)")
    parser.add_argument("--database-url", default=None, help="a database to use instead of a fresh SQLite file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs) after the run")
    args = parser.parse_args()
    stop_on_sigterm()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1_000_000)
    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix="docket-chaos-"))
    record = chaos(args.rounds, args.duration, seed, args.horse_kills, args.redis_down, args.concurrency,
                   args.database_url, workdir)
    print_table(record)
    print(f"\nsaved {save(record)}; logs in {workdir}" if args.keep else f"\nsaved {save(record)}")
    if not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    unauthorized = record["rejected_4xx"].get("authentication_required", 0) + record["rejected_4xx"].get(
        "invalid_token", 0)
    if unauthorized:
        print(f"\n{unauthorized} uploads were refused as unauthenticated (401): the harness's token did not work")
    return 1 if record["lost"] or record["disagreeing_after_reconcile"] or unauthorized else 0


if __name__ == "__main__":
    sys.exit(main())
