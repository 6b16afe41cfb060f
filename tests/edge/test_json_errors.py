"""413s that name what was too large (``webapp.edge.json_errors``; which of Werkzeug's form
limits refused a request is read by ``webapp.core.compat.werkzeug_private``, and these tests fail
when the pinned Werkzeug changes how it raises them).

One file plus a 600 KB text field, or plus 150 plain fields, used to be answered
``413 too_many_files`` "at most 100 files".
"""

from __future__ import annotations

import io

from tests.conftest import api_client
from webapp import create_app
from webapp.core.db import create_tables


def _one_file(**fields) -> dict:
    return {"file": (io.BytesIO(b"a note\n"), "note.txt"), **fields}


def _refusal(client, data: dict) -> dict:
    response = client.post("/api/documents", data=data, content_type="multipart/form-data")
    assert response.status_code == 413, response.get_data(as_text=True)
    assert response.is_json, response.get_data(as_text=True)
    assert client.get("/api/documents").get_json()["documents"] == []  # nothing was uploaded
    return response.get_json()["error"]


def test_a_text_field_above_max_form_memory_size_is_named(client):
    error = _refusal(client, _one_file(callback_url="x" * 600_000))
    assert error["code"] == "form_field_too_large", error
    assert "500,000 bytes (MAX_FORM_MEMORY_SIZE)" in error["message"], error
    assert "'callback_url'" in error["message"] and "files" not in error["message"].split(";")[0], error


def test_the_form_field_limit_is_a_setting(config):
    app = create_app({**config, "MAX_FORM_MEMORY_SIZE": 1_000})
    with app.app_context():
        create_tables()
    error = _refusal(api_client(app), _one_file(password="p" * 2_000))
    assert error["code"] == "form_field_too_large" and "at most 1,000 bytes" in error["message"], error


def test_too_many_plain_fields_are_named_as_form_parts_not_files(client):
    fields = {f"field{n}": "x" for n in range(150)}
    error = _refusal(client, _one_file(**fields))
    assert error["code"] == "too_many_form_parts", error
    message = error["message"]
    assert "at most 110 parts" in message and "MAX_FORM_PARTS" in message and "MAX_FILES_PER_UPLOAD" in message, error


def test_too_many_files_among_the_parts_are_still_too_many_files(client):
    files = {"file": [(io.BytesIO(f"note {n}\n".encode()), f"note-{n}.txt") for n in range(120)]}
    error = _refusal(client, files)
    assert error["code"] == "too_many_files" and "at most 100 files" in error["message"], error


def test_a_body_above_max_content_length_is_payload_too_large(config):
    app = create_app({**config, "MAX_CONTENT_LENGTH": 10_000})
    with app.app_context():
        create_tables()
    error = _refusal(api_client(app), _one_file(note="y" * 20_000))
    assert error["code"] == "payload_too_large" and "MAX_CONTENT_LENGTH" in error["message"], error


def test_a_large_field_under_the_limit_is_not_refused_for_its_size(client):
    response = client.post("/api/documents", data=_one_file(callback_url="x" * 400_000),
                           content_type="multipart/form-data")
    assert response.status_code != 413, response.get_json()
