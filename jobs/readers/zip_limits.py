"""Zip-based documents (.docx, and every Office Open XML or EPUB format) checked against the
limits before anything is unpacked, and unpacked without trusting the directory."""

from __future__ import annotations

import io
import zipfile
import zlib

from jobs.document_errors import DocumentError, DocumentTooLarge
from jobs.readers.base import Limits, format_bytes
from webapp.core import filetypes


def check_zip(data: bytes, limits: Limits, kind: str = "Word document") -> None:
    """Refuse a zip-based document that would unpack to too much, from its central directory
    alone (nothing is decompressed).

    The directory may lie (declare a small size for a huge stream); :func:`unpack_bounded` then
    reads no more than it declares.

    Args:
        data: the file's bytes.
        limits: ``max_uncompressed_size`` (bytes, all entries) and ``max_compression_ratio``
            (unpacked / packed size of any one entry; an entry that declares unpacked bytes from no
            packed bytes counts as infinitely compressed).
        kind: what the document is, for the sentence.

    Raises:
        DocumentTooLarge: ``decompression_bomb``, naming the limit and its config variable.
        DocumentError: ``damaged_file`` when the zip directory cannot be read.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            entries = archive.infolist()
    except filetypes.ZIP_ERRORS as exc:
        raise DocumentError(f"the {kind} is damaged and could not be opened ({exc})", code="damaged_file") from None
    total = sum(entry.file_size for entry in entries)
    if total > limits.max_uncompressed_size:
        raise DocumentTooLarge(
            f"The {kind} would unpack to {format_bytes(total)}; the limit is "
            f"{format_bytes(limits.max_uncompressed_size)} (MAX_UNCOMPRESSED_SIZE = {limits.max_uncompressed_size:,} "
            "bytes), so it was refused as a "
            "possible decompression bomb before anything was unpacked.",
            code="decompression_bomb", setting="MAX_UNCOMPRESSED_SIZE", limit=limits.max_uncompressed_size,
        )
    for entry in entries:
        if entry.file_size == 0:
            continue
        ratio = entry.file_size / entry.compress_size if entry.compress_size else float("inf")
        if ratio > limits.max_compression_ratio:
            name = entry.filename if len(entry.filename) <= 80 else entry.filename[:77] + "..."
            shown = "an unbounded ratio" if ratio == float("inf") else f"a ratio of {ratio:,.1f} to 1"
            raise DocumentTooLarge(
                f"The {kind}'s part {name!r} unpacks to {format_bytes(entry.file_size)} from "
                f"{format_bytes(entry.compress_size)}, {shown}; the limit is {limits.max_compression_ratio:,} to 1 "
                "(MAX_COMPRESSION_RATIO), so it was refused as a possible decompression bomb before anything "
                "was unpacked.",
                code="decompression_bomb", setting="MAX_COMPRESSION_RATIO", limit=limits.max_compression_ratio,
            )


# Word and LibreOffice write stored or deflated entries; zipfile decompresses the others (bzip2,
# LZMA) without a bound on one read's output, so they are refused.
_ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}


def unpack_bounded(data: bytes, kind: str = "Word document") -> io.BytesIO:
    """An uncompressed (stored) copy of a zip archive that :func:`check_zip` accepted, each entry
    unpacked by streaming to at most the size its directory declares.

    python-docx reads each part with ``ZipFile.read``, which inflates the whole stream in one call
    before cutting it to the declared size: a directory that declares 4 KB for a stream of 50 GB
    would pass :func:`check_zip` and still fill memory. Reading ``file_size`` bytes through
    ``ZipExtFile.read(n)`` inflates at most that many (plus one 4 KB read), and zipfile checks the
    CRC; python-docx then only copies stored bytes. Memory: the declared total, twice at most.

    Raises:
        DocumentError: ``damaged_file`` for an entry that is encrypted, uses another compression
            method, or whose data does not match its directory (bad CRC, truncated stream).
    """
    copy = io.BytesIO()
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(copy, "w", zipfile.ZIP_STORED) as target:
            for entry in source.infolist():
                if entry.compress_type not in _ZIP_METHODS:
                    raise DocumentError(
                        f"the {kind} is damaged or not from an office application: its part {entry.filename[:80]!r} "
                        f"uses zip compression method {entry.compress_type}, not stored or deflated",
                        code="damaged_file")
                with source.open(entry) as stream:
                    content = stream.read(entry.file_size) if entry.file_size else b""
                    if len(content) != entry.file_size:
                        raise zipfile.BadZipFile(f"part {entry.filename[:80]!r} is shorter than its directory says")
                target.writestr(zipfile.ZipInfo(entry.filename), content)
    except DocumentError:
        raise
    except (*filetypes.ZIP_ERRORS, RuntimeError, zlib.error) as exc:  # RuntimeError: an encrypted entry
        raise DocumentError(f"the {kind} is damaged and could not be opened ({exc})", code="damaged_file") from None
    copy.seek(0)
    return copy
