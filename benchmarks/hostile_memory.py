"""Hostile input, peak memory: the most one upload of each format makes a worker process take.

Each case is a file made here to cost as much memory as its format allows within the upload limit
(``MAX_CONTENT_LENGTH``, 50 MB) and Docket's other limits: deep and wide HTML, PDFs whose pages
draw millions of text objects (a few KB of compressed content stream) or nest form XObjects, .docx
files that unpack to ``MAX_UNCOMPRESSED_SIZE`` (200 MB) of XML, text of mostly whitespace (which
``MAX_DOCUMENT_CHARS`` does not count) and text at the character limit. Nothing is written to the
repository: the files are made in a temporary folder for the run.

Each case runs in a fresh process prepared as a worker process is (``prepare_worker_process``:
every parser and the embedder loaded, the app's default config), which reads the file from disk
as the document job reads an upload from storage and runs the job's own steps: ``extract`` with
``Limits.from_config``, ``chunk_pages`` with ``MAX_DOCUMENT_CHUNKS``, and the embedder on the
chunks. The figure is that process tree's peak resident memory (``wait4``'s ``ru_maxrss``: the
largest of the process and of any child it waited for, such as a reader process), next to the
prepared process's peak before the document (idle). A safety cap on the measuring process's address
space (``--cap-mb``, 4,096 MB over its idle size by default) keeps a run from taking the shared
machine down: a case that reaches it is reported as "over the cap", its peak a lower bound.

    .venv/bin/python -m benchmarks.hostile_memory [--rounds 1] [--megabytes 50] [--only CASE ...] [--cap-mb 4096]

``bin/bench --only hostile_memory`` runs it too (benchmark 9); the README's "Memory of one
document" has the table of one run, before and after the reader process.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from benchmarks.common import BENCH_SECRET_KEY, PYTHON, ROOT, collect, result, save
from benchmarks.tables import print_record
from webapp.core.filetypes import DOCX, HTML, MARKDOWN, PDF, TEXT

MB = 1024 * 1024
# Room for the multipart form around the file: an upload of exactly MAX_CONTENT_LENGTH is refused.
FORM_ROOM = 64 * 1024
TIMEOUT = 600  # seconds one case may run (DOCUMENT_JOB_TIMEOUT's default)


# --- PDF: a minimal writer, enough for pages of hand-made content streams ---------------------

def _pdf(objects: list[bytes]) -> bytes:
    """A PDF of ``objects`` (bodies of objects 1, 2, …; object 1 is the catalog), with its xref."""
    out = io.BytesIO()
    out.write(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n%s\nendobj\n" % (number, body))
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    out.writelines(b"%010d 00000 n \n" % offset for offset in offsets)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def _stream(data: bytes, entries: bytes = b"", deflate: bool = True) -> bytes:
    if deflate:
        data, entries = zlib.compress(data, 9), entries + b" /Filter /FlateDecode"
    return b"<< /Length %d%s >>\nstream\n%s\nendstream" % (len(data), entries, data)


_FONT = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"


def _one_page_pdf(content: bytes, resources: bytes = b"<< /Font << /F1 4 0 R >> >>",
                  more: tuple[bytes, ...] = ()) -> bytes:
    """One page (object 3) drawing ``content`` (object 5, deflated); objects 6… are ``more``."""
    return _pdf([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                 b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 5 0 R /Resources %s >>"
                 % resources, _FONT, _stream(content), *more])


def pdf_text_operators(operators: int) -> bytes:
    """One page showing one character ``operators`` times (``(a) Tj``): PDFium builds a text
    object of ≈ 0.5 KB for each of them from 7 bytes of content, ≈ 1,000 to 1 after deflate."""
    return _one_page_pdf(b"BT /F1 1 Tf 10 10 Td " + b"(a) Tj " * operators + b"ET")


def pdf_form_bomb(levels: int, fan_out: int = 10) -> bytes:
    """A page drawing form XObject ``levels`` once, each level drawing the one below ``fan_out``
    times and the lowest showing two characters: ``fan_out ** (levels - 1)`` text objects from
    about 1 KB (a "billion laughs" of forms; PDFium parses each drawing of a form anew)."""
    first = 6
    forms = []
    for level in range(levels):
        if level == 0:
            content, resources = b"BT /F1 1 Tf 10 10 Td (ab) Tj ET", b"<< /Font << /F1 4 0 R >> >>"
        else:
            content = b"/X Do " * fan_out
            resources = b"<< /XObject << /X %d 0 R >> /Font << /F1 4 0 R >> >>" % (first + level - 1)
        forms.append(_stream(content, b" /Type /XObject /Subtype /Form /BBox [0 0 612 792] /Resources " + resources,
                             deflate=False))
    return _one_page_pdf(b"/X Do", b"<< /XObject << /X %d 0 R >> >>" % (first + levels - 1), tuple(forms))


# --- .docx: a minimal package around a streamed word/document.xml --------------------------------

_CONTENT_TYPES = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    b'<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    b'<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    b'<Default Extension="xml" ContentType="application/xml"/>'
    b'<Override PartName="/word/document.xml" '
    b'ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>')
_RELS = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    b'<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    b'<Relationship Id="rId1" Target="word/document.xml" '
    b'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument"/></Relationships>')
_DOCUMENT_START = (b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
                   b'<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>')
_DOCUMENT_END = b"</w:body></w:document>"


def _docx(pieces: Callable[[], "list[bytes]"], unpacked: int) -> bytes:
    """A .docx whose word/document.xml is ``pieces()`` repeated to at most ``unpacked`` bytes,
    deflated as it is written (memory: the packed size)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        archive.writestr("[Content_Types].xml", _CONTENT_TYPES)
        archive.writestr("_rels/.rels", _RELS)
        room = unpacked - len(_CONTENT_TYPES) - len(_RELS) - len(_DOCUMENT_END)
        with archive.open("word/document.xml", "w", force_zip64=True) as part:
            written = part.write(_DOCUMENT_START)
            while True:
                batch = b"".join(pieces())
                if written + len(batch) > room:
                    break
                written += part.write(batch)
            part.write(_DOCUMENT_END)
    return buffer.getvalue()


def docx_empty_paragraphs(unpacked: int) -> bytes:
    """``unpacked`` bytes of empty paragraphs, one in 30 with a random paragraph id so the part
    stays under ``MAX_COMPRESSION_RATIO`` (200 to 1): ≈ 30 million elements of 6 bytes each."""
    rng = random.Random(8)

    def pieces() -> list[bytes]:
        return [b"<w:p/>" * 29 + b'<w:p w:rsidR="%08X"/>' % rng.getrandbits(32) for _ in range(512)]
    return _docx(pieces, unpacked)


def docx_whitespace_runs(unpacked: int) -> bytes:
    """``unpacked`` bytes of runs of whitespace (not counted by ``MAX_DOCUMENT_CHARS``), mixed at
    random from space, tab and line break so the part stays under ``MAX_COMPRESSION_RATIO``."""
    rng = random.Random(8)
    run = 1 << 20

    def pieces() -> list[bytes]:
        spaces = bytes(rng.choice(b"      \t\n") for _ in range(4096)) * (run // 4096)
        return [b'<w:p><w:r><w:t xml:space="preserve">', spaces, b"</w:t></w:r></w:p>"]
    return _docx(pieces, unpacked)


# --- the cases --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One hostile input: its format, the name it is uploaded as, and how it is made."""

    name: str
    content_type: str  # what the upload is detected as (webapp.core.filetypes)
    filename: str
    what: str
    make: Callable[[int], bytes]  # size in bytes (the upload limit less FORM_ROOM) → the file


def _repeat(unit: bytes, size: int, head: bytes = b"<html><body>", tail: bytes = b"") -> bytes:
    return head + unit * ((size - len(head) - len(tail)) // len(unit)) + tail


CASES = [
    # The two files of the report (issue: nested HTML grows one worker to gigabytes).
    Case("html-2m-spans", HTML, "spans-14mb.html", "2,000,000 unclosed <span> (14 MB)",
         lambda size: b"<html><body>" + b"<span>" * 2_000_000 + b"x"),
    Case("html-1m-b", HTML, "bold-7mb.html", "1,000,000 nested <b> (7 MB)",
         lambda size: b"<html><body>" + b"<b>" * 1_000_000 + b"x" + b"</b>" * 1_000_000),
    Case("html-unclosed-span", HTML, "spans.html", "<span> never closed, as deep as the upload allows",
         lambda size: _repeat(b"<span>", size)),
    Case("html-nested-b", HTML, "bold.html", "<b>…x…</b> nested as deep as the upload allows",
         lambda size: b"<html><body>" + b"<b>" * (size // 7 - 2) + b"x" + b"</b>" * (size // 7 - 2)),
    Case("html-flat-elements", HTML, "breaks.html", "<br> side by side (4 bytes an element)",
         lambda size: _repeat(b"<br>", size)),
    Case("html-attributes", HTML, "attributes.html", "one element with millions of attributes",
         lambda size: b"<html><body><i " + b" ".join(b"a%x" % n for n in range(size // 8)) + b">x</i>"),
    Case("html-whitespace-ucs4", HTML, "pre.html", "<pre> of spaces after one emoji (4 bytes a character)",
         lambda size: _repeat(b" ", size, head="<html><body><pre>\U0001F600".encode())),
    Case("pdf-text-operators", PDF, "operators.pdf", "one page, 8 million text-show operators (77 KB file)",
         lambda size: pdf_text_operators(8_000_000)),
    Case("pdf-form-bomb", PDF, "forms.pdf", "form XObjects 8 deep, 10 wide: 10 million text objects (2 KB file)",
         lambda size: pdf_form_bomb(8)),
    Case("docx-empty-paragraphs", DOCX, "paragraphs.docx", "200 MB of XML (MAX_UNCOMPRESSED_SIZE): <w:p/> × 30 M",
         lambda size: docx_empty_paragraphs(200 * MB)),
    Case("docx-whitespace", DOCX, "whitespace.docx", "200 MB of XML: whitespace runs of 1 MB",
         lambda size: docx_whitespace_runs(200 * MB)),
    Case("txt-whitespace-ucs4", TEXT, "spaces.txt", "spaces after one emoji (4 bytes a character)",
         lambda size: "\U0001F600".encode() + b" " * (size - 4)),
    Case("txt-at-char-limit", TEXT, "words.txt", "4,999,000 non-space characters in 5-letter words, then spaces",
         lambda size: (b"abcde " * 999_800).ljust(size, b" ")),
    Case("txt-cjk-words", TEXT, "words-ja.txt", "3,000,000 one-character CJK words (12 MB)",
         lambda size: "日 ".encode() * 3_000_000),
    Case("md-one-line", MARKDOWN, "line.md", "one line: CJK at the character limit, no space or line break",
         lambda size: "# 見出し\n".encode() + "日本語の文章".encode() * 833_000),
]


def run(rounds: int = 1, megabytes: int = 50, only: set[str] | None = None, cap_mb: int = 4096) -> dict:
    """Measure every case (or those named in ``only``) ``rounds`` times; print a line per
    measurement and the record's table; return the record. The ratio is the worst peak over the
    idle prepared process's; the target, every peak at most 1 GB."""
    size = megabytes * MB - FORM_ROOM
    measured: dict[str, list[dict]] = {}
    print(f"hostile input, peak memory: uploads of up to {megabytes} MB, cap {cap_mb:,} MB over idle", flush=True)
    print(f"  {'case':<24} {'file':>9} {'idle':>7} {'peak':>7}  outcome", flush=True)
    with tempfile.TemporaryDirectory(prefix="docket-hostile-") as tmp:
        for case in CASES:
            if only and case.name not in only:
                continue
            path = Path(tmp) / case.filename
            # Made in a process of its own: this one stays small, and so does the peak every
            # process it starts inherits (Linux keeps a process's peak RSS across exec).
            subprocess.run([PYTHON, "-m", "benchmarks.hostile_memory", "--make", case.name, str(path), str(size)],
                           cwd=ROOT, check=True)
            for _ in range(rounds):
                figures = measure(case, path, cap_mb)
                measured.setdefault(case.name, []).append(figures)
                print(f"  {case.name:<24} {figures['file_mb']:>7.1f}MB {figures['idle_mb']:>5.0f}MB "
                      f"{figures['peak_mb']:>5.0f}MB  {figures['outcome']} ({figures['seconds']:.0f} s)", flush=True)
            path.unlink()
    worst = max((figures["peak_mb"] for rows in measured.values() for figures in rows), default=float("nan"))
    idle = min((figures["idle_mb"] for rows in measured.values() for figures in rows), default=float("nan"))
    record = result(
        name="hostile_memory",
        title="Hostile input: peak memory of the worker process tree for one upload of each format",
        figures={name: {key: collect(rows, key) for key in ("file_mb", "idle_mb", "peak_mb")}
                 for name, rows in measured.items()},
        ratio=worst / idle,
        ratio_meaning="worst peak RSS ÷ the idle prepared worker process's peak RSS",
        target="every case's peak ≤ 1,024 MB",
        met=worst <= 1024,
        notes="; ".join(f"{name}: {rows[-1]['outcome']}" for name, rows in measured.items()),
    )
    print_record(record)
    return record


def measure(case: Case, path: Path, cap_mb: int) -> dict:
    """Run ``case``'s file through the document job's steps in a fresh prepared process."""
    with tempfile.TemporaryDirectory(prefix="docket-hostile-run-") as workdir, \
            open(Path(workdir) / "out.json", "w+") as out:
        started = time.perf_counter()
        process = subprocess.Popen([PYTHON, "-m", "benchmarks.hostile_memory", "--child", case.name, str(path),
                                    workdir, str(cap_mb)], cwd=ROOT, stdout=out, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + TIMEOUT
        timed_out = False
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline and not timed_out:
                timed_out = True
                process.kill()
            time.sleep(0.1)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        reported = json.loads(out.read() or "{}")
    outcome = reported.get("outcome")
    if outcome is None and timed_out:
        outcome = f"still running after {TIMEOUT} s: stopped"
    elif outcome is None:
        code = process.returncode
        outcome = (f"killed ({signal.Signals(-code).name})" if code < 0 else f"exited {code}") + \
            (" at the cap: over the cap" if reported == {} else "")
    return {"file_mb": path.stat().st_size / MB, "idle_mb": reported.get("idle_mb", float("nan")),
            "peak_mb": usage.ru_maxrss / 1024, "outcome": outcome, "seconds": time.perf_counter() - started}


def child(name: str, path: str, workdir: str, cap_mb: int) -> None:
    """The measured process: prepare as a worker process, read the file, run the job's steps, and
    print ``{"idle_mb", "outcome"}`` as JSON."""
    from webapp import create_app

    case = next(case for case in CASES if case.name == name)
    os.environ["DOCKET_INSTANCE_PATH"] = str(Path(workdir) / "instance")
    app = create_app({"DATABASE_URL": f"sqlite:///{workdir}/docket.sqlite3", "REDIS_URL": "redis://127.0.0.1:9/0",
                      "STORAGE_PATH": f"{workdir}/uploads", "OPENAI_API_KEY": None, "SECRET_KEY": BENCH_SECRET_KEY,
                      "LOG_LEVEL": "ERROR"})
    from jobs.chunking import chunk_pages
    from jobs.document_errors import DocumentError
    from jobs.extract import Limits, extract
    from jobs.worker.warmup import prepare_worker_process
    from webapp.core import filetypes
    from webapp.core.embeddings import embedder_from_config

    prepare_worker_process(app)
    config = app.config
    data = Path(path).read_bytes()
    content_type = filetypes.detect_content_type(data, case.filename)
    if content_type != case.content_type:
        print(json.dumps({"outcome": f"detected as {content_type}, not {case.content_type}: a broken case"}))
        return
    idle = _status("VmHWM") / MB
    address_space = _status("VmSize")
    resource.setrlimit(resource.RLIMIT_AS, (address_space + cap_mb * MB, resource.RLIM_INFINITY))
    try:
        extraction = extract(data, content_type, limits=Limits.from_config(config))
        chunks = chunk_pages(extraction.pages, config["CHUNK_SIZE"], config["CHUNK_OVERLAP"],
                             max_chunks=config["MAX_DOCUMENT_CHUNKS"])
        embedder_from_config(config).embed([chunk.text for chunk in chunks])
        outcome = f"finished: {extraction.chars:,} characters, {len(chunks):,} chunks"
    except DocumentError as exc:
        outcome = f"failed ({exc.code}): {exc.message[:160]}"
    except MemoryError:
        outcome = "MemoryError at the cap: over the cap"
    print(json.dumps({"idle_mb": idle, "outcome": outcome, "type": content_type}))


def _status(field: str) -> int:
    """A size from ``/proc/self/status`` in bytes: ``VmSize`` (address space), ``VmHWM`` (peak
    RSS of this program: unlike ``ru_maxrss``, not the peak of the process that started it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--make":
        case = next(case for case in CASES if case.name == sys.argv[2])
        Path(sys.argv[3]).write_bytes(case.make(int(sys.argv[4])))
        return
    from benchmarks.services import stop_on_sigterm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="measurements of each case (default 1: peaks repeat)")
    parser.add_argument("--megabytes", type=int, default=50, help="upload size to build (MAX_CONTENT_LENGTH, 50)")
    parser.add_argument("--only", nargs="*", help="cases to run: " + ", ".join(case.name for case in CASES))
    parser.add_argument("--cap-mb", type=int, default=4096, help="address space a case may add (safety cap)")
    args = parser.parse_args()
    stop_on_sigterm()
    print(f"saved {save(run(args.rounds, args.megabytes, set(args.only or ()) or None, args.cap_mb))}")


if __name__ == "__main__":
    main()
