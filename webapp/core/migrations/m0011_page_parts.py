"""Version 11: big PDFs read in page-range parts (issue 19, ``jobs/document_parts.py``).

* ``job.parent_id``: a part's and the join's row name the document job they work for;
* ``job.pages_done``, ``job.pages_total``: that document job's progress in pages;
* the ``part_pages`` table: what each part read (pages, structure notes, its chunks' vectors),
  kept until the join made the document's one chunk set.

Released: never change it (databases that ran it will not run it again); a new change is a new
step. See :mod:`webapp.core.migrations`."""

from __future__ import annotations

from peewee import BlobField, CharField, Database, DateTimeField, ForeignKeyField, IntegerField, Model, TextField
from playhouse.migrate import SchemaMigrator

from webapp.core.migrations.steps import Migration, add_missing_columns

PAGE_PART_COLUMNS = (
    ("job", "parent_id", CharField(max_length=64, null=True, index=True)),
    ("job", "pages_done", IntegerField(null=True)),
    ("job", "pages_total", IntegerField(null=True)),
)


def _part_pages_model(database: Database) -> type[Model]:
    """Migration 11's table, frozen as it was first declared."""
    bound = database

    class Document(Model):
        id = CharField(primary_key=True, max_length=64)

        class Meta:
            database = bound
            table_name = "document"

    class PartPages(Model):
        id = CharField(primary_key=True, max_length=64)
        document = ForeignKeyField(Document, on_delete="CASCADE")
        parent_id = CharField(max_length=64, index=True)
        first_page = IntegerField()
        last_page = IntegerField()
        pages = TextField()  # JSON
        embedding_model = CharField(max_length=200, null=True)
        dimensions = IntegerField(null=True)
        vector_keys = TextField()  # JSON
        vectors = BlobField(null=True)
        created_at = DateTimeField()

        class Meta:
            database = bound
            table_name = "part_pages"

    return PartPages


def _page_parts(migrator: SchemaMigrator, database: Database) -> None:
    """11: the parent link and page progress of jobs, and the parts' staged pages."""
    add_missing_columns(migrator, PAGE_PART_COLUMNS)
    database.create_tables([_part_pages_model(database)], safe=True)


STEP = Migration(11, "page parts", _page_parts)
