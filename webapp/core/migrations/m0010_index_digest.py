"""Version 10: what made a document's chunks, as one digest (``document.index_digest``).

The hex SHA-256 of the settings that change a document's chunks or their vectors
(:func:`webapp.core.indexing.index_digest`), written by the document job in the transaction that
stores the chunks. ``NULL``: chunks made before the digest was kept, which a reindex counts as
stale (``flask --app wsgi documents reindex``, ``POST /api/admin/reindex``).

Numbered 10: 8 and 9 belong to work landing in parallel (issue 23's other parts); until they
are merged the list in :mod:`webapp.core.migrations` has a gap there.

Released: never change it (databases that ran it will not run it again); a new change is a new
step. See :mod:`webapp.core.migrations`."""

from __future__ import annotations

from peewee import CharField, Database
from playhouse.migrate import SchemaMigrator

from webapp.core.migrations.steps import Migration, add_missing_columns

INDEX_DIGEST_COLUMNS = (
    ("document", "index_digest", CharField(max_length=64, null=True)),
)


def _index_digest(migrator: SchemaMigrator, database: Database) -> None:
    """10: the digest of the settings that made a document's chunks."""
    add_missing_columns(migrator, INDEX_DIGEST_COLUMNS)


STEP = Migration(10, "index digest", _index_digest)
