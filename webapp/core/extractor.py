"""What version of the readers and the chunker made a document's chunks.

In the core so that both sides may read it: the document job stores it on each document it
processes (``Document.extractor_version``, :mod:`jobs.readers.base` re-exports it) and ``flask
documents reprocess --without-structure`` selects the documents made by an older version (or
before the number existed, ``NULL``)."""

from __future__ import annotations

# Raise it when a change to the readers or the chunker would give old documents other chunks.
# 2: headings, tables and OCR.
EXTRACTOR_VERSION = 2
