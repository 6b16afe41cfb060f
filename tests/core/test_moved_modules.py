"""Upgrades keep running jobs (webapp/core/moved_modules.py): RQ stored the previous release's
function and callback paths in Redis; after the move into layer subpackages a worker still runs
those jobs and still reaches their callbacks."""

from __future__ import annotations

import pytest
from rq import Callback
from rq.job import Job as RQJob
from rq.utils import import_attribute

from tests.conftest import row, upload
from webapp.core.protocol import states
from webapp.core.queues import rq

# What the previous release stored: job functions (the registry's), RQ callbacks (launch) and
# the scheduler's entry function.
OLD_PATHS = {
    "jobs.documents.process_document": "jobs.document_job.process_document",
    "jobs.reports.build_report": "jobs.report_job.build_report",
    "jobs.webhooks.deliver_webhook": "jobs.webhook_job.deliver_webhook",
    "jobs.reconcile.reconcile": "jobs.reconcile_job.reconcile",
    "jobs.cleanup.apply_retention": "jobs.retention_job.apply_retention",
    "jobs.cleanup.clean_orphans": "jobs.orphans_job.clean_orphans",
    "jobs.diagnostics.ping": "jobs.ping_job.ping",
    "webapp.job_states.on_job_failure": "webapp.core.protocol.states.on_job_failure",
    "webapp.job_states.on_job_stopped": "webapp.core.protocol.states.on_job_stopped",
    "webapp.scheduling.fire": "webapp.core.schedules.table.fire",
}


@pytest.mark.parametrize("old, new", OLD_PATHS.items())
def test_every_stored_path_of_the_previous_release_still_imports(app, old, new):
    # create_app installed the shims; RQ imports stored paths with import_attribute.
    assert import_attribute(old) is import_attribute(new)


def test_an_unknown_name_of_a_split_module_fails_as_for_any_module(app):
    import importlib

    cleanup = importlib.import_module("jobs.cleanup")
    with pytest.raises(AttributeError, match="jobs.retention_job, jobs.orphans_job"):
        cleanup.no_such_function
    with pytest.raises(ValueError, match="Invalid attribute name"):  # RQ's answer for any module
        import_attribute("jobs.cleanup.no_such_function")


def _reenqueue_with_old_paths(app, job_id: str, document_id: str) -> None:
    """Replace RQ's record of ``job_id`` with the one the previous release would have written."""
    with app.app_context():
        RQJob.fetch(job_id, connection=rq.connection).delete()
        rq.get_queue("default").enqueue_call(
            "jobs.documents.process_document", kwargs={"document_id": document_id}, job_id=job_id,
            on_failure=Callback("webapp.job_states.on_job_failure"),
            on_stopped=Callback("webapp.job_states.on_job_stopped"))


def test_jobs_enqueued_with_the_old_paths_run_and_reach_their_callbacks(app, client, run_worker):
    finished = upload(client, "minimal-document.pdf").get_json()["documents"][0]
    failing = upload(client, "libreoffice-writer-password.pdf").get_json()["documents"][0]  # no password
    for document in (finished, failing):
        _reenqueue_with_old_paths(app, document["job_id"], document["id"])
    with app.app_context():
        stored = RQJob.fetch(failing["job_id"], connection=rq.connection)
        assert stored.func_name == "jobs.documents.process_document"
        assert stored.failure_callback is states.on_job_failure  # resolved through the shim
    run_worker()
    assert row(app, finished["job_id"]).status == "finished"
    assert client.get(f"/api/documents/{finished['id']}").get_json()["chunks"] > 0
    # The failure reached the old on_failure path: the row says why, with its code.
    failed = row(app, failing["job_id"])
    assert (failed.status, failed.error_code) == ("failed", "password_required")
