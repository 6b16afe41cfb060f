"""Every file of ../shared/corpus through POST /api/documents and a real worker, checked against
the manifest's kind (see the corpus README for what the service must do with each kind)."""

from __future__ import annotations

import pytest

from tests.conftest import CORPUS, PASSWORDS, corpus_manifest, upload

MANIFEST = corpus_manifest()


def _reference(row: dict[str, str]) -> str:
    # The manifest's non-whitespace count (the corpus README: PDFs counted "via pypdfium2"). An
    # erratum for miyazawa-jo-ja.pdf lived here while the manifest's 262 contradicted the file's
    # 880 characters; the shared corpus replaced the file on 2026-11-22 and the two agree again.
    return row["nonspace_chars"]


def _chars_close(actual: int | None, expected: str) -> bool:
    reference = int(expected)
    return actual is not None and abs(actual - reference) <= 0.1 * reference


@pytest.mark.timeout(600)
def test_every_corpus_file_gets_the_outcome_its_kind_calls_for(client, run_worker):
    assert len(MANIFEST) == 38 and all((CORPUS / row["file"]).exists() for row in MANIFEST)
    accepted: dict[str, dict] = {}
    for row in MANIFEST:
        response = upload(client, row["file"])
        if row["kind"] == "empty":
            assert response.status_code == 400, row["file"]
            assert response.get_json()["error"]["code"] == "empty_file"
            continue
        assert response.status_code == 202, (row["file"], response.get_json())
        accepted[row["file"]] = response.get_json()["documents"][0]
    # The encrypted files once more, with their passwords.
    with_password = {
        name: upload(client, name, password=password).get_json()["documents"][0] for name, password in PASSWORDS.items()
    }

    run_worker(timeout=540)

    problems = []
    for row in MANIFEST:
        name, kind = row["file"], row["kind"]
        if kind == "empty":
            continue
        doc = client.get(f"/api/documents/{accepted[name]['id']}").get_json()
        job = client.get(f"/api/jobs/{accepted[name]['job_id']}").get_json()
        if job["status"] != doc["status"] or job["status"] not in ("finished", "failed"):
            problems.append(f"{name}: job {job['status']} / document {doc['status']}")
            continue
        if doc["status"] == "failed":
            error = doc["error"] or ""
            if not error or "Traceback" in error or len(error) > 300:
                problems.append(f"{name}: unreadable error {error!r}")
        if kind in ("text", "encrypted-empty-pw", "other-format"):
            if doc["status"] != "finished" or not doc["chunks"]:
                problems.append(f"{name}: expected chunks, got {doc['status']} {doc['chunks']} {doc['error']}")
            elif not _chars_close(doc["chars"], _reference(row)):
                problems.append(f"{name}: chars {doc['chars']} vs manifest {_reference(row)}")
        elif kind == "scanned":
            # Read by OCR (OCR=auto): text and chunks, no "needs OCR" warning (tests/jobs/test_ocr.py).
            if doc["status"] != "finished" or not doc["chunks"] or not doc["chars"] or doc["warnings"]:
                problems.append(f"{name}: expected chunks read by OCR, got {doc}")
        elif kind == "encrypted-pw":
            if doc["status"] != "failed" or doc["error_code"] != "password_required":
                problems.append(f"{name}: expected 'password required', got {doc['status']} {doc['error']}")
            unlocked = client.get(f"/api/documents/{with_password[name]['id']}").get_json()
            if unlocked["status"] != "finished" or not unlocked["chunks"] or not _chars_close(
                unlocked["chars"], _reference(row)
            ):
                problems.append(f"{name} with password: {unlocked}")
        elif kind == "malformed":
            if doc["status"] == "finished":
                if not row["nonspace_chars"] or not _chars_close(doc["chars"], _reference(row)):
                    problems.append(f"{name}: finished without recoverable text: {doc}")
            elif not doc["error"]:
                problems.append(f"{name}: failed without a reason")
        else:
            problems.append(f"{name}: unknown kind {kind}")
    assert not problems, "\n".join(problems)
