"""Private internals of the pinned libraries (webapp/core/compat/ and the README's list): every
private name, signature and behaviour Docket relies on is what the pinned version has. An upgrade
that changes one fails here, naming it, instead of breaking a worker or the scheduler silently."""

from __future__ import annotations

import importlib.metadata
import inspect

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job as RQJob
from rq.scheduler import RQScheduler
from rq.worker.base import BaseWorker
from rq.worker_pool import WorkerPool
from rq_scheduler import Scheduler

from webapp.core.compat import peewee_private, rq_private, rq_scheduler_private, werkzeug_private

PINNED = {"rq": "3.0.0", "rq-scheduler": "0.14.0", "rq-dashboard": "0.9.0", "peewee": "4.5.3",
          "flask": "3.1.3", "gunicorn": "27.0.1", "honcho": "2.0.0",
          "werkzeug": "3.1.9"}


def parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


@pytest.mark.parametrize("package, version", PINNED.items())
def test_the_pinned_versions_are_installed(package, version):
    # A new version may change a private name below: read this file before moving the pin.
    assert importlib.metadata.version(package) == version, f"{package} changed: check webapp/core/compat/"


# --- rq ---------------------------------------------------------------------------------------

def test_rq_queue_enqueue_job_puts_a_saved_job_at_the_front_in_a_pipeline(redis_url):
    connection = Redis.from_url(redis_url)
    queue = Queue("default", connection=connection)
    assert parameters(Queue._enqueue_job)[:4] == ["self", "job", "pipeline", "at_front"]
    first = queue.enqueue("tests.jobs_for_tests.report_pid_and_sleep", 0)
    handed_back = RQJob.create("tests.jobs_for_tests.report_pid_and_sleep", args=(0,), connection=connection)
    handed_back.save()
    with connection.pipeline() as pipe:
        rq_private.enqueue_at_front(queue, handed_back, pipeline=pipe)
        assert queue.job_ids == [first.id]  # nothing happens before the pipeline runs
        pipe.execute()
    assert queue.job_ids == [handed_back.id, first.id]


def test_rq_private_hooks_docket_overrides_still_exist_with_their_signatures():
    assert parameters(RQJob._execute) == ["self"]
    assert parameters(BaseWorker._finalize_failure) == ["self", "job", "queue", "execution", "exc_info"]
    for name in ("_stop_requested", "_stopped_job_id", "_shutdown_requested_date"):
        assert name in inspect.getsource(BaseWorker), name
    source = inspect.getsource(WorkerPool)
    for name in ("_queue_names", "_connection_class", "_pool_class", "_pool_kwargs"):
        assert f"self.{name}" in source, name
    # DocketWorkerPool.get_worker_process is RQ's own with one change: it passes run_worker the same
    # pool settings RQ's does.
    own = inspect.getsource(WorkerPool.get_worker_process)
    assert "target=run_worker" in own and all(name in own for name in ("_connection_class", "_pool_kwargs"))
    assert set(rq_private.OVERRIDDEN) >= {"rq.job.Job._execute", "rq.worker.base.BaseWorker._finalize_failure"}


# --- rq-scheduler -----------------------------------------------------------------------------

def test_rq_scheduler_create_job_builds_an_unsaved_job_and_interval_is_kept(redis_url):
    connection = Redis.from_url(redis_url)
    assert {"func", "kwargs", "commit", "id", "result_ttl", "queue_name", "description", "meta"} <= set(
        parameters(Scheduler._create_job))
    scheduler = Scheduler(connection=connection, interval=7)
    assert rq_scheduler_private.poll_interval(scheduler) == 7
    job = rq_scheduler_private.create_entry_job(scheduler, "webapp.core.schedules.table.fire",
                                                kwargs={"schedule_id": "s"}, id="schedule-s", result_ttl=-1, queue_name="high", meta={"x": 1})
    assert (job.id, job.func_name, job.kwargs, job.origin, job.meta) == (
        "schedule-s", "webapp.core.schedules.table.fire", {"schedule_id": "s"}, "high", {"x": 1})
    assert not RQJob.exists("schedule-s", connection=connection)  # commit=False: nothing written


def test_rqs_scheduler_drops_its_connection_before_forking_and_takes_one_back(redis_url):
    connection = Redis.from_url(redis_url)
    assert "self._connection = None" in inspect.getsource(RQScheduler.start)
    rq_scheduler = RQScheduler(["high"], connection=connection, interval=1)
    rq_scheduler._connection = None
    rq_scheduler_private.use_connection(rq_scheduler, connection)
    assert rq_scheduler.connection is connection


# --- peewee -----------------------------------------------------------------------------------

def test_peewee_pool_internals_give_back_what_a_fork_inherited(tmp_path):
    from playhouse.pool import PooledSqliteDatabase

    database = PooledSqliteDatabase(str(tmp_path / "pool.sqlite3"), max_connections=3)
    assert peewee_private.max_connections(database) == 3
    held = database.connection()  # this thread's connection, in use
    taken = peewee_private.take_inherited_connections(database)
    assert taken == [held]
    assert database._connections == [] and database._in_use == {} and database._state.conn is None
    fresh = database.connection()  # the pool works after it, with a new connection
    assert fresh is not held
    database.close_all()
    held.close()


# --- Flask, rq-dashboard, gunicorn, honcho (used in place: the README lists them) ----------------

def test_the_flask_and_rq_dashboard_structures_the_dashboard_mount_uses():
    import rq_dashboard
    from flask import Flask
    from rq_dashboard import web as dashboard_web

    app = Flask(__name__)
    for name in ("before_request_funcs", "after_request_funcs", "error_handler_spec", "view_functions"):
        assert isinstance(getattr(app, name), dict), name
    assert rq_dashboard.blueprint.name == "rq_dashboard"
    for name in ("setup_rq_connection", "serialize_date", "format_job_description", "jsonify"):
        assert callable(getattr(dashboard_web, name)), name
    assert hasattr(dashboard_web.config, "serializer")


def test_gunicorn_writes_its_error_page_with_one_sendall():
    """webapp/edge/server.py rewrites the one sendall of gunicorn's error page as JSON."""
    from gunicorn import util

    sent = []

    class Socket:
        def gettimeout(self):
            return 0.0

        def sendall(self, data):
            sent.append(data)

    util.write_error(Socket(), 400, "Bad Request", "Invalid request line")
    assert len(sent) == 1 and sent[0].startswith(b"HTTP/1.1 400 Bad Request\r\n")


def test_honcho_manager_internals_the_supervisor_copies():
    from honcho.manager import KILL_WAIT, SIGNALS, Manager

    assert KILL_WAIT == 5 and {"SIGINT", "SIGTERM"} <= {value["name"] for value in SIGNALS.values()}
    for name in ("_start", "_system_print", "_all_started", "_all_stopped", "_any_stopped", "_killall", "loop"):
        assert hasattr(Manager, name), name
    source = inspect.getsource(Manager)
    for name in ("self._processes", "self._terminating", "self._procmgr", "self._clock", "self._printer",
                 "self._process_ctor"):
        assert name in source, name


def test_honcho_process_internals_the_supervisors_runner_uses():
    """webapp.local.supervisor.GroupProcess copies honcho's ``Process.run``: its message helper,
    the ``_events`` queue it reads, and the ``Popen`` (``sh -c`` in a new session) it starts."""
    from honcho.process import Popen, Process

    assert parameters(Process.run) == ["self", "events", "ignore_signals"]
    assert "self._events" in inspect.getsource(Process._send_message)
    assert "start_new_session" in inspect.getsource(Popen.__init__)


def test_werkzeug_form_limits_are_told_apart_from_the_traceback():
    """webapp.core.compat.werkzeug_private: the frame and locals of each form limit's raise."""
    import io

    from werkzeug.exceptions import RequestEntityTooLarge
    from werkzeug.test import EnvironBuilder
    from werkzeug.wrappers import Request

    from webapp.core.compat.werkzeug_private import exceeded_form_limit

    def refusal(data, **limits) -> RequestEntityTooLarge:
        request = Request(EnvironBuilder(method="POST", data=data, content_type="multipart/form-data").get_environ())
        for name, value in limits.items():
            setattr(request, name, value)
        with pytest.raises(RequestEntityTooLarge) as raised:
            request.files
        return raised.value

    files = {f"f{n}": (io.BytesIO(b"x"), f"{n}.txt") for n in range(5)}
    assert exceeded_form_limit(refusal(files, max_form_parts=3)) == werkzeug_private.FormLimit("parts", 4)
    assert exceeded_form_limit(refusal({"a": "1", "b": "2", "c": "3"}, max_form_parts=2)).files == 0
    # A field larger than the limit, read over several of the parser's 64 KiB chunks: its name is known.
    field = exceeded_form_limit(refusal({"note": "n" * 200_000}, max_form_memory_size=100_000))
    assert field == werkzeug_private.FormLimit("field_size", 0, "note")
    # More unparsed bytes than the limit in one chunk (a limit below 64 KiB): the size, not the field.
    assert exceeded_form_limit(refusal({"note": "n" * 2_000}, max_form_memory_size=1_000)) == \
        werkzeug_private.FormLimit("field_size", 0, None)
    assert exceeded_form_limit(RequestEntityTooLarge()) is None  # not raised by the form parser


def test_rq_job_time_limit_is_an_alarm_and_a_timeout_field_extend_time_limit_moves_both(redis_url):
    import signal

    from rq.timeouts import JobTimeoutException, UnixSignalDeathPenalty
    from rq.worker.worker_classes import SimpleWorker

    from jobs.worker.worker import DocketWorker

    assert issubclass(DocketWorker, SimpleWorker) and DocketWorker.death_penalty_class is UnixSignalDeathPenalty
    assert "signal.alarm(self._timeout)" in inspect.getsource(UnixSignalDeathPenalty.setup_death_penalty)
    connection = Redis.from_url(redis_url)
    job = Queue("default", connection=connection).enqueue("tests.jobs_for_tests.report_pid_and_sleep", 0, job_timeout=100)
    pending = signal.alarm(0)  # pytest-timeout's own alarm, put back below
    try:
        assert rq_private.extend_time_limit(job, 30) is None  # no alarm: outside RQ's death penalty
        with UnixSignalDeathPenalty(100, JobTimeoutException):
            assert rq_private.extend_time_limit(job, 30) == 130
            assert 128 <= signal.alarm(0) <= 130
    finally:
        signal.alarm(pending)
    assert RQJob.fetch(job.id, connection=connection).timeout == 130
