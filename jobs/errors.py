"""Errors a document job raises on purpose. Their text is shown to users as the job's ``error``.

The base classes live in the shared core (:mod:`webapp.job_errors`): the state machine records
them on the row and the API returns them.
"""

from webapp.job_errors import JobError  # noqa: F401  (re-exported for the job modules)


class DocumentError(JobError):
    """The document cannot be read: encrypted, damaged, no text, unsupported. Never retried."""

    code = "unreadable_document"
