"""Benchmark 10, OCR: pages per second and character error rate of Docket's OCR (rapidocr 3.10 on
onnxruntime, :mod:`jobs.ocr`) against Debian's ``tesseract`` in the same run, and the worker
process's peak memory on the largest scan.

Pages: every page of the corpus scans (``../shared/corpus``, kind ``scanned``: 7 pages, two of
them upside down and two on their side) and of the image files of ``../shared/corpus-formats``
(a WebP and a two-page TIFF), rendered at 200 dpi as Docket renders them (PDFs) or decoded (images):
the same bitmaps go to both engines.

Character error rate (CER, ``jiwer.cer``: edit distance ÷ reference length, on text whose
whitespace runs are one space) needs a reference text, which only these pages have: the five
pages (four scans, one WebP) whose whole text is the sentence the corpus-formats manifest gives,
and the six pages of ``vicksburg-scan-with-ocr-layer.pdf``, a book scan whose invisible text layer
is itself an OCR engine's reading (so its figure measures agreement with that engine, not
truth). Pages/s counts every page.

Tesseract is a yardstick only (Docket never calls it): installed with ``apt-get install -y
tesseract-ocr`` when missing, run as ``tesseract <png> stdout --psm 1`` (page segmentation with
orientation detection, so rotated pages are fair game) with its English model, one process per
page (its own start-up, ≈ 0.1 s, is counted against it). Both engines use one thread
(``OMP_THREAD_LIMIT=1`` for tesseract; :mod:`jobs.ocr` sets onnxruntime's), rounds alternate.

Peak memory: the largest scan (by bytes) extracted by ``jobs.extract.extract`` in a
fresh process with the app's defaults (the reader process renders, this process reads by OCR,
as a worker process does), its ``ru_maxrss`` after the extraction, against the same process's
peak with everything imported and the OCR engine loaded (the idle worker process's part).

    .venv/bin/python -m benchmarks.ocr [--rounds 3]
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import CORPUS, ROOT, alternate, collect, command_line, result
from benchmarks.tables import print_record

CORPUS_FORMATS = ROOT.parent / "shared" / "corpus-formats"
SCANS = ("huck-finn-p22-scan.pdf", "linn-brochure-two-column-scan.pdf", "wikipedia-ocr-article-scan.pdf",
         "docling-image-only-4p.pdf")
IMAGES = ("webp-test.webp", "2206.01062.tif")
AGREEMENT_PDF = "vicksburg-scan-with-ocr-layer.pdf"
# corpus-formats/MANIFEST.tsv, webp-test.webp: the text of that image and of each docling page.
DOCLING_SENTENCE = ("Docling bundles PDF document conversion to JSON and Markdown in an easy self contained "
                    "package")
REFERENCES = {("docling-image-only-4p.pdf", page): DOCLING_SENTENCE for page in range(1, 5)}
REFERENCES[("webp-test.webp", 1)] = DOCLING_SENTENCE
RENDER_DPI = 200


def pages() -> list[tuple[str, int, Any, str | None, str]]:
    """``(file, page, PIL image, reference text or None, group)`` for every benchmark page;
    ``group``: ``"known"`` (a reference written by hand), ``"layer"`` (the file's own OCR layer)
    or ``"none"``."""
    import pypdfium2 as pdfium
    from PIL import Image

    out = []
    for name in (*SCANS, AGREEMENT_PDF):
        pdf = pdfium.PdfDocument(CORPUS / name)
        for index in range(len(pdf)):
            page = pdf[index]
            image = page.render(scale=RENDER_DPI / 72).to_pil().convert("RGB")
            if name == AGREEMENT_PDF:
                textpage = page.get_textpage()
                reference, group = textpage.get_text_bounded(), "layer"
                textpage.close()
            else:
                reference = REFERENCES.get((name, index + 1))
                group = "known" if reference else "none"
            out.append((name, index + 1, image, reference, group))
        pdf.close()
    for name in IMAGES:
        with Image.open(CORPUS_FORMATS / name) as image:
            for index in range(getattr(image, "n_frames", 1)):
                image.seek(index)
                reference = REFERENCES.get((name, index + 1))
                out.append((name, index + 1, image.convert("RGB"), reference, "known" if reference else "none"))
    return out


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def cer(reference: str, hypothesis: str) -> float:
    """Character error rate of ``hypothesis`` against ``reference`` (whitespace runs as one space)."""
    import jiwer

    return jiwer.cer(_normal(reference), _normal(hypothesis) or " ")


def ensure_tesseract() -> str | None:
    """The ``tesseract`` command, installed with apt-get when missing; ``None`` if that failed."""
    found = shutil.which("tesseract")
    if found:
        return found
    apt = ["apt-get", "install", "-y", "-q", "tesseract-ocr"]
    if os.geteuid() != 0:
        apt = ["sudo", "-n", *apt]
    try:
        subprocess.run(apt, check=True, capture_output=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"  tesseract unavailable: {exc}")
        return None
    return shutil.which("tesseract")


def read_docket(image: Any) -> str:
    from jobs import ocr

    return ocr.read_image(image).text


def read_tesseract(command: str, image: Any) -> str:
    with tempfile.NamedTemporaryFile(suffix=".png") as file:
        image.save(file.name)
        answer = subprocess.run([command, file.name, "stdout", "--psm", "1", "-l", "eng"], capture_output=True,
                                text=True, timeout=300, env={**os.environ, "OMP_THREAD_LIMIT": "1"})
    return answer.stdout


def measure(read, items) -> dict[str, float]:
    """Read every page with ``read``; pages/s over all pages, mean CER per reference group."""
    started = time.perf_counter()
    texts = [read(image) for _, _, image, _, _ in items]
    elapsed = time.perf_counter() - started
    figures = {"pages_per_s": len(items) / elapsed}
    for group in ("known", "layer"):
        rates = [cer(reference, text) for (_, _, _, reference, kind), text in zip(items, texts) if kind == group]
        if rates:
            figures[f"cer_{group}"] = sum(rates) / len(rates)
    return figures


# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over execve, so a process started by
# this (large) one would report this one's peak.
_PEAK_SCRIPT = """
import json, resource, sys
from jobs import ocr
from jobs.extract import Limits, extract
from webapp.core import filetypes
def hwm():
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM"))
ocr.engine()
idle = hwm()
data = open(sys.argv[1], "rb").read()
extraction = extract(data, filetypes.PDF, limits=Limits())
peak = hwm()
reader = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"idle": idle, "peak": peak, "reader": reader, "ocr_pages": extraction.ocr_pages}))
"""


def peak_memory(path: Path) -> dict[str, float]:
    """Peak RSS (MB) of a fresh process extracting ``path`` as a worker process does."""
    answer = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(path)], capture_output=True, text=True,
                            cwd=ROOT, timeout=900, check=True)
    figures = json.loads(answer.stdout.strip().splitlines()[-1])
    return {key: value / 2**20 if key != "ocr_pages" else value for key, value in figures.items()}


def run(rounds: int = 3) -> dict[str, Any]:
    items = pages()
    tesseract = ensure_tesseract()
    from jobs import ocr

    ocr.engine()  # loaded before the clock starts, as in a worker process after its first scan
    sides = {"docket": lambda: measure(read_docket, items)}
    if tesseract:
        sides["tesseract"] = lambda: measure(lambda image: read_tesseract(tesseract, image), items)
    measured = alternate(rounds, sides)
    figures = {side: {key: collect(values, key) for key in values[0]} for side, values in measured.items()}
    largest = max(SCANS, key=lambda name: (CORPUS / name).stat().st_size)
    memory = peak_memory(CORPUS / largest)
    figures["memory"] = {f"{key}_mb" if key != "ocr_pages" else key: {"median": value, "min": value, "max": value,
                                                                        "rounds": 1}
                         for key, value in memory.items()}
    docket = figures["docket"]
    if tesseract:
        theirs = figures["tesseract"]
        ratio = docket["pages_per_s"]["median"] / theirs["pages_per_s"]["median"]
        met = docket["cer_known"]["median"] <= theirs["cer_known"]["median"]
    else:
        ratio, met = None, None
    notes = (f"{len(items)} pages ({sum(1 for item in items if item[4] == 'known')} with a hand-written reference, "
             f"{sum(1 for item in items if item[4] == 'layer')} against {AGREEMENT_PDF}'s own OCR layer); "
             f"peak memory: {largest}, {memory['ocr_pages']:.0f} pages read by OCR, this process "
             f"{memory['peak']:.0f} MB (idle with the engine loaded {memory['idle']:.0f} MB), its reader process "
             f"{memory['reader']:.0f} MB")
    record = result("ocr", "OCR: rapidocr (Docket) vs tesseract 5 on the corpus scans and images, same bitmaps",
                    figures, ratio, "Docket pages/s ÷ tesseract pages/s (median of rounds; higher is faster)",
                    "CER on the pages with a known text ≤ tesseract's", met, notes)
    print_record(record)
    return record


if __name__ == "__main__":
    command_line(run, __doc__)
