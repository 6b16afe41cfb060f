"""The run command, ``flask --app wsgi dev`` (``bin/run``): the whole service on one machine — Redis
(``REDIS_URL`` if it answers, else an embedded one), the database, and the Procfile's processes
under the supervisor (:mod:`webapp.local.supervisor`).

(``init-db`` lives in :mod:`webapp.core.db`, ``rq worker`` in :mod:`jobs.worker.cli`.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext

from webapp.core.db import connection, create_tables, redact_url

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


@click.command("dev")
@click.option("--port", default=lambda: int(os.environ.get("PORT", 5000)), show_default="$PORT or 5000", type=int)
@with_appcontext
def dev_command(port: int) -> None:
    """Run the whole service locally: Redis (REDIS_URL if it answers, else an embedded one of
    its own), the database, and the Procfile's web, worker and scheduler processes under honcho
    (:mod:`webapp.local.supervisor`: a worker or scheduler process that exits is restarted after a
    backoff of 1 s doubling to 30 s; the web process exiting stops everything, and the command
    exits with a non-zero status). Refuses to start (status 1) when the port is taken or another
    run command serves this instance. Prints a fresh admin token and a sign-in link at every start
    (revoking the previous start's token). Ctrl-C stops everything.
    """
    from webapp.local.embedded_redis import EmbeddedRedis, redis_answers
    from webapp.core.tokens import rotate_local_admin_token

    from webapp.core.config import EMBEDDED_REDIS_URL_FILE, embedded_redis_url

    app = current_app
    env = dict(os.environ)
    host = os.environ.get("HOST", "127.0.0.1")  # a local run is not exposed to the network
    instance = Path(app.instance_path)
    # Refuse before starting anything: a second run command would start a second Redis on the
    # same data folder and then see gunicorn fail.
    if not port_is_free(host, port):
        raise click.ClickException(f"Port {port} on {host} is already in use (another run command, or another "
                                   "server): stop it, or choose another port with --port.")
    running = embedded_redis_url(instance)
    if running and redis_answers(running):
        raise click.ClickException(f"Another run command for this instance ({instance}) is running: its Redis "
                                   f"answers at {running}. Stop it first.")
    embedded = None
    explicit = os.environ.get("REDIS_URL")
    if explicit and redis_answers(explicit):
        redis_url = explicit
        click.echo(f"Using the Redis at {redact_url(explicit)} (REDIS_URL).")
    else:
        # Unset REDIS_URL: a Redis of our own, never the db 0 of whatever answers on localhost.
        embedded = EmbeddedRedis(instance / "redis", persist=True)
        redis_url = embedded.start()
        why = f"No Redis answered at {redact_url(explicit)}" if explicit else "REDIS_URL is not set"
        click.echo(f"{why}; started an embedded one at {redis_url} (data in {embedded.data_dir}). Other commands "
                   f"for this instance find it through {instance / EMBEDDED_REDIS_URL_FILE}.")
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

    def stop_on_signal(signum, frame):  # kill, a closed terminal: shut down like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop_on_signal)
    signal.signal(signal.SIGHUP, stop_on_signal)
    honcho = None
    status = 0
    try:
        create_tables()  # the scheduler process syncs the schedules itself when it starts
        with connection():
            token = rotate_local_admin_token()
        click.echo(f"Database ready at {redact_url(app.config['DATABASE_URL'])}. Serving on http://127.0.0.1:{port}/")
        click.echo(f"Admin token for this run (the previous run's is revoked): {token}\n"
                   f"Sign in: http://127.0.0.1:{port}/signin#token={token}\n"
                   f"API: curl -H 'Authorization: Bearer {token}' http://127.0.0.1:{port}/api/documents\n"
                   "Tokens that outlive restarts: flask --app wsgi tokens create NAME [--admin]")
        honcho = subprocess.Popen(_supervisor_command(port), env=env)
        status = honcho.wait()
    except KeyboardInterrupt:
        if honcho is not None and honcho.poll() is None:
            honcho.send_signal(signal.SIGINT)  # honcho stops web, worker and scheduler, then exits
            honcho.wait()
    finally:
        if embedded is not None:
            (instance / EMBEDDED_REDIS_URL_FILE).unlink(missing_ok=True)
            embedded.stop()
            click.echo("Stopped the embedded Redis.")
    if status:  # the web process stopped, so everything did: say so in the exit status too
        click.echo(f"The processes stopped on their own (honcho's status {status}).", err=True)
        sys.exit(status)


def _supervisor_command(port: int) -> list[str]:
    """honcho ``start`` for the Procfile's web, worker and scheduler, restarting worker and scheduler."""
    return [sys.executable, "-m", "webapp.local.supervisor", "--procfile", str(PROJECT_ROOT / "Procfile"),
            "--app-root", str(PROJECT_ROOT), "--port", str(port), "--restart", "worker,scheduler",
            "web", "worker", "scheduler"]
