"""Job functions used only by tests (importable by worker processes started from the project root)."""

import os
import time

from rq import get_current_job


def report_pid_and_sleep(seconds: float) -> None:
    """Store the work horse's pid in the job's meta, then sleep (long enough to be killed)."""
    job = get_current_job()
    job.meta["pid"] = os.getpid()
    job.save_meta()
    time.sleep(seconds)
