"""Run Docket's benchmarks: a table per benchmark and a summary on stdout, JSON on disk.

Each benchmark starts the processes it measures itself (private Redis servers, the Procfile's
web and worker, the Celery peer) and compares Docket against a baseline measured in the same
run, alternating the sides for ``--rounds`` rounds. Every record goes to
``benchmarks/results/<name>.json``; the summary table, with the commit it measured, replaces
the generated part of ``benchmarks/RESULTS.md`` (between its ``results`` markers).

    bin/bench [--rounds 3] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import time
import traceback
from typing import Any

from benchmarks.common import RESULTS_DIR, ROOT, git_commit, save

# (name, module, function): the order of the list.
BENCHMARKS = (
    ("service_limit", "benchmarks.http_ingest", "run_vs_limit"),
    ("celery_peer", "benchmarks.http_ingest", "run_vs_peer"),
    ("job_overhead", "benchmarks.job_overhead", "run"),
    ("status_endpoint", "benchmarks.status_endpoint", "run"),
    ("upload_path", "benchmarks.upload_path", "run"),
    ("remote_embeddings", "benchmarks.remote_embeddings", "run"),
    ("memory", "benchmarks.memory", "run"),
    ("rate_limit", "benchmarks.rate_limit", "run"),
    ("hostile_memory", "benchmarks.hostile_memory", "run"),
    ("ocr", "benchmarks.ocr", "run"),
    ("big_document", "benchmarks.big_document", "run"),
    ("fairness", "benchmarks.fairness", "run"),
)
RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def run_all(rounds: int, only: set[str] | None = None) -> list[dict[str, Any]]:
    """Run the benchmarks (all, or those named in ``only``); a failing one is recorded, not fatal."""
    records = []
    for index, (name, module, function) in enumerate(BENCHMARKS, start=1):
        if only and name not in only:
            continue
        started = time.perf_counter()
        try:
            record = getattr(importlib.import_module(module), function)(rounds)
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others
            traceback.print_exc()
            record = {"name": name, "title": f"Benchmark {index}: {name}", "ratio": None, "ratio_meaning": "",
                      "target": "", "met": None, "notes": f"did not run: {type(exc).__name__}: {exc}", "figures": {}}
        record["number"] = index
        record["seconds"] = round(time.perf_counter() - started, 1)
        save(record)
        records.append(record)
    return records


def summary_table(records: list[dict[str, Any]]) -> str:
    """A Markdown table: benchmark, ratio and what it means, target, verdict."""
    lines = ["| # | benchmark | ratio | ratio is | target | met |", "|---|---|---|---|---|---|"]
    for record in records:
        ratio = "—" if record["ratio"] is None else f"{record['ratio']:.3g}"
        verdict = {True: "yes", False: "**no**", None: "not run"}[record["met"]]
        lines.append(f"| {record['number']} | {record['title'].split(': ', 1)[-1]} | {ratio} | "
                     f"{record['ratio_meaning']} | {record['target']} | {verdict} |")
    return "\n".join(lines)


def write_results_md(records: list[dict[str, Any]], rounds: int) -> None:
    """Replace the generated part of ``benchmarks/RESULTS.md`` with this run's summary."""
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    generated = (f"{START}\nCommit `{git_commit()}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
                 f"{rounds} rounds, {os.cpu_count()} cores, load average at the end {load}.\n\n"
                 f"{summary_table(records)}\n{END}")
    text = RESULTS_MD.read_text() if RESULTS_MD.exists() else f"# Benchmark results\n\n{START}\n{END}\n"
    if START not in text or END not in text:
        text += f"\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    RESULTS_MD.write_text(head + generated + tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per benchmark, sides alternating (default 3)")
    parser.add_argument("--only", nargs="*", choices=[name for name, _, _ in BENCHMARKS], help="run only these")
    args = parser.parse_args()
    from benchmarks.services import stop_on_sigterm

    stop_on_sigterm()
    records = run_all(args.rounds, set(args.only or ()))
    print("\nSummary\n" + summary_table(records))
    (RESULTS_DIR / "all.json").write_text(json.dumps(records, indent=2, default=str) + "\n")
    if not args.only:
        write_results_md(records, args.rounds)
        print(f"\nwrote {RESULTS_MD.relative_to(ROOT)} and {RESULTS_DIR.relative_to(ROOT)}/")


if __name__ == "__main__":
    main()
