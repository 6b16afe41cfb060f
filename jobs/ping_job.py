"""Jobs that check the job system itself: ``ping`` answers which worker ran it.

``flask --app wsgi rq ping`` enqueues one on each queue and waits for the answers, so an
operator sees at once whether anything consumes ``high`` and ``default``, and how long a
trivial job takes from enqueue to finished.
"""

from __future__ import annotations

import os
from typing import Any

from rq import get_current_job


def ping() -> dict[str, Any]:
    """Do nothing but answer.

    Returns:
        ``{"worker": <RQ worker name>, "pid": <process id>}`` of the process that ran it.
    """
    job = get_current_job()
    return {"worker": job.worker_name if job else None, "pid": os.getpid()}
