"""Real services for the service-level benchmarks, started as production starts them.

:func:`docket_service` runs Docket's ``Procfile`` (the ``release`` step, then ``web`` and
``worker`` under honcho) against a private redis-server and a fresh SQLite file, with the run's
``SECRET_KEY`` and an API token made by ``flask --app wsgi tokens create bench`` (every ``/api``
request needs ``Authorization: Bearer <token>``); :func:`celery_peer` runs the Celery peer
(``../shared/peers/celery-seed000``) from its own Procfile the same way, without a token. Both
yield a :class:`Service` (base URL and token) once the service answers and its worker is
listening, and on leaving the ``with`` block (normally, on an exception or on Ctrl-C) stop every
process they started: honcho gets SIGINT and stops its processes; any process group still alive
after that is killed. Honcho starts each Procfile process in a session of its own, so the groups
to check are read from honcho's ``web.1 started (pid=N)`` lines.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import venv
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import psutil
import requests
from honcho.environ import parse_procfile
from redis import Redis
from rq import Worker

from benchmarks.common import BENCH_OWNER, BENCH_SECRET_KEY, PEER, ROOT, private_redis, wait_until
from webapp.local.embedded_redis import free_port

VENV_BIN = ROOT / ".venv" / "bin"
PROCFILE = ROOT / "Procfile"
PEER_VENV = ROOT / "benchmarks" / ".peer-venv"
HONCHO_REQUIREMENT = "honcho==2.0.0"  # the version Docket's requirements.txt pins

START_TIMEOUT = 120.0  # seconds for a service to answer and its worker to listen (a noisy machine)
STOP_TIMEOUT = 20.0  # seconds honcho gets to stop its processes before they are killed
LOG_TAIL_LINES = 40


@dataclass(frozen=True)
class Service:
    """A running service: its base URL and, for Docket, the API token its requests must send."""

    url: str
    token: str | None = None  # None: the service has no authentication (the Celery peer)
    #: tokens of the other owners asked for (``docket_service(owners=…)``): owner → token
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        """``{"Authorization": "Bearer <token>"}``, or ``{}`` for a service without a token."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def session(self) -> requests.Session:
        """A new ``requests.Session`` that sends :attr:`headers` with every request."""
        session = requests.Session()
        session.headers.update(self.headers)
        return session


def create_api_token(env: dict[str, str], log_path: Path, owner: str = BENCH_OWNER) -> str:
    """A new API token for ``owner``, made as an operator makes one: ``flask --app wsgi tokens
    create OWNER`` from the project root with ``env`` (after the release step made the tables).
    The CLI's stderr goes to ``log_path``.

    Raises:
        RuntimeError: the command failed or printed no token.
    """
    with open(log_path, "ab") as log:
        created = subprocess.run([str(VENV_BIN / "flask"), "--app", "wsgi", "tokens", "create", owner,
                                  "--name", "benchmark"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                 stderr=log, text=True)
    token = created.stdout.splitlines()[0].strip() if created.stdout.strip() else ""
    if created.returncode != 0 or not token:
        raise RuntimeError(f"'flask --app wsgi tokens create {owner}' failed ({created.returncode}){log_tail(log_path)}")
    return token


def stop_on_sigterm() -> None:
    """Turn SIGTERM into ``SystemExit`` so the ``with`` blocks below stop their services on ``kill``."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


@contextmanager
def docket_service(
    workdir: Path,
    processes: Sequence[str] = ("web", "worker"),
    env_extra: dict[str, str] | None = None,
    owners: Sequence[str] = (),
) -> Iterator[Service]:
    """Docket from its Procfile with a private Redis and a fresh database under ``workdir``.

    Runs the Procfile's release step (``flask --app wsgi init-db``) in a shell as a platform does,
    creates an API token for owner ``bench`` (:func:`create_api_token`), then ``honcho start <processes>`` from the project root, and waits until ``GET /readyz``
    answers 200 and, when ``worker`` is one of ``processes``, an RQ worker has registered in Redis.
    Honcho's output (and the release step's) goes to ``workdir/service.log``.

    Args:
        workdir: an empty or new folder for Redis, the SQLite file, uploads and the log.
        processes: Procfile process types to run; ``web`` is required (it serves the URL).
        env_extra: environment variables to add or override (e.g. ``WEB_CONCURRENCY``).
        owners: more owners to make a token for (as for ``bench``), besides ``bench``: the service's
            ``tokens`` (the fairness benchmark's two owners).

    Every process gets the run's ``SECRET_KEY`` (:data:`benchmarks.common.BENCH_SECRET_KEY`):
    Docket refuses to start with the public default.

    Yields:
        The :class:`Service`: base URL ``http://127.0.0.1:<port>`` and the API token.

    Raises:
        RuntimeError: the release step or the token creation failed, or honcho exited before the service was ready.
        TimeoutError: the service was not ready within ``START_TIMEOUT`` seconds.
    """
    if "web" not in processes:
        raise ValueError("docket_service needs the 'web' process: it yields the web process's URL")
    # honcho gives PORT to the first process type named and PORT + 100 to the next: web goes first.
    ordered = sorted(processes, key=lambda name: name != "web")
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "service.log"
    with private_redis(workdir / "redis") as redis_url:
        port = free_port()
        env = _base_env(VENV_BIN, port)
        env.update(
            REDIS_URL=redis_url,
            DATABASE_URL=f"sqlite:///{workdir / 'docket.sqlite3'}",
            STORAGE_PATH=str(workdir / "uploads"),
            DOCKET_INSTANCE_PATH=str(workdir / "instance"),
            SECRET_KEY=BENCH_SECRET_KEY,
            **(env_extra or {}),
        )
        release = parse_procfile(PROCFILE.read_text()).processes["release"]
        with open(log_path, "ab") as log:
            finished = subprocess.run(release, shell=True, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        if finished.returncode != 0:
            raise RuntimeError(f"the Procfile's release step ({release}) failed{log_tail(log_path)}")
        token = create_api_token(env, log_path)
        tokens = {owner: create_api_token(env, log_path, owner) for owner in owners}
        command = [str(VENV_BIN / "python"), "-m", "honcho", "--no-colour", "--procfile", str(PROCFILE),
                   "--app-root", str(ROOT), "start", *ordered]
        base_url = f"http://127.0.0.1:{port}"
        with _honcho(command, ROOT, env, log_path) as honcho:
            redis = Redis.from_url(redis_url)
            try:
                def rq_worker_listening() -> bool:
                    return "worker" not in ordered or Worker.count(connection=redis) > 0

                _wait_ready(honcho, f"{base_url}/readyz", rq_worker_listening, log_path)
            finally:
                redis.close()
            yield Service(base_url, token, tokens)


@contextmanager
def celery_peer(workdir: Path) -> Iterator[Service]:
    """The Celery peer from its Procfile (``web`` and ``worker``) with a private Redis.

    Copies ``../shared/peers/celery-seed000`` to ``workdir/peer`` (a fresh ``peer.db`` and upload
    folder there), runs ``honcho start web worker`` in it with the cached virtualenv of
    :func:`ensure_peer_venv`, and waits until ``GET /healthz`` answers 200 and the Celery worker
    consumes from the broker. Honcho's output goes to ``workdir/service.log``.

    Yields:
        The :class:`Service`: base URL ``http://127.0.0.1:<port>``, no token (the peer has no
        authentication).

    Raises:
        RuntimeError: honcho exited before the service was ready.
        TimeoutError: the service was not ready within ``START_TIMEOUT`` seconds.
    """
    python = ensure_peer_venv()
    app_dir = workdir / "peer"
    shutil.copytree(PEER, app_dir)
    _make_writable(app_dir)  # the shared copy is read-only; the peer writes peer.db and uploads here
    log_path = workdir / "service.log"
    with private_redis(workdir / "redis") as redis_url:
        port = free_port()
        env = _base_env(python.parent, port)
        env.update(
            REDIS_URL=redis_url,
            DATABASE_URL=f"sqlite:///{app_dir / 'peer.db'}",
            UPLOAD_DIR=str(app_dir / "uploads"),
        )
        command = [str(python), "-m", "honcho", "--no-colour", "start", "web", "worker"]
        with _honcho(command, app_dir, env, log_path) as honcho:
            redis = Redis.from_url(redis_url)
            try:
                # A Celery worker binds its remote-control queue (kombu's "celery.pidbox" exchange)
                # once its consumer runs; nothing else creates that binding.
                _wait_ready(honcho, f"http://127.0.0.1:{port}/healthz",
                            lambda: bool(redis.exists("_kombu.binding.celery.pidbox")), log_path)
            finally:
                redis.close()
            yield Service(f"http://127.0.0.1:{port}")


@contextmanager
def procfile_web_serving(workdir: Path, wsgi_app: str, env_extra: dict[str, str] | None = None) -> Iterator[str]:
    """Docket's Procfile ``web`` command serving another WSGI app: a baseline server.

    The same gunicorn, options and honcho as :func:`docket_service`'s web process, with the
    Procfile's ``wsgi:app`` replaced by ``wsgi_app`` (``"package.module:callable"``, importable
    from the project root); no Redis, no database. ``env_extra`` adds or overrides environment
    variables (e.g. ``WEB_CONCURRENCY``). Honcho's output goes to ``workdir/service.log``.

    Yields:
        The base URL once ``GET /`` answers 200.
    """
    web = parse_procfile(PROCFILE.read_text()).processes["web"]
    if "wsgi:app" not in web:
        raise RuntimeError(f"the Procfile's web command no longer serves wsgi:app: {web}")
    workdir.mkdir(parents=True, exist_ok=True)
    procfile = workdir / "Procfile"
    procfile.write_text(f"web: {web.replace('wsgi:app', wsgi_app, 1)}\n")
    log_path = workdir / "service.log"
    port = free_port()
    command = [str(VENV_BIN / "python"), "-m", "honcho", "--no-colour", "--procfile", str(procfile),
               "--app-root", str(ROOT), "start", "web"]
    env = {**_base_env(VENV_BIN, port), **(env_extra or {})}
    with _honcho(command, ROOT, env, log_path) as honcho:
        _wait_ready(honcho, f"http://127.0.0.1:{port}/", lambda: True, log_path)
        yield f"http://127.0.0.1:{port}"


def ensure_peer_venv() -> Path:
    """The Celery peer's virtualenv (``benchmarks/.peer-venv``), created on first use; its python.

    It holds the peer's ``requirements.txt`` and honcho. A marker file records what was
    installed, so a changed requirements file rebuilds the virtualenv.
    """
    python = PEER_VENV / "bin" / "python"
    marker = PEER_VENV / "installed-requirements.txt"
    wanted = (PEER / "requirements.txt").read_text() + HONCHO_REQUIREMENT + "\n"
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    print(f"creating the Celery peer's virtualenv in {PEER_VENV} (once) …", flush=True)
    venv.EnvBuilder(clear=True, with_pip=True).create(PEER_VENV)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "-r", str(PEER / "requirements.txt"), HONCHO_REQUIREMENT], check=True)
    marker.write_text(wanted)
    return python


def honcho_groups(log_path: Path) -> dict[str, int]:
    """``{"web.1": pgid, ...}`` from honcho's ``web.1 started (pid=N)`` lines in ``log_path``.

    Honcho starts each Procfile process in a session of its own, so N is its process group id.
    """
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    return {name: int(pid) for name, pid in re.findall(r"(\S+\.\d+) started \(pid=(\d+)\)", text)}


def web_worker_pids(workdir: Path) -> list[int]:
    """PIDs of the gunicorn worker processes of the web process started in ``workdir`` (by
    :func:`docket_service` or :func:`procfile_web_serving`)."""
    return gunicorn_worker_pids(honcho_groups(workdir / "service.log")["web.1"])


def gunicorn_worker_pids(pgid: int) -> list[int]:
    """PIDs of the gunicorn workers in process group ``pgid`` (the master's children, not the master)."""
    gunicorns = {
        process.pid: process.info["ppid"]
        for process in _group_members(pgid)
        if any(arg.endswith("/gunicorn") for arg in process.info["cmdline"] or ())
    }
    return sorted(pid for pid, parent in gunicorns.items() if parent in gunicorns)


def log_tail(log_path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a service log, to append to an error message."""
    try:
        text = log_path.read_text(errors="replace")
    except FileNotFoundError:
        return f"\n(no log at {log_path})"
    return f"\n--- {log_path} (tail) ---\n" + "\n".join(text.splitlines()[-lines:])


def _base_env(bin_dir: Path, port: int) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLASK_")}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        PORT=str(port),
        HOST="127.0.0.1",
        PYTHONUNBUFFERED="1",  # honcho's "started (pid=N)" lines reach the log at once
    )
    return env


@contextmanager
def _honcho(command: list[str], cwd: Path, env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen]:
    """Run honcho in a session of its own, logging to ``log_path``; stop everything on exit."""
    with open(log_path, "ab") as log:
        honcho = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        yield honcho
    finally:
        _stop(honcho, log_path)


def _wait_ready(honcho: subprocess.Popen, probe_url: str, worker_listening: Callable[[], bool],
                log_path: Path) -> None:
    """Wait until ``probe_url`` answers 200 and ``worker_listening()`` is true."""
    session = requests.Session()

    def ready() -> bool:
        if honcho.poll() is not None:
            raise RuntimeError(f"honcho exited with status {honcho.returncode} before the service was ready"
                               f"{log_tail(log_path)}")
        try:
            answered = session.get(probe_url, timeout=5).status_code == 200
        except requests.RequestException:
            return False
        return answered and worker_listening()

    try:
        wait_until(ready, START_TIMEOUT, interval=0.1, what=f"{probe_url} and a listening worker")
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}{log_tail(log_path)}") from None
    finally:
        session.close()


def _stop(honcho: subprocess.Popen, log_path: Path) -> None:
    """SIGINT to honcho (it stops its processes), then SIGKILL to any group still alive.

    Raises:
        RuntimeError: processes were still alive after SIGKILL.
    """
    groups = [honcho.pid, *honcho_groups(log_path).values()]
    if honcho.poll() is None:
        honcho.send_signal(signal.SIGINT)
        try:
            honcho.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    honcho.wait()
    try:
        wait_until(lambda: not any(_group_members(pgid) for pgid in groups), STOP_TIMEOUT,
                   what="the service's processes to end")
    except TimeoutError:
        left = [f"{p.pid} {' '.join(p.info['cmdline'] or [])}" for pgid in groups for p in _group_members(pgid)]
        raise RuntimeError(f"processes left running after SIGKILL: {left}") from None


def _group_members(pgid: int) -> list[psutil.Process]:
    """Live (not zombie) processes in process group ``pgid``, with ``ppid`` and ``cmdline`` info."""
    members = []
    for process in psutil.process_iter(["ppid", "cmdline", "status"]):
        try:
            if process.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(process.pid) == pgid:
                members.append(process)
        except ProcessLookupError:
            continue
    return members


def _make_writable(folder: Path) -> None:
    """Give the owner write permission on ``folder`` and everything in it."""
    for path in [folder, *folder.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)
