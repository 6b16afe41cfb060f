"""Errors a document job raises on purpose. Their text is shown to users as the job's ``error``.

The base classes live in the shared core (:mod:`webapp.core.protocol.job_errors`): the state machine records
them on the row and the API returns them.
"""

from webapp.core.protocol.job_errors import JobError  # noqa: F401  (re-exported for the job modules)


class DocumentError(JobError):
    """The document cannot be read: encrypted, damaged, no text, unsupported. Never retried."""

    code = "unreadable_document"


class DocumentTooLarge(DocumentError):
    """The document exceeds one of the configured limits on what a document may become (pages,
    characters, chunks, unpacked size). An expected user error: never retried, logged in one line.

    Codes: ``too_many_pages`` (``MAX_PDF_PAGES``), ``too_many_chars`` (``MAX_DOCUMENT_CHARS``),
    ``too_many_chunks`` (``MAX_DOCUMENT_CHUNKS``), ``decompression_bomb``
    (``MAX_UNCOMPRESSED_SIZE``, ``MAX_COMPRESSION_RATIO``), ``too_much_memory``
    (``MAX_DOCUMENT_MEMORY``).

    Attributes:
        setting: the config variable holding the limit, e.g. ``MAX_PDF_PAGES``; the message names it.
        limit: the limit's value (in the setting's unit).
    """

    code = "document_too_large"

    def __init__(self, message: str, code: str, setting: str, limit: int) -> None:
        super().__init__(message, code=code)
        self.setting = setting
        self.limit = limit
