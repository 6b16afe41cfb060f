"""Periodic jobs (the design; :mod:`~webapp.core.schedules.table` is the table and the timetable,
:mod:`~webapp.core.schedules.scheduler` the process, :mod:`webapp.cli.schedule` the commands): what runs when (the ``schedule`` table), and the rq-scheduler process that
starts them.

* **Declared in one place.** :data:`SCHEDULABLE_JOBS` is the allow-list of what a schedule may
  run, :func:`builtin_schedules` the schedules every Docket has (fixed ids). ``flask --app wsgi
  schedule sync`` (run at release and by the scheduler process itself) writes them into the
  ``schedule`` table and rq-scheduler's sorted set in Redis: idempotent — running it twice,
  restarting the scheduler or deploying again never duplicates a schedule, a changed one is
  replaced, one removed from the code disappears, and a paused one stays paused.
* **The table is the truth, Redis a copy.** Schedules added at runtime (``POST
  /api/schedules``) are rows too. When Redis lost its data (restarted empty, ``FLUSHALL``) the
  scheduler process notices the missing marker key and writes every entry again from the table.
* **Every run is an ordinary job.** rq-scheduler's own ``enqueue_job`` would push its stored
  job into a queue, bypassing the job protocol; :class:`DocketScheduler` keeps rq-scheduler's
  loop, lock, heartbeat and sorted set but starts each due schedule through
  :func:`webapp.core.protocol.launch.launch` (or :func:`webapp.core.report_files.launch_report`): a Job row with
  ``params``, enqueued with job id = row id, visible in the API like any other. rq-scheduler's
  entry (a stored RQ job, pickled by RQ's default serializer like every Docket job) is only the
  timetable: it holds the schedule's id.
* **Cron is UTC.** rq-scheduler computes cron times in the server's local time zone, and its
  ``crontab`` call warns on every computation (``FutureWarning``: no ``default_utc``).
  :func:`next_cron_time` asks ``crontab`` for the next time after an aware UTC "now", which is
  both UTC whatever ``TZ`` says and the call the warning asks for: fixed at the source.

The same loop starts delayed one-off jobs (``run_at``/``delay`` of an upload or a report) when
their time comes: their entries sit in the same sorted set under the job's own id
(:mod:`webapp.core.protocol.delayed`), polled every ``SCHEDULER_INTERVAL`` (1 s).

RQ's own scheduler is a different thing: it moves jobs RQ itself deferred — the delayed
automatic retries of :class:`rq.Retry` — from each queue's ``ScheduledJobRegistry`` back to the
queue, under a per-queue lock that one process holds. Every worker pool runs one
(``with_scheduler=True``); the scheduler process runs one as well (:class:`DocketScheduler`
takes RQ's locks whenever they are free), so delayed retries keep flowing when the worker that
held the locks was killed: its locks expire after 61 s and the scheduler process takes them
over at its next poll, where a worker would wait for its 10-minute maintenance.
"""

