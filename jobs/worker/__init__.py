"""How Docket's worker processes run jobs (the README's "Worker model" says why), split along
RQ's own seams: :mod:`jobs.worker.job` (the job), :mod:`jobs.worker.worker` (a worker process),
:mod:`jobs.worker.pool` (the pool that supervises them), :mod:`jobs.worker.warmup` (what is loaded
before the fork) and :mod:`jobs.worker.cli` (``flask rq worker``, ``flask rq ping``).

* **Load once, before any fork.** :func:`jobs.worker.warmup.prepare_worker_process` imports every parser, the
  chunker and the embedder, and runs each once on a tiny built-in sample, in the worker
  command's process. The pool's worker processes are forked from it and inherit all of it:
  a job starts with nothing left to import or build. Nothing loaded here holds a socket or a
  database connection — each worker process opens its own.
* **One job at a time per process, no fork per job.** :class:`jobs.worker.worker.DocketWorker` runs each job in
  its own (pool) process, as RQ's ``SimpleWorker`` does: RQ's forking ``Worker`` spends ≈20 ms
  of CPU per job on ``fork()``, copy-on-write faults and exit (``benchmarks/job_overhead.py``),
  more than a small document's whole pipeline.
* **Crash isolation per process.** :class:`jobs.worker.pool.DocketWorkerPool` (RQ's ``WorkerPool``) supervises
  the worker processes. A parser that segfaults or is killed for memory takes down only the
  process running that one job: the pool marks the job failed — its row with a readable
  reason, RQ's record through RQ's own failure handling — and starts a fresh process. A job
  stuck in native code past its time limit (where RQ's in-process alarm cannot interrupt it)
  is killed the same way ``JOB_KILL_GRACE`` seconds later. A process whose peak memory passed
  ``WORKER_MAX_MEMORY`` leaves after its job, so memory a large document left behind is given
  back.
* **A killed worker is noticed in seconds.** RQ's ``SimpleWorker`` sends no heartbeat while a
  job runs, and its records live for the job's whole time limit + 60 s (11 minutes for a
  document). :class:`jobs.worker.worker.DocketWorker` beats every ``WORKER_HEARTBEAT_INTERVAL`` seconds from a
  thread while its job runs, with records that expire 3 beats later; the reconcile job then
  hands a vanished worker's job to RQ's own abandoned-job handling (retry or fail).
* **A used-up rate limit reschedules, never fails.** A job of a kind with a budget in
  ``JOB_RATE_LIMITS`` takes a unit right before its function runs; an OpenAI request inside it
  takes from ``openai.requests`` and ``openai.tokens`` (:mod:`webapp.core.workflows.rate_limits`: shared by every
  process on every machine). Not free within ``RATE_LIMIT_MAX_WAIT`` seconds, the job is given to
  RQ's scheduler for when the budget frees units — its row ``scheduled`` with ``error_code``
  ``rate_limited``, RQ's retries untouched — and the worker takes the next job.
* **SIGTERM hands the job back.** Every deploy and restart sends SIGTERM, and platforms send
  SIGKILL ≈30 s later. The running job gets ``SHUTDOWN_GRACE`` seconds to finish; then it is
  interrupted and handed back — its row ``queued`` again, its RQ job at the front of its queue —
  and another worker runs it from the start (every stage is idempotent). RQ's ``HerokuWorker``
  interrupts the job the same way but fails it.
"""
