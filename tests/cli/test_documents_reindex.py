"""``flask --app wsgi documents reindex``: after ``CHUNK_SIZE`` changes, the stale documents (and
those from before digests were kept) are processed again through ordinary document jobs, through
the reprocess command's launch loop; ``--limit`` and ``--dry-run``; nothing twice.

The real command runs as a subprocess against the session's Redis and the test's database;
real ``rq worker --burst`` processes run the jobs.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.cli.test_documents_reprocess import COMMAND_DEADLINE, describe, summary
from tests.conftest import ROOT, api_client, post_text, process_env
from webapp import create_app
from webapp.core.db import connection
from webapp.core.indexing import index_digest
from webapp.core.models import Chunk, Document, Job

SMALLER = "400"  # characters: the new CHUNK_SIZE (the default is 1500)


def reindex(config, *args: str, **env: str) -> subprocess.CompletedProcess:
    """Run ``flask --app wsgi documents reindex ARGS...`` (a fast rate: the pacing has its own test)."""
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "documents", "reindex", "--rate", "200", *args],
        cwd=ROOT, env=process_env(config, COLUMNS="400", **env), capture_output=True, text=True,
        timeout=COMMAND_DEADLINE,
    )


def paragraphs(name: str) -> bytes:
    """A text of about 1,200 characters: one chunk at 1,500, several at 400."""
    return "\n\n".join(f"{name}, paragraph {n}: the committee reviewed the harbour dredging contract and its "
                       "penalties for late delivery in some detail." for n in range(10)).encode()


@pytest.fixture
def library(app, run_worker):
    """Three documents processed with the default settings; returns their ids."""
    client = api_client(app)
    ids = [post_text(client, paragraphs(f"doc-{n}"), name=f"doc-{n}.txt").get_json()["documents"][0]["id"]
           for n in range(3)]
    run_worker()
    with app.app_context(), connection():
        assert {Job.get_by_id(d.job_id).status for d in Document.select()} == {"finished"}
    return ids


def state(app) -> dict[str, tuple[str | None, int]]:
    """Document id → (its digest, its chunks)."""
    with app.app_context(), connection():
        return {d.id: (d.index_digest, Chunk.select().where(Chunk.document == d.id).count()) for d in Document.select()}


def test_after_chunk_size_changes_reindex_launches_the_stale_documents_once(app, config, run_worker, library):
    before = state(app)
    assert {digest for digest, _ in before.values()} == {index_digest(app.config)}
    smaller = create_app({**config, "CHUNK_SIZE": int(SMALLER)})
    assert index_digest(smaller.config) != index_digest(app.config)

    same = reindex(config, "--dry-run")  # the settings the documents were made with: nothing stale
    assert same.returncode == 0 and "Would launch at most 0 document job(s): 0 stale" in same.stderr, describe(same)

    dry = reindex(config, "--dry-run", CHUNK_SIZE=SMALLER)
    assert dry.returncode == 0, describe(dry)
    assert "chunk_size=400" in dry.stderr and "Would launch at most 3 document job(s): 3 stale" in dry.stderr, describe(dry)
    assert state(app) == before

    one = reindex(config, "--limit", "1", CHUNK_SIZE=SMALLER)
    assert one.returncode == 0 and summary(one.stdout) == [1, 1, 0, 0, 0], describe(one)
    # The other two now, and the first one again is skipped: its job is still queued.
    rest = reindex(config, CHUNK_SIZE=SMALLER)
    assert rest.returncode == 0 and summary(rest.stdout) == [3, 2, 1, 0, 0], describe(rest)

    run_worker(CHUNK_SIZE=SMALLER)

    after = state(app)
    assert {digest for digest, _ in after.values()} == {index_digest(smaller.config)}
    assert all(after[d][1] > before[d][1] for d in library), (before, after)  # smaller chunks: more of them
    with app.app_context(), connection():
        assert Job.select().where(Job.kind == "document").count() == 6  # 3 uploads + 3 reindexed, none twice
    again = reindex(config, "--dry-run", CHUNK_SIZE=SMALLER)
    assert "Would launch at most 0 document job(s): 0 stale" in again.stderr, describe(again)


def test_documents_from_before_digests_are_stale_and_failed_ones_are_not(app, config, run_worker, library):
    with app.app_context(), connection():
        Document.update(index_digest=None).where(Document.id == library[0]).execute()  # made before migration 10
    failed = post_text(api_client(app), b"\x00\x01\x02 not a document", name="broken.pdf")
    assert failed.status_code in (202, 415), failed.get_json()
    run_worker()

    dry = reindex(config, "--dry-run")
    assert "Would launch at most 1 document job(s): 1 stale" in dry.stderr, describe(dry)
    done = reindex(config, "--owner", "tester")
    assert summary(done.stdout) == [1, 1, 0, 0, 0], describe(done)
    run_worker()
    assert state(app)[library[0]][0] == index_digest(app.config)
