"""Property tests (hypothesis) for hostile and odd input (issue 8): type detection, extraction and
chunking, called in-process. Whatever the bytes — random, truncated real documents, huge lines,
NUL bytes, odd or invalid encodings — the outcome is a result or a :class:`JobError` with a code
and a sentence, never another exception or a hang.

Each property is bounded (``max_examples``, a per-example ``deadline``, a pytest-timeout) so the
whole file runs in well under a minute; ``database=None`` keeps hypothesis from writing an
example database into the working tree.

What they found, fixed and kept as ``@example``: a zip whose directory asks for zip version 6.4
made type detection raise ``NotImplementedError``; chunking a long unbroken line took time
quadratic in its length (199,000 CJK characters: 12 s; see ``jobs/chunking.py``).
"""

from __future__ import annotations

import functools

import pytest
from hypothesis import example, given, settings, strategies as st, HealthCheck

from jobs.chunking import chunk_pages
from jobs.document_errors import JobError
from jobs.extract import Extraction, Limits, Page, clean_text, count_chars, extract
from tests.conftest import CORPUS
from webapp.core import filetypes

BOUNDED = settings(database=None, deadline=5000, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.data_too_large])
# pytest-timeout for a whole property test, against a hang (hypothesis's deadline only judges an
# example once it ended): its 120–250 examples each fork a reader process, ≈ 20 s in all on an idle
# machine, but the docx one passed 60 s in CI beside the OCR tests on 2 cores.
WHOLE_TEST_SECONDS = 240
TYPES = [filetypes.PDF, filetypes.DOCX, filetypes.HTML, filetypes.TEXT, filetypes.MARKDOWN]
# Real documents of every type, small enough that a truncated copy is read in milliseconds.
TRUNCATED_SOURCES = [
    "minimal-document.pdf", "latex-two-column-lorem.pdf", "miyazawa-jo-ja.pdf", "helloworld-bad-xref.pdf",
    "aes256-r6-empty-password.pdf", "libreoffice-writer-password.pdf", "us-senate-expenditures-table.pdf",
    "huck-finn-p22-scan.pdf", "docling-word-sample.docx", "wikipedia-duck.html", "war-and-peace-ch1.txt",
    "pypdf-extract-text.md",
]
MAGIC = [b"", b"%PDF-1.7\n", b"PK\x03\x04", b"<!DOCTYPE html><html>", b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff",
         b"<?xml version='1.0'?>", b"\x00"]
ENCODINGS = ["utf-8", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "latin-1", "cp1252", "shift_jis", "euc-jp",
             "gb18030", "koi8-r"]
# max_chars small enough that a huge line meets it; OCR off: reading a page takes seconds (over
# hypothesis's deadline), and what it reads is pixels of at most MAX_IMAGE_PIXELS, which no
# corrupted byte makes hostile (tests/jobs/test_ocr.py reads scans and images with OCR).
LIMITS = Limits(max_chars=200_000, ocr="off")


@functools.cache
def corpus_file(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


def small_docx() -> bytes:
    """A minimal .docx of a few hundred bytes, so that changed bytes land in its zip headers."""
    from tests.jobs.test_extract_limits import docx

    return docx([b"<w:p><w:r><w:t>Hello, world.</w:t></w:r></w:p>"])


SMALL_DOCX = small_docx()


def zip_needing_version(version: int) -> bytes:
    """:data:`SMALL_DOCX` with its first central directory entry saying it needs zip version
    ``version`` / 10 to extract (zipfile raised NotImplementedError from type detection for 6.4)."""
    data = bytearray(SMALL_DOCX)
    data[data.index(b"PK\x01\x02") + 6] = version
    return bytes(data)


def check_extraction(data: bytes, content_type: str, limits: Limits = LIMITS) -> Extraction | None:
    """Extract ``data``; the property every input must hold. Returns the extraction, or ``None``
    when it was refused with a clear :class:`JobError`."""
    try:
        extraction = extract(data, content_type, limits=limits)
    except JobError as exc:
        assert exc.code and isinstance(exc.code, str) and exc.message.strip(), repr(exc)
        assert not exc.transient, repr(exc)  # a bad document never gets better by retrying
        return None
    assert extraction.pages and all(isinstance(page.text, str) for page in extraction.pages)
    assert 0 < extraction.chars <= limits.max_chars or (extraction.chars == 0 and extraction.warnings)
    if extraction.page_count is not None:
        assert extraction.page_count == len(extraction.pages) <= limits.max_pages
    return extraction


def check_chunks(pages: list[Page], max_chars: int = 500, overlap: int = 50, max_chunks: int | None = None) -> None:
    try:
        chunks = chunk_pages(pages, max_chars, overlap, max_chunks=max_chunks)
    except JobError as exc:
        assert exc.code == "too_many_chunks" and "(MAX_DOCUMENT_CHUNKS)" in exc.message, repr(exc)
        return
    numbers = [page.number for page in pages]
    assert [chunk.ordinal for chunk in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert chunk.text.strip() and chunk.text == chunk.text.strip()
        assert len(chunk.text) <= max_chars
        assert chunk.page_start in numbers and chunk.page_end in numbers
        if chunk.page_start is not None:
            assert chunk.page_start <= chunk.page_end
    if max_chunks is not None:
        assert len(chunks) <= max_chunks
    if not any(count_chars(page.text) for page in pages):
        assert chunks == []


# --- type detection ----------------------------------------------------------------------------

@pytest.mark.timeout(WHOLE_TEST_SECONDS)
@settings(BOUNDED, max_examples=300)
@given(prefix=st.sampled_from(MAGIC), data=st.binary(max_size=4096),
       filename=st.sampled_from([None, "x.pdf", "x.md", "x.txt", "x.docx", "", "noext"]))
@example(prefix=b"PK\x03\x04", data=b"\x00" * 40, filename="x.docx")
@example(prefix=b"", data=zip_needing_version(64), filename="x.docx")  # raised NotImplementedError
def test_detection_of_any_bytes_is_a_supported_type_or_none(prefix, data, filename):
    assert filetypes.detect_content_type(prefix + data, filename) in (*TYPES, None)


@pytest.mark.timeout(WHOLE_TEST_SECONDS)
@settings(BOUNDED, max_examples=120)
@given(name=st.sampled_from(TRUNCATED_SOURCES), cut=st.floats(0, 1))
def test_detection_and_extraction_of_a_truncated_real_document(name, cut):
    data = corpus_file(name)
    data = data[:int(len(data) * cut)]
    content_type = filetypes.detect_content_type(data, name)
    assert content_type in (*TYPES, None)
    if content_type is not None:
        check_extraction(data, content_type)


@pytest.mark.timeout(WHOLE_TEST_SECONDS)
@settings(BOUNDED, max_examples=120)
@given(name=st.sampled_from(TRUNCATED_SOURCES),
       changes=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=20))
def test_detection_and_extraction_of_a_real_document_with_corrupted_bytes(name, changes):
    data = bytearray(corpus_file(name))
    if not data:
        return
    for where, value in changes:
        data[int(len(data) * where)] = value
    content_type = filetypes.detect_content_type(bytes(data), name)
    assert content_type in (*TYPES, None)
    if content_type is not None:
        check_extraction(bytes(data), content_type)


@pytest.mark.timeout(WHOLE_TEST_SECONDS)
@settings(BOUNDED, max_examples=200)
@given(changes=st.lists(st.tuples(st.integers(0, len(SMALL_DOCX) - 1), st.integers(0, 255)), min_size=1, max_size=6))
@example(changes=[(SMALL_DOCX.index(b"PK\x01\x02") + 6, 64)])  # "zip file version 6.4": NotImplementedError
def test_a_docx_with_changed_zip_headers_is_a_docx_or_none_and_reads_or_fails_clearly(changes):
    data = bytearray(SMALL_DOCX)
    for where, value in changes:
        data[where] = value
    content_type = filetypes.detect_content_type(bytes(data), "x.docx")
    assert content_type in (*TYPES, None)
    check_extraction(bytes(data), content_type or filetypes.DOCX)


# --- extraction --------------------------------------------------------------------------------

@pytest.mark.timeout(WHOLE_TEST_SECONDS)
@settings(BOUNDED, max_examples=250)
@given(content_type=st.sampled_from(TYPES), prefix=st.sampled_from(MAGIC), data=st.binary(max_size=4096))
@example(content_type=filetypes.DOCX, prefix=b"PK\x03\x04", data=b"")
@example(content_type=filetypes.DOCX, prefix=b"", data=zip_needing_version(64))  # raised NotImplementedError
@example(content_type=filetypes.PDF, prefix=b"%PDF-1.7\n", data=b"1 0 obj\n<< /Type /Pages /Count 99999 >>\nendobj")
def test_extraction_of_any_bytes_as_any_type_is_text_or_a_clear_error(content_type, prefix, data):
    check_extraction(prefix + data, content_type)


@pytest.mark.timeout(WHOLE_TEST_SECONDS)
@settings(BOUNDED, max_examples=120)
@given(text=st.text(max_size=2000), encoding=st.sampled_from(ENCODINGS),
       content_type=st.sampled_from([filetypes.TEXT, filetypes.MARKDOWN, filetypes.HTML]))
def test_text_in_odd_encodings_is_text_or_a_clear_error(text, encoding, content_type):
    data = text.encode(encoding, errors="replace")
    if content_type == filetypes.HTML:
        data = b"<html><body><p>" + data + b"</p></body></html>"
    check_extraction(data, content_type)


@pytest.mark.timeout(WHOLE_TEST_SECONDS)
@settings(BOUNDED, max_examples=120)
@given(text=st.text(min_size=1, max_size=1000), junk=st.lists(
    st.sampled_from([b"\xff", b"\xc3(", b"\xe2\x82", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x00", b"\x00\x00"]),
    max_size=20), position=st.floats(0, 1))
def test_invalid_utf8_and_nul_bytes_are_text_or_a_clear_error(text, junk, position):
    data = text.encode()
    at = int(len(data) * position)
    data = data[:at] + b"".join(junk) + data[at:]
    content_type = filetypes.detect_content_type(data, "upload.txt")
    assert content_type in (*TYPES, None)
    for forced in {content_type or filetypes.TEXT, filetypes.TEXT, filetypes.HTML}:
        check_extraction(data, forced)


@pytest.mark.timeout(WHOLE_TEST_SECONDS)
@settings(BOUNDED, max_examples=15)
@given(length=st.integers(1, 1_000_000), unit=st.sampled_from(["x", "日本語", "a b", "\x00", "é", "Ω\u200b"]),
       content_type=st.sampled_from([filetypes.TEXT, filetypes.HTML]))
@example(length=300_000, unit="x", content_type=filetypes.TEXT)  # over LIMITS.max_chars
@example(length=199_000, unit="日本語", content_type=filetypes.HTML)  # took 12 s to chunk: quadratic
def test_a_huge_line_is_text_or_too_many_chars(length, unit, content_type):
    data = (unit * (length // len(unit) + 1))[:length].encode()
    extraction = check_extraction(data, content_type)
    if extraction is not None:
        check_chunks(extraction.pages, max_chars=1500, overlap=150, max_chunks=2000)


# --- chunking ----------------------------------------------------------------------------------

@pytest.mark.timeout(30)
@pytest.mark.parametrize("text", [
    "日本語" * 333_334,  # one unbroken line of 1,000,000 characters: took ≈170 s before windows
    "x\n" * 1_000_000,  # 1,000,000 one-character lines: ≈12 s before, quadratic
    "word " * 200_000,  # one line of words
], ids=["cjk-line", "short-lines", "one-line-of-words"])
def test_chunking_a_million_characters_without_structure_takes_linear_time(text):
    chunks = chunk_pages([Page(1, text)], 1500, 150)
    assert len(chunks) >= len(text) // 1500 and all(len(chunk.text) <= 1500 for chunk in chunks)


page_texts = st.one_of(
    st.text(max_size=3000),
    st.text(alphabet=st.sampled_from([" ", "\n", "\t", "\u3000", "\u00a0", "a", "日", ".", "\x00"]), max_size=3000),
    st.builds(lambda unit, n: unit * n, st.sampled_from(["x", "word ", "文。", "\n\n", "🙂"]), st.integers(0, 4000)),
)


@pytest.mark.timeout(WHOLE_TEST_SECONDS)
@settings(BOUNDED, max_examples=200)
@given(texts=st.lists(page_texts, max_size=8), paged=st.booleans(), max_chars=st.integers(100, 2048),
       overlap_share=st.floats(0, 0.49), max_chunks=st.one_of(st.none(), st.integers(1, 50)))
@example(texts=["", "  ", "\n\n"], paged=True, max_chars=100, overlap_share=0.0, max_chunks=None)
@example(texts=["0\x1f"], paged=False, max_chars=100, overlap_share=0.0, max_chunks=None)
@example(texts=["x" * 200_000, "日" * 50_000], paged=True, max_chars=2048, overlap_share=0.1, max_chunks=None)
def test_chunks_are_bounded_trimmed_and_mapped_to_real_pages(texts, paged, max_chars, overlap_share, max_chunks):
    if not paged:
        texts = texts[:1]
    # As extraction hands them over: cleaned (Python's str.strip, unlike the splitter's trim, takes
    # the C0 separators U+001C–U+001F for whitespace; clean_text drops them).
    pages = [Page(number + 1 if paged else None, clean_text(text)) for number, text in enumerate(texts)]
    check_chunks(pages, max_chars, int(max_chars * overlap_share), max_chunks)
