"""The run command's process manager: honcho's, except that a crashed worker or scheduler comes back.

honcho (2.0) stops every process as soon as one exits, by design (nickstenning/honcho#175; a
``--respawn`` option was proposed in #195 and not merged), so a SIGKILLed worker pool used to take
the web process down with it. :class:`RestartingManager` is honcho's ``Manager`` with one change:
a process whose type is in ``restart`` (``worker``, ``scheduler``) that exits while nobody asked it
to stop is started again after a backoff (1 s, doubling up to 30 s; back to 1 s once it has run
for 30 s), with a ``system`` line naming its exit status. Any other process exiting (``web``)
still stops everything, with that process's exit status. SIGINT / SIGTERM stop everything as in
honcho (SIGTERM to each process group, SIGKILL after honcho's ``KILL_WAIT``, 5 s) and cancel any
pending restart.

Run as ``python -m webapp.local.supervisor --procfile Procfile --app-root . --port 5000 --restart
worker,scheduler web worker scheduler``; it prints honcho's usual lines (``worker.1 started
(pid=N)``, ``worker.1 stopped (rc=137)``) and exits with honcho's status (130 after SIGINT,
143 after SIGTERM, else the status of the process that stopped everything).
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import queue
import signal
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from honcho import environ
from honcho.manager import KILL_WAIT, SIGNALS, Manager
from honcho.printer import Printer


@dataclass(frozen=True)
class Backoff:
    """Delay before a restart: ``first`` seconds, doubling with each quick crash, at most ``limit``.

    A process that ran ``stable_after`` seconds or more before it exited counts as healthy: its
    next restart waits ``first`` again.
    """

    first: float = 1.0
    limit: float = 30.0
    stable_after: float = 30.0

    def delay(self, failures: int) -> float:
        """Seconds to wait before restart number ``failures`` (1, 2, …) of a run of quick crashes."""
        return min(self.limit, self.first * 2 ** max(0, failures - 1))


def describe_exit(returncode: int | None) -> str:
    """``rc=137, killed by SIGKILL`` or ``rc=1``: a process's exit status, with the signal that ended it.

    honcho runs each command through ``sh -c``: a command killed by signal N shows as the shell's
    status 128 + N, or as -N (``subprocess``'s way) when the shell itself was killed.
    """
    if returncode is not None and (returncode < 0 or 128 < returncode < 128 + signal.NSIG):
        try:
            return f"rc={returncode}, killed by {signal.Signals(abs(returncode) % 128).name}"
        except ValueError:
            pass
    return f"rc={returncode}"


class RestartingManager(Manager):
    """honcho's ``Manager`` that restarts the processes of the types in ``restart`` when they exit.

    Args:
        printer: where lines go (honcho's ``Printer``; stdout by default).
        restart: process types (``"worker"`` restarts ``worker.1``, ``worker.2`` …) to restart.
        backoff: delays between restarts of one process.
    """

    def __init__(self, printer: Printer | None = None, restart: Iterable[str] = (), backoff: Backoff = Backoff()):
        super().__init__(printer)
        self.restart = frozenset(restart)
        self.backoff = backoff

    def loop(self) -> None:
        """Start every process and relay their output until all have stopped.

        honcho 2.0's ``Manager.loop`` (signal handling, ``KILL_WAIT``, exit status), with the
        changes marked ``# +`` below: a restartable process's stop schedules its restart instead
        of stopping everything, due restarts are started on each turn, and a process restarted
        as a shutdown began is stopped too. honcho has no hook for this, hence the copy; it is
        pinned in requirements.txt.
        """
        def _terminate(signum, frame):
            self._system_print("%s received\n" % SIGNALS[signum]['name'])
            self.returncode = SIGNALS[signum]['rc']
            self.terminate()

        signal.signal(signal.SIGTERM, _terminate)
        signal.signal(signal.SIGINT, _terminate)

        self._start()

        exit = False
        exit_start = None

        while 1:
            try:
                msg = self.events.get(timeout=0.1)
            except queue.Empty:
                if exit:
                    break
            else:
                if msg.type == 'line':
                    self._printer.write(msg)
                elif msg.type == 'start':
                    self._on_start(msg.name, msg.data['pid'])  # +
                elif msg.type == 'stop':
                    self._on_stop(msg.name, msg.data['returncode'])  # +

            self._start_due_restarts()  # +

            if self._all_started() and self._all_stopped():
                exit = True

            if exit_start is None and self._all_started() and self._any_stopped():
                exit_start = self._clock.now()
                self.terminate()

            if exit_start is not None:
                waiting = self._clock.now() - exit_start
                if waiting > datetime.timedelta(seconds=KILL_WAIT):
                    self.kill()

    def terminate(self) -> None:
        """Stop every process (SIGTERM to its group); a restart still waiting is cancelled."""
        for p in self._processes.values():
            p.pop('restart_at', None)
        super().terminate()

    def _restartable(self, name: str) -> bool:
        return name.rsplit('.', 1)[0] in self.restart

    def _on_start(self, name: str, pid: int) -> None:
        p = self._processes[name]
        p['pid'] = pid
        p['started_at'] = time.monotonic()
        self._system_print("%s started (pid=%s)\n" % (name, pid))
        if self._terminating:  # restarted just as a shutdown began: the shutdown missed it
            self._system_print("sending SIGTERM to %s (pid %s)\n" % (name, pid))
            self._procmgr.terminate(pid)

    def _on_stop(self, name: str, returncode: int) -> None:
        p = self._processes[name]
        p['returncode'] = returncode
        self._system_print("%s stopped (rc=%s)\n" % (name, returncode))
        if self._terminating or not self._restartable(name):
            if self.returncode is None:
                self.returncode = returncode
            return
        uptime = time.monotonic() - p.get('started_at', time.monotonic())
        p['failures'] = 1 if uptime >= self.backoff.stable_after else p.get('failures', 0) + 1
        delay = self.backoff.delay(p['failures'])
        p['restart_at'] = time.monotonic() + delay
        self._system_print("%s exited unexpectedly (%s) after %.1f s; restarting it in %g s\n"
                           % (name, describe_exit(returncode), uptime, delay))

    def _start_due_restarts(self) -> None:
        now = time.monotonic()
        for name, p in self._processes.items():
            if p.get('restart_at') is not None and p['restart_at'] <= now and not self._terminating:
                del p['restart_at'], p['returncode']
                self._system_print("restarting %s\n" % name)
                p['process'] = self._spawn(name)

    def _spawn(self, name: str) -> multiprocessing.Process:
        """What ``Manager._start`` does for one process: its runner, in a process of its own."""
        process = multiprocessing.Process(name=name, target=self._processes[name]['obj'].run,
                                          args=(self.events, True))
        process.start()
        return process

    def _any_stopped(self) -> bool:
        """Whether a process stopped for good (one waiting for its restart has not)."""
        return any(p.get('returncode') is not None and 'restart_at' not in p for p in self._processes.values())


def wipe_metrics(app_root: Path, app_env: dict[str, str]) -> Path:
    """Empty the Prometheus multiprocess folder before any process starts (``prometheus_client``'s
    rule: metric files of an earlier run must not be summed with this one's), and hand the same
    folder to every process through ``PROMETHEUS_MULTIPROC_DIR``.

    The folder is ``PROMETHEUS_MULTIPROC_DIR`` (``.env`` first, then the environment), else
    ``<instance>/prometheus`` as :func:`webapp.core.config.load_config` defaults it. Worker and scheduler
    restarts do not wipe it: a restarted process's predecessor's counts must still count.

    Returns:
        The folder.
    """
    from webapp.core.metrics import MULTIPROC_ENV, wipe

    instance = Path(app_env.get("DOCKET_INSTANCE_PATH") or os.environ.get("DOCKET_INSTANCE_PATH")
                    or app_root / "instance")
    directory = Path(app_env.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV) or instance / "prometheus")
    wipe(directory)
    os.environ[MULTIPROC_ENV] = str(directory)
    return directory


def main(argv: list[str] | None = None) -> None:
    """``python -m webapp.local.supervisor``: honcho's ``start`` with restarts; exits with the manager's status."""
    parser = argparse.ArgumentParser(prog="python -m webapp.local.supervisor", description=__doc__.splitlines()[0])
    parser.add_argument("--procfile", default="Procfile", type=Path)
    parser.add_argument("--app-root", default=".", type=Path, help="working directory of the processes")
    parser.add_argument("--port", default=5000, type=int, help="PORT of the first process type (+100 per type)")
    parser.add_argument("--restart", default="", help="comma-separated process types to restart when they exit")
    parser.add_argument("processes", nargs="*", help="process types to start (default: all)")
    args = parser.parse_args(argv)

    procfile = environ.parse_procfile(args.procfile.read_text())
    names = args.processes or list(procfile.processes)
    unknown = [name for name in names if name not in procfile.processes]
    if unknown:
        parser.error(f"not in {args.procfile}: {', '.join(unknown)}")
    dotenv = args.app_root / ".env"  # as honcho start does: its variables win over the environment
    app_env = environ.parse(dotenv.read_text()) if dotenv.is_file() else {}
    wipe_metrics(args.app_root, app_env)
    manager = RestartingManager(Printer(sys.stdout), restart=filter(None, args.restart.split(",")))
    for process in environ.expand_processes({name: procfile.processes[name] for name in names}, env=app_env,
                                            port=args.port):
        manager.add_process(process.name, process.cmd, quiet=process.quiet, env={**os.environ, **process.env},
                            cwd=str(args.app_root))
    manager.loop()
    sys.exit(manager.returncode)


if __name__ == "__main__":
    main()
