"""Errors a job raises on purpose. Their text is shown to users as the job's ``error``."""


class JobError(Exception):
    """A job cannot complete for a reason the user can act on.

    Attributes:
        code: snake_case reason, e.g. ``password_required``.
        message: one human sentence, shown as the job's and document's ``error``.
    """

    code = "job_failed"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code


class DocumentError(JobError):
    """The document cannot be read: encrypted, damaged, no text, unsupported."""

    code = "unreadable_document"
