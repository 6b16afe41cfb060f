"""Process lifetime helpers shared by the run command's embedded Redis and the worker pool."""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1  # prctl(2) option: the signal the kernel sends when the parent dies
# libc, opened once at import: die_with_parent runs in freshly forked children of threaded
# processes, where a dlopen() could wait forever on a lock another thread held at the fork.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def die_with_parent(signum: int = signal.SIGTERM, parent_pid: int | None = None) -> None:
    """Have the kernel send this process ``signum`` when its parent process dies, however it
    dies (SIGKILL included), so a child never outlives what started it.

    Args:
        signum: the signal to get.
        parent_pid: the pid of the process that started this one, when known (a fork hook knows
            it): if the parent died before this call, ``getppid()`` already names the process
            this one was handed to, and only this comparison notices.

    Linux only (``prctl(PR_SET_PDEATHSIG)``); elsewhere it does nothing. The setting survives
    ``exec`` (it is safe in a ``subprocess`` ``preexec_fn``) but not ``fork``.
    """
    if not sys.platform.startswith("linux"):
        return
    parent = parent_pid if parent_pid is not None else os.getppid()
    _LIBC.prctl(_PR_SET_PDEATHSIG, signum)
    if os.getppid() != parent:  # the parent died before the call took effect
        os.kill(os.getpid(), signum)


def children_die_with_this_process(signum: int = signal.SIGTERM) -> None:
    """Make every process this one forks from now on (``os.fork``, ``multiprocessing``'s fork)
    get ``signum`` when this process dies (:func:`die_with_parent` in the child, through
    :func:`os.register_at_fork`). For children a library forks where Docket has no hook: RQ's
    scheduler process, forked by the worker process that holds the scheduler lock, otherwise
    outlives a SIGKILLed worker process and keeps the lock alive. Call once per process."""
    os.register_at_fork(after_in_child=functools.partial(die_with_parent, signum, os.getpid()))
