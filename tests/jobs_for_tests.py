"""Job functions used only by tests (importable by worker processes started from the project root)."""

import os
import time

from rq import get_current_job


def report_pid_and_sleep(seconds: float) -> None:
    """Store the pid of the process running the job in its meta, then sleep (long enough to be killed)."""
    job = get_current_job()
    job.meta["pid"] = os.getpid()
    job.save_meta()
    time.sleep(seconds)


def block_alarm_and_sleep(seconds: float) -> None:
    """Sleep with SIGALRM blocked, as a job stuck in native code would: RQ's in-process time
    limit (an alarm) cannot interrupt it, only the pool can."""
    import signal

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(seconds)


def describe_process() -> dict:
    """What the worker process running the job had loaded before the job started."""
    import gc
    import sys

    from flask import current_app

    from webapp.core import metrics

    # Read before anything below could import or build them itself.
    modules = sorted(name for name in ("wordllama", "pypdfium2", "docx", "bs4", "lxml", "charset_normalizer",
                                       "semantic_text_splitter", "jobs.document_job") if name in sys.modules)
    instruments_built = metrics.instruments.cache_info().currsize == 1
    from webapp.core.embeddings import embedder_from_config, embedder_kind

    openai = embedder_kind(current_app.config) == "openai"
    return {
        "pid": os.getpid(),
        "frozen_objects": gc.get_freeze_count(),
        "metric_instruments_built": instruments_built,
        # An OpenAI embedder (built before the fork, cached) whose client built its embeddings
        # resource (the warm-up's load()).
        "openai_client_loaded": openai and "embeddings" in vars(embedder_from_config(current_app.config)._client),
        "modules": modules,
    }
