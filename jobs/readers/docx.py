"""Word .docx via python-docx, unpacked under the zip limits (:mod:`jobs.readers.zip_limits`)."""

from __future__ import annotations

from jobs.document_errors import DocumentError
from jobs.readers.base import CharBudget, Extraction, Limits, clean_text, single_page
from jobs.readers.zip_limits import check_zip, unpack_bounded


def read_docx(data: bytes, limits: Limits, budget: CharBudget) -> Extraction:
    """The text of a Word document: paragraphs and tables in document order, one page ``None``.

    Raises:
        DocumentTooLarge: ``decompression_bomb`` (:func:`check_zip`), ``too_many_chars``.
        DocumentError: ``damaged_file`` when python-docx cannot read it, ``no_text`` when empty.
    """
    import docx
    from docx.table import Table

    check_zip(data, limits)
    unpacked = unpack_bounded(data)
    try:
        document = docx.Document(unpacked)
    except Exception as exc:  # python-docx raises zipfile, lxml and KeyError errors for bad files
        raise DocumentError(f"the Word document is damaged and could not be opened ({exc})", code="damaged_file") from None
    parts: list[str] = []
    try:
        for block in document.iter_inner_content():  # paragraphs and tables in document order
            if isinstance(block, Table):
                for row in block.rows:
                    part = clean_text("\t".join(cell.text for cell in row.cells))
                    budget.add(part, f" at paragraph {len(parts) + 1:,}")
                    parts.append(part)
            else:
                part = clean_text(block.text)
                budget.add(part, f" at paragraph {len(parts) + 1:,}")
                parts.append(part)
    except DocumentError:
        raise
    except Exception as exc:  # python-docx reads malformed values (a table's grid, a span) lazily
        raise DocumentError(f"the Word document is damaged and could not be read ({type(exc).__name__}: {exc})",
                            code="damaged_file") from None
    return single_page("\n".join(parts))
