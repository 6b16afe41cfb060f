"""Printing a benchmark's result record (see :func:`benchmarks.common.result`) as a small table."""

from __future__ import annotations

from typing import Any


def print_record(record: dict[str, Any]) -> None:
    """Print each figure's median and range over rounds, then the ratio, its target and the verdict.

    ``record["figures"]`` maps a side (``"docket"``, ``"baseline"``, …) to ``{figure: summary}``,
    where a summary is :func:`benchmarks.common.summary`'s ``{"median", "min", "max", "rounds"}``.
    """
    print(f"\n{record['title']}")
    print(f"  {'side':<10} {'figure':<26} {'median':>10} {'min':>10} {'max':>10} {'rounds':>6}")
    for side, figures in record["figures"].items():
        for name, value in figures.items():
            print(f"  {side:<10} {name:<26} {_num(value['median'])} {_num(value['min'])} {_num(value['max'])} "
                  f"{value['rounds']:>6}")
    verdict = {True: "met", False: "NOT met", None: "not judged"}[record["met"]]
    ratio = "n/a" if record["ratio"] is None else f"{record['ratio']:.3g}"
    print(f"  ratio {ratio} ({record['ratio_meaning']}); target {record['target']}: {verdict}")
    if record["notes"]:
        print(f"  notes: {record['notes']}")


def _num(value: float) -> str:
    return f"{value:>10.4g}"
