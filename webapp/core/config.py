"""Configuration from the environment (12-factor), with safe local defaults.

Every setting is read once, in :func:`load_config`, from ``os.environ``; the README's
configuration table lists them. Nothing here opens a connection.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

MB = 1024 * 1024


def _number(env: Mapping[str, str], name: str, default: Any, kind: type, words: str) -> Any:
    """``env[name]`` read as ``kind``; ``default`` when unset or blank. Raises ValueError with a
    sentence ("<name> must be <words>") for anything else."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{name} must be {words}, got {raw!r}") from None


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    return _number(env, name, default, int, "a whole number")


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    return _number(env, name, default, float, "a number")


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


DEFAULT_SECRET_KEY = "dev-only-secret-change-me"  # create_app refuses it outside debug and tests
SECRET_KEY_FILE = "secret_key"  # in the instance folder: written by the local run command (`flask dev`)


def instance_secret_key(instance: Path) -> str | None:
    """The key the local run command generated into ``<instance>/secret_key``, if any; every
    process of a local run (web, worker, scheduler, CLI) reads the same one."""
    try:
        return (instance / SECRET_KEY_FILE).read_text().strip() or None
    except OSError:
        return None


def ensure_instance_secret_key(instance: Path) -> None:
    """Write a random ``SECRET_KEY`` (384 bits) to ``<instance>/secret_key`` (mode 0600) unless
    ``SECRET_KEY`` is set or the file exists: the local run command's first start, so a newcomer
    never meets the refusal of the public default key."""
    import secrets

    if os.environ.get("SECRET_KEY") or instance_secret_key(instance):
        return
    instance.mkdir(parents=True, exist_ok=True)
    path = instance / SECRET_KEY_FILE
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as fh:
        fh.write(secrets.token_urlsafe(48) + "\n")


# Most page-range parts one document may make (MAX_PDF_PAGES / SPLIT_PART_PAGES): each is a Job row.
MAX_SPLIT_PARTS = 1000
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
        # Signs session cookies and CSRF tokens, and derives the key that encrypts PDF passwords
        # at rest. Unset: the local run command's instance/secret_key, else a public default
        # that create_app refuses outside debug and tests.
        "SECRET_KEY": env.get("SECRET_KEY") or instance_secret_key(instance) or DEFAULT_SECRET_KEY,
        # Earlier keys, comma-separated, still accepted after a rotation (Flask's
        # SECRET_KEY_FALLBACKS): old sessions and PDF passwords encrypted before it stay readable.
        "SECRET_KEY_FALLBACKS": [key.strip() for key in env.get("SECRET_KEY_FALLBACKS", "").split(",") if key.strip()],
        # The session cookie of the UI's sign-in: never readable by scripts, not sent on
        # cross-site POSTs, and only over HTTPS unless SESSION_COOKIE_SECURE=false (the local run
        # command sets that: it serves plain http://127.0.0.1).
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": _bool(env, "SESSION_COOKIE_SECURE", True),
        # Proxies in front of the web process that set X-Forwarded-For/-Proto/-Host/-Port
        # (Heroku's router, a load balancer: 1). Behind one, without this the app sees http and
        # refuses the browser's https Origin as another site's. 0: none (a local run).
        "TRUSTED_PROXY_COUNT": _int(env, "TRUSTED_PROXY_COUNT", 0),
        # CSRF tokens (Flask-WTF) are checked by webapp.edge.auth for requests signed in by the session
        # cookie only; a bearer token is not sent by browsers on their own.
        "WTF_CSRF_CHECK_DEFAULT": False,
        "WTF_CSRF_TIME_LIMIT": None,  # valid as long as the session: a page left open keeps working
        "DATABASE_URL": normalize_database_url(
            env.get("DATABASE_URL") or f"sqlite:///{instance / 'docket.sqlite3'}"
        ),
        # PostgreSQL: connections one process (gunicorn worker, worker process, scheduler) may
        # hold at once, and seconds a request waits for one when all are in use (then 503).
        # Sum over all processes must stay under the server's max_connections (webapp/core/db.py).
        "DATABASE_POOL_SIZE": _int(env, "DATABASE_POOL_SIZE", 8),
        "DATABASE_POOL_TIMEOUT": _int(env, "DATABASE_POOL_TIMEOUT", 10),
        # Unset: the embedded Redis of a running `flask dev` for this instance (it writes its URL
        # to instance/redis.url), so every command of the project finds it; else localhost.
        "REDIS_URL": env.get("REDIS_URL") or embedded_redis_url(instance) or "redis://localhost:6379/0",
        # Managed rediss:// services often use self-signed certificates: REDIS_TLS_VERIFY=false.
        "REDIS_TLS_VERIFY": _bool(env, "REDIS_TLS_VERIFY", True),
        # Live progress streams (webapp/edge/sse.py): seconds between keep-alive comments
        # (Heroku's router closes a connection silent for 55 s), and seconds a stream lasts at
        # most before the browser reconnects.
        "EVENTS_HEARTBEAT": _int(env, "EVENTS_HEARTBEAT", 15),
        "EVENTS_MAX_STREAM": _int(env, "EVENTS_MAX_STREAM", 600),
        # Local folder for uploaded bytes (see webapp/core/storage.py); web and worker must share it.
        "STORAGE_PATH": env.get("STORAGE_PATH") or str(instance / "uploads"),
        # Where uploads and report files live, for web and workers alike (webapp/core/storage.py):
        # s3://bucket/prefix (an S3-compatible bucket; boto3 reads AWS_ENDPOINT_URL,
        # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_DEFAULT_REGION itself, so no secret
        # passes through this config) or file:///path. Unset: the folder STORAGE_PATH.
        "STORAGE_URL": env.get("STORAGE_URL") or None,
        # Seconds a report download's presigned URL stays valid (S3 storage: the download answers
        # 302 to it); SigV4 allows at most 7 days (604800).
        "REPORT_URL_EXPIRY": _int(env, "REPORT_URL_EXPIRY", 300),
        # Bytes; Flask answers 413 above it. 50 MB by default.
        "MAX_CONTENT_LENGTH": _int(env, "MAX_CONTENT_LENGTH", 50 * MB),
        # Files in one upload (one batch); more are refused with 413 too_many_files.
        "MAX_FILES_PER_UPLOAD": _int(env, "MAX_FILES_PER_UPLOAD", 100),
        # Bytes one form field other than a file may hold (Flask's setting and default); more are
        # refused with 413 form_field_too_large.
        "MAX_FORM_MEMORY_SIZE": _int(env, "MAX_FORM_MEMORY_SIZE", 500_000),
        # --- limits on what one document may become (jobs/extract.py, jobs/chunking.py): each is
        # refused with a clear error and error_code instead of filling the database ---
        # Non-whitespace characters extracted from one document (≈ 2,500 dense pages).
        "MAX_DOCUMENT_CHARS": _int(env, "MAX_DOCUMENT_CHARS", 5_000_000),
        # Chunks one document may produce.
        "MAX_DOCUMENT_CHUNKS": _int(env, "MAX_DOCUMENT_CHUNKS", 5_000),
        # Pages of one PDF, and slides of one .pptx.
        "MAX_PDF_PAGES": _int(env, "MAX_PDF_PAGES", 2_000),
        # Cells of one .xlsx (all sheets, counted as read; an empty row counts one) or .csv, and
        # of one .pptx's tables.
        "MAX_SHEET_CELLS": _int(env, "MAX_SHEET_CELLS", 1_000_000),
        # Zip-based formats (.docx): total uncompressed bytes, and the largest ratio of
        # uncompressed to compressed size, checked from the zip directory before anything is expanded.
        "MAX_UNCOMPRESSED_SIZE": _int(env, "MAX_UNCOMPRESSED_SIZE", 200 * MB),
        "MAX_COMPRESSION_RATIO": _int(env, "MAX_COMPRESSION_RATIO", 200),
        # Megabytes of memory reading one PDF, .docx or HTML document may take: its reader runs in
        # a process of its own, forked from the worker process, whose address space may grow by
        # this much (jobs/reader_process.py); a few KB of PDF can ask PDFium for gigabytes.
        "MAX_DOCUMENT_MEMORY": _int(env, "MAX_DOCUMENT_MEMORY", 512),
        # --- big documents (jobs/document_parts.py): a PDF of more than SPLIT_PDF_PAGES pages is
        # read by page-range parts of SPLIT_PART_PAGES pages, each an ordinary job on `default`,
        # so every worker process helps; 0: never split ---
        "SPLIT_PDF_PAGES": _int(env, "SPLIT_PDF_PAGES", 200),
        # 100: measured on a 400-page text PDF with the kept reader, 4 parts on 2 workers took 0.79×
        # the single job and 25-page parts 1.07× (benchmarks/RESULTS.md, benchmark 11); OCR'd
        # pages (seconds each) would pay with smaller parts.
        "SPLIT_PART_PAGES": _int(env, "SPLIT_PART_PAGES", 100),
        # --- OCR (jobs/ocr.py) ---
        # auto: read pages without a usable text layer, and image uploads; off: never (an image
        # upload fails, ocr_disabled); force: every page, ignoring its text layer.
        "OCR": (env.get("OCR") or "auto").strip().lower(),
        # The language of the text OCR reads: only what the models in rapidocr's wheel read
        # offline (ocr_languages()); they are one multilingual model, so the value is a check.
        "OCR_LANGUAGE": (env.get("OCR_LANGUAGE") or "multi").strip().lower(),
        # Seconds added to a document job's time limit for each page it reads by OCR.
        "OCR_SECONDS_PER_PAGE": _int(env, "OCR_SECONDS_PER_PAGE", 30),
        # Pixels (width × height) of one image or image frame, checked from its header before it
        # is decoded (too_many_pixels); a PDF page is rendered for OCR at no more than this.
        "MAX_IMAGE_PIXELS": _int(env, "MAX_IMAGE_PIXELS", 100_000_000),
        # Worker processes `flask rq worker` runs: one per core, as document jobs are CPU-bound;
        # two per core with remote embeddings, where each job also waits on the network.
        "WORKER_CONCURRENCY": _int(env, "WORKER_CONCURRENCY",
                                   default_worker_concurrency(remote_embeddings=bool(env.get("OPENAI_API_KEY")) and (
                                       env.get("EMBEDDER") or "openai").strip().lower() == "openai")),
        # Worker processes, beside WORKER_CONCURRENCY, that take only `high` jobs (reports, webhooks): they
        # start at once while every other process runs a long document job.
        "HIGH_QUEUE_WORKERS": _int(env, "HIGH_QUEUE_WORKERS", 1),
        # Megabytes of peak memory after which a worker process is replaced once its job ends.
        "WORKER_MAX_MEMORY": _int(env, "WORKER_MAX_MEMORY", 512),
        # Seconds past a job's timeout before the pool kills a process stuck in native code.
        "JOB_KILL_GRACE": _int(env, "JOB_KILL_GRACE", 60),
        # Seconds the maintenance jobs (reconcile, retention, orphans) may run, unless their own
        # <NAME>_JOB_TIMEOUT says otherwise (each kind's declaration has its default).
        "MAINTENANCE_JOB_TIMEOUT": _optional_int(env, "MAINTENANCE_JOB_TIMEOUT"),
        # Key of the webhooks' HMAC-SHA256 signature (X-Docket-Signature); SECRET_KEY when unset.
        # (None here: create_app fills in the final SECRET_KEY, also one given by test_config.)
        "WEBHOOK_SECRET": env.get("WEBHOOK_SECRET") or None,
        # Webhooks to loopback, private, link-local (cloud metadata) or reserved addresses are
        # refused (SSRF) unless this is true: receivers on the local network.
        "WEBHOOK_ALLOW_PRIVATE": _bool(env, "WEBHOOK_ALLOW_PRIVATE", False),
        # Seconds one webhook POST may take (connect + answer) before it counts as failed.
        "WEBHOOK_TIMEOUT": _int(env, "WEBHOOK_TIMEOUT", 10),
        # URL fetches (POST /api/documents with JSON urls, web and sitemap sources): loopback,
        # private, link-local and reserved addresses are refused (SSRF) unless this is true — an
        # operator's intranet. The same check as webhooks (webapp/core/egress.py).
        "FETCH_ALLOW_PRIVATE_NETWORKS": _bool(env, "FETCH_ALLOW_PRIVATE_NETWORKS", False),
        # Seconds to open a fetch's connection, and seconds each read of its answer may wait.
        "FETCH_CONNECT_TIMEOUT": _float(env, "FETCH_CONNECT_TIMEOUT", 10.0),
        "FETCH_READ_TIMEOUT": _float(env, "FETCH_READ_TIMEOUT", 30.0),
        # The User-Agent of fetches (some servers refuse requests without one).
        "FETCH_USER_AGENT": env.get("FETCH_USER_AGENT") or "Docket-Fetch/1",
        # --- Sources (POST /api/sources, the sync job) ---
        # Most items one source may hold: the URLs of a web source, the <loc>s read from a sitemap
        # (nested sitemaps included), the objects listed under an S3 prefix. A listing cut at this
        # bound deletes nothing that was not listed (a sync's deletions need the whole listing).
        "SOURCE_MAX_ITEMS": _int(env, "SOURCE_MAX_ITEMS", 10_000),
        # Syncs of a source that GET /api/sources/<id> shows (newest first).
        "SOURCE_SYNC_HISTORY": _int(env, "SOURCE_SYNC_HISTORY", 20),
        # A cap in seconds on every automatic retry's delay. (Each kind's time limit and retries
        # are <NAME>_JOB_TIMEOUT and <NAME>_JOB_RETRIES, read below for any kind.)
        "RETRY_MAX_DELAY": _optional_int(env, "RETRY_MAX_DELAY"),
        # Modules that declare more job kinds (comma-separated), imported by create_app in every
        # process (webapp/core/protocol/kinds.py).
        "JOB_KIND_MODULES": tuple(name.strip() for name in env.get("JOB_KIND_MODULES", "").split(",") if name.strip()),
        # Seconds RQ keeps a finished / failed job in Redis; the database row stays.
        "JOB_RESULT_TTL": _int(env, "JOB_RESULT_TTL", 24 * 3600),
        "JOB_FAILURE_TTL": _int(env, "JOB_FAILURE_TTL", 7 * 24 * 3600),
        # Characters per chunk (upper bound) and overlap between neighbouring chunks.
        "CHUNK_SIZE": _int(env, "CHUNK_SIZE", 1500),
        "CHUNK_OVERLAP": _int(env, "CHUNK_OVERLAP", 150),
        # Tables of PDFs found by pdfplumber on pages with ruling lines (auto), or not (off): slow
        # (≈ 1 s per ruled page) and walks every page object (jobs/readers/pdf_structure.py).
        "PDF_TABLES": (env.get("PDF_TABLES") or "off").strip().lower(),
        # What makes the chunks' vectors (webapp/core/embeddings.py): wordllama (offline, semantic),
        # hashing (offline, lexical) or openai. Unset: openai with OPENAI_API_KEY, else wordllama
        # (the better offline one on bench/retrieval.py). Vectors of one are never compared with another's.
        "EMBEDDER": (env.get("EMBEDDER") or "").strip().lower() or None,
        "OPENAI_API_KEY": env.get("OPENAI_API_KEY") or None,
        "OPENAI_BASE_URL": env.get("OPENAI_BASE_URL") or None,
        "EMBEDDING_MODEL": env.get("EMBEDDING_MODEL", "text-embedding-3-small"),
        # Inputs per embeddings request: OpenAI accepts up to 2048; some compatible servers fewer.
        "EMBEDDING_BATCH_SIZE": _int(env, "EMBEDDING_BATCH_SIZE", 2048),
        # Chat model that writes document summaries in reports (with OPENAI_API_KEY).
        "SUMMARY_MODEL": env.get("SUMMARY_MODEL", "gpt-4o-mini"),
        "OPENAI_TIMEOUT": _int(env, "OPENAI_TIMEOUT", 60),
        "OPENAI_MAX_RETRIES": _int(env, "OPENAI_MAX_RETRIES", 3),
        # --- rate limits shared by every worker process on every machine (webapp/core/workflows/rate_limits.py) ---
        # OpenAI API requests and tokens (upper bound: UTF-8 bytes) per minute, summed over all
        # processes, as OpenAI publishes its limits; 0: unlimited. OPENAI_RATE_WINDOW is the
        # window in seconds they are counted over: 60 (OpenAI's); shorter only for tests.
        "OPENAI_REQUESTS_PER_MINUTE": _int(env, "OPENAI_REQUESTS_PER_MINUTE", 0),
        "OPENAI_TOKENS_PER_MINUTE": _int(env, "OPENAI_TOKENS_PER_MINUTE", 0),
        "OPENAI_RATE_WINDOW": _int(env, "OPENAI_RATE_WINDOW", 60),
        # Job starts per kind, in the limits notation: "document=600/minute;report=10/minute".
        "JOB_RATE_LIMITS": env.get("JOB_RATE_LIMITS") or "",
        # Seconds a job may wait in place for a rate limit's budget before it is rescheduled.
        "RATE_LIMIT_MAX_WAIT": _float(env, "RATE_LIMIT_MAX_WAIT", 5.0),
        # --- fair share between owners (webapp/core/fair_queue.py, webapp/core/owner_caps.py) ---
        # Round-robin across owners inside each queue; off: first in, first out (RQ's own push).
        "FAIR_SHARE": _bool(env, "FAIR_SHARE", True),
        # Documents one owner may have waiting (queued or scheduled); over it an upload gets 429
        # with Retry-After. Jobs of one owner running at once on all workers. 0: no cap.
        "OWNER_MAX_QUEUED": _int(env, "OWNER_MAX_QUEUED", 0),
        "OWNER_MAX_RUNNING": _int(env, "OWNER_MAX_RUNNING", 0),
        # Seconds a job over OWNER_MAX_RUNNING waits in RQ's scheduler before it is queued again.
        "OWNER_BUSY_RETRY": _int(env, "OWNER_BUSY_RETRY", 2),
        "SEARCH_MAX_K": _int(env, "SEARCH_MAX_K", 50),
        # --- re-indexing after a settings change (webapp/core/indexing.py, jobs/reindex_job.py) ---
        # Document jobs a reindex job launches per second, at most, and how many of the jobs it
        # launched may wait in the queue at once (it waits while that many do; 0: no bound).
        "REINDEX_RATE": _float(env, "REINDEX_RATE", 5.0),
        "REINDEX_MAX_QUEUED": _int(env, "REINDEX_MAX_QUEUED", 100),
        # Chunks a search reads and scores at a time: its memory is bounded by one block
        # (rows × dimensions × 4 bytes: 16 MB at 2,048 rows of the hashing embedder's 2,048).
        "SEARCH_BLOCK_ROWS": _int(env, "SEARCH_BLOCK_ROWS", 2048),
        # --- periodic jobs and recovery (webapp/core/schedules/, jobs/reconcile_job.py, jobs/retention_job.py, jobs/orphans_job.py) ---
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
        # Seconds between an idle worker process's RQ maintenance (RQ's maintenance_interval, 600 by
        # default): cleaning RQ's registries (abandoned jobs) and taking over RQ's scheduler lock
        # when the process that held it died (delayed automatic retries wait for that scheduler).
        "WORKER_MAINTENANCE_INTERVAL": _int(env, "WORKER_MAINTENANCE_INTERVAL", 30),
        # Seconds a worker told to stop (SIGTERM: a deploy or restart) lets its running job go
        # on before handing it back to the queue; platforms SIGKILL ≈30 s after SIGTERM.
        "SHUTDOWN_GRACE": _int(env, "SHUTDOWN_GRACE", 10),
        # Days a terminal job's rows, uploads, chunks and report files are kept (retention job).
        "RETENTION_DAYS": _int(env, "RETENTION_DAYS", 30),
        # Seconds a stored file must be old before the orphans job deletes it when no row
        # references it (an upload's bytes are stored before its row is committed).
        "ORPHAN_GRACE": _int(env, "ORPHAN_GRACE", 3600),
        # --- operations (webapp/core/logs.py, webapp/core/metrics.py) ---
        # Log lines on stderr: "json" (one object per line, for a log service) or "text" (for a
        # person); the level of Docket's, RQ's and rq-scheduler's loggers.
        "LOG_FORMAT": (env.get("LOG_FORMAT") or "json").strip().lower(),
        "LOG_LEVEL": (env.get("LOG_LEVEL") or "INFO").strip().upper(),
        # Folder where every process of this machine keeps its Prometheus counters (one file per
        # process, summed by GET /metrics); the run command empties it at start.
        "PROMETHEUS_MULTIPROC_DIR": env.get("PROMETHEUS_MULTIPROC_DIR") or str(instance / "prometheus"),
    }
    config.update(_kind_settings(env))  # <NAME>_JOB_TIMEOUT / <NAME>_JOB_RETRIES of any kind
    # A chunk of N characters is at most 4*N UTF-8 bytes, and a byte-level BPE token covers at
    # least one byte, so 2048 characters stay under OpenAI's 8192-token per-input limit.
    if not 100 <= config["CHUNK_SIZE"] <= 2048:
        raise ValueError("CHUNK_SIZE must be between 100 and 2048 characters")
    if config["EMBEDDER"] not in (None, "wordllama", "hashing", "openai"):
        raise ValueError("EMBEDDER must be wordllama, hashing or openai")
    if config["EMBEDDER"] == "openai" and not config["OPENAI_API_KEY"]:
        raise ValueError("EMBEDDER=openai needs OPENAI_API_KEY")
    if not 1 <= config["EMBEDDING_BATCH_SIZE"] <= 2048:
        raise ValueError("EMBEDDING_BATCH_SIZE must be between 1 and 2048 (OpenAI's limit per request)")
    if config["MAX_FILES_PER_UPLOAD"] < 1:
        raise ValueError("MAX_FILES_PER_UPLOAD must be at least 1")
    if config["OWNER_MAX_QUEUED"] < 0 or config["OWNER_MAX_RUNNING"] < 0:
        raise ValueError("OWNER_MAX_QUEUED and OWNER_MAX_RUNNING must be 0 (no cap) or more")
    if config["OWNER_BUSY_RETRY"] < 1:
        raise ValueError("OWNER_BUSY_RETRY must be at least 1 second (RQ's scheduler works in whole seconds)")
    # Werkzeug refuses a form of more parts than this with a bare 413 (webapp.edge.json_errors names it):
    # the files and a few other fields (password, reprocess, callback_url).
    config["MAX_FORM_PARTS"] = config["MAX_FILES_PER_UPLOAD"] + 10
    if not 0.01 <= config["REINDEX_RATE"] <= 1000:
        raise ValueError("REINDEX_RATE must be between 0.01 and 1000 documents per second")
    if config["REINDEX_MAX_QUEUED"] < 0:
        raise ValueError("REINDEX_MAX_QUEUED must not be negative (0: no bound)")
    if config["SEARCH_BLOCK_ROWS"] < 1:
        raise ValueError("SEARCH_BLOCK_ROWS must be at least 1")
    if config["STORAGE_URL"]:
        from webapp.core.storage import parse_storage_url

        parse_storage_url(config["STORAGE_URL"])  # ValueError with a sentence that never repeats the URL
    if not 1 <= config["REPORT_URL_EXPIRY"] <= 7 * 24 * 3600:
        raise ValueError("REPORT_URL_EXPIRY must be between 1 and 604800 seconds (7 days, SigV4's limit)")
    for name in ("MAX_DOCUMENT_CHARS", "MAX_DOCUMENT_CHUNKS", "MAX_PDF_PAGES", "MAX_SHEET_CELLS",
                 "MAX_UNCOMPRESSED_SIZE", "MAX_COMPRESSION_RATIO", "MAX_DOCUMENT_MEMORY", "MAX_IMAGE_PIXELS"):
        if config[name] < 1:
            raise ValueError(f"{name} must be at least 1")
    if config["SPLIT_PDF_PAGES"] < 0:
        raise ValueError("SPLIT_PDF_PAGES must not be negative (0: never split a PDF)")
    if config["SPLIT_PART_PAGES"] < 1:
        raise ValueError("SPLIT_PART_PAGES must be at least 1")
    if config["SPLIT_PDF_PAGES"] and -(-config["MAX_PDF_PAGES"] // config["SPLIT_PART_PAGES"]) > MAX_SPLIT_PARTS:
        raise ValueError(f"SPLIT_PART_PAGES is too small: a PDF of MAX_PDF_PAGES pages would make more than "
                         f"{MAX_SPLIT_PARTS} parts")
    if config["OCR"] not in ("auto", "off", "force"):
        raise ValueError(f"OCR must be auto, off or force, got {config['OCR']!r}")
    if config["OCR_LANGUAGE"] not in ocr_languages():
        raise ValueError(
            f"OCR_LANGUAGE {config['OCR_LANGUAGE']!r} is not read by the OCR models Docket ships (rapidocr's "
            "multilingual PP-OCRv6 model; other languages' models would be downloaded, which Docket never does): "
            "use multi, or one of the languages it reads: " + ", ".join(ocr_languages()[1:]))
    if config["OCR_SECONDS_PER_PAGE"] < 0:
        raise ValueError("OCR_SECONDS_PER_PAGE must not be negative")
    if config["WORKER_CONCURRENCY"] < 1:
        raise ValueError("WORKER_CONCURRENCY must be at least 1")
    if config["DATABASE_POOL_SIZE"] < 1 or config["DATABASE_POOL_TIMEOUT"] < 0:
        raise ValueError("DATABASE_POOL_SIZE must be at least 1 and DATABASE_POOL_TIMEOUT not negative")
    if config["HIGH_QUEUE_WORKERS"] < 0:
        raise ValueError("HIGH_QUEUE_WORKERS must not be negative")
    if config["WORKER_MAX_MEMORY"] < 0 or config["JOB_KILL_GRACE"] < 0:
        raise ValueError("WORKER_MAX_MEMORY and JOB_KILL_GRACE must not be negative")
    for name in ("SCHEDULER_INTERVAL", "RECONCILE_INTERVAL", "WORKER_HEARTBEAT_INTERVAL", "WORKER_MAINTENANCE_INTERVAL",
                 "RETENTION_DAYS"):
        if config[name] < 1:
            raise ValueError(f"{name} must be at least 1")
    for name in ("RECONCILE_GRACE", "STUCK_JOB_MARGIN", "SHUTDOWN_GRACE", "ORPHAN_GRACE"):
        if config[name] < 0:
            raise ValueError(f"{name} must not be negative")
    if config["PDF_TABLES"] not in ("auto", "off"):
        raise ValueError("PDF_TABLES must be auto or off")
    if config["LOG_FORMAT"] not in ("json", "text"):
        raise ValueError(f"LOG_FORMAT must be json or text, got {config['LOG_FORMAT']!r}")
    if not 0 <= config["CHUNK_OVERLAP"] < config["CHUNK_SIZE"] // 2:
        raise ValueError("CHUNK_OVERLAP must be at least 0 and less than half of CHUNK_SIZE")
    if config["MAINTENANCE_JOB_TIMEOUT"] is not None and config["MAINTENANCE_JOB_TIMEOUT"] < 1:
        raise ValueError("MAINTENANCE_JOB_TIMEOUT must be at least 1")
    _check_rate_limits(config)
    return config


def ocr_languages() -> tuple[str, ...]:
    """The ``OCR_LANGUAGE`` values that work offline: ``multi``, then the languages rapidocr 3.10's
    ``default_models.yaml`` lists for the multilingual PP-OCRv6 "small" rec model its wheel
    ships (read as text: the web process never imports rapidocr). Just ``("multi",)`` when
    rapidocr is not installed or its list cannot be read."""
    import importlib.util

    spec = importlib.util.find_spec("rapidocr")
    languages = ["multi"]
    if spec is None or not spec.submodule_search_locations:
        return tuple(languages)
    try:
        text = (Path(list(spec.submodule_search_locations)[0]) / "default_models.yaml").read_text()
    except OSError:
        return tuple(languages)
    # "ppocrv6_langs: &ppocrv6_langs" then "- xx" items, up to the next key.
    match = re.search(r"ppocrv6_langs: &ppocrv6_langs\n((?:\s+- \S+\n)+)", text)
    if match:
        languages += [item.strip()[2:] for item in match.group(1).splitlines() if item.strip()]
    return tuple(languages)


_KIND_SETTING = re.compile(r"^[A-Z][A-Z0-9_]*_JOB_(TIMEOUT|RETRIES)$")


def _kind_settings(env: Mapping[str, str]) -> dict[str, int]:
    """Every ``<NAME>_JOB_TIMEOUT`` (seconds, at least 1) and ``<NAME>_JOB_RETRIES`` (at least 0)
    set in ``env``, for any job kind (webapp/core/protocol/kinds.py reads them by the kind's name).

    Raises:
        ValueError: a value is not a whole number, or out of range.
    """
    settings: dict[str, int] = {}
    for name in env:
        match = _KIND_SETTING.match(name)
        if not match or name == "MAINTENANCE_JOB_TIMEOUT" or (env[name] or "").strip() == "":
            continue
        value = _int(env, name, 0)
        if value < (1 if match.group(1) == "TIMEOUT" else 0):
            raise ValueError(f"{name} must be at least {1 if match.group(1) == 'TIMEOUT' else 0}")
        settings[name] = value
    return settings


def _check_rate_limits(config: dict[str, Any]) -> None:
    """Validate the rate-limit settings; ``JOB_RATE_LIMITS`` becomes ``{kind: RateLimit}`` (the
    kinds of ``JOB_KIND_MODULES`` are declared first, so their limits can be set too)."""
    from webapp.core.protocol.kinds import JOB_KINDS, load_kind_modules

    load_kind_modules(config["JOB_KIND_MODULES"])
    from webapp.core.workflows.rate_limits import parse_job_rate_limits

    if config["OPENAI_REQUESTS_PER_MINUTE"] < 0:
        raise ValueError("OPENAI_REQUESTS_PER_MINUTE must not be negative (0: unlimited)")
    # One input may have OpenAI's per-input maximum of 8192 tokens: a smaller budget could never send it.
    if 0 < config["OPENAI_TOKENS_PER_MINUTE"] < 8192 or config["OPENAI_TOKENS_PER_MINUTE"] < 0:
        raise ValueError("OPENAI_TOKENS_PER_MINUTE must be 0 (unlimited) or at least 8192 (OpenAI's tokens per input)")
    if not 1 <= config["OPENAI_RATE_WINDOW"] <= 60:
        raise ValueError("OPENAI_RATE_WINDOW must be between 1 and 60 seconds")
    if config["RATE_LIMIT_MAX_WAIT"] < 0:
        raise ValueError("RATE_LIMIT_MAX_WAIT must not be negative")
    config["JOB_RATE_LIMITS"] = parse_job_rate_limits(config["JOB_RATE_LIMITS"], JOB_KINDS)
