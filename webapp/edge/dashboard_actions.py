"""The dashboard's buttons, through Docket's job protocol.

rq-dashboard 0.9's action views change RQ's records only: "Empty" deleted the queued jobs while
their rows stayed ``queued`` (and reconcile, finding them missing from Redis, enqueued them
again), "Delete" of a running job left its row ``started``, "Requeue" ran a failed job again
while its row stayed ``failed``. The views here replace them for this app
(:func:`webapp.edge.dashboard.init_app`) and call what ``POST /api/jobs/<id>/cancel`` and
``/retry`` call — :func:`webapp.core.protocol.control.cancel_job` and
:func:`webapp.core.protocol.launch.relaunch` — so that afterwards ``GET /api/jobs/<id>`` and the
dashboard say the same:

* **Requeue** of a job is Docket's retry (same row, ``attempts`` keeps counting). A job the retry
  refuses (finished, queued, running …) is ``409 job_not_requeueable`` with the sentence.
* **Delete** of a job takes it out as Docket can make true: a waiting job (queued, scheduled,
  deferred) is canceled, a running one stopped (its partial output rolled back) — as the API's
  cancel does; a job that already ended keeps its row (the API still says how it ended) and only
  RQ's record of it is deleted, so the dashboard no longer lists it.
* **Empty** of a queue or of any registry is that delete for each of its jobs.
* **Requeue all** is the retry for each job of the queue's failed registry; the answer counts the
  retried jobs and names the refused ones with their reasons.

A job in Docket's queues with no row is not Docket's (enqueued by a script or a shell, or a row
that retention already removed): nothing in the API describes it, so nothing can contradict the
dashboard, and RQ's own behaviour is kept for it (delete removes RQ's record, requeue is RQ's
requeue of a failed job) — an operator can still clear such strays from the dashboard.

Every answer keeps what rq-dashboard's script reads (``status: "OK"``; ``count`` for requeue
all) and adds ``message``, a sentence the overridden base template shows above the page.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flask import current_app
from rq import Queue, requeue_job
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job as RQJob
from rq.registry import (CanceledJobRegistry, DeferredJobRegistry, FailedJobRegistry, FinishedJobRegistry,
                         ScheduledJobRegistry, StartedJobRegistry)

from webapp.core.models import Job
from webapp.core.protocol.control import cancel_job
from webapp.core.protocol.launch import QueueUnavailable, relaunch
from webapp.core.protocol.states import STARTED, WAITING, JobStateError
from webapp.core.service_errors import ServiceError

REGISTRIES = {
    "failed": FailedJobRegistry, "deferred": DeferredJobRegistry, "started": StartedJobRegistry,
    "finished": FinishedJobRegistry, "canceled": CanceledJobRegistry, "scheduled": ScheduledJobRegistry,
}  # "queued" is the queue itself
NO_STORE = {"Cache-Control": "no-store"}


@dataclass
class TakenOut:
    """What :func:`take_out` did to one job: ``what`` is ``canceled``, ``stopped`` (the row's new
    status), ``removed`` (the job had ended: RQ's record deleted, the row kept), ``foreign`` (no
    row: RQ's record deleted) or ``gone`` (RQ had no record left: its id dropped)."""

    job_id: str
    what: str
    status: str | None = None  # the row's status afterwards (None: no row)


@dataclass
class Retried:
    """What :func:`retry_all` did: the retried ids, and the refused ones with their sentences."""

    retried: list[str] = field(default_factory=list)
    refused: list[dict[str, str]] = field(default_factory=list)


def _redis():
    return current_app.redis_conn


def _delete_rq_record(job_id: str) -> bool:
    """Delete RQ's record of ``job_id`` (and its id from the queue and registries it is in).
    Returns ``False`` when RQ had none."""
    try:
        RQJob.fetch(job_id, connection=_redis()).delete()
    except NoSuchJobError:
        return False
    return True


def take_out(job_id: str) -> TakenOut:
    """Take one job out of RQ as Docket can make true (a dashboard "Delete").

    A waiting row (queued, scheduled, deferred) is canceled and a running one stopped, by
    :func:`webapp.core.protocol.control.cancel_job` (what ``POST /api/jobs/<id>/cancel`` does:
    a running job's partial output is rolled back). A row that already ended keeps its status, and
    only RQ's record is deleted. A job without a row gets RQ's own delete.

    Args:
        job_id: the RQ job id (= the Job row's id).

    Returns:
        What was done (:class:`TakenOut`).

    Raises:
        NoSuchJobError: RQ has no job ``job_id`` and Docket has no row of it (a 404 for the dashboard).
        redis.exceptions.RedisError: Redis is down (a 503 for the dashboard).
    """
    row = Job.find(job_id)
    if row is None:
        if not _delete_rq_record(job_id):
            raise NoSuchJobError(f"No such job: {job_id}")
        return TakenOut(job_id, "foreign")
    if row.status in WAITING or row.status == STARTED:
        try:
            row = cancel_job(job_id)
            return TakenOut(job_id, row.status, row.status)
        except JobStateError:  # it ended meanwhile: as below
            row = Job.find(job_id)
    deleted = _delete_rq_record(job_id)
    return TakenOut(job_id, "removed" if deleted else "gone", row.status)


def registry_job_ids(queue_name: str, registry_name: str) -> list[str]:
    """The ids RQ lists in queue ``queue_name`` (``registry_name`` ``queued``) or in one of its
    registries (:data:`REGISTRIES`).

    Raises:
        ServiceError: 404 ``registry_not_found`` for a registry name RQ does not have.
    """
    if registry_name == "queued":
        return Queue(queue_name, connection=_redis()).get_job_ids()
    if registry_name not in REGISTRIES:
        raise ServiceError(404, "registry_not_found", f"RQ has no registry called {registry_name}.")
    return REGISTRIES[registry_name](queue_name, connection=_redis()).get_job_ids(cleanup=False)


def empty(queue_name: str, registry_name: str) -> list[TakenOut]:
    """A dashboard "Empty": :func:`take_out` for each job of the queue or registry; an id whose
    job RQ no longer has is dropped from the list.

    Returns:
        What was done to each job, in the list's order.

    Raises:
        ServiceError: 404 ``registry_not_found`` (:func:`registry_job_ids`).
        redis.exceptions.RedisError: Redis is down.
    """
    done = []
    for job_id in registry_job_ids(queue_name, registry_name):
        try:
            done.append(take_out(job_id))
        except NoSuchJobError:
            if registry_name == "queued":
                Queue(queue_name, connection=_redis()).remove(job_id)
            else:
                REGISTRIES[registry_name](queue_name, connection=_redis()).remove(job_id)
            done.append(TakenOut(job_id, "gone"))
    return done


def retry(job_id: str) -> Job | None:
    """A dashboard "Requeue": Docket's retry (:func:`webapp.core.protocol.launch.relaunch`, what
    ``POST /api/jobs/<id>/retry`` does: same row, ``attempts`` keeps counting); for a job without
    a row, RQ's own requeue of a failed job.

    Returns:
        The row after the retry, ``None`` for a job without a row.

    Raises:
        ServiceError: 409 ``job_not_requeueable`` when the retry refuses the job (it is not failed,
            stopped or canceled), with the sentence; 503 ``queue_unavailable`` when Redis refused
            (the row is ``failed`` again, as the API leaves it).
        NoSuchJobError: no row and no RQ job (404).
        InvalidJobOperation: no row and RQ's job is not failed (409).
    """
    if Job.find(job_id) is None:
        requeue_job(job_id, connection=_redis())
        return None
    try:
        return relaunch(job_id)
    except JobStateError as exc:
        raise ServiceError(409, "job_not_requeueable", f"Job {job_id} was not requeued. {exc}") from None
    except QueueUnavailable as exc:
        raise ServiceError(503, "queue_unavailable", str(exc)) from exc


def retry_all(queue_name: str) -> Retried:
    """A dashboard "Requeue all": :func:`retry` for each job of the queue's failed registry; a
    job refused (it left the failed state meanwhile, or RQ lost it) is reported, not an error.

    Raises:
        ServiceError: 503 ``queue_unavailable`` when Redis refused an enqueue (the jobs retried
            before it stay retried).
    """
    outcome = Retried()
    for job_id in FailedJobRegistry(queue_name, connection=_redis()).get_job_ids(cleanup=False):
        try:
            retry(job_id)
        except ServiceError as exc:
            if exc.status != 409:
                raise
            outcome.refused.append({"id": job_id, "message": exc.message})
        except (NoSuchJobError, InvalidJobOperation):
            FailedJobRegistry(queue_name, connection=_redis()).remove(job_id)
            outcome.refused.append({"id": job_id, "message": f"RQ no longer has job {job_id} as failed."})
        else:
            outcome.retried.append(job_id)
    return outcome


# --- the views (installed by webapp.edge.dashboard.init_app) -------------------------------------

def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _describe(done: list[TakenOut]) -> str:
    """One sentence for what :func:`take_out` did to some jobs."""
    if not done:
        return "There was no job to take out; nothing was changed."
    by_what: dict[str, list[TakenOut]] = {}
    for item in done:
        by_what.setdefault(item.what, []).append(item)
    parts = []
    if "canceled" in by_what:
        parts.append(f"{_count(len(by_what['canceled']), 'waiting job')} canceled (not to run)")
    if "stopped" in by_what:
        parts.append(f"{_count(len(by_what['stopped']), 'running job')} stopped (partial output rolled back)")
    if "removed" in by_what:
        parts.append(f"RQ's record of {_count(len(by_what['removed']), 'ended job')} deleted (Docket keeps "
                     "how each ended: GET /api/jobs/<id>)")
    if "foreign" in by_what:
        parts.append(f"{_count(len(by_what['foreign']), 'job')} without a Docket row deleted from RQ")
    if "gone" in by_what:
        parts.append(f"{_count(len(by_what['gone']), 'id')} of jobs RQ no longer had dropped")
    sentence = "; ".join(parts)
    return sentence[0].upper() + sentence[1:] + "."


def delete_job_view(job_id: str):
    """``POST /rq/job/<id>/delete``: :func:`take_out` of the job. 200 ``{"status": "OK",
    "message", "job_status"}`` (the row's status afterwards, ``null`` without a row); 404
    ``job_not_found`` when neither RQ nor Docket knows the job."""
    done = take_out(job_id)
    if done.what == "canceled":
        message = f"Job {job_id} was canceled (as Docket's cancel does): it will not run."
    elif done.what == "stopped":
        message = f"Job {job_id} was running and has been stopped (as Docket's cancel does); its partial output is rolled back."
    elif done.what in ("removed", "gone"):
        message = (f"Job {job_id} had already ended ({done.status}): Docket keeps its row, which still says so, "
                   "and RQ's record of it was deleted.")
    else:
        message = f"Job {job_id} is not one of Docket's jobs (no row): RQ's record of it was deleted."
    return {"status": "OK", "message": message, "job_status": done.status}, NO_STORE


def requeue_job_view(job_id: str):
    """``POST /rq/job/<id>/requeue``: :func:`retry`. 200 ``{"status": "OK", "message",
    "job_status"}``; 409 ``job_not_requeueable``; 404 ``job_not_found``; 503 ``queue_unavailable``."""
    job = retry(job_id)
    if job is None:
        return {"status": "OK", "message": f"Job {job_id} is not one of Docket's jobs (no row): RQ requeued it.",
                "job_status": None}, NO_STORE
    return {"status": "OK", "job_status": job.status,
            "message": f"Job {job_id} was retried (as Docket's retry does): queued again, with {job.attempts} "
                       f"earlier {'run' if job.attempts == 1 else 'runs'} counted."}, NO_STORE


def requeue_all(queue_name: str):
    """``POST /rq/requeue/<queue>``: :func:`retry_all`. 200 ``{"status": "OK", "count": retried,
    "refused": [{"id", "message"}], "message"}``; 503 ``queue_unavailable``."""
    outcome = retry_all(queue_name)
    message = f"{_count(len(outcome.retried), 'failed job')} of {queue_name} retried (as Docket's retry does)."
    if outcome.refused:
        message += f" {_count(len(outcome.refused), 'job')} refused: " + " ".join(r["message"] for r in outcome.refused)
    return {"status": "OK", "count": len(outcome.retried), "refused": outcome.refused, "message": message}, NO_STORE


def empty_queue(queue_name: str, registry_name: str):
    """``POST /rq/queue/<queue>/<registry>/empty``: :func:`empty`. 200 ``{"status": "OK",
    "count", "canceled", "stopped", "removed", "message"}`` (the ids per outcome); 404
    ``registry_not_found``; 503 ``queue_unavailable``."""
    done = empty(queue_name, registry_name)
    answer = {"status": "OK", "count": len(done), "message": _describe(done)}
    for what in ("canceled", "stopped", "removed"):
        answer[what] = [item.job_id for item in done if item.what == what]
    return answer, NO_STORE
