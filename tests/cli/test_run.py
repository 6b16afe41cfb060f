"""The README's run command from scratch: ``flask --app wsgi dev`` with no Redis at REDIS_URL.

The command must start its own redis-server, create the tables, run the Procfile's ``web``,
``worker`` and ``scheduler`` under honcho, serve the page and the API end to end, and on Ctrl-C
(SIGINT to its process group, as a terminal sends it) or SIGTERM stop everything it started. A
SIGKILLed worker or scheduler comes back while web keeps serving; a SIGKILLed web stops everything
with a non-zero status (``webapp.local.supervisor``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests

from tests import conftest
from tests.conftest import CORPUS, ROOT, process_env
from webapp.local.embedded_redis import free_port, redis_answers
from webapp.core.models import TERMINAL_STATUSES

START_DEADLINE = 60  # seconds; only to avoid hanging, never asserted as a speed
JOB_DEADLINE = 60
STOP_DEADLINE = 30


def _tail(log: Path, lines: int = 60) -> str:
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        return "(no output captured)"
    return "\n--- run command output (tail) ---\n" + "\n".join(text.splitlines()[-lines:])


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _honcho_groups(log: Path) -> dict[str, int]:
    """``{"web.1": pgid, ...}``: honcho starts each Procfile process in a session of its own and
    prints ``web.1 started (pid=N)``; N is that session's process group id."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return {name: int(pid) for name, pid in re.findall(r"(\S+\.\d+) started \(pid=(\d+)\)", text)}


def _wait_until(predicate, deadline_s: float, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def _auth_headers(env: dict[str, str]) -> dict[str, str]:
    """``Authorization: Bearer …`` for /api, from ``flask --app wsgi tokens create`` on the run
    command's database (``env``'s DATABASE_URL; call it once the run command made the tables)."""
    result = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "tokens", "create", "run-command-test"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return {"Authorization": f"Bearer {result.stdout.split()[0]}"}


@pytest.mark.parametrize("stop", ["ctrl_c", "kill"])
def test_run_command_starts_embedded_redis_serves_processes_and_stops_everything(
    config, unused_redis_url, tmp_path, stop
):
    instance = tmp_path / "instance"
    assert not redis_answers(unused_redis_url), "something already answers at the 'unused' Redis URL"
    process, base, log, env = _start_run_command(config, unused_redis_url, tmp_path)
    pgid = process.pid  # start_new_session: the command leads its own process group
    embedded_url = None
    try:
        output = log.read_text(errors="replace")
        found = re.search(r"started an embedded one at (redis://127\.0\.0\.1:\d+/\d+) \(data in (.+?)\)", output)
        assert found, f"no 'started an embedded one at redis://…' line{_tail(log)}"
        embedded_url, data_dir = found.group(1), Path(found.group(2))
        assert f"No Redis answered at {unused_redis_url}" in output, _tail(log)
        assert embedded_url != unused_redis_url
        assert redis_answers(embedded_url), f"the printed Redis URL does not answer{_tail(log)}"
        assert data_dir == instance / "redis", f"redis data in {data_dir}, not under the instance path{_tail(log)}"
        assert (instance / "redis" / "redis.log").is_file(), _tail(log)
        # Every other command for this instance finds the embedded Redis without REDIS_URL.
        assert (instance / "redis.url").read_text().strip() == embedded_url
        assert _config_redis_url(env) == embedded_url
        assert set(_honcho_groups(log)) >= {"web.1", "worker.1"}, f"honcho did not start web and worker{_tail(log)}"

        # The admin token it printed signs the UI in (the link's #token= fragment is what the
        # sign-in page's script posts) and opens the API.
        printed = re.search(rf"Sign in: {re.escape(base)}/signin#token=(dkt_[A-Za-z0-9_-]+)", output)
        assert printed, f"no sign-in link printed{_tail(log)}"
        token = printed.group(1)
        assert f"Authorization: Bearer {token}" in output
        browser = requests.Session()
        form = browser.get(f"{base}/signin", timeout=10).text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
        signed_in = browser.post(f"{base}/signin", data={"token": token, "csrf_token": csrf}, timeout=10)
        assert signed_in.status_code == 200 and signed_in.url == f"{base}/", _tail(log)
        assert signed_in.headers["Content-Type"].startswith("text/html")
        assert "Docket" in signed_in.text and "admin (admin)" in signed_in.text
        headers = {"Authorization": f"Bearer {token}"}
        assert requests.get(f"{base}/api/queues", headers=headers, timeout=10).status_code == 200  # an admin's

        document, job = _upload_and_wait(base, headers, log, "minimal-document.pdf",
                                         (CORPUS / "minimal-document.pdf").read_bytes(), "application/pdf")
        assert job["status"] == "finished", f"{job}{_tail(log)}"

        details = requests.get(f"{base}/api/documents/{document['id']}", headers=headers, timeout=10).json()
        assert details["status"] == "finished" and details["chunks"] >= 1, details

        hits = requests.get(f"{base}/api/search", params={"q": "lorem ipsum"}, headers=headers, timeout=30)
        assert hits.status_code == 200, hits.text
        results = hits.json()["results"]
        assert results, hits.json()
        assert results[0]["document_id"] == document["id"]
        assert results[0]["filename"] == "minimal-document.pdf"

        groups = _honcho_groups(log)
        if stop == "ctrl_c":  # a terminal sends SIGINT to the whole foreground process group
            os.killpg(pgid, signal.SIGINT)
        else:  # `kill PID`, a process manager or a closed IDE: SIGTERM to the command alone
            process.send_signal(signal.SIGTERM)
        try:
            returncode = process.wait(STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the run command did not exit within {STOP_DEADLINE} s of SIGINT{_tail(log)}")

        output = log.read_text(errors="replace")
        assert "Traceback" not in output, _tail(log, 120)
        assert returncode in (0, 130), f"exit status {returncode}{_tail(log)}"
        assert "Stopped the embedded Redis." in output, _tail(log)
        assert not redis_answers(embedded_url), f"the embedded Redis still answers at {embedded_url}{_tail(log)}"
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{base}/healthz", timeout=5)
        # Nothing left behind: not in the command's group, nor in the groups honcho made for web/worker.
        left = lambda: [name for name, g in {"run command": pgid, **groups}.items() if _group_alive(g)]  # noqa: E731
        assert _wait_until(lambda: not left(), STOP_DEADLINE), f"processes left running: {left()}{_tail(log)}"
        assert (instance / "redis" / "appendonlydir").is_dir(), "the embedded Redis keeps its data under the instance path"
        assert not (instance / "redis.url").exists(), "the URL file outlived the embedded Redis"
    finally:
        _stop(process, pgid, log)


def _config_redis_url(env: dict[str, str]) -> str:
    """The REDIS_URL another command (``flask --app wsgi …``) gets with ``env`` minus REDIS_URL."""
    env = {k: v for k, v in env.items() if k != "REDIS_URL"}
    code = "from webapp import create_app; print(create_app().config['REDIS_URL'])"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _run_dev(env: dict[str, str], port: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "dev", "--port", str(port)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)


def test_a_busy_port_is_refused_before_anything_starts(config, unused_redis_url, tmp_path):
    import socket

    instance = tmp_path / "instance"
    env = process_env(config, REDIS_URL=unused_redis_url, DOCKET_INSTANCE_PATH=str(instance))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = _run_dev(env, busy.getsockname()[1])
    assert result.returncode == 1, result.stdout + result.stderr
    assert "is already in use" in result.stderr and "--port" in result.stderr, result.stderr
    assert "embedded" not in result.stdout and not (instance / "redis").exists(), "a Redis was started anyway"


def test_the_run_command_takes_its_port_from_PORT_as_platforms_set_it(config, unused_redis_url, tmp_path):
    """No --port: $PORT is the port (here a busy one, so the command names it and stops at once)."""
    import socket

    env = process_env(config, REDIS_URL=unused_redis_url, DOCKET_INSTANCE_PATH=str(tmp_path / "instance"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "dev"], cwd=ROOT,
                                env={**env, "PORT": str(port)}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"Port {port} " in result.stderr and "already in use" in result.stderr, result.stderr


def test_a_second_run_command_for_the_same_instance_is_refused(config, redis_url, tmp_path):
    """The URL file of a running embedded Redis (here: the test's own Redis standing in for it)."""
    instance = tmp_path / "instance"
    instance.mkdir()
    (instance / "redis.url").write_text(redis_url + "\n")
    env = {k: v for k, v in process_env(config, DOCKET_INSTANCE_PATH=str(instance)).items() if k != "REDIS_URL"}
    assert _config_redis_url(env) == redis_url  # what `flask --app wsgi ingest` would use
    result = _run_dev(env, free_port())
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Another run command for this instance" in result.stderr and redis_url in result.stderr, result.stderr


def test_an_answering_redis_url_is_used_and_named(config, redis_url, tmp_path):
    """With REDIS_URL set and answering, the command says so (and starts no Redis of its own);
    stopped as soon as it has said which Redis and database it uses."""
    instance = tmp_path / "instance"
    env = process_env(config, REDIS_URL=redis_url, DOCKET_INSTANCE_PATH=str(instance),
                      DATABASE_URL=f"sqlite:///{tmp_path / 'dev.sqlite3'}")
    log = tmp_path / "dev-output.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", "dev", "--port", str(free_port())],
                                   cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert _wait_until(lambda: "Database ready at" in log.read_text(errors="replace"), START_DEADLINE), _tail(log)
        output = log.read_text(errors="replace")
        assert f"Using the Redis at {redis_url} (REDIS_URL)." in output, _tail(log)
        assert "embedded" not in output and not (instance / "redis.url").exists(), _tail(log)
        # Ctrl-C this early reaches the supervisor while it is still starting the Procfile's
        # processes: it used to die of a KeyError in its signal handler (no pid yet for the
        # processes not started), leaving web, worker and scheduler on the suite's shared Redis.
        os.killpg(process.pid, signal.SIGINT)
        assert _wait_until(lambda: process.poll() is not None, STOP_DEADLINE), _tail(log)
        assert _wait_until(lambda: not _instance_processes(instance), STOP_DEADLINE), \
            f"left running: {_instance_processes(instance)}{_tail(log)}"
        assert "Traceback" not in log.read_text(errors="replace"), _tail(log, 120)
    finally:
        _stop(process, process.pid, log)


def test_a_stop_before_every_process_started_stops_the_rest_as_they_start(tmp_path):
    """The supervisor's SIGTERM/SIGINT handler with processes whose start is not reported yet:
    no error (honcho's ``_killall`` raised KeyError), and each is stopped once it has started."""
    from honcho.printer import Printer

    from webapp.local.supervisor import RestartingManager

    out = tmp_path / "supervisor.log"
    with open(out, "w") as printed:
        manager = RestartingManager(Printer(printed), restart=["worker"])
        manager.add_process("web.1", "sleep 600", env=process_env_minimal(), cwd=str(tmp_path))
        manager.terminate()  # as the signal handler does, before loop() started anything
        assert manager._terminating
        manager.loop()  # starts them, sees them start during a shutdown, stops them
    text = out.read_text()
    assert "web.1 started" in text and "sending SIGTERM to web.1" in text, text
    assert manager.returncode is not None, text


def process_env_minimal() -> dict[str, str]:
    """The test's environment for a plain shell command (its token: no process outlives the test)."""
    return {**os.environ, conftest.TEST_TOKEN_ENV: conftest.current_test_token() or ""}


def _stop(process: subprocess.Popen, pgid: int, log: Path) -> None:
    """Stop the run command and everything it started, politely first, by force after a deadline."""
    groups = list(_honcho_groups(log).values())
    if process.poll() is None:
        try:
            os.killpg(pgid, signal.SIGINT)
            process.wait(STOP_DEADLINE)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    # honcho puts web and worker in sessions of their own, so killing our group alone misses them;
    # the embedded redis-server is in our group.
    for group in [pgid, *groups]:
        if _group_alive(group):
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if process.poll() is None:
        process.wait(STOP_DEADLINE)
    # Nothing more: a process the run command left behind is the conftest guard's to find and
    # to fail the test with (the run command ends everything it started, however it ends).


# --- A crashed worker or scheduler comes back; web keeps serving (webapp.local.supervisor) ---------


def _start_run_command(config, redis_url: str, tmp_path: Path, **extra_env: str
                       ) -> tuple[subprocess.Popen, str, Path, dict]:
    """Start ``flask --app wsgi dev`` in a process group of its own and wait until /readyz says 200.

    ``extra_env``: more environment (e.g. :data:`CHEAP`). Returns the process (its pid is the
    group id), the base URL, the file its output goes to and its environment.
    """
    port = free_port()
    env = process_env(config, REDIS_URL=redis_url, DOCKET_INSTANCE_PATH=str(tmp_path / "instance"),
                      DATABASE_URL=f"sqlite:///{tmp_path / 'dev.sqlite3'}", STORAGE_PATH=str(tmp_path / "dev-uploads"),
                      **extra_env)
    log = tmp_path / "dev-output.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", "dev", "--port", str(port)],
                                   cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            return True
        try:
            return requests.get(f"{base}/readyz", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    try:
        assert _wait_until(ready, START_DEADLINE), f"/readyz never answered 200{_tail(log)}"
        assert process.poll() is None, f"the run command exited early (status {process.returncode}){_tail(log)}"
    except BaseException:
        _stop(process, process.pid, log)
        raise
    return process, base, log, env


# The Procfile process each test kills, told apart from the rest by its command line (the words'
# base names: ``/…/.venv/bin/gunicorn wsgi:app``). honcho runs each Procfile line with ``sh -c``,
# which here stays the command's parent: the whole line is one word of its command line.
PROCFILE_COMMANDS = {"web": ["gunicorn", "wsgi:app"], "worker": ["rq", "worker"], "scheduler": ["schedule", "run"]}


def _procfile_process(run_command: subprocess.Popen, kind: str,
                      ignore: frozenset[int] = frozenset()) -> psutil.Process | None:
    """The run command's live descendant running the Procfile's ``kind`` command, or None.

    For the worker, the pool's parent (for web, gunicorn's master): it forks its worker processes,
    which share its command line, so it is the one whose parent is not such a process.
    ``ignore``: pids not to count (a killed pool parent's worker processes, orphaned for the moment
    it takes them to shut down).
    """
    words = PROCFILE_COMMANDS[kind]
    found = {}  # pid: (process, its parent's pid)
    for child in psutil.Process(run_command.pid).children(recursive=True):
        if child.pid in ignore:
            continue
        try:
            cmdline = [os.path.basename(word) for word in child.cmdline()]
            if child.status() != psutil.STATUS_ZOMBIE and any(
                    cmdline[i:i + len(words)] == words for i in range(len(cmdline))):
                found[child.pid] = (child, child.ppid())
        except psutil.NoSuchProcess:  # it ended meanwhile
            continue
    tops = [child for child, parent in found.values() if parent not in found]
    assert len(tops) <= 1, f"more than one {kind} command: {tops}"
    return tops[0] if tops else None


def _pid_ended(pid: int) -> bool:
    """Whether process ``pid`` has exited (or is a zombie)."""
    try:
        return _ended(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return True


def _ended(process: psutil.Process) -> bool:
    """Whether ``process`` has exited (a zombie waiting for its parent counts)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class _HealthWatch(threading.Thread):
    """Asks ``/healthz`` every 0.1 s until stopped; keeps every answer that was not a 200."""

    def __init__(self, base: str):
        super().__init__(daemon=True)
        self.base, self.failures, self.answers, self.done = base, [], 0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                status = requests.get(f"{self.base}/healthz", timeout=5).status_code
                if status != 200:
                    self.failures.append(status)
            except requests.RequestException as exc:
                self.failures.append(repr(exc))
            self.answers += 1
            self.done.wait(0.1)


def _upload_text_and_wait(base: str, headers: dict[str, str], log: Path, text: str) -> dict:
    """POST a small text file to /api/documents; return its job once it has ended."""
    return _upload_and_wait(base, headers, log, "notes.txt", text.encode(), "text/plain")[1]


def _upload_and_wait(base: str, headers: dict[str, str], log: Path, name: str, data: bytes,
                     content_type: str) -> tuple[dict, dict]:
    """POST one file to /api/documents; return its document entry and its job once the job ended."""
    response = requests.post(f"{base}/api/documents", files={"file": (name, data, content_type)},
                             headers=headers, timeout=30)
    assert response.status_code == 202, f"{response.status_code} {response.text}{_tail(log)}"
    (document,) = response.json()["documents"]
    job: dict = {}

    def job_ended() -> bool:
        nonlocal job
        job = requests.get(f"{base}/api/jobs/{document['job_id']}", headers=headers, timeout=10).json()
        return job.get("status") in TERMINAL_STATUSES

    assert _wait_until(job_ended, JOB_DEADLINE, interval=0.5), f"the job never ended: {job}{_tail(log)}"
    return document, job


@pytest.mark.parametrize("kind", ["worker", "scheduler"])
def test_a_killed_worker_or_scheduler_is_restarted_while_web_keeps_serving(config, unused_redis_url, tmp_path, kind):
    process, base, log, env = _start_run_command(config, unused_redis_url, tmp_path)
    headers = _auth_headers(env)
    watch = _HealthWatch(base)
    try:
        victim = _procfile_process(process, kind)
        assert victim is not None, f"no {kind} process among the run command's descendants{_tail(log)}"
        # The pool's worker processes: orphaned by the kill, they get SIGTERM from the kernel
        # (PR_SET_PDEATHSIG) and end their shutdown on their own, which can take a moment.
        orphans = frozenset(child.pid for child in victim.children(recursive=True))
        watch.start()
        victim.kill()  # SIGKILL: no cleanup, as the out-of-memory killer does it

        replacement = None

        def replaced() -> bool:
            nonlocal replacement
            replacement = _procfile_process(process, kind, ignore=orphans)
            return replacement is not None and replacement.pid != victim.pid

        assert _wait_until(replaced, START_DEADLINE), f"no new {kind} process{_tail(log, 120)}"
        assert _wait_until(lambda: all(_pid_ended(pid) for pid in orphans), STOP_DEADLINE), \
            f"the killed {kind}'s processes outlived it{_tail(log)}"
        output = log.read_text(errors="replace")
        assert re.search(fr"{kind}\.1 exited unexpectedly \(rc=(137|-9), killed by SIGKILL\)", output), _tail(log)
        # honcho's new process (``sh -c`` running the command) leads the replacement's group
        assert os.getpgid(replacement.pid) == _honcho_groups(log)[f"{kind}.1"] != os.getpgid(process.pid), _tail(log)
        assert process.poll() is None, f"the run command stopped (status {process.returncode}){_tail(log)}"

        job = _upload_text_and_wait(base, headers, log, f"Written after the {kind} was killed and restarted.\n" * 3)
        assert job["status"] == "finished", f"{job}{_tail(log, 120)}"
        watch.done.set()
        watch.join(10)
        assert watch.answers > 0 and not watch.failures, f"/healthz failed meanwhile: {watch.failures}{_tail(log)}"

        # Ctrl-C still stops everything, the restarted process included.
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(STOP_DEADLINE) in (0, 130), _tail(log)
        assert _wait_until(lambda: _ended(replacement), STOP_DEADLINE), \
            f"the restarted {kind} outlived the run command{_tail(log)}"
    finally:
        watch.done.set()
        _stop(process, process.pid, log)


def test_a_killed_web_process_stops_everything_with_a_non_zero_status(config, unused_redis_url, tmp_path):
    process, base, log, env = _start_run_command(config, unused_redis_url, tmp_path)
    try:
        web = _procfile_process(process, "web")
        assert web is not None, f"no gunicorn among the run command's descendants{_tail(log)}"
        web.kill()
        try:
            returncode = process.wait(STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the run command kept running without its web process{_tail(log)}")
        assert returncode != 0, _tail(log)
        output = log.read_text(errors="replace")
        assert re.search(r"web\.1 stopped \(rc=(137|-9)\)", output) and "restarting web" not in output, _tail(log)
        assert "Stopped the embedded Redis." in output, _tail(log)
        left = lambda: [name for name, g in _honcho_groups(log).items() if _group_alive(g)]  # noqa: E731
        assert _wait_until(lambda: not left(), STOP_DEADLINE), f"processes left running: {left()}{_tail(log)}"
    finally:
        _stop(process, process.pid, log)


def _supervise(tmp_path: Path, procfile: str, restart: str) -> tuple[subprocess.Popen, Path]:
    """``python -m webapp.local.supervisor`` on a Procfile of plain shell commands, in a group of its own."""
    (tmp_path / "Procfile").write_text(procfile)
    log = tmp_path / "supervisor.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "webapp.local.supervisor", "--procfile", str(tmp_path / "Procfile"),
                                    "--app-root", str(tmp_path), "--port", str(free_port()), "--restart", restart],
                                   cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return process, log


def test_the_supervisor_restarts_a_crashing_process_with_a_doubling_backoff_and_stops_on_sigint(tmp_path):
    process, log = _supervise(tmp_path, "web: sleep 600\ncrash: echo crashing; exit 3\n", restart="crash")
    try:
        assert _wait_until(lambda: log.read_text().count("crashing") >= 4, 30), _tail(log)
        output = log.read_text()
        delays = [float(d) for d in re.findall(r"crash\.1 exited unexpectedly \(rc=3\) after [\d.]+ s; restarting it "
                                                r"in ([\d.]+) s", output)]
        assert delays[:3] == [1, 2, 4], _tail(log)
        assert process.poll() is None and "sending SIGTERM" not in output, _tail(log)

        groups = _honcho_groups(log)
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(STOP_DEADLINE) == 130, _tail(log)
        assert _wait_until(lambda: not any(_group_alive(g) for g in groups.values()), STOP_DEADLINE), _tail(log)
    finally:
        _stop(process, process.pid, log)


def test_the_supervisor_stops_everything_when_a_process_it_does_not_restart_exits(tmp_path):
    process, log = _supervise(tmp_path, "web: sleep 1; exit 4\nworker: sleep 600\n", restart="worker")
    try:
        assert process.wait(STOP_DEADLINE) == 4, _tail(log)
        assert "sending SIGTERM to worker.1" in log.read_text(), _tail(log)
        left = lambda: [name for name, g in _honcho_groups(log).items() if _group_alive(g)]  # noqa: E731
        assert _wait_until(lambda: not left(), STOP_DEADLINE), f"processes left running: {left()}{_tail(log)}"
    finally:
        _stop(process, process.pid, log)


# --- The run command ends everything it started, however it ends (issue 21) --------------------------

# One worker process and one web worker: each case starts the whole service, on 2 shared cores.
CHEAP = {"WORKER_CONCURRENCY": "1", "HIGH_QUEUE_WORKERS": "0", "WEB_CONCURRENCY": "1"}


def _instance_processes(instance: Path) -> list[str]:
    """The live processes serving ``instance``: the run command and every process below it carry
    ``DOCKET_INSTANCE_PATH``; redis-server overwrites its environment with its process title, so it
    is found by its working directory (``--dir``, under the instance)."""
    found = []
    for process in psutil.process_iter(["pid"]):
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            ours = process.environ().get("DOCKET_INSTANCE_PATH") == str(instance)
            if not ours and "redis" in process.name():
                ours = Path(process.cwd()).is_relative_to(instance)
            if ours:
                found.append(f"pid {process.pid}: {' '.join(process.cmdline())[:120]}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


class _Relay(threading.Thread):
    """Copies what arrives on file descriptor ``fd`` (a pipe's or a pseudo-terminal's reading end)
    to ``log`` until :meth:`end`, which closes ``fd``: the reader is gone, as when ``tee`` exits or
    the terminal window closes."""

    def __init__(self, fd: int, log: Path):
        super().__init__(daemon=True)
        self.fd, self.log, self.done = fd, log, threading.Event()

    def run(self) -> None:
        import select

        with open(self.log, "ab") as out:
            while not self.done.is_set():
                if select.select([self.fd], [], [], 0.1)[0]:
                    try:
                        data = os.read(self.fd, 65536)
                    except OSError:  # EIO: the pseudo-terminal's last writer closed it
                        data = b""
                    if not data:
                        break
                    out.write(data)
                    out.flush()

    def end(self) -> None:
        if not self.done.is_set():
            self.done.set()
            self.join(10)
            os.close(self.fd)


def _start_ending(config, redis_url: str, tmp_path: Path, instance: Path, output: str, run: int):
    """Start ``flask --app wsgi dev`` for ``instance`` (a session of its own) with its output to
    ``output``: ``file``, ``pipe`` (read by a :class:`_Relay`) or ``pty`` (a pseudo-terminal that
    is its controlling terminal, read by a :class:`_Relay`). Waits until /readyz answers 200.

    Returns the process, its log, and the relay (``None`` for ``file``).
    """
    import fcntl
    import termios

    port = free_port()
    env = process_env(config, REDIS_URL=redis_url, DOCKET_INSTANCE_PATH=str(instance),
                      DATABASE_URL=f"sqlite:///{tmp_path / 'dev.sqlite3'}", STORAGE_PATH=str(tmp_path / "dev-uploads"),
                      **CHEAP)
    log = tmp_path / f"dev-output-{run}-{output}.log"
    command = [sys.executable, "-m", "flask", "--app", "wsgi", "dev", "--port", str(port)]
    relay = None
    if output == "file":
        with open(log, "wb") as out:
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
    elif output == "pipe":
        reading, writing = os.pipe()
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=writing,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        os.close(writing)
        relay = _Relay(reading, log)
    else:  # a terminal: the command leads a session whose controlling terminal is the pty
        master, slave = os.openpty()
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdin=slave, stdout=slave, stderr=slave,
                                   start_new_session=True, preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        os.close(slave)
        relay = _Relay(master, log)
    if relay:
        relay.start()
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            return True
        try:
            return requests.get(f"{base}/readyz", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    assert _wait_until(ready, START_DEADLINE), f"run {run} ({output}): /readyz never answered 200{_tail(log)}"
    assert process.poll() is None, f"run {run} exited early (status {process.returncode}){_tail(log)}"
    return process, log, relay


ENDINGS = [  # (how the run command ends, where its output goes)
    ("SIGTERM", "file"),  # `kill PID`, a process manager
    ("SIGINT", "file"),  # Ctrl-C: the terminal signals the whole foreground process group
    ("broken pipe, then SIGINT", "pipe"),  # `bin/run | tee log`, Ctrl-C: tee ends first
    ("SIGKILL", "file"),  # nothing of its own clean-up runs
    ("closed terminal", "pty"),  # the window closes: SIGHUP, and every write fails with EIO
]


def test_the_run_command_ends_everything_it_started_however_it_ends(config, unused_redis_url, tmp_path):
    """One instance, started again after each ending (which proves the instance lock and the
    port free again): after each, within a deadline, no process of the instance is left — no
    Procfile process, no worker or gunicorn child, no redis-server, no supervisor."""
    instance = tmp_path / "instance"
    endings = [*ENDINGS, ("SIGINT", "file")]  # the last run: a start after the closed terminal
    for run, (ending, output) in enumerate(endings, 1):
        process, log, relay = _start_ending(config, unused_redis_url, tmp_path, instance, output, run)
        try:
            assert _instance_processes(instance), "the process search finds nothing"
            assert any("redis-server" in line for line in _instance_processes(instance)), _instance_processes(instance)
            if ending == "SIGTERM":
                process.send_signal(signal.SIGTERM)
            elif ending == "SIGINT":
                os.killpg(process.pid, signal.SIGINT)
            elif ending.startswith("broken pipe"):
                relay.end()
                os.killpg(process.pid, signal.SIGINT)
            elif ending == "SIGKILL":
                process.kill()
            else:
                relay.end()  # closing the master hangs the terminal up: SIGHUP to the session leader
            assert _wait_until(lambda: process.poll() is not None, STOP_DEADLINE), \
                f"run {run}: the run command outlived {ending}{_tail(log)}"
            assert _wait_until(lambda: not _instance_processes(instance), STOP_DEADLINE), \
                f"run {run}: left running after {ending}: {_instance_processes(instance)}{_tail(log)}"
        finally:
            if relay is not None:
                relay.end()
            if process.poll() is None:
                _stop(process, process.pid, log)
    assert "Traceback" not in log.read_text(errors="replace"), _tail(log, 120)


def test_a_killed_embedded_redis_is_restarted_and_logged(config, unused_redis_url, tmp_path):
    """It used to stay dead (a zombie, nothing logged, every upload 503 until the run command
    restarted): now it comes back on the same port with its data, and uploads work again."""
    process, base, log, env = _start_run_command(config, unused_redis_url, tmp_path, **CHEAP)
    try:
        headers = _auth_headers(env)
        url = (tmp_path / "instance" / "redis.url").read_text().strip()
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        (redis,) = [child for child in psutil.Process(process.pid).children()
                    if "redis" in child.name() and child.status() != psutil.STATUS_ZOMBIE]
        redis.kill()
        assert _wait_until(lambda: "Restarted the embedded Redis" in log.read_text(errors="replace"), START_DEADLINE), \
            _tail(log)
        output = log.read_text(errors="replace")
        assert re.search(r"The embedded Redis exited unexpectedly \(rc=-9, killed by SIGKILL\) after [\d.]+ s; "
                         rf"restarting it on port {port} in 1 s", output), _tail(log)
        assert redis_answers(url), f"the restarted Redis does not answer at {url}{_tail(log)}"
        assert not [child for child in psutil.Process(process.pid).children()
                    if child.status() == psutil.STATUS_ZOMBIE], "the killed redis-server was never reaped"
        assert (tmp_path / "instance" / "redis.url").read_text().strip() == url

        job = _upload_text_and_wait(base, headers, log, "Written after the embedded Redis was killed.\n" * 3)
        assert job["status"] == "finished", f"{job}{_tail(log, 120)}"
    finally:
        _stop(process, process.pid, log)


def test_two_run_commands_started_at_once_on_one_instance_one_starts_the_other_refuses(
    config, unused_redis_url, tmp_path
):
    """Both used to start a redis-server on the same data folder; the loser died with "database is
    locked" and its clean-up deleted the survivor's redis.url. The instance lock is taken first."""
    instance = tmp_path / "instance"
    env = process_env(config, REDIS_URL=unused_redis_url, DOCKET_INSTANCE_PATH=str(instance),
                      DATABASE_URL=f"sqlite:///{tmp_path / 'dev.sqlite3'}", STORAGE_PATH=str(tmp_path / "dev-uploads"),
                      **CHEAP)
    ports = [free_port(), free_port()]
    logs = [tmp_path / f"dev-{n}.log" for n in (1, 2)]
    processes = []
    for port, log in zip(ports, logs):
        with open(log, "wb") as out:
            processes.append(subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", "dev", "--port", str(port)],
                                              cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                              start_new_session=True))
    try:
        assert _wait_until(lambda: any(p.poll() is not None for p in processes), START_DEADLINE), \
            _tail(logs[0]) + _tail(logs[1])
        (loser,) = [n for n, p in enumerate(processes) if p.poll() is not None]
        winner = 1 - loser
        assert processes[loser].returncode == 1, _tail(logs[loser])
        refusal = logs[loser].read_text(errors="replace")
        # (its pid, unless it was read in the instant between the winner's lock and its write)
        assert re.search(rf"Another run command for this instance \({re.escape(str(instance))}\) is running "
                         rf"\(pid ({processes[winner].pid}|unknown)\)", refusal), refusal
        assert "embedded" not in refusal, refusal
        base = f"http://127.0.0.1:{ports[winner]}"

        def ready() -> bool:
            try:
                return requests.get(f"{base}/readyz", timeout=5).status_code == 200
            except requests.RequestException:
                return False

        assert _wait_until(ready, START_DEADLINE), _tail(logs[winner])
        url = (instance / "redis.url").read_text().strip()
        assert redis_answers(url), url
        assert processes[winner].poll() is None, _tail(logs[winner])
    finally:
        for process, log in zip(processes, logs):
            _stop(process, process.pid, log)
