"""Version 7: what a chunk knows of where it came from, and what made a document's chunks.

``chunk.headings`` (the section's heading path, JSON), ``chunk.ocr`` and ``chunk.ocr_confidence``
(read by OCR, and how sure the engine was), ``document.ocr_pages`` (how many pages were read by
OCR) and ``document.extractor_version`` (:data:`jobs.readers.base.EXTRACTOR_VERSION` of the run
that made its chunks; ``NULL``: made before structure was kept, which ``flask documents
reprocess --without-structure`` selects).

Released: never change it (databases that ran it will not run it again); a new change is a new
step. See :mod:`webapp.core.migrations`."""

from __future__ import annotations

from peewee import BooleanField, Database, FloatField, IntegerField, TextField
from playhouse.migrate import SchemaMigrator

from webapp.core.migrations.steps import Migration, add_missing_columns

STRUCTURE_COLUMNS = (
    ("chunk", "headings", TextField(null=True)),  # JSON list of strings
    # nullable: a NOT NULL column makes SQLite rebuild the table, which the FTS5 index (migration 5) cannot follow
    ("chunk", "ocr", BooleanField(null=True, default=False)),
    ("chunk", "ocr_confidence", FloatField(null=True)),
    ("document", "ocr_pages", IntegerField(null=True)),
    ("document", "extractor_version", IntegerField(null=True)),
)


def _structure(migrator: SchemaMigrator, database: Database) -> None:
    """7: heading paths and OCR marks on chunks; OCR'd pages and extractor version on documents."""
    add_missing_columns(migrator, STRUCTURE_COLUMNS)
    database.execute_sql('UPDATE "chunk" SET "ocr" = %s WHERE "ocr" IS NULL' % database.param, (False,))


STEP = Migration(7, "structure and OCR", _structure)
