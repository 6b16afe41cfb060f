"""Webhooks: one signed POST with a job's final state to the ``callback_url`` given at upload.

The delivery is a job of its own (kind ``webhook``, queue ``high``, :mod:`jobs.webhook_job`),
launched when a job with a ``callback_url`` reaches a terminal state (:func:`launch_delivery`,
a receiver of :data:`webapp.core.protocol.states.job_ended`). So a receiver that is down or slow never fails or
delays the job it reports on: each POST has a bounded timeout (``WEBHOOK_TIMEOUT``), transient
failures are retried with jittered backoff (``WEBHOOK_JOB_RETRIES``), and the outcome is
recorded on the reported job's row (``webhook``). Where a webhook may go is decided by
:mod:`webapp.core.egress` (public addresses only unless ``WEBHOOK_ALLOW_PRIVATE``; the POST goes to the
address that was checked).

Signature: the header ``X-Docket-Signature: sha256=<hex>`` is HMAC-SHA256 of the exact request
body with ``WEBHOOK_SECRET`` as the key (GitHub's scheme). A receiver recomputes it over the raw
body and compares with :func:`hmac.compare_digest`; ``X-Docket-Delivery`` is the delivery
job's id, the same for every retry of one delivery.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from flask import Flask

from webapp.core.protocol.states import job_ended
from webapp.core.protocol.launch import launch
from webapp.core.models import Job, isoformat

SIGNATURE_HEADER = "X-Docket-Signature"
DELIVERY_HEADER = "X-Docket-Delivery"
EVENT = "job.ended"


def init_app(app: Flask) -> None:
    """Deliver the webhooks of ``app``'s jobs: connect :func:`launch_delivery` to
    :data:`webapp.core.protocol.states.job_ended` for this app."""
    job_ended.connect(launch_delivery, sender=app)


def launch_delivery(app: Flask, row: dict[str, Any], **_: Any) -> None:
    """``job_ended`` receiver: launch the ``webhook`` job of an ended job that has a
    ``callback_url`` (``row`` as the signal sends it), owned by the job's owner.

    Raises:
        webapp.core.protocol.launch.QueueUnavailable: Redis refused (the delivery's row says ``failed``).
    """
    if row["callback_url"]:
        launch("webhook", {"job_id": row["id"]}, owner=row["owner"])


def sign(body: bytes, secret: str) -> str:
    """The ``X-Docket-Signature`` value for ``body``: ``"sha256=" + hex HMAC-SHA256``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, secret: str, signature: str) -> bool:
    """Whether ``signature`` is :func:`sign` of ``body`` (constant-time comparison)."""
    return hmac.compare_digest(sign(body, secret), signature or "")


def payload(job: Job) -> dict[str, Any]:
    """The webhook body for ``job``: ``{"event": "job.ended", "job": {…final state…}}``."""
    return {
        "event": EVENT,
        "job": {
            "id": job.id,
            "kind": job.kind,
            "status": job.status,
            "error": job.error,
            "error_code": job.error_code,
            "result": job.result,
            "attempts": job.attempts,
            "document_id": job.document_id,
            "batch_id": job.batch_id,
            "ended_at": isoformat(job.ended_at),
        },
    }


def encode(body: dict[str, Any]) -> bytes:
    """The exact bytes sent (and signed): compact UTF-8 JSON."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
