"""Structure through the whole pipeline: a Word document with headings and a long table, uploaded
through the API and chunked by a real worker with a small CHUNK_SIZE."""

from __future__ import annotations

import io

from jobs.extract import markdown_row
from tests.conftest import post_text
from webapp.core.models import Chunk

HEADER = ["Kind", "Kept for", "Owner"]
ROWS = [[f"Record kind {n}", f"{n + 1} years", f"Team {n % 4}"] for n in range(30)]


def policy_docx() -> bytes:
    import docx

    document = docx.Document()
    document.add_heading("4 Retention", level=1)
    document.add_paragraph("How long each kind of record is kept, and by whom. " * 3)
    document.add_heading("4.1 Periods", level=2)
    table = document.add_table(rows=len(ROWS) + 1, cols=3)
    for r, cells in enumerate([HEADER, *ROWS]):
        for c, text in enumerate(cells):
            table.cell(r, c).text = text
    document.add_heading("4.2 Deleting documents", level=2)
    document.add_paragraph("Deleted documents leave no chunks behind. " * 4)
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def test_a_word_document_is_chunked_by_section_and_its_table_repeats_its_header(app, client, run_worker):
    response = post_text(client, policy_docx(), "policy.docx")
    assert response.status_code == 202, response.get_json()
    (document,) = response.get_json()["documents"]
    run_worker(CHUNK_SIZE="200", CHUNK_OVERLAP="0")

    details = client.get(f"/api/documents/{document['id']}").get_json()
    assert details["status"] == "finished", details
    with app.app_context():
        chunks = list(Chunk.select().where(Chunk.document == document["id"]).order_by(Chunk.ordinal))
    header = markdown_row(HEADER)
    table_chunks = [c for c in chunks if "| Record kind" in c.text]
    assert len(table_chunks) >= 3  # the table is split over several chunks
    for chunk in table_chunks:
        table = chunk.text[chunk.text.index("|"):]  # the first chunk has the section's heading before it
        assert table.startswith(header + "\n"), chunk.text  # each starts with the header row
        assert chunk.headings == ["4 Retention", "4.1 Periods"], chunk.headings
        assert len(chunk.text) <= 200
    assert table_chunks[0].text.startswith("4.1 Periods\n\n" + header)
    stored_rows = [line for c in table_chunks for line in c.text.split("\n") if line.startswith("|") and line != header]
    assert stored_rows == [markdown_row(cells) for cells in ROWS]  # every row once, whole, in order
    first, last = chunks[0], chunks[-1]
    assert first.headings == ["4 Retention"] and first.text.startswith("4 Retention\n\nHow long")
    assert last.headings == ["4 Retention", "4.2 Deleting documents"] and "leave no chunks" in last.text

    # The heading path reaches search results and the chunks endpoint as the worker stored it.
    hits = client.get("/api/search", query_string={"q": "leave no chunks", "k": 3}).get_json()["results"]
    hit = next(r for r in hits if r["ordinal"] == last.ordinal)
    assert hit["headings"] == ["4 Retention", "4.2 Deleting documents"] and hit["ocr"] is False
    listed = client.get(f"/api/documents/{document['id']}/chunks", query_string={"limit": 100}).get_json()["chunks"]
    assert [c["headings"] for c in listed] == [c.headings for c in chunks]
