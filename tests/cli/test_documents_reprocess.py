"""``flask --app wsgi documents reprocess``: stored documents processed again through ordinary
document jobs, chosen by owner, type or extractor version, skipping the ones in flight.

The real command runs as a subprocess against the session's Redis and the test's database;
real ``rq worker --burst`` processes run the jobs.
"""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from tests.conftest import ROOT, api_client, process_env
from webapp.cli.documents import Pacer
from webapp.core.db import connection
from webapp.core.extractor import EXTRACTOR_VERSION
from webapp.core.models import Chunk, Document, Job

COMMAND_DEADLINE = 120  # seconds; only to avoid hanging, never asserted as a speed


def reprocess(config, *args: str) -> subprocess.CompletedProcess:
    """Run ``flask --app wsgi documents reprocess ARGS...`` (a fast rate: the pacing has its own test)."""
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "documents", "reprocess", "--rate", "200", *args],
        cwd=ROOT, env=process_env(config, COLUMNS="400"), capture_output=True, text=True, timeout=COMMAND_DEADLINE,
    )


def describe(result: subprocess.CompletedProcess) -> str:
    return f"\n--- exit status {result.returncode}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"


def summary(stdout: str) -> list[int]:
    """Selected, Launched, Skipped, Refused, Not reached: the summary table's numbers."""
    rows = [line for line in stdout.splitlines() if line.strip().startswith("│") and any(c.isdigit() for c in line)]
    assert len(rows) == 1, stdout
    return [int(cell) for cell in rows[0].strip().strip("│").split("│")]


def upload(app, owner: str, name: str) -> str:
    """Upload a small text file as ``owner``; returns the document id."""
    response = api_client(app, owner, admin=False).post(
        "/api/documents", data={"file": (io.BytesIO(f"{name}: a paragraph about {owner}.".encode()), f"{name}.txt")},
        content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    return response.get_json()["documents"][0]["id"]


def documents(app) -> dict[str, tuple[str, str, int | None]]:
    """Every document: id → (its current job's id, that job's status, extractor version)."""
    with app.app_context(), connection():
        return {d.id: (d.job_id, Job.get_by_id(d.job_id).status, d.extractor_version) for d in Document.select()}


def set_versions(app, versions: dict[str, int | None]) -> None:
    with app.app_context(), connection():
        for document_id, version in versions.items():
            Document.update(extractor_version=version).where(Document.id == document_id).execute()


@pytest.fixture
def library(app, run_worker):
    """Two documents of alice, one of bob, all processed by a real worker."""
    ids = {"alice-1": upload(app, "alice", "alice-1"), "alice-2": upload(app, "alice", "alice-2"),
           "bob-1": upload(app, "bob", "bob-1")}
    run_worker()
    assert {status for _, status, _ in documents(app).values()} == {"finished"}
    return ids


def test_reprocess_by_owner_launches_jobs_for_that_owners_documents_only_and_they_finish(app, config, run_worker,
                                                                                         library):
    before = documents(app)
    set_versions(app, {library["alice-1"]: None})  # made before structure was kept

    result = reprocess(config, "--owner", "alice")

    assert result.returncode == 0 and "Traceback" not in result.stderr, describe(result)
    assert summary(result.stdout) == [2, 2, 0, 0, 0], describe(result)
    after = documents(app)
    for name in ("alice-1", "alice-2"):
        job_id, status, _ = after[library[name]]
        assert job_id != before[library[name]][0] and status == "queued", (name, after)
    assert after[library["bob-1"]] == before[library["bob-1"]]

    run_worker()

    done = documents(app)
    for name in ("alice-1", "alice-2"):
        assert done[library[name]][1:] == ("finished", EXTRACTOR_VERSION), (name, done)
    with app.app_context(), connection():
        for name in library:  # one set of chunks each, the old ones replaced
            ordinals = [c.ordinal for c in Chunk.select().where(Chunk.document == library[name])]
            assert ordinals == [0], (name, ordinals)
        old_jobs = Job.select().where(Job.id.in_([before[library[n]][0] for n in ("alice-1", "alice-2")]))
        assert {job.status for job in old_jobs} == {"finished"}  # the first runs' rows stay as history


def test_without_structure_selects_only_documents_of_an_older_or_unknown_extractor(app, config, run_worker, library):
    set_versions(app, {library["alice-1"]: None, library["alice-2"]: EXTRACTOR_VERSION - 1,
                       library["bob-1"]: EXTRACTOR_VERSION})
    before = documents(app)

    dry = reprocess(config, "--without-structure", "--dry-run")
    assert dry.returncode == 0, describe(dry)
    assert "Would launch 2 document job(s): 2 document(s) selected, 0 skipped" in dry.stderr, describe(dry)
    assert documents(app) == before  # a dry run launches nothing

    result = reprocess(config, "--without-structure")
    assert summary(result.stdout) == [2, 2, 0, 0, 0], describe(result)
    after = documents(app)
    assert after[library["bob-1"]] == before[library["bob-1"]]
    assert {after[library[n]][1] for n in ("alice-1", "alice-2")} == {"queued"}

    run_worker()
    assert {version for _, _, version in documents(app).values()} == {EXTRACTOR_VERSION}
    again = reprocess(config, "--without-structure", "--dry-run")
    assert "Would launch 0 document job(s)" in again.stderr, describe(again)


def test_a_document_whose_job_is_queued_or_running_is_skipped_not_doubled(app, config, run_worker, library):
    waiting = upload(app, "alice", "alice-3")  # no worker runs: its job stays queued
    with app.app_context(), connection():  # and one as a worker holding it would have it
        Job.update(status="started").where(Job.id == Document.get_by_id(library["alice-1"]).job_id).execute()
    before = documents(app)

    dry = reprocess(config, "--owner", "alice", "--dry-run")
    assert "Would launch 1 document job(s): 3 document(s) selected, 2 skipped" in dry.stderr, describe(dry)
    result = reprocess(config, "--owner", "alice")

    assert summary(result.stdout) == [3, 1, 2, 0, 0], describe(result)
    after = documents(app)
    assert after[waiting] == before[waiting] and after[library["alice-1"]] == before[library["alice-1"]]
    assert after[library["alice-2"]][1] == "queued" and after[library["alice-2"]][0] != before[library["alice-2"]][0]
    with app.app_context(), connection():
        assert Job.select().where(Job.document == waiting).count() == 1


def test_the_command_says_which_documents_it_needs(config, app):
    result = reprocess(config)
    assert result.returncode == 2 and "Say which documents" in result.stderr, describe(result)


def test_the_pacer_spaces_launches_evenly_without_making_up_lost_time():
    now, slept = [100.0], []

    def sleep(seconds: float) -> None:
        slept.append(round(seconds, 6))
        now[0] += seconds

    pacer = Pacer(4, clock=lambda: now[0], sleep=sleep)
    pacer.wait()  # the first goes at once
    pacer.wait()
    now[0] += 0.1
    pacer.wait()
    now[0] += 5  # a long wait for the queue: no burst afterwards
    pacer.wait()
    pacer.wait()
    assert slept == [0.25, 0.15, 0.25]


def test_nothing_is_launched_while_the_queue_holds_more_than_max_queued(app, config, run_worker, start_worker,
                                                                         library, tmp_path):
    from tests.conftest import wait_for

    before = documents(app)
    backlog = [upload(app, "bob", f"bob-{n}") for n in range(2, 5)]  # no worker yet: 3 jobs wait in the queue
    log = tmp_path / "reprocess.log"
    with open(log, "w") as output:
        command = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "wsgi", "documents", "reprocess", "--owner", "alice",
             "--rate", "200", "--max-queued", "2"],
            cwd=ROOT, env=process_env(config, COLUMNS="400"), stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "waiting for the workers" in log.read_text(), 60, "the command to wait for the queue")
        # It waits before its first launch, and the queue cannot shrink without a worker.
        assert all(documents(app)[library[n]] == before[library[n]] for n in ("alice-1", "alice-2"))
        assert command.poll() is None

        start_worker()
        assert command.wait(COMMAND_DEADLINE) == 0, log.read_text()
    finally:
        if command.poll() is None:
            command.kill()
            command.wait()
    assert summary(log.read_text()) == [2, 2, 0, 0, 0], log.read_text()
    wait_for(lambda: {documents(app)[d][1] for d in [*backlog, library["alice-1"], library["alice-2"]]} == {"finished"},
             180, "every job to finish")
