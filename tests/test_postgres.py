"""The same pipeline on PostgreSQL (the production database), through a real worker.

Uses the PostgreSQL at ``DOCKET_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``)
when it answers; otherwise starts a private server with the machine's ``initdb``/``pg_ctl`` in a
temporary folder; skips only when neither is possible. Each test gets a fresh database.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.conftest import upload
from webapp import create_app
from webapp.db import create_tables
from webapp.embedded_redis import free_port

psycopg2 = pytest.importorskip("psycopg2")


def _answers(url: str) -> bool:
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
    url = os.environ.get("DOCKET_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    if _answers(url):
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
def postgres_url(postgres_server_url):
    name = f"docket_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(postgres_server_url)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(postgres_server_url)
    # Heroku-style spelling on purpose: the app must accept postgres://.
    yield urlunsplit(parts._replace(scheme="postgres", path=f"/{name}"))
    admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


def test_documents_are_processed_and_searchable_on_postgresql(config, postgres_url, run_worker):
    pg_config = {**config, "DATABASE_URL": postgres_url}
    app = create_app(pg_config)
    with app.app_context():
        create_tables()
        create_tables()  # idempotent, as the release phase runs it on every deploy
    client = app.test_client()
    documents = upload(client, "korean-report-4p.pdf", "doclaynet-p3-password.pdf").get_json()["documents"]

    run_worker(DATABASE_URL=postgres_url)
    run_worker(DATABASE_URL=postgres_url)  # nothing left: a second worker finds no job

    korean = client.get(f"/api/documents/{documents[0]['id']}").get_json()
    assert korean["status"] == "finished" and korean["chunks"] > 0 and korean["pages"] == 4
    locked = client.get(f"/api/jobs/{documents[1]['job_id']}").get_json()
    assert locked["status"] == "failed" and "password required" in locked["error"]
    results = client.get("/api/search", query_string={"q": "정책", "k": 1}).get_json()["results"]
    assert results and results[0]["document_id"] == documents[0]["id"]
    assert client.get("/readyz").get_json()["checks"]["database"] == "ok"
