"""The Peewee database, bound per application like the RQ extension (``webapp/core/queues.py``).

Each app made by ``create_app`` gets its own Peewee database for its ``DATABASE_URL``, kept in
``app.extensions["database"]``. The models are bound to :class:`AppDatabaseProxy`, which resolves
to the database of the application whose context is active, so two apps in one process (tests,
a script that copies between two databases) each read and write their own database.

The request path connects per request (``before_request``/``teardown_request``, as Peewee's
FlaskDB does); job code and CLI commands use :func:`connection`. Nothing connects at import.
"""

from __future__ import annotations

import os
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import click
from flask import Flask, current_app, has_app_context, request
from peewee import Database, DatabaseProxy, OperationalError, SqliteDatabase
from playhouse.db_url import connect as connect_url
from playhouse.pool import MaxConnectionsExceeded, PooledDatabase

from webapp.core.compat.peewee_private import max_connections, take_inherited_connections

# Endpoints that never touch the database, so they do not take a connection per request.
EXCLUDED_ENDPOINTS = ("health.healthz", "health.readyz", "static")


class AppDatabaseProxy(DatabaseProxy):
    """A Peewee database proxy whose target is the current Flask app's database.

    Peewee's own :class:`~peewee.DatabaseProxy` holds one database for the whole process, so
    every ``create_app`` would rebind it and two apps would write into whichever was made last.
    Here ``obj`` is looked up in ``current_app.extensions["database"]`` on every use (a dict
    lookup); outside an application context it is ``None``, and using the proxy raises
    ``AttributeError`` as Peewee's uninitialised proxy does.
    """

    __slots__ = ()

    def __setattr__(self, attr: str, value) -> None:
        # Peewee's Proxy checks names against the class's own (here empty) __slots__.
        if attr not in ("obj", "_callbacks", "_Model"):
            raise AttributeError("Cannot set attribute on proxy.")
        object.__setattr__(self, attr, value)

    @property
    def obj(self) -> Database | None:  # type: ignore[override]
        if has_app_context():
            return current_app.extensions.get("database")
        return None

    @obj.setter
    def obj(self, value: Database | None) -> None:
        # Peewee's Proxy.__init__ calls initialize(None); binding happens per app in init_app.
        if value is not None:
            raise TypeError("AppDatabaseProxy is bound per app: use DocketDatabase.init_app(app)")


class DocketDatabase:
    """The database extension: ``db.Model`` is the models' base class, ``db.database`` the
    current app's Peewee database.

    ``init_app`` makes the app's database from ``DATABASE_URL`` (no connection is opened),
    opens a connection from the pool for each request and returns it when the request ends.
    """

    def __init__(self) -> None:
        self.proxy = AppDatabaseProxy()
        self.Model = self.proxy.Model

    def init_app(self, app: Flask) -> None:
        """Give ``app`` its own database and per-request connections; register ``flask init-db``."""
        database = make_database(app.config["DATABASE_URL"], pool_size=app.config.get("DATABASE_POOL_SIZE"),
                                 pool_timeout=app.config.get("DATABASE_POOL_TIMEOUT"))
        if isinstance(database, SqliteDatabase):
            Path(database.database).parent.mkdir(parents=True, exist_ok=True)
        app.extensions["database"] = database
        app.before_request(_connect_for_request)
        app.teardown_request(_close_after_request)
        app.cli.add_command(init_db_command)

    @property
    def database(self) -> Database:
        """The current app's Peewee database.

        Raises:
            RuntimeError: outside an application context.
        """
        database = self.proxy.obj
        if database is None:
            raise RuntimeError("Docket's database is bound per app: use it inside an application context")
        return database


def _connect_for_request() -> None:
    if request.endpoint in EXCLUDED_ENDPOINTS:
        return
    # reuse_if_open: a CLI command or a test may already hold this thread's connection.
    database = current_app.extensions["database"]
    try:
        database.connect(reuse_if_open=True)
    except MaxConnectionsExceeded:
        # Every pooled connection of this process stayed in use for DATABASE_POOL_TIMEOUT
        # seconds: a 503 (webapp/edge/json_errors.py), as when the database is away, not a 500.
        raise OperationalError(f"all {max_connections(database)} database connections of this process "
                               "are in use") from None


def _close_after_request(exc: BaseException | None) -> None:
    database = current_app.extensions["database"]
    if not database.is_closed():
        database.close()


db = DocketDatabase()

# SQLite with a web process and worker processes writing the same file: WAL lets readers
# proceed during a write, and the busy timeout (ms) makes a writer wait instead of failing
# with "database is locked".
SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "busy_timeout": 10_000,
    "foreign_keys": 1,
    "synchronous": "normal",
}


# Connections per process for SQLite's pool (peewee's playhouse.pool): a web process needs one
# per request thread, a worker process one; the bound only stops a leak from growing without end.
MAX_CONNECTIONS = 32
STALE_TIMEOUT = 300  # seconds an idle pooled connection is kept before it is reopened
# PostgreSQL's pool per process when the config does not say (DATABASE_POOL_SIZE,
# DATABASE_POOL_TIMEOUT, webapp/core/config.py): twice the Procfile's 4 request threads per web process.
DEFAULT_POOL_SIZE = 8
DEFAULT_POOL_TIMEOUT = 10  # seconds a request waits for a free connection before its 503

# Every pooled database this process made, so a forked child can forget their connections.
_POOLED: "weakref.WeakSet[Database]" = weakref.WeakSet()


def make_database(url: str, pool_size: int | None = None, pool_timeout: float | None = None) -> Database:
    """Return an unconnected, pooled Peewee database for a ``DATABASE_URL``.

    Connections are pooled per process (``playhouse.pool``): a request or a job takes one and
    gives it back, instead of opening a connection (and, on SQLite, re-running its PRAGMAs and
    re-reading the schema) every time. Nothing connects here: the first connection is opened by
    the first request or job, in the process that runs it, so a web worker forked by gunicorn
    (with or without ``--preload``) or a worker process forked by the worker pool opens its own.
    A pool never crosses a ``fork()``: a child forgets the connections it inherited (see
    :func:`_forget_inherited_connections`) and opens new ones.

    Args:
        url: ``sqlite:///path``, ``postgresql://…`` or ``postgres://…`` (Heroku's spelling).
        pool_size: PostgreSQL: connections one process may hold at once (``DATABASE_POOL_SIZE``;
            :data:`DEFAULT_POOL_SIZE` when ``None``). A server's ``max_connections`` (100 by
            default) must cover the sum over all processes. SQLite: :data:`MAX_CONNECTIONS`.
        pool_timeout: PostgreSQL: seconds a caller waits for a connection when all are in use
            before ``MaxConnectionsExceeded`` (``DATABASE_POOL_TIMEOUT``; :data:`DEFAULT_POOL_TIMEOUT`
            when ``None``; a request then answers 503). SQLite does not wait.

    Raises:
        RuntimeError: the URL's scheme is not one Peewee knows.
    """
    scheme, separator, rest = url.partition(":")
    pooled = f"{scheme}+pool{separator}{rest}" if "+" not in scheme else url
    if scheme == "sqlite":
        # Every transaction BEGIN IMMEDIATE: a deferred one that reads first (preparing a statement
        # on `chunk` connects its FTS5 table, which reads) cannot wait for another process's write
        # lock when it upgrades: SQLite answers "database is locked" at once, busy_timeout unused.
        database = connect_url(pooled, pragmas=SQLITE_PRAGMAS, check_same_thread=False, lock_type="IMMEDIATE",
                               max_connections=MAX_CONNECTIONS, stale_timeout=STALE_TIMEOUT)
    else:
        options = {
            "max_connections": pool_size or DEFAULT_POOL_SIZE,
            "stale_timeout": STALE_TIMEOUT,
            # peewee treats 0 as "wait forever"; a tiny positive wait is as good as none.
            "timeout": DEFAULT_POOL_TIMEOUT if pool_timeout is None else (pool_timeout or 0.001),
        }
        try:
            database = connect_url(pooled, autoconnect=True, **options)
        except RuntimeError as exc:
            raise RuntimeError(f"DATABASE_URL is not a database Docket can use: {exc}") from None
    if isinstance(database, PooledDatabase):
        _POOLED.add(database)
    return database


def _forget_inherited_connections() -> None:
    """In a forked child: make every pooled database of the parent start with no connection.

    The child's copies of the parent's connections share the parent's sockets. Using one would
    interleave two processes' messages on one session; closing one normally would send
    PostgreSQL's Terminate on the shared socket and end the *parent's* session. So the child
    points each inherited PostgreSQL socket's descriptor at ``/dev/null`` first (the parent's
    socket is untouched) and then closes the connection: its goodbye goes nowhere. SQLite
    connections cannot be closed safely in a child at all (SQLite's own rule), so they are kept
    referenced forever and never used. The pool's locks are replaced too: another thread of the
    parent may have held one at the fork, and it would stay held in the child.
    """
    for database in list(_POOLED):
        for conn in take_inherited_connections(database):  # peewee's pool internals: webapp/core/compat
            _discard_in_child(conn)


_KEPT_FROM_PARENT: list = []  # SQLite connections a child inherited: never used, never closed


def _discard_in_child(conn) -> None:
    fileno = getattr(conn, "fileno", None)
    if fileno is None or getattr(conn, "closed", 0):  # SQLite, or a closed psycopg2 connection
        if fileno is None:
            _KEPT_FROM_PARENT.append(conn)
        return
    try:
        fd = fileno()
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            os.dup2(devnull, fd)
        finally:
            os.close(devnull)
        conn.close()
    except Exception:  # never let a fork fail over a connection it will not use
        _KEPT_FROM_PARENT.append(conn)


os.register_at_fork(after_in_child=_forget_inherited_connections)


def create_tables() -> list[int]:
    """Bring the current app's database to the latest schema by applying its pending migrations.

    An empty database gets every migration, an older one the ones it lacks, a current one none
    (see :mod:`webapp.core.migrations`): idempotent, run on every deploy (``init-db``) and by
    ``flask dev``. Kept under its old name, without arguments, for those callers and the tests.

    Returns:
        The migration versions applied, oldest first; ``[]`` when the schema was current.

    Raises:
        RuntimeError: outside an application context, or the database is not one Docket made.
    """
    from webapp.core.migrations import upgrade

    with connection() as database:
        return upgrade(database)


@click.command("init-db")
def init_db_command() -> None:
    """Create the database tables, or bring an existing database's schema up to date.

    Applies the pending schema migrations (idempotent; the Procfile's ``release`` runs it on
    every deploy) and prints which ones it applied, or that the schema was current.
    """
    from webapp.core.migrations import LATEST_VERSION, MIGRATIONS, current_version

    try:
        applied = create_tables()
    except RuntimeError as exc:  # e.g. PostgreSQL without pgvector: the sentence says what to install
        raise click.ClickException(str(exc)) from None
    where = redact_url(current_app.config["DATABASE_URL"])
    if applied:
        names = {migration.version: migration.name for migration in MIGRATIONS}
        steps = ", ".join(f"{version} ({names[version]})" for version in applied)
        click.echo(f"Applied schema migrations {steps} to the database at {where}; "
                   f"schema version {applied[-1]}.")
        return
    with connection() as database:
        version = current_version(database)
    if version > LATEST_VERSION:
        click.echo(f"The database at {where} has schema version {version}, newer than this code's "
                   f"{LATEST_VERSION}: nothing applied.")
    else:
        click.echo(f"The database at {where} is current (schema version {version}): nothing applied.")


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
