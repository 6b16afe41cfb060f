"""Warm-up (before the pool forks): everything a job needs is loaded once, in the worker
command's process, and shared copy-on-write by every worker process. (The worker model as a
whole: :mod:`jobs.worker`.)
"""

from __future__ import annotations

import gc
import importlib
import logging
import time

from flask import Flask

from webapp.core import metrics

log = logging.getLogger(__name__)


def prepare_worker_process(app: Flask) -> float:
    """Load and warm everything a job needs, once, in the worker command's process.

    Imports the module of every declared kind's function (:data:`webapp.core.protocol.kinds.JOB_KINDS`)
    and runs each kind's ``warm_up`` (the document kind's runs its parsers, chunker and embedder
    on tiny samples, so their lazy imports and caches are filled too), builds the metric
    instruments (:func:`webapp.core.metrics.instruments`), then moves every object
    into the garbage collector's permanent generation (``gc.freeze()``), so that collections in
    the forked worker processes do not touch — and copy — the pages they share with this one.

    Opens no socket and no database connection (the OpenAI client connects on first use).

    Args:
        app: the Flask app whose configuration selects the embedder and chunk sizes.

    Returns:
        Seconds it took.
    """
    from webapp.core.protocol.kinds import JOB_KINDS, hook

    started = time.perf_counter()
    for kind in JOB_KINDS.values():
        importlib.import_module(kind.function.rpartition(".")[0])
    warmed = []
    for kind in JOB_KINDS.values():
        if kind.warm_up:
            hook(kind.warm_up)(app)
            warmed.append(kind.name)
    # The metric instruments every job records into (webapp/core/metrics.py), built here rather
    # than by each worker process's first job (a local embedder's warm-up records into them
    # anyway; an OpenAI one sends nothing, so nothing did); prometheus_client's multiprocess
    # values open their own files again in a forked process (it checks the pid on every write).
    metrics.instruments()
    gc.collect()
    gc.freeze()
    elapsed = time.perf_counter() - started
    log.info("worker process prepared in %.2f s (%d kinds; warmed up: %s)", elapsed, len(JOB_KINDS),
             ", ".join(warmed) or "none")
    return elapsed
