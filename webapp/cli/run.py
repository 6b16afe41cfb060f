"""The run command, ``flask --app wsgi dev`` (``bin/run``): the whole service on one machine — Redis
(``REDIS_URL`` if it answers, else an embedded one), the database, and the Procfile's processes
under the supervisor (:mod:`webapp.local.supervisor`).

(``init-db`` lives in :mod:`webapp.core.db`, ``rq worker`` in :mod:`jobs.worker.cli`.)
"""

from __future__ import annotations

import fcntl
import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import click
from flask import current_app
from flask.cli import with_appcontext

from webapp.core.db import connection, create_tables, redact_url
from webapp.core.processes import die_with_parent

KILL_WAIT = 5  # honcho's: seconds between its SIGTERM and its SIGKILL to what is left

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def port_is_free(host: str, port: int) -> bool:
    """Whether a TCP server could listen on ``host:port`` now (nothing else listens there)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As servers do (gunicorn too): a port whose last server just stopped is free again.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


INSTANCE_LOCK_FILE = "run.lock"  # in the instance folder: held (flock) by the run command serving it


def take_instance_lock(instance: Path) -> IO[str]:
    """Take the instance's run lock (an exclusive ``flock`` on ``<instance>/run.lock``, which
    holds the holder's pid), without waiting.

    The kernel releases it when the holder exits, however it exits (SIGKILL included), so a lock
    left by a dead run command never blocks the next one. Keep the returned file open for as long
    as the instance is served; it is not inherited by child processes.

    Returns:
        The open lock file.

    Raises:
        click.ClickException: another process holds the lock (status 1, with its pid).
    """
    instance.mkdir(parents=True, exist_ok=True)
    lock = open(instance / INSTANCE_LOCK_FILE, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise click.ClickException(f"Another run command for this instance ({instance}) is running (pid {holder}). "
                                   "Stop it first.") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


class _Stop(BaseException):
    """Raised in the main thread by the first stop signal (SIGINT, SIGTERM, SIGHUP)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@click.command("dev")
@click.option("--port", default=lambda: int(os.environ.get("PORT", 5000)), show_default="$PORT or 5000", type=int)
@with_appcontext
def dev_command(port: int) -> None:
    """Run the whole service locally: Redis (REDIS_URL if it answers, else an embedded one of
    its own), the database, and the Procfile's web, worker and scheduler processes under honcho
    (:mod:`webapp.local.supervisor`: a worker or scheduler process that exits is restarted after a
    backoff of 1 s doubling to 30 s; the web process exiting stops everything, and the command
    exits with a non-zero status). An embedded Redis that exits is restarted on the same port the
    same way. Refuses to start (status 1, before starting anything) when another run command
    holds the instance's lock (:func:`take_instance_lock`) or the port is taken. Prints a fresh
    admin token and a sign-in link at every start (revoking the previous start's token).

    Ctrl-C, SIGTERM and SIGHUP (a closed terminal) stop everything; so does the command's death
    by SIGKILL (its supervisor and Redis get SIGTERM from the kernel). Its output cannot raise: a
    closed terminal or a broken pipe (``bin/run | tee log``) does not abort the stop.
    """
    from webapp.local.embedded_redis import EmbeddedRedis, redis_answers
    from webapp.local.output import make_output_unbreakable
    from webapp.core.tokens import rotate_local_admin_token

    from webapp.core.config import EMBEDDED_REDIS_URL_FILE, embedded_redis_url

    make_output_unbreakable()
    app = current_app
    env = dict(os.environ)
    host = os.environ.get("HOST", "127.0.0.1")  # a local run is not exposed to the network
    instance = Path(app.instance_path)
    # Refuse before starting anything: a second run command would start a second Redis on the
    # same data folder (one of them dies with "database is locked" and its clean-up would delete
    # the survivor's redis.url), then see gunicorn fail.
    lock = take_instance_lock(instance)  # noqa: F841 — held until this process exits
    if not port_is_free(host, port):
        raise click.ClickException(f"Port {port} on {host} is already in use (another run command, or another "
                                   "server): stop it, or choose another port with --port.")
    running = embedded_redis_url(instance)
    if running and redis_answers(running):  # a server the lock does not cover (started another way)
        raise click.ClickException(f"Another run command for this instance ({instance}) is running: its Redis "
                                   f"answers at {running}. Stop it first.")

    stop_signal: list[int] = []

    def stop_on_signal(signum, frame):  # Ctrl-C, kill, a closed terminal: stop everything, once
        if not stop_signal:
            stop_signal.append(signum)
            raise _Stop(signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop_on_signal)

    embedded = None
    supervisor = None
    status = 0
    try:
        explicit = os.environ.get("REDIS_URL")
        if explicit and redis_answers(explicit):
            redis_url = explicit
            click.echo(f"Using the Redis at {redact_url(explicit)} (REDIS_URL).")
        else:
            # Unset REDIS_URL: a Redis of our own, never the db 0 of whatever answers on localhost.
            embedded = EmbeddedRedis(instance / "redis", persist=True)
            redis_url = embedded.start()
            why = f"No Redis answered at {redact_url(explicit)}" if explicit else "REDIS_URL is not set"
            click.echo(f"{why}; started an embedded one at {redis_url} (data in {embedded.data_dir}). Other "
                       f"commands for this instance find it through {instance / EMBEDDED_REDIS_URL_FILE}.")
            (instance / EMBEDDED_REDIS_URL_FILE).write_text(redis_url + "\n")
        env.update(
            REDIS_URL=redis_url,
            DATABASE_URL=app.config["DATABASE_URL"],
            STORAGE_PATH=app.config["STORAGE_PATH"],
            DOCKET_INSTANCE_PATH=app.instance_path,
            PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
            PYTHONUNBUFFERED="1",
            HOST=host,
        )
        # honcho SIGKILLs what has not exited 5 s after its SIGTERM: a stopping worker hands its
        # job back before that (a platform waits ≈30 s; there the default grace is 10 s).
        env.setdefault("SHUTDOWN_GRACE", "3")
        # A local run serves plain http://127.0.0.1: a Secure cookie would never come back.
        env.setdefault("SESSION_COOKIE_SECURE", "false")
        # A person reads this terminal: the same log fields as text (a platform's log service gets JSON).
        env.setdefault("LOG_FORMAT", "text")
        env.pop("FLASK_RUN_FROM_CLI", None)

        create_tables()  # the scheduler process syncs the schedules itself when it starts
        with connection():
            token = rotate_local_admin_token()
        click.echo(f"Database ready at {redact_url(app.config['DATABASE_URL'])}. Serving on http://127.0.0.1:{port}/")
        click.echo(f"Admin token for this run (the previous run's is revoked): {token}\n"
                   f"Sign in: http://127.0.0.1:{port}/signin#token={token}\n"
                   f"API: curl -H 'Authorization: Bearer {token}' http://127.0.0.1:{port}/api/documents\n"
                   "Tokens that outlive restarts: flask --app wsgi tokens create NAME [--admin]")
        supervisor = subprocess.Popen(_supervisor_command(port), env=env,
                                      preexec_fn=functools.partial(_supervisor_preexec, os.getpid()))
        keeper = _RedisKeeper(embedded) if embedded is not None else None
        while True:
            try:
                status = supervisor.wait(timeout=0.25)
                break
            except subprocess.TimeoutExpired:
                if keeper is not None:
                    keeper.check()
    except _Stop:
        if supervisor is not None and supervisor.poll() is None:
            supervisor.send_signal(signal.SIGTERM)  # it stops web, worker and scheduler, then exits
            try:
                supervisor.wait(KILL_WAIT + 15)
            except subprocess.TimeoutExpired:  # its runners stop their groups when it dies
                supervisor.kill()
                supervisor.wait()
    finally:
        if not stop_signal:
            stop_signal.append(0)  # a stop signal from now on must not interrupt the clean-up
        if embedded is not None:
            (instance / EMBEDDED_REDIS_URL_FILE).unlink(missing_ok=True)
            embedded.stop()
            click.echo("Stopped the embedded Redis.")
    if status:  # the web process stopped, so everything did: say so in the exit status too
        click.echo(f"The processes stopped on their own (honcho's status {status}).", err=True)
        sys.exit(status)


class _RedisKeeper:
    """Restarts the embedded Redis when it exits while the run command runs (a SIGKILL, the
    out-of-memory killer): on the same port, so the processes' ``REDIS_URL`` stays right, with
    its data from the append-only file; after the supervisor's backoff (1 s doubling to 30 s,
    back to 1 s once it has run 30 s), logging each exit and restart.
    """

    def __init__(self, embedded) -> None:
        from webapp.local.supervisor import Backoff

        self.embedded = embedded
        self.backoff = Backoff()
        self.started_at = time.monotonic()
        self.failures = 0
        self.restart_at: float | None = None

    def check(self) -> None:
        """Notice an exit (and reap the process), or restart the server once its delay is over."""
        from webapp.local.supervisor import describe_exit

        now = time.monotonic()
        if self.restart_at is None:
            returncode = self.embedded.returncode()
            if returncode is None:
                return
            uptime = now - self.started_at
            self.failures = 1 if uptime >= self.backoff.stable_after else self.failures + 1
            delay = self.backoff.delay(self.failures)
            self.restart_at = now + delay
            click.echo(f"The embedded Redis exited unexpectedly ({describe_exit(returncode)}) after {uptime:.1f} s; "
                       f"restarting it on port {self.embedded.port} in {delay:g} s", err=True)
        elif now >= self.restart_at:
            self.restart_at = None
            self.started_at = now
            try:
                url = self.embedded.start()
            except RuntimeError as exc:  # it counts as one more quick crash
                self.failures += 1
                self.restart_at = now + self.backoff.delay(self.failures)
                click.echo(f"The embedded Redis did not start again ({exc}); trying again in "
                           f"{self.backoff.delay(self.failures):g} s", err=True)
                return
            click.echo(f"Restarted the embedded Redis at {url} (data in {self.embedded.data_dir}).", err=True)


def _supervisor_preexec(run_command_pid: int) -> None:
    """In the supervisor's process before ``exec``: it dies with the run command (SIGTERM from the
    kernel, even if the run command is SIGKILLed; it then stops the Procfile's processes as on
    Ctrl-C), and a terminal's Ctrl-C is ignored until its loop handles it — the run command
    forwards the stop as SIGTERM, whose default action ends a supervisor still importing (nothing
    started yet) without the traceback a KeyboardInterrupt there printed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(signal.SIGTERM, run_command_pid)


def _supervisor_command(port: int) -> list[str]:
    """honcho ``start`` for the Procfile's web, worker and scheduler, restarting worker and scheduler."""
    return [sys.executable, "-m", "webapp.local.supervisor", "--procfile", str(PROJECT_ROOT / "Procfile"),
            "--app-root", str(PROJECT_ROOT), "--port", str(port), "--restart", "worker,scheduler",
            "web", "worker", "scheduler"]
