"""Where the service's own time goes (issue 19): py-spy samples of the Procfile's web and worker
processes while a corpus run (benchmark 1's uploads) or a stream of tiny documents goes through
them over HTTP, and each process's CPU seconds (psutil).

Starts Docket as :func:`benchmarks.services.docket_service` does, attaches ``py-spy record
--subprocesses --format raw`` to the web process's and the worker command's process groups
(gunicorn's master and the worker pool: their children are followed), runs the uploads, and
writes the collapsed stacks to ``<out>/<process>.txt`` (one line per distinct stack: frames
separated by ``;``, then the sample count) with a summary of the heaviest frames on stdout.
Not a benchmark: no ratio, no target. Needs ``py-spy`` (``benchmarks/requirements.txt``) and
ptrace rights (root, or ``kernel.yama.ptrace_scope`` 0).

    .venv/bin/python -m benchmarks.profile_service [--tiny 200] [--copies 3] [--out /tmp/docket-profile]
"""

from __future__ import annotations

import argparse
import collections
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

from benchmarks.common import finishing_files
from benchmarks.http_ingest import CLIENTS, ingest_over_http
from benchmarks.services import VENV_BIN, docket_service, honcho_groups, stop_on_sigterm

RATE = 250  # samples per second per process


def _group_leader(pgid: int) -> int:
    return pgid  # honcho starts each Procfile process in a session of its own: its pid is the group's id


def _cpu_of_tree(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        for process in [root, *root.children(recursive=True)]:
            try:
                times = process.cpu_times()
                total += times.user + times.system + times.children_user + times.children_system
            except psutil.NoSuchProcess:
                pass
    except psutil.NoSuchProcess:
        pass
    return total


def profile(out: Path, tiny: int, copies: int, sample: bool = True) -> None:
    """Run the corpus (``copies`` copies, benchmark 1's clients) and then ``tiny`` one-line text
    documents (one client, one at a time) through a fresh Docket, sampled by py-spy."""
    py_spy = shutil.which("py-spy", path=str(VENV_BIN)) or shutil.which("py-spy")
    if not py_spy:
        raise SystemExit("py-spy is not installed: bin/setup benchmarks/requirements.txt")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="docket-profile-") as tmp:
        workdir = Path(tmp)
        for phase in ("corpus", "tiny"):
            with docket_service(workdir / phase) as service:
                groups = honcho_groups(workdir / phase / "service.log")
                samplers = []
                clients_before = sum(psutil.Process().cpu_times()[:2])
                cpu_before = {name: _cpu_of_tree(_group_leader(pgid)) for name, pgid in groups.items()}
                for name, pgid in groups.items() if sample else ():
                    target = out / f"{phase}-{name.split('.')[0]}.txt"
                    samplers.append(subprocess.Popen(
                        [py_spy, "record", "--pid", str(_group_leader(pgid)), "--subprocesses", "--rate", str(RATE),
                         "--format", "raw", "--nonblocking", "--output", str(target)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                time.sleep(2.0 if sample else 0.5)  # py-spy attaches
                started = time.perf_counter()
                if phase == "corpus":
                    figures = ingest_over_http(service, finishing_files(), copies, CLIENTS)
                else:
                    figures = _tiny_documents(service, tiny)
                wall = time.perf_counter() - started
                cpu = {name: _cpu_of_tree(_group_leader(pgid)) - cpu_before[name] for name, pgid in groups.items()}
                for sampler in samplers:
                    sampler.send_signal(signal.SIGINT)
                for sampler in samplers:
                    sampler.wait(timeout=60)
                clients = sum(psutil.Process().cpu_times()[:2]) - clients_before
                print(f"\n== {phase}: wall {wall:.2f} s; " + ", ".join(f"{k}={v:.3g}" for k, v in figures.items()))
                print("   CPU s per process group (py-spy's own sampling cost not included): "
                      + ", ".join(f"{name} {seconds:.2f}" for name, seconds in cpu.items())
                      + f", the HTTP clients (this process) {clients:.2f}")
                for name in groups if sample else ():
                    summarise(out / f"{phase}-{name.split('.')[0]}.txt")


def _tiny_documents(service, count: int) -> dict[str, float]:
    """``count`` one-line text uploads, each followed to its end before the next (latency-bound)."""
    latencies = []
    with service.session() as session:
        for index in range(count):
            started = time.perf_counter()
            response = session.post(f"{service.url}/api/documents", data={"reprocess": "true"},
                                    files={"file": (f"tiny-{index}.txt", f"A tiny document number {index}.".encode())})
            job_id = response.json()["documents"][0]["job_id"]
            while session.get(f"{service.url}/api/jobs/{job_id}").json()["status"] not in ("finished", "failed"):
                time.sleep(0.002)
            latencies.append(time.perf_counter() - started)
    latencies.sort()
    return {"documents": count, "p50_ms": latencies[len(latencies) // 2] * 1000,
            "p95_ms": latencies[int(len(latencies) * 0.95)] * 1000}


def summarise(path: Path, top: int = 25) -> None:
    """Print the frames with the most samples, inclusive (the frame anywhere on the stack), of one
    py-spy ``raw`` file."""
    if not path.exists():
        print(f"   {path.name}: no samples")
        return
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        samples = int(count)
        total += samples
        for frame in set(stack.split(";")[1:]):  # the first frame is the process
            inclusive[frame] += samples
    print(f"   {path.name}: {total} samples ({total / RATE:.2f} s of CPU at {RATE}/s)")
    for frame, samples in inclusive.most_common(top):
        print(f"     {samples / RATE * 1000:8.0f} ms {100 * samples / max(total, 1):5.1f} %  {frame[:150]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", type=int, default=200, help="tiny documents, one after the other")
    parser.add_argument("--copies", type=int, default=3, help="copies of the corpus")
    parser.add_argument("--out", type=Path, default=Path("/tmp/docket-profile"))
    parser.add_argument("--no-sampling", action="store_true", help="only the CPU seconds per process group")
    args = parser.parse_args()
    stop_on_sigterm()
    profile(args.out, args.tiny, args.copies, sample=not args.no_sampling)


if __name__ == "__main__":
    main()
