"""The database is bound per app: two apps in one process each write into their own database."""

from __future__ import annotations

import os
import threading

import psycopg2
import pytest

from tests.conftest import api_client, make_token
from webapp import create_app
from webapp.core.db import connection, create_tables, db
from webapp.core.models import Batch


@pytest.mark.own_database("two SQLite files of its own: the binding does not depend on the database kind")
def test_two_apps_in_one_process_each_write_into_their_own_database(tmp_path, redis_url):
    apps = [
        create_app({"TESTING": True, "DATABASE_URL": f"sqlite:///{tmp_path / name}.sqlite3",
                    "REDIS_URL": redis_url, "STORAGE_PATH": str(tmp_path / name)})
        for name in ("first", "second")
    ]
    for app in apps:
        with app.app_context():
            create_tables()

    first, second = apps  # the second app was created last: a process-global binding would point at it
    with first.app_context(), connection():
        Batch.create(id="written-in-first", size=1)
    with second.app_context(), connection():
        Batch.create(id="written-in-second", size=2)

    with first.app_context(), connection():
        assert [b.id for b in Batch.select()] == ["written-in-first"]
        assert db.database.database.endswith("first.sqlite3")
    with second.app_context(), connection():
        assert [b.id for b in Batch.select()] == ["written-in-second"]


def test_the_database_outside_an_app_context_is_a_clear_error():
    with pytest.raises(RuntimeError, match="application context"):
        db.database


# --- PostgreSQL's connection pool (webapp/core/db.py make_database) ------------------------------------

def _pg_app(config, url: str, **settings):
    app = create_app({**config, "DATABASE_URL": url, **settings})
    with app.app_context():
        create_tables()
    return app


def _backend_pid(database) -> int:
    return database.execute_sql("SELECT pg_backend_pid()").fetchone()[0]


@pytest.mark.own_database("PostgreSQL's pool and its sessions, on the test PostgreSQL in both runs")
def test_a_forked_child_opens_its_own_connection_and_leaves_the_parents_working(config, postgres_url):
    """A child forked while the parent holds a connection (one in use, one idle in the pool), as a
    gunicorn worker forked after ``--preload`` or the worker pool's processes are, gets a session of
    its own; its inherited copies are forgotten without ending the parent's sessions."""
    app = _pg_app(config, postgres_url)
    database = app.extensions["database"]
    idle_pid: list[int] = []

    def use_and_return() -> None:  # a second connection, back in the pool when the thread ends
        with app.app_context(), connection() as db_:
            idle_pid.append(_backend_pid(db_))

    with app.app_context(), connection():
        in_use_pid = _backend_pid(database)
        thread = threading.Thread(target=use_and_return)
        thread.start()
        thread.join()
        assert idle_pid[0] != in_use_pid and len(database._connections) == 1

        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # the child: report its session, then leave without Python's cleanup
            try:
                with app.app_context(), connection() as db_:
                    answer = f"{_backend_pid(db_)} {len(db_._connections)}"
            except BaseException as exc:  # noqa: BLE001  (reported to the parent)
                answer = f"error {exc!r}"
            os.write(write, answer.encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            answer = pipe.read()
        os.waitpid(child, 0)
        child_pid, child_idle = answer.split(" ", 1)
        assert child_pid.isdigit(), answer
        assert int(child_pid) not in (in_use_pid, idle_pid[0]), "the child used a connection of its parent"
        assert child_idle == "0", "the child's pool kept its parent's idle connection"

        # The parent's sessions outlived the child: the one in use, and the idle one in its pool
        # (a thread takes it from the pool again: same session, and it answers).
        assert _backend_pid(database) == in_use_pid
        assert database.execute_sql("SELECT 1").fetchone() == (1,)
        thread = threading.Thread(target=use_and_return)
        thread.start()
        thread.join()
        assert idle_pid == [idle_pid[0], idle_pid[0]], "the parent's idle connection did not survive the child"
    database.close_all()


@pytest.mark.own_database("PostgreSQL's pool and pg_stat_activity, on the test PostgreSQL in both runs")
def test_requests_in_many_threads_never_hold_more_connections_than_the_pool_size(config, postgres_url):
    app = _pg_app(config, postgres_url, DATABASE_POOL_SIZE=2, DATABASE_POOL_TIMEOUT=30)
    client_token = make_token(app)
    name = postgres_url.rsplit("/", 1)[1]
    observer = psycopg2.connect(postgres_url.replace("postgres://", "postgresql://", 1).rsplit("/", 1)[0] + "/postgres")
    observer.autocommit = True
    peak, statuses, done = [0], [], threading.Event()

    def observe() -> None:
        with observer.cursor() as cursor:
            while not done.is_set():
                cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,))
                peak[0] = max(peak[0], cursor.fetchone()[0])

    def requests_in_a_thread() -> None:
        client = api_client(app, token=client_token)
        for _ in range(15):
            statuses.append(client.get("/api/jobs").status_code)

    watcher = threading.Thread(target=observe)
    watcher.start()
    threads = [threading.Thread(target=requests_in_a_thread) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    watcher.join()
    observer.close()
    assert statuses == [200] * 150  # every request waited for a connection instead of failing
    assert 1 <= peak[0] <= 2, f"{peak[0]} sessions on the database with DATABASE_POOL_SIZE=2"
    assert len(app.extensions["database"]._connections) <= 2
    app.extensions["database"].close_all()


@pytest.mark.own_database("PostgreSQL's pool, on the test PostgreSQL in both runs")
def test_a_request_that_finds_every_pooled_connection_in_use_answers_503(config, postgres_url):
    app = _pg_app(config, postgres_url, DATABASE_POOL_SIZE=1, DATABASE_POOL_TIMEOUT=0)
    client = api_client(app)  # its token is written before the one connection is taken
    held, release = threading.Event(), threading.Event()

    def hold_the_only_connection() -> None:
        with app.app_context(), connection():
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold_the_only_connection)
    holder.start()
    try:
        assert held.wait(30)
        response = client.get("/api/jobs")
    finally:
        release.set()
        holder.join()
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "database_unavailable"
    assert client.get("/api/jobs").status_code == 200  # and the connection serves again once given back
    app.extensions["database"].close_all()
