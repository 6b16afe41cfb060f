"""The Peewee database: one FlaskDB wrapper, bound to the app in ``create_app``.

The request path connects per request (FlaskDB's ``before_request``/``teardown_request``);
job code and CLI commands use :func:`connection`. Nothing connects at import.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import click
from flask import Flask, current_app, request
from peewee import Database, SqliteDatabase
from playhouse.db_url import connect as connect_url
from playhouse.flask_utils import FlaskDB


class DocketFlaskDB(FlaskDB):
    """FlaskDB whose per-request connect tolerates a connection already open in this thread
    (e.g. opened by a CLI command or a test around a request); teardown still closes it."""

    def connect_db(self) -> None:
        if self._excluded_routes and request.endpoint in self._excluded_routes:
            return
        self.database.connect(reuse_if_open=True)


db = DocketFlaskDB()

# SQLite with a web process and worker processes writing the same file: WAL lets readers
# proceed during a write, and the busy timeout (ms) makes a writer wait instead of failing
# with "database is locked".
SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "busy_timeout": 10_000,
    "foreign_keys": 1,
    "synchronous": "normal",
}


# Connections per process for the pool (peewee's playhouse.pool): a web process needs one per
# request thread, a worker process one; the bound only stops a leak from growing without end.
MAX_CONNECTIONS = 32
STALE_TIMEOUT = 300  # seconds an idle pooled connection is kept before it is reopened


def make_database(url: str) -> Database:
    """Return an unconnected, pooled Peewee database for a ``DATABASE_URL``.

    Connections are pooled per process (``playhouse.pool``): a request or a job takes one and
    gives it back, instead of opening a connection (and, on SQLite, re-running its PRAGMAs and
    re-reading the schema) every time. A pool must not cross a ``fork()``: the processes that
    fork (the worker pool's parent) never keep one open (see ``jobs/runtime.py``).

    Args:
        url: ``sqlite:///path``, ``postgresql://…`` or ``postgres://…``.

    Raises:
        RuntimeError: the URL's scheme is not one Peewee knows.
    """
    scheme, separator, rest = url.partition(":")
    pooled = f"{scheme}+pool{separator}{rest}" if "+" not in scheme else url
    options = {"max_connections": MAX_CONNECTIONS, "stale_timeout": STALE_TIMEOUT}
    if scheme == "sqlite":
        return connect_url(pooled, pragmas=SQLITE_PRAGMAS, check_same_thread=False, **options)
    try:
        return connect_url(pooled, autoconnect=True, **options)
    except RuntimeError as exc:
        raise RuntimeError(f"DATABASE_URL is not a database Docket can use: {exc}") from None


def init_app(app: Flask) -> None:
    """Bind the FlaskDB wrapper to ``app``'s ``DATABASE_URL`` and register ``flask init-db``."""
    app.config.setdefault(
        "FLASKDB_EXCLUDED_ROUTES", ("health.healthz", "health.readyz", "static")
    )
    database = make_database(app.config["DATABASE_URL"])
    if isinstance(database, SqliteDatabase):
        Path(database.database).parent.mkdir(parents=True, exist_ok=True)
    db._db = database
    db.init_app(app)
    app.cli.add_command(init_db_command)


def create_tables() -> None:
    """Create Docket's tables if they do not exist (idempotent; safe on every deploy)."""
    from webapp.models import ALL_MODELS

    with db.database.connection_context():
        db.database.create_tables(ALL_MODELS, safe=True)


@click.command("init-db")
def init_db_command() -> None:
    """Create the database tables (idempotent)."""
    create_tables()
    click.echo(f"Initialized the database at {redact_url(current_app.config['DATABASE_URL'])}.")


def redact_url(url: str) -> str:
    """Hide the password of a database URL for logs."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


@contextmanager
def connection() -> Iterator[Database]:
    """A database connection for the block, for job code and CLI commands.

    Unlike Peewee's ``connection_context()`` (which closes the connection on exit even when it
    did not open it), this closes only a connection it opened itself, so nesting is safe.
    """
    database = db.database
    if not database.is_closed():
        yield database
        return
    with database.connection_context():
        yield database
