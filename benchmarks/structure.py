"""Benchmark: extraction + chunking (CHUNK_SIZE 1500, overlap 150) of corpus documents with the
structure readers and section chunker against a base revision, same run, same files.

The base revision's ``jobs/`` and ``webapp/`` are exported with ``git archive`` to a temporary
folder; each round runs both trees, one after the other, in fresh processes, and each file's time
is the fastest of the rounds. Prints seconds per file for both and the ratio now / base (≤ 1.0:
no slower). Ratios from one run on one machine hold on a shared, noisy machine where absolute
times do not.

    .venv/bin/python benchmarks/structure.py [--base df9cdd8] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus"

# The text corpus (every non-PDF document) and text-only PDFs with and without an outline.
FILES = {
    "war-and-peace-ch1.txt": "text/plain",
    "pypdf-extract-text.md": "text/markdown",
    "wikipedia-duck.html": "text/html",
    "docling-word-sample.docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "geotopo-117p-de.pdf": "application/pdf",
    "metapost-manual-ru.pdf": "application/pdf",
    "dpr-paper-two-column.pdf": "application/pdf",
    "federal-register-2020-17221.pdf": "application/pdf",
}

# Run in a fresh process with the tree to measure first on sys.path: prints {file: seconds}.
_MEASURE = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from jobs.chunking import chunk_pages
from jobs.extract import Limits, extract
files = json.loads(sys.argv[2])
corpus = sys.argv[3]
times = {}
for name, content_type in files.items():
    data = open(f"{corpus}/{name}", "rb").read()
    extract(data, content_type, limits=Limits(max_memory=None))  # warm: imports, first-use costs
    start = time.perf_counter()
    extraction = extract(data, content_type, limits=Limits(max_memory=None))
    chunk_pages(extraction.pages, 1500, 150)
    times[name] = time.perf_counter() - start
print(json.dumps(times))
"""


def measure(tree: Path) -> dict[str, float]:
    output = subprocess.run([sys.executable, "-c", _MEASURE, str(tree), json.dumps(FILES), str(CORPUS)],
                            cwd=tree, capture_output=True, text=True, check=True).stdout
    return json.loads(output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="df9cdd8", help="the revision to compare with (default: df9cdd8)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        archive = subprocess.run(["git", "archive", args.base, "jobs", "webapp"], cwd=ROOT, capture_output=True,
                                 check=True).stdout
        with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tar:
            tar.extractall(base, filter="data")
        best = {"base": {}, "now": {}}
        for _ in range(args.rounds):
            for label, tree in (("base", base), ("now", ROOT)):
                for name, seconds in measure(tree).items():
                    best[label][name] = min(best[label].get(name, seconds), seconds)
    print(f"{'file':36} {'base s':>8} {'now s':>8} {'now/base':>9}")
    for name in FILES:
        old, new = best["base"][name], best["now"][name]
        print(f"{name:36} {old:8.4f} {new:8.4f} {new / old:9.2f}")
    text = [name for name in FILES if not name.endswith(".pdf")]
    for label, names in (("text corpus", text), ("PDFs", [n for n in FILES if n.endswith(".pdf")])):
        old, new = sum(best["base"][n] for n in names), sum(best["now"][n] for n in names)
        print(f"{label + ' (total)':36} {old:8.4f} {new:8.4f} {new / old:9.2f}")


if __name__ == "__main__":
    main()
