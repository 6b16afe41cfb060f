"""Type detection of slides, sheets, CSV and e-books (webapp/core/filetypes.py), from the bytes of
../shared/corpus-formats (read there, never copied) and of files built here."""

from __future__ import annotations

import io
import zipfile

import pytest

from tests.conftest import ROOT
from webapp.core import filetypes

CORPUS_FORMATS = ROOT.parent / "shared" / "corpus-formats"


@pytest.mark.parametrize(("name", "expected"), [("powerpoint_sample.pptx", filetypes.PPTX),
                                                ("xlsx_01.xlsx", filetypes.XLSX),
                                                ("epub_purvis_poetry.epub", filetypes.EPUB)])
def test_zip_formats_are_told_apart_by_their_bytes_whatever_the_name(name, expected):
    data = (CORPUS_FORMATS / name).read_bytes()
    for filename in (name, "renamed.docx", "renamed.txt", None):
        assert filetypes.detect_content_type(data, filename) == expected


def _zip(entries: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return out.getvalue()


def test_epub_by_its_mimetype_entry_or_its_container():
    assert filetypes.detect_content_type(_zip({"mimetype": b"application/epub+zip", "x.xhtml": b"<p/>"})) == \
        filetypes.EPUB
    assert filetypes.detect_content_type(_zip({"META-INF/container.xml": b"<container/>"})) == filetypes.EPUB
    assert filetypes.detect_content_type(_zip({"mimetype": b"application/zip", "a.txt": b"x"}), "a.epub") is None


def test_csv_needs_the_name_and_columns():
    data = (CORPUS_FORMATS / "csv-comma.csv").read_bytes()
    assert filetypes.detect_content_type(data, "customers.csv") == filetypes.CSV
    assert filetypes.detect_content_type(data, "customers.TSV") == filetypes.CSV
    # Without the hint, text with commas stays text.
    assert filetypes.detect_content_type(data, "customers.txt") == filetypes.TEXT
    assert filetypes.detect_content_type(data, None) == filetypes.TEXT
    prose = b"Dear Ana, thanks for the notes, they helped.\nSee you Monday, or Tuesday.\nBest, Bo\n"
    assert filetypes.detect_content_type(prose, "letter.txt") == filetypes.TEXT
    # With the hint, text that shows no columns stays text too.
    assert filetypes.detect_content_type(prose, "letter.csv") == filetypes.TEXT
    assert filetypes.detect_content_type(b"just one line, no table\n", "one.csv") == filetypes.TEXT
    assert filetypes.detect_content_type(b"a\tb\n1\t2\n3\t4\n", "t.tsv") == filetypes.CSV
    assert filetypes.detect_content_type(b"a|b|c\n1|2|3\n", "p.csv") == filetypes.CSV


def test_an_encrypted_office_file_is_refused_with_a_sentence_saying_why():
    ole = filetypes.CFB_MAGIC + bytes(512)
    assert filetypes.detect_content_type(ole, "locked.xlsx") is None
    assert "password-protected" in filetypes.unsupported_hint(ole)
    assert filetypes.unsupported_hint(b"\x89PNG\r\n") == ""


def test_the_sentence_names_every_supported_type():
    for name in ("PowerPoint (.pptx)", "Excel (.xlsx)", "EPUB", "CSV"):
        assert name in filetypes.SUPPORTED_SENTENCE and name in filetypes.SUPPORTED.values()
