"""Benchmark: Docket's PDF extraction (pypdfium2) against a pypdf baseline, same run, same files.

Prints, per kind of PDF in ../shared/corpus and in total, seconds per page for both and the
ratio baseline / Docket (higher is better for Docket), plus how many non-whitespace characters
each extracted compared to the manifest. Figures are ratios measured in one run on one machine,
so they hold on a shared, noisy machine where absolute times do not.

    .venv/bin/pip install -r benchmarks/requirements.txt
    .venv/bin/python benchmarks/extract_pdf.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CORPUS = ROOT.parent / "shared" / "corpus"

from jobs.document_errors import DocumentError  # noqa: E402
from jobs.extract import count_chars, extract  # noqa: E402
from webapp.core.filetypes import PDF  # noqa: E402


def docket(data: bytes) -> int:
    try:
        return extract(data, PDF).chars
    except DocumentError:
        return 0


def pypdf_baseline(data: bytes) -> int:
    import pypdf

    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            reader.decrypt("")
        return sum(count_chars(page.extract_text() or "") for page in reader.pages)
    except Exception:
        return 0


def best_of(function, data: bytes, repeat: int) -> tuple[float, int]:
    times, chars = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        chars = function(data)
        times.append(time.perf_counter() - start)
    return min(times), chars


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per file; the fastest counts")
    args = parser.parse_args()
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    with open(CORPUS / "MANIFEST.tsv", newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh, delimiter="\t") if r["file"].endswith(".pdf") and int(r["pages"]) > 0]

    print(f"{'file':40} {'pages':>5} {'docket s/page':>14} {'pypdf s/page':>13} {'ratio':>7} {'chars docket/pypdf/manifest':>30}")
    total_docket = total_pypdf = total_pages = 0.0
    for row in rows:
        data = (CORPUS / row["file"]).read_bytes()
        pages = int(row["pages"])
        docket_s, docket_chars = best_of(docket, data, args.repeat)
        pypdf_s, pypdf_chars = best_of(pypdf_baseline, data, args.repeat)
        total_docket += docket_s
        total_pypdf += pypdf_s
        total_pages += pages
        chars = f"{docket_chars}/{pypdf_chars}/{row['nonspace_chars']}"
        print(f"{row['file']:40} {pages:5d} {docket_s / pages:14.5f} {pypdf_s / pages:13.5f} "
              f"{pypdf_s / docket_s:7.1f} {chars:>30}")
    print(f"\nall {len(rows)} PDFs, {int(total_pages)} pages: docket {total_docket / total_pages:.5f} s/page, "
          f"pypdf {total_pypdf / total_pages:.5f} s/page, pypdf/docket = {total_pypdf / total_docket:.1f}x")


if __name__ == "__main__":
    main()
