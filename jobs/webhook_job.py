"""The webhook job (kind ``webhook``, queue ``high``): POST a job's final state to its
``callback_url``, signed (see :mod:`webapp.core.webhooks` for the format and the signature)."""

from __future__ import annotations

from typing import Any

from flask import current_app
from rq import get_current_job

from jobs.tracking import NOT_RUNNING, JobTracker
from webapp.core import egress, webhooks
from webapp.core.db import connection
from webapp.core.protocol.job_errors import JobError, TransientJobError
from webapp.core.models import Job, isoformat, utcnow


def deliver_webhook(job_id: str) -> dict[str, Any]:
    """POST job ``job_id``'s final state to its ``callback_url`` and record the outcome on its row.

    Args:
        job_id: the reported job (not this delivery job).

    Returns:
        ``{"job_id", "url", "http_status"}`` when the receiver answered 2xx.

    Raises:
        TransientJobError: no answer within ``WEBHOOK_TIMEOUT`` seconds, a connection error, or
            HTTP 408/429/5xx — retried with backoff up to ``WEBHOOK_JOB_RETRIES`` times.
        JobError: ``webhook_rejected`` for any other answer (retrying would not change it),
            ``webhook_refused`` when :func:`webapp.core.egress.resolve` refuses the URL (its host now
            resolves to an address that is not public, or the URL is one no check accepts; a
            resolver that fails for the moment is transient), or ``not_found`` when the row or
            its ``callback_url`` is gone.

    The POST goes to an address the check accepted (:func:`webapp.core.egress.request`): the host
    is resolved once, so a DNS answer that changes after the check is never used.
    """
    config = current_app.config
    rq_job = get_current_job()
    tracker = JobTracker(rq_job.id, rq_job) if rq_job else None
    with connection():
        if tracker is not None and not tracker.start():
            return NOT_RUNNING
        job = Job.get_or_none(Job.id == job_id)
        if job is None or not job.callback_url:
            raise JobError(f"job {job_id} has no webhook to deliver", code="not_found")
        previous = job.webhook or {}
        attempts = int(previous.get("attempts", 0)) + 1
        body = webhooks.encode(webhooks.payload(job))
        url = job.callback_url
    headers = {
        "Content-Type": "application/json",
        webhooks.SIGNATURE_HEADER: webhooks.sign(body, config["WEBHOOK_SECRET"]),
        webhooks.DELIVERY_HEADER: rq_job.id if rq_job else "",
        "User-Agent": "Docket-Webhook/1",
    }
    try:
        destination = egress.resolve(url, config["WEBHOOK_ALLOW_PRIVATE"])
    except egress.DestinationRefused as exc:
        message = f"the webhook to {url} was not sent: {exc}"
        transient = exc.transient and _retries_left(rq_job)
        _record(job_id, attempts, "retrying" if transient else "failed", None, message)
        raise JobError(message, code="webhook_refused", transient=exc.transient) from None
    try:
        # The answer's body is never read: a receiver cannot make the worker hold a large one.
        response = egress.request(destination, "POST", body=body, headers=headers,
                                  timeout=config["WEBHOOK_TIMEOUT"], preload_content=False)
        response.close()
    except egress.RequestFailed as exc:
        error = TransientJobError(f"the webhook receiver at {url} did not answer: {exc}",
                                  code="webhook_unreachable")
        _record(job_id, attempts, "retrying" if _retries_left(rq_job) else "failed", None, error.message)
        raise error from exc
    if 200 <= response.status < 300:
        _record(job_id, attempts, "delivered", response.status, None)
        result = {"job_id": job_id, "url": url, "http_status": response.status}
        if tracker is not None:
            with connection():
                tracker.finish_query(result).execute()
            tracker.finished()
        return result
    transient = response.status in (408, 429) or response.status >= 500
    message = f"the webhook receiver at {url} answered HTTP {response.status}"
    final = not (transient and _retries_left(rq_job))
    _record(job_id, attempts, "failed" if final else "retrying", response.status, message)
    raise JobError(message, code="webhook_failed" if transient else "webhook_rejected", transient=transient)


def _retries_left(rq_job) -> bool:
    return bool(rq_job is not None and rq_job.retries_left)


def _record(job_id: str, attempts: int, status: str, http_status: int | None, error: str | None) -> None:
    """Store the webhook's outcome on the reported job's row."""
    with connection():
        Job.update(webhook={"status": status, "attempts": attempts, "http_status": http_status, "error": error,
                            "at": isoformat(utcnow())}).where(Job.id == job_id).execute()


def needed_by_delivery(job: Job) -> tuple[set[str], set[str]]:
    """The webhook kind's ``keeps`` hook: a delivery that has not ended needs the row of the job
    it reports (``params["job_id"]``); retention keeps it. ``job``: the row (``id``, ``params``).

    Returns:
        ``(job ids, document ids)``: the reported job; no documents.
    """
    reported = (job.params or {}).get("job_id")
    return ({reported} if reported else set()), set()
