"""The job protocol: the kinds of job (registry), the one way a job starts (``launch``), the state
machine of guarded transitions, job errors, control from outside the worker and live events; delayed starts (the scheduler's timetable of ``run_at`` jobs)."""
