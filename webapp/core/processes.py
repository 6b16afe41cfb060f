"""Process lifetime helpers shared by the run command's embedded Redis and the worker pool."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1  # prctl(2) option: the signal the kernel sends when the parent dies


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Have the kernel send this process ``signum`` when its parent process dies, however it
    dies (SIGKILL included), so a child never outlives what started it.

    Linux only (``prctl(PR_SET_PDEATHSIG)``); elsewhere it does nothing. The setting survives
    ``exec`` (it is safe in a ``subprocess`` ``preexec_fn``) but not ``fork``.
    """
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signum)
    if os.getppid() != parent:  # the parent died before the call took effect
        os.kill(os.getpid(), signum)
