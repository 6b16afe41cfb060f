"""Version 8: where a fetched document came from, and what its server said of the version fetched.

``document.source_url`` (the URL a ``fetch`` job downloads; ``NULL`` for an upload),
``document.etag`` and ``document.last_modified`` (the HTTP ``ETag`` and ``Last-Modified`` of the
answer whose bytes are stored, verbatim; ``NULL`` when the server sent none). The bytes' SHA-256
is ``document.sha256``, as for an upload.

Released: never change it (databases that ran it will not run it again); a new change is a new
step. See :mod:`webapp.core.migrations`."""

from __future__ import annotations

from peewee import CharField, Database, TextField
from playhouse.migrate import SchemaMigrator

from webapp.core.migrations.steps import Migration, add_missing_columns

FETCH_COLUMNS = (
    ("document", "source_url", TextField(null=True)),
    ("document", "etag", CharField(max_length=200, null=True)),
    ("document", "last_modified", CharField(max_length=64, null=True)),
)


def _fetched_documents(migrator: SchemaMigrator, database: Database) -> None:
    """8: a document's source URL, ETag and Last-Modified."""
    add_missing_columns(migrator, FETCH_COLUMNS)


STEP = Migration(8, "fetched documents", _fetched_documents)
