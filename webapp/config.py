"""Configuration from the environment (12-factor), with safe local defaults.

Every setting is read once, in :func:`load_config`, from ``os.environ``; the README's
configuration table lists them. Nothing here opens a connection.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

MB = 1024 * 1024


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {raw!r}") from None


def _optional_int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name)
    return None if raw is None or raw.strip() == "" else _int(env, name, 0)


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false, got {raw!r}")


def normalize_database_url(url: str) -> str:
    """Return ``url`` with Heroku's ``postgres://`` spelled ``postgresql://``.

    Peewee accepts both, but other tools (psql, SQLAlchemy-based admin tools) only accept the
    second, so Docket logs and documents the canonical spelling.
    """
    if url.startswith("postgres://"):
        return "postgresql://" + url[len("postgres://"):]
    return url


EMBEDDED_REDIS_URL_FILE = "redis.url"  # in the instance folder, while `flask dev` runs its own Redis


def embedded_redis_url(instance: Path) -> str | None:
    """The URL the run command's embedded Redis wrote to ``<instance>/redis.url``, if it runs
    (the file is removed when it stops); ``None`` otherwise."""
    try:
        return (instance / EMBEDDED_REDIS_URL_FILE).read_text().strip() or None
    except OSError:
        return None


def default_worker_concurrency(remote_embeddings: bool = False) -> int:
    """Worker processes for this machine: the CPU cores this process may run on (its affinity
    mask; ``os.cpu_count()`` elsewhere), twice that when embeddings come from a remote API
    (measured in ``benchmarks/remote_embeddings.py``: 2.4× faster with a 200 ms API on 2 cores)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return 2 * cores if remote_embeddings else cores


def load_config(instance_path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Build the Flask config mapping from environment variables.

    Args:
        instance_path: the app's instance folder; local defaults (SQLite file, upload folder) live there.
        env: the environment to read; ``os.environ`` when omitted.

    Returns:
        A dict of upper-case config keys, ready for ``app.config.update``.

    Raises:
        ValueError: a numeric setting is not a whole number, or ``CHUNK_SIZE`` is out of range.
    """
    env = os.environ if env is None else env
    instance = Path(instance_path)
    config: dict[str, Any] = {
        "SECRET_KEY": env.get("SECRET_KEY", "dev-only-secret-change-me"),
        "DATABASE_URL": normalize_database_url(
            env.get("DATABASE_URL") or f"sqlite:///{instance / 'docket.sqlite3'}"
        ),
        # Unset: the embedded Redis of a running `flask dev` for this instance (it writes its URL
        # to instance/redis.url), so every command of the project finds it; else localhost.
        "REDIS_URL": env.get("REDIS_URL") or embedded_redis_url(instance) or "redis://localhost:6379/0",
        # Managed rediss:// services often use self-signed certificates: REDIS_TLS_VERIFY=false.
        "REDIS_TLS_VERIFY": _bool(env, "REDIS_TLS_VERIFY", True),
        # Local folder for uploaded bytes (see webapp/storage.py); web and worker must share it.
        "STORAGE_PATH": env.get("STORAGE_PATH") or str(instance / "uploads"),
        # Bytes; Flask answers 413 above it. 50 MB by default.
        "MAX_CONTENT_LENGTH": _int(env, "MAX_CONTENT_LENGTH", 50 * MB),
        # Files in one upload (one batch); more are refused with 413 too_many_files.
        "MAX_FILES_PER_UPLOAD": _int(env, "MAX_FILES_PER_UPLOAD", 100),
        # Worker processes `flask rq worker` runs: one per core, as document jobs are CPU-bound;
        # two per core with remote embeddings, where each job also waits on the network.
        "WORKER_CONCURRENCY": _int(env, "WORKER_CONCURRENCY",
                                   default_worker_concurrency(remote_embeddings=bool(env.get("OPENAI_API_KEY")))),
        # Worker processes, beside WORKER_CONCURRENCY, that take only `high` jobs (reports, webhooks): they
        # start at once while every other process runs a long document job.
        "HIGH_QUEUE_WORKERS": _int(env, "HIGH_QUEUE_WORKERS", 1),
        # Megabytes of peak memory after which a worker process is replaced once its job ends.
        "WORKER_MAX_MEMORY": _int(env, "WORKER_MAX_MEMORY", 512),
        # Seconds past a job's timeout before the pool kills a process stuck in native code.
        "JOB_KILL_GRACE": _int(env, "JOB_KILL_GRACE", 60),
        # Seconds a document job may run before RQ stops it (JobTimeoutException).
        "DOCUMENT_JOB_TIMEOUT": _int(env, "DOCUMENT_JOB_TIMEOUT", 600),
        # Seconds a report job may run; seconds a webhook delivery job may run.
        "REPORT_JOB_TIMEOUT": _int(env, "REPORT_JOB_TIMEOUT", 300),
        "WEBHOOK_JOB_TIMEOUT": _int(env, "WEBHOOK_JOB_TIMEOUT", 60),
        # Seconds a maintenance job (reconcile, retention, orphans) may run.
        "MAINTENANCE_JOB_TIMEOUT": _int(env, "MAINTENANCE_JOB_TIMEOUT", 300),
        # Key of the webhooks' HMAC-SHA256 signature (X-Docket-Signature); SECRET_KEY when unset.
        "WEBHOOK_SECRET": env.get("WEBHOOK_SECRET") or env.get("SECRET_KEY", "dev-only-secret-change-me"),
        # Seconds one webhook POST may take (connect + answer) before it counts as failed.
        "WEBHOOK_TIMEOUT": _int(env, "WEBHOOK_TIMEOUT", 10),
        # Automatic retries of transient failures per job kind (default: the registry's,
        # webapp/job_kinds.py), and a cap in seconds on every retry delay.
        "DOCUMENT_JOB_RETRIES": _optional_int(env, "DOCUMENT_JOB_RETRIES"),
        "REPORT_JOB_RETRIES": _optional_int(env, "REPORT_JOB_RETRIES"),
        "WEBHOOK_JOB_RETRIES": _optional_int(env, "WEBHOOK_JOB_RETRIES"),
        "RETRY_MAX_DELAY": _optional_int(env, "RETRY_MAX_DELAY"),
        # Seconds RQ keeps a finished / failed job in Redis; the database row stays.
        "JOB_RESULT_TTL": _int(env, "JOB_RESULT_TTL", 24 * 3600),
        "JOB_FAILURE_TTL": _int(env, "JOB_FAILURE_TTL", 7 * 24 * 3600),
        # Characters per chunk (upper bound) and overlap between neighbouring chunks.
        "CHUNK_SIZE": _int(env, "CHUNK_SIZE", 1500),
        "CHUNK_OVERLAP": _int(env, "CHUNK_OVERLAP", 150),
        "OPENAI_API_KEY": env.get("OPENAI_API_KEY") or None,
        "OPENAI_BASE_URL": env.get("OPENAI_BASE_URL") or None,
        "EMBEDDING_MODEL": env.get("EMBEDDING_MODEL", "text-embedding-3-small"),
        # Inputs per embeddings request: OpenAI accepts up to 2048; some compatible servers fewer.
        "EMBEDDING_BATCH_SIZE": _int(env, "EMBEDDING_BATCH_SIZE", 2048),
        # Chat model that writes document summaries in reports (with OPENAI_API_KEY).
        "SUMMARY_MODEL": env.get("SUMMARY_MODEL", "gpt-4o-mini"),
        "OPENAI_TIMEOUT": _int(env, "OPENAI_TIMEOUT", 60),
        "OPENAI_MAX_RETRIES": _int(env, "OPENAI_MAX_RETRIES", 3),
        "SEARCH_MAX_K": _int(env, "SEARCH_MAX_K", 50),
        # --- periodic jobs and recovery (webapp/scheduling.py, jobs/reconcile.py, jobs/cleanup.py) ---
        # Seconds between two polls of the scheduler process (rq-scheduler's `interval`): a
        # periodic job starts at most this late.
        "SCHEDULER_INTERVAL": _int(env, "SCHEDULER_INTERVAL", 1),
        # Seconds between two runs of the reconcile job (rows ↔ RQ).
        "RECONCILE_INTERVAL": _int(env, "RECONCILE_INTERVAL", 60),
        # Seconds a row may disagree with RQ before reconcile acts: covers a job between its
        # row's commit and its enqueue, and a worker between two heartbeats.
        "RECONCILE_GRACE": _int(env, "RECONCILE_GRACE", 30),
        # Seconds past a kind's time limit after which a `started` row with no progress is
        # considered stuck and re-run or failed by reconcile.
        "STUCK_JOB_MARGIN": _int(env, "STUCK_JOB_MARGIN", 120),
        # Seconds between a busy worker's heartbeats; its Redis record and its job's execution
        # expire 3 heartbeats after the last one, which is how a killed worker is noticed.
        "WORKER_HEARTBEAT_INTERVAL": _int(env, "WORKER_HEARTBEAT_INTERVAL", 5),
        # Seconds a worker told to stop (SIGTERM: a deploy or restart) lets its running job go
        # on before handing it back to the queue; platforms SIGKILL ≈30 s after SIGTERM.
        "SHUTDOWN_GRACE": _int(env, "SHUTDOWN_GRACE", 10),
        # Days a terminal job's rows, uploads, chunks and report files are kept (retention job).
        "RETENTION_DAYS": _int(env, "RETENTION_DAYS", 30),
        # Seconds a stored file must be old before the orphans job deletes it when no row
        # references it (an upload's bytes are stored before its row is committed).
        "ORPHAN_GRACE": _int(env, "ORPHAN_GRACE", 3600),
    }
    # A chunk of N characters is at most 4*N UTF-8 bytes, and a byte-level BPE token covers at
    # least one byte, so 2048 characters stay under OpenAI's 8192-token per-input limit.
    if not 100 <= config["CHUNK_SIZE"] <= 2048:
        raise ValueError("CHUNK_SIZE must be between 100 and 2048 characters")
    if not 1 <= config["EMBEDDING_BATCH_SIZE"] <= 2048:
        raise ValueError("EMBEDDING_BATCH_SIZE must be between 1 and 2048 (OpenAI's limit per request)")
    if config["MAX_FILES_PER_UPLOAD"] < 1:
        raise ValueError("MAX_FILES_PER_UPLOAD must be at least 1")
    # Werkzeug refuses a form of more parts than this with a bare 413 (webapp.errors names it):
    # the files and a few other fields (password, reprocess, callback_url).
    config["MAX_FORM_PARTS"] = config["MAX_FILES_PER_UPLOAD"] + 10
    if config["WORKER_CONCURRENCY"] < 1:
        raise ValueError("WORKER_CONCURRENCY must be at least 1")
    if config["HIGH_QUEUE_WORKERS"] < 0:
        raise ValueError("HIGH_QUEUE_WORKERS must not be negative")
    if config["WORKER_MAX_MEMORY"] < 0 or config["JOB_KILL_GRACE"] < 0:
        raise ValueError("WORKER_MAX_MEMORY and JOB_KILL_GRACE must not be negative")
    for name in ("SCHEDULER_INTERVAL", "RECONCILE_INTERVAL", "WORKER_HEARTBEAT_INTERVAL", "RETENTION_DAYS"):
        if config[name] < 1:
            raise ValueError(f"{name} must be at least 1")
    for name in ("RECONCILE_GRACE", "STUCK_JOB_MARGIN", "SHUTDOWN_GRACE", "ORPHAN_GRACE"):
        if config[name] < 0:
            raise ValueError(f"{name} must not be negative")
    if not 0 <= config["CHUNK_OVERLAP"] < config["CHUNK_SIZE"] // 2:
        raise ValueError("CHUNK_OVERLAP must be at least 0 and less than half of CHUNK_SIZE")
    return config
