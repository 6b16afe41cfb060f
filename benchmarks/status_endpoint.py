"""Benchmark 4: ``GET /api/jobs/<id>`` under 32 concurrent connections against ``GET /healthz``.

Docket runs from its Procfile (``web`` and ``worker``); a few real jobs are created first (a small
corpus PDF uploaded and processed to ``finished``), so every status request does its real work:
the Job row from the database and the job from RQ. The baseline is the same app's trivial JSON
endpoint, ``GET /healthz``, on the same web process in the same run. The load generator is wrk
(``wrk -t2 -c32 -d10s --latency``; a Lua script rotates over the job ids); the two endpoints
alternate for several rounds after a short warm-up of each.

The status path includes authentication, as every ``/api`` request now does: each request sends
``Authorization: Bearer <token>`` (a non-admin token of owner ``bench``, made with ``flask --app
wsgi tokens create``, the owner of the jobs), so the server also hashes the token, looks it up (one
indexed SELECT on ``api_token.token_hash``), checks the job's owner, and writes the token's
``last_used_at`` at most once a minute. ``/healthz`` is open and ignores the header, but wrk sends
it the same header, so both sides send identical request bytes and the ratio prices only the work
the server does. Runs from before authentication existed (earlier entries of RESULTS.md) measured
the status path without it.

Ratio = status requests/s ÷ healthz requests/s; targets: ratio ≥ 0.5 and status p99 ≤ 25 ms.
Each load run also records the CPU time the gunicorn worker processes spent per request, which
explains the ratio and moves far less with the other load on a shared machine than requests/s.

    apt-get install -y wrk
    .venv/bin/python -m benchmarks.status_endpoint [--rounds 3]
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from benchmarks.common import CORPUS, alternate, collect, command_line, result, summary, wait_until
from benchmarks.services import Service, docket_service, web_worker_pids
from benchmarks.tables import print_record

JOB_FILE = CORPUS / "minimal-document.pdf"  # 1 page: the jobs finish in moments
JOBS = 8  # distinct job ids the load rotates over
WRK_THREADS, WRK_CONNECTIONS, WRK_SECONDS, WARMUP_SECONDS = 2, 32, 10, 2
JOBS_TIMEOUT = 120.0  # seconds for the setup jobs to finish
TARGET_RATIO, TARGET_P99_MS = 0.5, 25.0
MAX_ERROR_SHARE = 0.01  # socket errors per request beyond which a load run is not a measurement

_HEADER_SCRIPT = """\
-- Every request carries the API token (wrk.format and wrk's static request use wrk.headers).
wrk.headers["Authorization"] = "Bearer %s"
"""
_ROTATE_SCRIPT = """\
-- Each wrk thread cycles over the job ids, one GET /api/jobs/<id> per request.
local ids = {%s}
local next_id = 0
request = function()
  next_id = next_id %% #ids + 1
  return wrk.format("GET", "/api/jobs/" .. ids[next_id], wrk.headers)
end
"""
_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk_binary() -> str:
    """Path of ``wrk``. Raises ``RuntimeError`` with the install command when it is missing."""
    path = shutil.which("wrk")
    if path is None:
        raise RuntimeError("wrk is not installed: install Debian's package with `apt-get install -y wrk` "
                           "(as root), then run this benchmark again")
    return path


def run_wrk(url: str, seconds: int, script: Path | None = None) -> dict[str, float]:
    """Load ``url`` with ``wrk -t2 -c32 -d<seconds>s --latency`` and parse its report.

    Returns:
        See :func:`parse_wrk`.

    Raises:
        RuntimeError: wrk failed, or see :func:`parse_wrk`.
    """
    command = [wrk_binary(), f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", "--latency"]
    if script is not None:
        command += ["-s", str(script)]
    report = subprocess.run([*command, url], capture_output=True, text=True, timeout=seconds + 30)
    if report.returncode != 0:
        raise RuntimeError(f"wrk failed ({report.returncode}): {report.stderr or report.stdout}")
    return parse_wrk(report.stdout)


def parse_wrk(report: str) -> dict[str, float]:
    """Figures of a ``wrk --latency`` report.

    Returns:
        ``req_per_s``, ``p50_ms`` and ``p99_ms`` (latency, milliseconds), ``socket_errors``
        (connect, read, write and timeout errors added up) and ``requests`` (completed).

    Raises:
        RuntimeError: the report counts non-2xx/3xx responses or more than ``MAX_ERROR_SHARE``
            socket errors per request (the server stopped answering), or lacks a figure.
    """
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", report)
    if non_2xx:
        raise RuntimeError(f"{non_2xx.group(1)} responses were not 2xx/3xx:\n{report}")
    rate = re.search(r"Requests/sec:\s+([\d.]+)", report)
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", report, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", report, re.MULTILINE)
    count = re.search(r"(\d+) requests in ", report)
    if not (rate and p50 and p99 and count):
        raise RuntimeError(f"could not read requests/s and latency percentiles from wrk's report:\n{report}")
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", report)
    socket_errors = sum(int(n) for n in errors.groups()) if errors else 0
    if socket_errors > MAX_ERROR_SHARE * int(count.group(1)):
        raise RuntimeError(f"{socket_errors} socket errors for {count.group(1)} requests: "
                           f"the server stopped answering\n{report}")
    return {
        "req_per_s": float(rate.group(1)),
        "p50_ms": float(p50.group(1)) * _UNITS_MS[p50.group(2)],
        "p99_ms": float(p99.group(1)) * _UNITS_MS[p99.group(2)],
        "socket_errors": socket_errors,
        "requests": int(count.group(1)),
    }


def load_with_cpu(workers: list[psutil.Process], url: str, script: Path | None = None) -> dict[str, float]:
    """:func:`run_wrk` for ``WRK_SECONDS``, plus ``cpu_ms_per_req``: CPU time (user + system,
    milliseconds) the web worker processes ``workers`` spent per completed request — a figure the
    other load on a shared machine disturbs far less than requests/s."""
    before = sum(_cpu_seconds(worker) for worker in workers)
    figures = run_wrk(url, WRK_SECONDS, script)
    spent = sum(_cpu_seconds(worker) for worker in workers) - before
    figures["cpu_ms_per_req"] = spent * 1000 / figures.pop("requests")
    return figures


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def finished_jobs(service: Service, count: int) -> list[str]:
    """Upload :data:`JOB_FILE` ``count`` times (with ``service``'s token) and wait until every job
    is ``finished``; their ids."""
    base_url = service.url
    with service.session() as session:
        job_ids = []
        for _ in range(count):
            response = session.post(f"{base_url}/api/documents",
                                    files={"file": (JOB_FILE.name, JOB_FILE.read_bytes())},
                                    data={"reprocess": "true"}, timeout=30)  # eight jobs, not one
            response.raise_for_status()
            job_ids.append(response.json()["documents"][0]["job_id"])

        def all_finished() -> bool:
            statuses = [session.get(f"{base_url}/api/jobs/{job_id}", timeout=30).json() for job_id in job_ids]
            failed = [s for s in statuses if s["status"] in ("failed", "stopped", "canceled")]
            if failed:
                raise RuntimeError(f"setup jobs did not finish: {failed}")
            # rq_status too: the status endpoint must find each job in RQ, as for a job that just ran.
            return all(s["status"] == "finished" and s["rq_status"] == "finished" for s in statuses)

        wait_until(all_finished, JOBS_TIMEOUT, interval=0.2, what=f"{count} setup jobs to finish")
    return job_ids


def run(rounds: int = 3) -> dict[str, Any]:
    """Benchmark 4; returns the result record (see :func:`benchmarks.common.result`)."""
    wrk_binary()
    with tempfile.TemporaryDirectory(prefix="docket-bench-status-") as tmp:
        workdir = Path(tmp)
        with docket_service(workdir / "service") as service:
            base_url = service.url
            job_ids = finished_jobs(service, JOBS)
            # The same Authorization header on both sides (healthz ignores it): identical request bytes.
            header = _HEADER_SCRIPT % service.token
            script, healthz_script = workdir / "rotate_jobs.lua", workdir / "healthz.lua"
            script.write_text(header + _ROTATE_SCRIPT % ", ".join(f'"{job_id}"' for job_id in job_ids))
            healthz_script.write_text(header)
            status_url, healthz_url = f"{base_url}/api/jobs/{job_ids[0]}", f"{base_url}/healthz"
            workers = [psutil.Process(pid) for pid in web_worker_pids(workdir / "service")]
            run_wrk(status_url, WARMUP_SECONDS, script)
            run_wrk(healthz_url, WARMUP_SECONDS, healthz_script)
            measured = alternate(rounds, {
                "status": lambda: load_with_cpu(workers, status_url, script),
                "healthz": lambda: load_with_cpu(workers, healthz_url, healthz_script),
            })
    pairs = list(zip(measured["status"], measured["healthz"]))
    ratio = summary([status["req_per_s"] / healthz["req_per_s"] for status, healthz in pairs])
    cpu_ratio = summary([status["cpu_ms_per_req"] / healthz["cpu_ms_per_req"] for status, healthz in pairs])
    keys = ("req_per_s", "p50_ms", "p99_ms", "cpu_ms_per_req", "socket_errors")
    p99 = collect(measured["status"], "p99_ms")
    record = result(
        name="status_endpoint",
        title=f"Benchmark 4: GET /api/jobs/<id> (bearer token) vs GET /healthz, wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} "
              f"-d{WRK_SECONDS}s, Procfile web process ({JOBS} finished jobs rotated)",
        figures={
            "status": {key: collect(measured["status"], key) for key in keys},
            "healthz": {key: collect(measured["healthz"], key) for key in keys},
            "ratio": {"status/healthz req/s": ratio, "status/healthz cpu/req": cpu_ratio},
        },
        ratio=ratio["median"],
        ratio_meaning="status endpoint requests/s / healthz requests/s, median of per-round ratios",
        target=f">= {TARGET_RATIO} and status p99 <= {TARGET_P99_MS:g} ms",
        met=ratio["median"] >= TARGET_RATIO and p99["median"] <= TARGET_P99_MS,
        notes=(f"The status requests authenticate (Authorization: Bearer, a non-admin token: token SELECT, owner "
               f"check, last_used_at written at most once a minute); healthz gets the same header and ignores it. "
               f"wrk runs on the same 2-core machine as the web process; both endpoints share that handicap. "
               f"With {WRK_CONNECTIONS} connections a p99 <= {TARGET_P99_MS:g} ms needs at least "
               f"{WRK_CONNECTIONS / TARGET_P99_MS * 1000:.0f} req/s (Little's law: mean latency = connections / "
               f"throughput <= p99); the trivial endpoint's own p99 here is "
               f"{collect(measured['healthz'], 'p99_ms')['median']:.0f} ms."),
    )
    print_record(record)
    return record


if __name__ == "__main__":
    command_line(run, __doc__)
