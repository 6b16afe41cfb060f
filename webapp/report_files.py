"""Where report files live and what they are: shared by the report job, which writes them, and
the API, which serves them."""

from __future__ import annotations

REPORT_TYPES = ("activity", "documents")
FORMATS = ("html", "csv", "json", "pdf")
CONTENT_TYPES = {
    "html": "text/html; charset=utf-8",
    "csv": "text/csv; charset=utf-8",
    "json": "application/json",
    "pdf": "application/pdf",
}


def report_key(report_id: str, fmt: str) -> str:
    """The storage key of report ``report_id`` in format ``fmt`` (server-made, never a client name)."""
    return f"reports/{report_id[:2]}/{report_id}.{fmt}"
