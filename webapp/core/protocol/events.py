"""Live job events: every status/progress change of a Job row, published on Redis pub/sub.

The state machine (:mod:`webapp.core.protocol.states`) calls :func:`publish` right after each guarded
``UPDATE`` that changed a row (and, for terminal states, after the transaction committed), with
the row's columns at hand (``UPDATE … RETURNING``: no extra query). One message, sent on up to
two channels in one round trip (a pipeline, no ``MULTI``)::

    docket:events:job:<job_id>        every change of that job
    docket:events:batch:<batch_id>    every change of a job of that upload (batch)

The message is JSON (:func:`job_event`)::

    {"id": "…", "kind": "document", "status": "started", "progress": 40, "stage": "embed",
     "error": null, "error_code": null, "batch_id": "…", "updated_at": "2026-…+00:00"}

Pub/sub is fire-and-forget: a subscriber that is not listening at that moment misses the
message, so readers (``/api/jobs/<id>/events``, :mod:`webapp.edge.sse`) subscribe first and
then read the row. The database stays the truth; these messages are a live hint.

A publish that fails (Redis down) never fails or undoes the change: it is logged (a warning for
the first failure, then quietly until a publish succeeds again). Core module: the Redis client
is the app's (:mod:`webapp.core.queues`), which connects lazily — nothing connects at import.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Mapping

from webapp.core.protocol.kinds import batch_member_kinds
from webapp.core.models import TERMINAL_STATUSES, isoformat
from webapp.core.queues import rq

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "docket:events:"
# The Job columns a message is made of (the RETURNING list of the state machine's UPDATEs).
EVENT_COLUMNS = ("id", "kind", "status", "progress", "stage", "error", "error_code", "attempts", "retry_at", "run_at",
                 "batch_id", "updated_at", "parent_id", "pages_done", "pages_total")

_failing = False  # the last publish of this process failed (logged once until one succeeds)


def job_channel(job_id: str) -> str:
    """The pub/sub channel of one job's changes: ``docket:events:job:<job_id>``."""
    return f"{CHANNEL_PREFIX}job:{job_id}"


def batch_channel(batch_id: str) -> str:
    """The pub/sub channel of the changes of every job of one upload: ``docket:events:batch:<batch_id>``."""
    return f"{CHANNEL_PREFIX}batch:{batch_id}"


def job_event(row: Mapping[str, Any]) -> dict[str, Any]:
    """The event of a job row: its id, kind, status (RQ's words), progress (0–100 %), stage,
    error sentence and code (set when it failed, stopped or was canceled, or is waiting for a
    retry; ``None`` else), attempts (starts so far), ``retry_at`` (a scheduled retry), batch id,
    ``updated_at`` (ISO-8601, UTC), ``pages_done``/``pages_total`` (a big PDF read in page-range
    parts: pages read so far of its pages; ``None`` otherwise), ``parent_id`` (a part's or join's
    document job) and ``terminal`` (finished, failed, stopped or canceled).

    Args:
        row: a mapping with the :data:`EVENT_COLUMNS` (a ``.dicts()`` row), or a Job's ``__data__``.
    """
    return {
        "id": row["id"],
        "kind": row.get("kind"),
        "status": row.get("status"),
        "progress": row.get("progress") or 0,
        "stage": row.get("stage"),
        "error": row.get("error"),
        "error_code": row.get("error_code"),
        "attempts": row.get("attempts") or 0,
        "retry_at": _iso(row.get("retry_at")),
        "run_at": _iso(row.get("run_at")),
        "batch_id": row.get("batch_id"),
        "updated_at": _iso(row.get("updated_at")),
        "pages_done": row.get("pages_done"),
        "pages_total": row.get("pages_total"),
        "parent_id": row.get("parent_id"),
        "terminal": row.get("status") in TERMINAL_STATUSES,
    }


def _iso(value: Any) -> str | None:
    return value if isinstance(value, str) or value is None else isoformat(value)


def publish(row: Mapping[str, Any]) -> None:
    """Publish the event of ``row`` (see :func:`job_event`) on its job's channel and, when it is
    the document job of a batch, on the batch's channel: one round trip to Redis. (A batch's
    report job, :mod:`webapp.core.workflows.chords`, has its own channel only, as ``GET /api/batches/<id>``
    counts documents only.)

    Never raises: a failure (Redis unreachable, no application context) is logged — a warning
    for the first one, debug after that until a publish succeeds again — and the caller's change
    of the row stands.
    """
    global _failing
    try:
        event = job_event(row)
        message = json.dumps(event, separators=(",", ":"))
        pipeline = rq.connection.pipeline(transaction=False)
        pipeline.publish(job_channel(event["id"]), message)
        if event["batch_id"] and event["kind"] in batch_member_kinds():  # a batch is its documents (not its report)
            pipeline.publish(batch_channel(event["batch_id"]), message)
        pipeline.execute()
    except Exception as exc:
        if not _failing:
            log.warning("job %s: its change was saved but not published as a live event: %s",
                        row.get("id"), exc)
        else:
            log.debug("job %s: live event not published: %s", row.get("id"), exc)
        _failing = True
        return
    if _failing:
        log.info("live job events are published again")
        _failing = False
