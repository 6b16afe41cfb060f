"""Limits on what one document may become (issue 8): pages, characters, chunks, and zip bombs.

Each limit is exceeded through the API with a real worker process and small configured values;
the job fails (never retried) with a sentence naming the limit and its config variable, an
``error_code``, and one log line without a traceback. The zip bombs are generated here, streamed
into the archive so the test stays small in memory.
"""

from __future__ import annotations

import hashlib
import io
import tracemalloc
import zipfile
import zlib

import pytest

from jobs.document_errors import DocumentError, DocumentTooLarge
from jobs.extract import Limits, extract
from tests.conftest import CORPUS, post_text, upload
from webapp.core import filetypes
from webapp.core.config import MB, load_config

CONTENT_TYPES = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    b'<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    b'<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    b'<Default Extension="xml" ContentType="application/xml"/>'
    b'<Override PartName="/word/document.xml" '
    b'ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>'
)
RELS = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    b'<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    b'<Relationship Id="rId1" Target="word/document.xml" '
    b'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument"/></Relationships>'
)
DOCUMENT_START = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    b'<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>'
)
DOCUMENT_END = b"</w:body></w:document>"


def docx(body_parts, repeat: int = 1) -> bytes:
    """A minimal .docx whose document body is ``body_parts`` (bytes) written ``repeat`` times,
    streamed into the deflated word/document.xml (memory: the compressed size, not the body's)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", CONTENT_TYPES)
        archive.writestr("_rels/.rels", RELS)
        with archive.open("word/document.xml", "w") as part:
            part.write(DOCUMENT_START)
            for _ in range(repeat):
                for body in body_parts:
                    part.write(body)
            part.write(DOCUMENT_END)
    return buffer.getvalue()


def zip_bomb(megabytes: int) -> bytes:
    """A .docx whose word/document.xml is ``megabytes`` MB of one repeated character (≈ 1,000:1)."""
    return docx([b"<w:p><w:r><w:t>", b"a" * MB], repeat=megabytes)


def lying_zip_bomb(megabytes: int, declared: int = 4096) -> bytes:
    """A zip bomb whose central directory declares ``declared`` bytes for word/document.xml (with
    the CRC of its first ``declared`` bytes), so the directory passes every check while the
    deflate stream still holds ``megabytes`` MB."""
    data = bytearray(zip_bomb(megabytes))
    prefix = DOCUMENT_START + b"<w:p><w:r><w:t>" + b"a" * declared
    crc = zlib.crc32(prefix[:declared])
    name = b"word/document.xml"
    position = -1
    while True:  # the central directory header of word/document.xml
        position = data.index(b"PK\x01\x02", position + 1)
        name_length = int.from_bytes(data[position + 28:position + 30], "little")
        if data[position + 46:position + 46 + name_length] == name:
            break
    data[position + 16:position + 20] = crc.to_bytes(4, "little")
    data[position + 24:position + 28] = declared.to_bytes(4, "little")
    return bytes(data)


def paragraphs_docx(count: int) -> bytes:
    """A .docx of ``count`` paragraphs of 1,000 non-whitespace characters each (hex digits, so
    it compresses like text, not like a bomb)."""
    paragraphs = [b"<w:p><w:r><w:t>" + "".join(hashlib.sha256(f"{n}.{k}".encode()).hexdigest() for k in range(16))
                  .encode()[:1000] + b"</w:t></w:r></w:p>" for n in range(count)]
    return docx(paragraphs)


def _post(client, data: bytes, name: str) -> dict:
    response = post_text(client, data, name=name)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["documents"][0]


def test_each_limit_fails_its_job_with_a_sentence_and_code(app, client, run_worker):
    pages = upload(client, "geotopo-117p-de.pdf").get_json()["documents"][0]  # 117 pages
    chars_pdf = upload(client, "dpr-paper-two-column.pdf").get_json()["documents"][0]  # 13 pages, ≈47,000 chars
    chars_docx = _post(client, paragraphs_docx(200), "long.docx")  # 200,000 chars
    chunks = upload(client, "latex-two-column-lorem.pdf").get_json()["documents"][0]  # 7 chunks of 1,500 (its title and abstract are sections of their own)
    bomb = _post(client, zip_bomb(300), "bomb.docx")  # 300 MB behind ≈300 KB
    dense = _post(client, zip_bomb(20), "dense.docx")  # 20 MB, within MAX_UNCOMPRESSED_SIZE, ≈1,000:1
    lying = _post(client, lying_zip_bomb(300), "lying.docx")
    word = upload(client, "docling-word-sample.docx").get_json()["documents"][0]
    small = upload(client, "minimal-document.pdf").get_json()["documents"][0]
    for document in (bomb, dense, lying):
        details = client.get(f"/api/documents/{document['id']}").get_json()
        assert details["content_type"] == filetypes.DOCX, details

    output = run_worker(MAX_PDF_PAGES="100", MAX_DOCUMENT_CHARS="30000", MAX_DOCUMENT_CHUNKS="5")

    log = output.stdout + output.stderr
    assert "Traceback" not in log, log[-4000:]

    def failed(document: dict, code: str) -> str:
        details = client.get(f"/api/documents/{document['id']}").get_json()
        job = client.get(document["status_url"]).get_json()
        assert details["status"] == "failed" and details["error_code"] == code, details
        assert job["status"] == "failed" and job["rq_status"] == "failed" and job["attempts"] == 1, job
        assert details["chunks"] in (0, None), details
        assert f"job {document['job_id']} failed ({code})" in log, log[-4000:]
        return details["error"]

    assert failed(pages, "too_many_pages") == "The document has 117 pages; the limit is 100 (MAX_PDF_PAGES)."

    error = failed(chars_pdf, "too_many_chars")
    assert error.startswith("The document has more than 30,000 characters of text, not counting whitespace "
                            "(extraction stopped at page "), error
    assert error.endswith("of 13); the limit is 30,000 (MAX_DOCUMENT_CHARS)."), error
    stopped_at = int(error.split("at page ")[1].split(" ")[0])
    assert 5 <= stopped_at < 13, error  # stopped as soon as the total passed, not after the last page

    error = failed(chars_docx, "too_many_chars")
    assert "(extraction stopped at paragraph 31)" in error and "(MAX_DOCUMENT_CHARS)" in error, error

    assert failed(chunks, "too_many_chunks") == \
        "The document makes 7 chunks of at most 1,500 characters; the limit is 5 (MAX_DOCUMENT_CHUNKS)."

    error = failed(bomb, "decompression_bomb")
    assert error.startswith("The Word document would unpack to 300 MB; the limit is 200 MB "
                            "(MAX_UNCOMPRESSED_SIZE = 209,715,200 bytes)"), error
    assert "before anything was unpacked" in error, error

    error = failed(dense, "decompression_bomb")
    assert error.startswith("The Word document's part 'word/document.xml' unpacks to 20 MB from "), error
    assert "the limit is 200 to 1 (MAX_COMPRESSION_RATIO)" in error, error

    # The directory passed every check; reading no more than it declares gives a truncated part.
    error = failed(lying, "damaged_file")
    assert error.startswith("the Word document is damaged"), error

    for document in (word, small):
        details = client.get(f"/api/documents/{document['id']}").get_json()
        assert details["status"] == "finished" and details["chunks"] >= 1 and details["error"] is None, details


def refusal_and_peak(data: bytes, error: type[DocumentError]) -> tuple[DocumentError, int]:
    """Extract ``data`` as a .docx in this process (no reader process: ``max_memory=None``),
    which must raise ``error``; return it and the peak bytes Python allocated meanwhile
    (tracemalloc)."""
    tracemalloc.start()
    try:
        with pytest.raises(error) as refused:
            extract(data, filetypes.DOCX, limits=Limits(max_memory=None))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return refused.value, peak


def test_an_honest_zip_bomb_is_refused_from_its_directory_without_unpacking():
    bomb = zip_bomb(300)
    assert len(bomb) < 2 * MB
    refused, peak = refusal_and_peak(bomb, DocumentTooLarge)
    assert refused.code == "decompression_bomb" and refused.setting == "MAX_UNCOMPRESSED_SIZE"
    assert peak < 10 * MB, f"{peak / MB:.0f} MB allocated while refusing a zip bomb"


def test_a_zip_directory_that_lies_about_sizes_is_never_unpacked_past_what_it_declares():
    """python-docx's ZipFile.read inflates a whole stream before cutting it to the declared size:
    this bomb, handed to it directly, allocates 300 MB."""
    bomb = lying_zip_bomb(300)
    with zipfile.ZipFile(io.BytesIO(bomb)) as archive:
        assert archive.getinfo("word/document.xml").file_size == 4096
    refused, peak = refusal_and_peak(bomb, DocumentError)
    assert refused.code == "damaged_file", refused.message
    assert peak < 10 * MB, f"{peak / MB:.0f} MB allocated for a part that declares 4 KB"


def test_character_limit_stops_a_docx_at_the_paragraph_that_passes_it():
    with pytest.raises(DocumentTooLarge) as refused:
        extract(paragraphs_docx(2000), filetypes.DOCX, limits=Limits(max_chars=100_000))
    assert refused.value.code == "too_many_chars" and refused.value.limit == 100_000
    assert "(extraction stopped at paragraph 101)" in refused.value.message
    assert extract(paragraphs_docx(100), filetypes.DOCX, limits=Limits(max_chars=100_000)).chars == 100_000


def test_chunk_limit_is_checked_before_splitting_when_the_characters_alone_exceed_it():
    from jobs.chunking import chunk_pages
    from jobs.extract import Page

    pages = [Page(1, "word " * 10_000)]  # 40,000 characters: at least 27 chunks of 1,500
    with pytest.raises(DocumentTooLarge) as refused:
        chunk_pages(pages, 1500, 150, max_chunks=10)
    assert refused.value.message == ("The document would make at least 27 chunks of at most 1,500 characters; "
                                     "the limit is 10 (MAX_DOCUMENT_CHUNKS).")
    assert len(chunk_pages(pages, 1500, 150, max_chunks=40)) <= 40


def test_a_zip_entry_over_the_ratio_names_it_and_small_real_documents_pass():
    word = (CORPUS / "docling-word-sample.docx").read_bytes()
    assert extract(word, filetypes.DOCX).chars > 500  # the defaults let a real document through
    with pytest.raises(DocumentTooLarge) as refused:
        extract(word, filetypes.DOCX, limits=Limits(max_compression_ratio=10))
    assert refused.value.code == "decompression_bomb"
    assert "'word/numbering.xml' unpacks to 33.4 KB from 2.6 KB, a ratio of 12.7 to 1; the limit is 10 to 1 " \
           "(MAX_COMPRESSION_RATIO)" in refused.value.message


def test_limits_default_to_the_configs_defaults(tmp_path):
    config = load_config(tmp_path, env={})
    assert Limits.from_config(config) == Limits()
    assert Limits.from_config(load_config(tmp_path, env={"MAX_PDF_PAGES": "7"})).max_pages == 7
