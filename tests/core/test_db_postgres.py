"""The same pipeline on PostgreSQL (the production database), through a real worker.

Uses the PostgreSQL at ``DOCKET_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``)
when it answers; otherwise starts a private server with the machine's ``initdb``/``pg_ctl`` in a
temporary folder; skips only when neither is possible. Each test gets a fresh database (the
``postgres_url`` fixture, in ``tests/conftest.py``).
"""

from __future__ import annotations

import pytest

from tests.conftest import api_client, upload
from webapp import create_app
from webapp.core.db import create_tables

# The whole suite runs on PostgreSQL too (TEST_DATABASE_URL); this module is the SQLite run's
# PostgreSQL check, so that run does not repeat it.
pytestmark = pytest.mark.own_database("runs on the test PostgreSQL in the SQLite run already")


def test_documents_are_processed_and_searchable_on_postgresql(config, postgres_url, run_worker):
    pg_config = {**config, "DATABASE_URL": postgres_url}
    app = create_app(pg_config)
    with app.app_context():
        create_tables()
        create_tables()  # idempotent, as the release phase runs it on every deploy
    client = api_client(app)
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
