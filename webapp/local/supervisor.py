"""The run command's process manager: honcho's, except that a crashed worker or scheduler comes back.

honcho (2.0) stops every process as soon as one exits, by design (nickstenning/honcho#175; a
``--respawn`` option was proposed in #195 and not merged), so a SIGKILLed worker pool used to take
the web process down with it. :class:`RestartingManager` is honcho's ``Manager`` with one change:
a process whose type is in ``restart`` (``worker``, ``scheduler``) that exits while nobody asked it
to stop is started again after a backoff (1 s, doubling up to 30 s; back to 1 s once it has run
for 30 s), with a ``system`` line naming its exit status. Any other process exiting (``web``)
still stops everything, with that process's exit status. SIGINT / SIGTERM / SIGHUP stop everything
as in honcho (SIGTERM to each process group, SIGKILL after honcho's ``KILL_WAIT``, 5 s) and cancel
any pending restart.

Nothing it started outlives it, however it ends (issue 21): each Procfile process runs in a process
group of its own (honcho's ``sh -c`` in a new session), watched by a runner process forked from
the supervisor (:class:`GroupProcess`). A runner gets SIGTERM from the kernel when the supervisor
dies (``PR_SET_PDEATHSIG``; a SIGKILLed supervisor included) and then stops its whole group —
SIGTERM, SIGKILL after ``KILL_WAIT`` — so gunicorn's and the pool's worker processes go too. The
run command makes the supervisor itself die with it the same way. Its output cannot raise
(:mod:`webapp.local.output`): a closed terminal or a broken pipe does not abort a shutdown.

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
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from honcho import environ
from honcho.manager import KILL_WAIT, SIGNALS, Manager
from honcho.printer import Printer
from honcho.process import Popen as HonchoPopen, Process

from webapp.core.processes import die_with_parent
from webapp.local.output import make_output_unbreakable

# honcho's table, plus SIGHUP: a closed terminal (or its shell) stops everything like Ctrl-C.
STOP_SIGNALS = {**SIGNALS, signal.SIGHUP: {'name': 'SIGHUP', 'rc': 129}}


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


def stop_process_group(pgid: int, leader: subprocess.Popen | None = None, grace: float = KILL_WAIT) -> None:
    """End every process of group ``pgid``: SIGTERM, then SIGKILL to what is left after ``grace``
    seconds. Returns once the group is empty (a moment after the SIGKILL at worst).

    Args:
        pgid: the process group (honcho's ``sh -c`` leads one per Procfile process).
        leader: the group's leader when it is this process's child: it is reaped as it exits
            (a zombie still counts as a member of its group).
    """
    def alive() -> bool:
        if leader is not None:
            leader.poll()
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, signum)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + wait
        while alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not alive():
            return


class GroupProcess(Process):
    """honcho's ``Process`` (the runner of one Procfile process, forked from the supervisor), which
    stops its process group when the supervisor dies.

    honcho's runner ignores SIGINT and SIGTERM and exits only when its child does: the supervisor
    signals the child's group itself. Here the runner also asks the kernel for SIGTERM when the
    supervisor dies (``PR_SET_PDEATHSIG``); a stop signal that finds the supervisor gone ends the
    group (:func:`stop_process_group`) and then the runner. While the supervisor lives, SIGINT,
    SIGTERM and SIGHUP (a terminal's, sent to the whole foreground group) change nothing, as in
    honcho. The handlers are Python functions, not ``SIG_IGN``, so the Procfile process does not
    inherit an ignored SIGINT across ``exec``.
    """

    def run(self, events=None, ignore_signals=False) -> None:  # noqa: ARG002 — honcho's signature
        """honcho 2.0's ``Process.run`` (start the command, relay its lines, report its stop) with
        the supervisor's death handled; ``ignore_signals`` is honcho's and always applies here."""
        supervisor = os.getppid()
        self._events = events
        self._child = None

        def on_stop_signal(signum, frame):
            if os.getppid() == supervisor:
                return  # the supervisor lives: it signals the group itself (honcho's design)
            if self._child is not None:
                stop_process_group(self._child.pid, self._child)
            os._exit(128 + signum)  # no 'stop' message: nobody reads the queue any more

        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, on_stop_signal)
        die_with_parent(signal.SIGTERM, supervisor)
        self._child = HonchoPopen(self.cmd, env=self.env, cwd=self.cwd)  # sh -c, in a session of its own
        self._send_message({'pid': self._child.pid}, type='start')
        for line in iter(self._child.stdout.readline, b''):
            if not self.quiet:
                self._send_message(line)
        self._child.stdout.close()
        self._child.wait()
        self._send_message({'returncode': self._child.returncode}, type='stop')


class RestartingManager(Manager):
    """honcho's ``Manager`` that restarts the processes of the types in ``restart`` when they exit.

    Args:
        printer: where lines go (honcho's ``Printer``; stdout by default).
        restart: process types (``"worker"`` restarts ``worker.1``, ``worker.2`` …) to restart.
        backoff: delays between restarts of one process.
    """

    def __init__(self, printer: Printer | None = None, restart: Iterable[str] = (), backoff: Backoff = Backoff()):
        super().__init__(printer)
        self._process_ctor = GroupProcess
        self.restart = frozenset(restart)
        self.backoff = backoff

    def loop(self) -> None:
        """Start every process and relay their output until all have stopped.

        honcho 2.0's ``Manager.loop`` (signal handling, ``KILL_WAIT``, exit status), with the
        changes marked ``# +`` below: a restartable process's stop schedules its restart instead
        of stopping everything, due restarts are started on each turn, a process restarted (or
        started) as a shutdown began is stopped too, and SIGHUP stops everything as SIGTERM does
        (status 129). honcho has no hook for this, hence the copy; it is
        pinned in requirements.txt.
        """
        def _terminate(signum, frame):
            self._system_print("%s received\n" % STOP_SIGNALS[signum]['name'])
            self.returncode = STOP_SIGNALS[signum]['rc']
            self.terminate()

        for signum in STOP_SIGNALS:  # + SIGHUP
            signal.signal(signum, _terminate)

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

    def _killall(self, force: bool = False) -> None:
        """honcho's ``_killall`` for the processes that have started: one whose start has not been
        reported yet has no pid to signal (honcho raised ``KeyError`` there, from the signal
        handler, and the supervisor died leaving the rest running); :meth:`_on_start` stops it
        as soon as it reports its start."""
        for name, p in self._processes.items():
            if 'returncode' in p or p.get('pid') is None:
                continue
            signame = 'SIGKILL' if force else 'SIGTERM'
            self._system_print("sending %s to %s (pid %s)\n" % (signame, name, p['pid']))
            if force:
                self._procmgr.kill(p['pid'])
            else:
                self._procmgr.terminate(p['pid'])

    def _start(self) -> None:
        for name in self._processes:
            self._processes[name]['process'] = self._spawn(name)

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
    make_output_unbreakable()

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
