"""Pure functions: type detection, chunk page mapping and limits, storage keys, configuration."""

from __future__ import annotations

import io
import zipfile

import pytest

from jobs.chunking import chunk_pages
from jobs.document_errors import DocumentError
from jobs.extract import Page, clean_text, count_chars, extract
from tests.conftest import CORPUS
from webapp.core import filetypes
from webapp.core.config import load_config, normalize_database_url
from webapp.core.storage import LocalStorage, StorageError, check_key


@pytest.mark.parametrize(
    ("data", "filename", "expected"),
    [
        (b"%PDF-1.7\n...", "x.bin", filetypes.PDF),
        (b"junk before header %PDF-1.4", None, filetypes.TEXT),  # clean text that mentions the header
        (b"\x00\x01\x02%PDF-1.4\n1 0 obj\n<<>>\nendobj\n", None, filetypes.PDF),  # binary junk, then a PDF
        (b"<!DOCTYPE html><html><body>Hi</body></html>", "page.txt", filetypes.HTML),
        (b"<!-- saved --> <html lang=en><p>x</p></html>", None, filetypes.HTML),
        ("Grüße aus Köln, wie geht's?\n".encode("utf-8"), "a.txt", filetypes.TEXT),
        ("Привет, мир! Это обычный текст.\n".encode("cp1251"), "a.txt", filetypes.TEXT),
        (b"# Title\n\nSome *markdown* text.\n", "README.md", filetypes.MARKDOWN),
        (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "a.pdf", None),
        (b"", "a.txt", None),
    ],
)
def test_detect_content_type(data, filename, expected):
    assert filetypes.detect_content_type(data, filename) == expected


def test_a_zip_that_is_not_a_word_document_is_unsupported():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("hello.txt", "hello")
    assert filetypes.detect_content_type(buffer.getvalue(), "a.docx") is None
    docx = (CORPUS / "docling-word-sample.docx").read_bytes()
    assert filetypes.detect_content_type(docx, "renamed.bin") == filetypes.DOCX


def test_chunks_record_the_pages_they_span_and_respect_the_size():
    pages = [Page(1, "Alpha sentence one. " * 30), Page(2, "Beta sentence two. " * 30), Page(3, "")]
    chunks = chunk_pages(pages, max_chars=400, overlap=0)
    assert all(len(c.text) <= 400 for c in chunks)
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    assert chunks[0].page_start == 1 and chunks[-1].page_end == 2
    # Each chunk's pages are those its words come from.
    for chunk in chunks:
        assert ("Alpha" in chunk.text) == (chunk.page_start == 1), chunk
        assert ("Beta" in chunk.text) == (chunk.page_end == 2), chunk
    (both,) = chunk_pages([Page(1, "Alpha short."), Page(2, "Beta short.")], max_chars=400)
    assert (both.page_start, both.page_end) == (1, 2)
    assert count_chars("".join(c.text for c in chunks)) == count_chars(pages[0].text + pages[1].text)


def test_chunks_of_unpaged_text_have_no_pages_and_empty_text_has_no_chunks():
    chunks = chunk_pages([Page(None, "word " * 1000)], max_chars=500)
    assert chunks and all(c.page_start is None and c.page_end is None for c in chunks)
    assert chunk_pages([Page(1, "  \n\n ")], max_chars=500) == []


def test_cjk_chunks_stay_under_the_per_input_token_bound():
    from webapp.core.embeddings import OPENAI_MAX_TOKENS_PER_INPUT, token_upper_bound

    chunks = chunk_pages([Page(1, "日本語の文章です。" * 2000)], max_chars=2048)
    assert max(token_upper_bound(c.text) for c in chunks) <= OPENAI_MAX_TOKENS_PER_INPUT


def test_clean_text_drops_pdfium_hyphen_marks_and_normalises_line_breaks():
    assert clean_text("taki\x02mata\r\nnext\rline\x00") == "takimata\nnext\nline"


def test_text_without_any_characters_fails_with_no_text():
    with pytest.raises(DocumentError) as info:
        extract(b"   \n\t  \n", filetypes.TEXT)
    assert info.value.code == "no_text"


def test_wrong_password_and_damaged_pdfs_raise_document_errors():
    data = (CORPUS / "doclaynet-p3-password.pdf").read_bytes()
    with pytest.raises(DocumentError) as info:
        extract(data, filetypes.PDF, password="not-it")
    assert info.value.code == "wrong_password"
    with pytest.raises(DocumentError) as info:
        extract(b"%PDF-1.4\n%%EOF", filetypes.PDF)
    assert info.value.code == "damaged_file"


def test_html_text_leaves_out_scripts_and_styles():
    html = b"<html><head><style>p{color:red}</style><script>var secret=1</script></head><body><p>Visible</p></body></html>"
    text = extract(html, filetypes.HTML).pages[0].text
    assert "Visible" in text and "secret" not in text and "color" not in text


@pytest.mark.parametrize("key", ["../escape", "/abs", "a/../../b", "", "a b"])
def test_storage_rejects_keys_that_could_escape_its_folder(key):
    with pytest.raises(ValueError):
        check_key(key)


def test_local_storage_round_trip_and_missing_key(tmp_path):
    storage = LocalStorage(tmp_path)
    storage.put("documents/ab/abc", b"bytes")
    assert storage.get("documents/ab/abc") == b"bytes"
    storage.delete("documents/ab/abc")
    storage.delete("documents/ab/abc")
    with pytest.raises(StorageError):
        storage.get("documents/ab/abc")


def test_config_defaults_and_validation(tmp_path):
    config = load_config(tmp_path, env={})
    assert config["DATABASE_URL"] == f"sqlite:///{tmp_path / 'docket.sqlite3'}"
    assert config["REDIS_URL"] == "redis://localhost:6379/0"
    assert config["MAX_CONTENT_LENGTH"] == 50 * 1024 * 1024 and config["OPENAI_API_KEY"] is None
    assert load_config(tmp_path, env={"DATABASE_URL": "postgres://u:p@h/db"})["DATABASE_URL"] == "postgresql://u:p@h/db"
    assert normalize_database_url("sqlite:///x") == "sqlite:///x"
    with pytest.raises(ValueError):
        load_config(tmp_path, env={"CHUNK_SIZE": "9000"})
    with pytest.raises(ValueError):
        load_config(tmp_path, env={"MAX_CONTENT_LENGTH": "lots"})
    assert load_config(tmp_path, env={"REDIS_TLS_VERIFY": "false"})["REDIS_TLS_VERIFY"] is False
    with pytest.raises(ValueError):
        load_config(tmp_path, env={"REDIS_TLS_VERIFY": "maybe"})


def test_hashing_embedder_equals_scikit_learn_bit_for_bit_on_the_corpus_and_odd_text():
    """HashingEmbedder hashes the character n-grams one distinct word at a time; its vectors must
    be exactly those of scikit-learn's own HashingVectorizer on whole texts (the vector space
    ``hashing-v1:2048`` that stored chunks are in)."""
    import numpy as np
    from sklearn.feature_extraction.text import HashingVectorizer

    from jobs.chunking import chunk_pages
    from jobs.extract import extract
    from tests.conftest import CORPUS, corpus_manifest
    from webapp.core.embeddings import HashingEmbedder, _normalise
    from webapp.core.filetypes import detect_content_type

    texts = ["ΟΔΟΣ ΣΟΦΟΣ Σ. İstanbul ǅemal ﬁne STRASSE", "tab\tand\u00a0no-break\u3000ideographic space\n\n",
             "短い日本語の文と中文句子", "a", "a b a b a", "x" * 3000, "repeated words " * 200]
    for row in corpus_manifest():
        if row["kind"] in ("text", "other-format"):
            data = (CORPUS / row["file"]).read_bytes()
            pages = extract(data, detect_content_type(data, row["file"])).pages
            texts += [chunk.text for chunk in chunk_pages(pages, 1500, 150)][:40]

    common = dict(n_features=1024, alternate_sign=False, norm="l2", lowercase=True)
    word = HashingVectorizer(analyzer="word", ngram_range=(1, 2), token_pattern=r"(?u)\b\w+\b", **common)
    char = HashingVectorizer(analyzer="char_wb", ngram_range=(3, 5), **common)
    expected = np.vstack([
        _normalise(np.hstack([word.transform(texts[i:i + 256]).toarray(), char.transform(texts[i:i + 256]).toarray()]))
        for i in range(0, len(texts), 256)
    ])
    assert len(texts) > 300
    assert np.array_equal(HashingEmbedder().embed(texts), expected)


def test_the_hashing_embedder_gives_zero_vectors_for_texts_without_words():
    from webapp.core.embeddings import HashingEmbedder

    vectors = HashingEmbedder().embed(["", "  \n\t"])
    assert vectors.shape == (2, HashingEmbedder.dimensions) and not vectors.any()
