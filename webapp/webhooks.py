"""Webhooks: one signed POST with a job's final state to the ``callback_url`` given at upload.

The delivery is a job of its own (kind ``webhook``, queue ``high``, :mod:`jobs.webhooks`),
launched by the state machine when a job with a ``callback_url`` reaches a terminal state
(:func:`webapp.job_states.after_terminal`). So a receiver that is down or slow never fails or
delays the job it reports on: each POST has a bounded timeout (``WEBHOOK_TIMEOUT``), transient
failures are retried with jittered backoff (``WEBHOOK_JOB_RETRIES``), and the outcome is
recorded on the reported job's row (``webhook``).

Signature: the header ``X-Docket-Signature: sha256=<hex>`` is HMAC-SHA256 of the exact request
body with ``WEBHOOK_SECRET`` as the key (GitHub's scheme). A receiver recomputes it over the raw
body and compares with :func:`hmac.compare_digest`; ``X-Docket-Delivery`` is the delivery
job's id, the same for every retry of one delivery.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import socket
from typing import Any
from urllib.parse import urlsplit

from webapp.models import Job, isoformat

SIGNATURE_HEADER = "X-Docket-Signature"
DELIVERY_HEADER = "X-Docket-Delivery"
EVENT = "job.ended"


class WebhookDestinationError(ValueError):
    """A callback URL points at an address Docket does not POST to; the message says why."""


def check_destination(url: str, allow_private: bool = False) -> None:
    """Refuse a callback URL whose host resolves to an address that is not public: loopback,
    private networks (RFC 1918, RFC 4193), link-local (the cloud metadata service at
    169.254.169.254), multicast, reserved or unspecified — a webhook must not become a way to make
    the server call its own network (SSRF).

    The check runs when the URL is given and again right before each delivery (a name may
    resolve elsewhere by then). Between that check and the connection a hostile DNS server could
    still switch the answer (DNS rebinding); a deployment that must rule that out too sends
    webhooks through an egress proxy.

    Args:
        url: an absolute ``http(s)`` URL.
        allow_private: accept every address (``WEBHOOK_ALLOW_PRIVATE``: receivers on the local
            network, the tests' local receiver).

    Raises:
        WebhookDestinationError: the host does not resolve, or one of its addresses is not public.
    """
    if allow_private:
        return
    host = urlsplit(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise WebhookDestinationError(f"its host {host!r} could not be resolved ({exc})") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        if not address.is_global or address.is_multicast:
            raise WebhookDestinationError(f"its host {host!r} resolves to {address}, which is not a public address "
                                          "(set WEBHOOK_ALLOW_PRIVATE=true for receivers on the local network)")


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
