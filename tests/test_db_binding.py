"""The database is bound per app: two apps in one process each write into their own database."""

from __future__ import annotations

import pytest

from webapp import create_app
from webapp.db import connection, create_tables, db
from webapp.models import Batch


def test_two_apps_in_one_process_each_write_into_their_own_database(tmp_path, redis_url):
    apps = [
        create_app({"TESTING": True, "DATABASE_URL": f"sqlite:///{tmp_path / name}.sqlite3",
                    "REDIS_URL": redis_url, "STORAGE_PATH": str(tmp_path / name)})
        for name in ("first", "second")
    ]
    for app in apps:
        with app.app_context():
            create_tables()

    first, second = apps  # the second app was created last: a process-global binding would point at it
    with first.app_context(), connection():
        Batch.create(id="written-in-first", size=1)
    with second.app_context(), connection():
        Batch.create(id="written-in-second", size=2)

    with first.app_context(), connection():
        assert [b.id for b in Batch.select()] == ["written-in-first"]
        assert db.database.database.endswith("first.sqlite3")
    with second.app_context(), connection():
        assert [b.id for b in Batch.select()] == ["written-in-second"]


def test_the_database_outside_an_app_context_is_a_clear_error():
    with pytest.raises(RuntimeError, match="application context"):
        db.database
