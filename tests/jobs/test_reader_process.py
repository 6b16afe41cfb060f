"""The reader process (jobs/reader_process.py): a document read in a child forked from this
process, under a memory limit; what comes back for each way the child can end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil
import pytest

from jobs.document_errors import DocumentError, DocumentTooLarge
from jobs.extract import Limits, extract
from benchmarks.hostile_memory import pdf_text_operators
from jobs.reader_process import read_in_own_process
from tests.conftest import CORPUS, ROOT
from webapp.core import filetypes
from webapp.core.protocol.job_errors import WorkerProcessDied

MB = 1024 * 1024


def _hoard(megabytes: int, on_page=None) -> int:
    kept = [bytearray(MB) for _ in range(megabytes)]
    return len(kept)


def _die(signum: int, on_page=None) -> None:
    os.kill(os.getpid(), signum)


def _divide(on_page=None) -> float:
    return 1 / 0


def _pages(total: int, on_page=None, *stage: str) -> str:
    for done in range(1, total + 1):
        on_page(done, total, *stage)
    return "read"


def _ocr_pages(total: int, on_page=None) -> str:
    return _pages(total, on_page, "ocr")


def _ignore_sigterm(on_page=None) -> str:
    os.kill(os.getpid(), signal.SIGTERM)
    return "still reading"


def test_what_the_reader_returns_and_its_progress_come_back_in_order():
    seen = []
    assert read_in_own_process(_pages, 3, max_memory=64 * MB, on_page=lambda *done: seen.append(done)) == "read"
    assert seen[0] == (1, 3) and seen[-1] == (3, 3) and seen == sorted(set(seen))


def test_plain_pages_are_told_at_most_every_interval_and_pages_with_a_stage_each():
    """A message per page was ≈ 7 % of a text PDF's reading: plain pages are thinned out (the first,
    then one per PAGE_MESSAGE_INTERVAL, and the last); an OCR page grows the job's time limit, so
    each one is told."""
    plain, ocr = [], []
    assert read_in_own_process(_pages, 5000, max_memory=64 * MB, on_page=lambda *done: plain.append(done)) == "read"
    assert plain[0] == (1, 5000) and plain[-1] == (5000, 5000) and plain == sorted(set(plain))
    assert len(plain) < 100  # 5,000 calls take well under a second: a handful of messages
    assert read_in_own_process(_ocr_pages, 300, max_memory=64 * MB, on_page=lambda *done: ocr.append(done)) == "read"
    assert ocr == [(done, 300, "ocr") for done in range(1, 301)]


def test_an_extraction_in_a_reader_process_is_the_same_as_in_this_one():
    data = (CORPUS / "latex-two-column-lorem.pdf").read_bytes()
    pages = []
    there = extract(data, filetypes.PDF, on_page=lambda *done: pages.append(done))
    here = extract(data, filetypes.PDF, limits=Limits(max_memory=None))
    assert there == here and there.chars == here.chars > 5000
    assert pages[0] == (1, 3) and pages[-1] == (3, 3)


def test_a_reader_past_its_limit_fails_too_much_memory_and_this_process_stays_small():
    before = psutil.Process().memory_info().rss
    with pytest.raises(DocumentTooLarge) as refused:
        read_in_own_process(_hoard, 1024, max_memory=64 * MB, what="Word document")
    assert refused.value.code == "too_much_memory" and refused.value.setting == "MAX_DOCUMENT_MEMORY"
    assert refused.value.limit == 64
    assert refused.value.message == ("Reading the Word document needed more than 64 MB of memory; the limit is 64 MB "
                                     "(MAX_DOCUMENT_MEMORY), so it was stopped.")
    assert psutil.Process().memory_info().rss - before < 32 * MB
    assert read_in_own_process(_hoard, 16, max_memory=64 * MB) == 16  # within the limit


def test_pdfium_aborting_at_the_limit_is_too_much_memory_not_a_crash():
    """PDFium aborts its process when an allocation fails (SIGABRT): 1,000,000 text objects
    (≈ 600 MB) from a 10 KB page."""
    with pytest.raises(DocumentTooLarge) as refused:
        extract(pdf_text_operators(1_000_000), filetypes.PDF, limits=Limits(max_memory=128 * MB))
    assert refused.value.code == "too_much_memory" and "Reading the PDF needed more than 128 MB" in refused.value.message


def test_html_whose_parser_stops_silently_at_the_limit_is_too_much_memory():
    """libxml2 stops parsing without an error when an allocation fails; the text would be cut
    short. 1,000,000 attributes of one element: ≈ 200 MB.

    In a fresh interpreter: the limit bounds the address space the reader adds to what it
    inherits, and a test process that already holds freed heap from earlier tests (random order,
    the hostile-memory tests' 50 MB inputs) lends the parser room that needs no new address space."""
    script = """
from jobs.document_errors import DocumentTooLarge
from jobs.extract import Limits, extract
from webapp.core import filetypes
MB = 1024 * 1024
page = b"<html><body><p>before</p><i " + b" ".join(b"a%x" % n for n in range(1_000_000)) + b">x</i><p>after</p>"
assert extract(page, filetypes.HTML, limits=Limits(max_memory=None)).pages[0].text == "before\\nx\\nafter"
try:
    extract(page, filetypes.HTML, limits=Limits(max_memory=64 * MB))
except DocumentTooLarge as refused:
    print(refused.code)
else:
    print("read")
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["too_much_memory"], result.stdout + result.stderr[-2000:]


def test_a_reader_that_crashes_fails_the_document_as_damaged_and_sigkill_as_transient():
    with pytest.raises(DocumentError) as crashed:
        read_in_own_process(_die, signal.SIGSEGV, max_memory=64 * MB, what="PDF")
    assert crashed.value.code == "damaged_file" and not crashed.value.transient
    assert crashed.value.message == ("the PDF could not be read: its reader crashed (SIGSEGV), so the file is "
                                     "damaged or made to crash it")
    with pytest.raises(WorkerProcessDied) as killed:
        read_in_own_process(_die, signal.SIGKILL, max_memory=64 * MB)
    assert killed.value.transient and "killed (SIGKILL)" in killed.value.message


def test_a_reader_ignores_the_platforms_sigterm():
    """A platform stops every process of a machine at once; the worker hands its job back later."""
    assert read_in_own_process(_ignore_sigterm, max_memory=64 * MB) == "still reading"


def test_a_bug_in_the_reader_is_an_error_with_its_type_and_message():
    with pytest.raises(RuntimeError, match=r"^reading the document failed in its own process: "
                                           r"ZeroDivisionError: division by zero$"):
        read_in_own_process(_divide, max_memory=64 * MB)


def test_a_read_interrupted_here_leaves_no_reader_behind():
    class Interrupted(Exception):
        pass

    def interrupt(signum, frame):
        raise Interrupted()

    others = {child.pid for child in psutil.Process().children()}  # the session's redis-server, …
    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        with pytest.raises(Interrupted):  # RQ's time limit is such an alarm
            extract(pdf_text_operators(3_000_000), filetypes.PDF, limits=Limits(max_memory=4096 * MB))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert [child for child in psutil.Process().children() if child.pid not in others] == []


def _pid(on_page=None) -> int:
    return os.getpid()


def _hold(megabytes: int, on_page=None) -> int:
    """Grow the reader's address space by ``megabytes`` and keep it (a leak, as a parser cache):
    one block, larger than glibc's largest mmap threshold (32 MB), so it is new address space
    and not heap the test process freed before the fork."""
    _held.append(bytearray(megabytes * MB))
    return os.getpid()


_held: list[bytearray] = []


def test_one_reader_process_reads_document_after_document():
    first = read_in_own_process(_pid, max_memory=64 * MB)
    assert first != os.getpid()
    assert read_in_own_process(_pid, max_memory=64 * MB) == first
    assert extract((CORPUS / "latex-two-column-lorem.pdf").read_bytes(), filetypes.PDF,
                   limits=Limits(max_memory=64 * MB)).chars > 5000
    assert read_in_own_process(_pid, max_memory=64 * MB) == first


def test_a_reader_that_failed_or_grew_is_replaced_and_the_next_document_is_read():
    first = read_in_own_process(_pid, max_memory=64 * MB)
    with pytest.raises(DocumentTooLarge):
        read_in_own_process(_hoard, 1024, max_memory=64 * MB)
    second = read_in_own_process(_pid, max_memory=64 * MB)
    assert second != first and not psutil.pid_exists(first)
    # Growing by more than RETIRE_SHARE of the limit (16 MB of 64) and keeping it: the answer
    # comes back, and the reader leaves after it.
    assert read_in_own_process(_hold, 40, max_memory=64 * MB) == second
    third = read_in_own_process(_pid, max_memory=64 * MB)
    assert third != second and not psutil.pid_exists(second)
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):  # a bug in the reading: replaced too
        read_in_own_process(_divide, max_memory=64 * MB)
    assert read_in_own_process(_pid, max_memory=64 * MB) not in (third, first, second)


def test_a_reader_killed_between_documents_is_replaced_without_failing_the_next_one():
    first = read_in_own_process(_pid, max_memory=64 * MB)
    os.kill(first, signal.SIGKILL)
    while psutil.Process(first).status() != psutil.STATUS_ZOMBIE:  # dead, not yet waited for
        pass
    assert read_in_own_process(_pages, 2, max_memory=64 * MB, on_page=lambda *done: None) == "read"
    assert read_in_own_process(_pid, max_memory=64 * MB) != first


def test_a_read_interrupted_here_kills_the_kept_reader_and_the_next_read_gets_a_fresh_one():
    class Interrupted(Exception):
        pass

    def interrupt(signum, frame):
        raise Interrupted()

    first = read_in_own_process(_pid, max_memory=4096 * MB)
    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        with pytest.raises(Interrupted):
            extract(pdf_text_operators(3_000_000), filetypes.PDF, limits=Limits(max_memory=4096 * MB))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert not psutil.pid_exists(first)
    assert read_in_own_process(_pid, max_memory=4096 * MB) != first


def _sizes(small: bytes, large: bytes, text: str, on_page=None) -> tuple[int, int, str, bytes]:
    return len(small), len(large), text, large[-4:]


def test_a_documents_bytes_reach_the_reader_whole_whatever_their_size():
    large = bytes(range(256)) * 40_000 + b"tail"  # ≈ 10 MB: sent as a raw message, not pickled
    assert read_in_own_process(_sizes, b"small", large, "text", max_memory=256 * MB) == (5, len(large), "text", b"tail")
