"""jobs.chunking over structured pages: sections, heading paths, tables kept whole."""

from __future__ import annotations

from jobs.chunking import chunk_pages, embedding_text
from jobs.extract import HEADING, PARAGRAPH, TABLE, Block, Page, markdown_row


def heading(text: str, level: int) -> Block:
    return Block(HEADING, text, level)


def para(text: str) -> Block:
    return Block(PARAGRAPH, text)


def table(rows: list[list[str]], header: bool = True) -> Block:
    lines = [markdown_row(cells) for cells in rows]
    return Block(TABLE, "\n".join(lines), rows=lines, header=header)


def sentences(word: str, count: int) -> str:
    return " ".join(f"{word} sentence number {n}." for n in range(count))


def test_large_sections_are_chunked_apart_with_their_heading_paths():
    blocks = [heading("4 Retention", 1), para(sentences("Retain", 12)),
              heading("4.1 Keeping documents", 2), para(sentences("Store", 30)),
              heading("4.2 Deleting documents", 2), para(sentences("Delete", 30)),
              heading("5 Security", 1), para(sentences("Guard", 12))]
    chunks = chunk_pages([Page(None, "", blocks)], max_chars=400)
    for chunk in chunks:
        words = {w for w in ("Retain", "Store", "Delete", "Guard") if w in chunk.text}
        assert len(words) == 1, chunk  # no chunk crosses a section boundary
        expected = {"Retain": ["4 Retention"], "Store": ["4 Retention", "4.1 Keeping documents"],
                    "Delete": ["4 Retention", "4.2 Deleting documents"], "Guard": ["5 Security"]}[words.pop()]
        assert chunk.headings == expected, chunk
        assert len(chunk.text) <= 400
    assert chunks[0].text.startswith("4 Retention\n\nRetain")
    assert embedding_text(chunks[1]).startswith("4 Retention > 4.1 Keeping documents\n\n")


def test_small_sections_merge_with_the_next_and_keep_the_common_path():
    blocks = [heading("Guide", 1), heading("Intro", 2), para("Short intro."),
              heading("Setup", 2), para(sentences("Install", 30))]
    chunks = chunk_pages([Page(None, "", blocks)], max_chars=400)
    assert chunks[0].text == "Guide\n\nIntro\n\nShort intro."
    assert chunks[0].headings == ["Guide"]  # the path its sections share
    assert chunks[1].text.startswith("Setup\n\nInstall")  # a heading stays with its text
    assert all(chunk.headings == ["Guide", "Setup"] for chunk in chunks[1:])  # wholly inside "Setup"
    together = chunk_pages([Page(None, "", blocks[:4] + [para(sentences("Install", 5))])], max_chars=400)
    assert [c.headings for c in together] == [["Guide"]] and together[0].text.startswith("Guide\n\nIntro")
    # A section of half a chunk or more stands alone, even when the next would fit beside it.
    apart = chunk_pages([Page(None, "", [heading("One", 1), para(sentences("First", 9)),
                                         heading("Two", 1), para("Short.")])], max_chars=400)
    assert [c.headings for c in apart] == [["One"], ["Two"]]


def test_heading_path_carries_across_pages_and_levels_go_up_and_down():
    pages = [Page(1, "", [heading("A", 1), para(sentences("Alpha", 20)), heading("A.1", 2), para(sentences("One", 20))]),
             Page(2, "", [para(sentences("More", 20)), heading("A.1.a", 3), para(sentences("Deep", 20))]),
             Page(3, "", [heading("B", 1), para(sentences("Beta", 20)), heading("B.1", 2), para(sentences("Two", 20))])]
    chunks = chunk_pages(pages, max_chars=600)
    paths = {w: c.headings for c in chunks for w in ("Alpha", "One", "More", "Deep", "Beta", "Two") if w in c.text}
    assert paths == {"Alpha": ["A"], "One": ["A", "A.1"], "More": ["A", "A.1"], "Deep": ["A", "A.1", "A.1.a"],
                     "Beta": ["B"], "Two": ["B", "B.1"]}
    assert all(c.page_start == 2 for c in chunks if "More" in c.text)


def test_a_long_table_is_cut_between_rows_and_repeats_its_header():
    rows = [["Name", "Role", "Since"]] + [[f"Person {n}", f"role number {n}", str(1990 + n)] for n in range(60)]
    blocks = [heading("Staff", 1), para("Everyone who works here."), table(rows), para("After the table.")]
    chunks = chunk_pages([Page(3, "", blocks)], max_chars=300, overlap=50)
    header = markdown_row(rows[0])
    table_chunks = [c for c in chunks if "| Person" in c.text]
    assert len(table_chunks) > 3
    for chunk in table_chunks:
        assert len(chunk.text) <= 300 and chunk.headings == ["Staff"] and chunk.page_start == 3
        lines = chunk.text.split("\n")
        first = next(i for i, line in enumerate(lines) if line.startswith("|"))
        assert lines[first] == header, chunk.text  # each table chunk starts with the header row
    # Every row is in exactly one chunk, whole.
    for cells in rows[1:]:
        assert sum(markdown_row(cells) in c.text.split("\n") for c in chunks) == 1, cells
    assert "After the table." in chunks[-1].text


def test_a_short_table_shares_a_chunk_with_its_text_and_a_row_longer_than_a_chunk_is_split():
    small = chunk_pages([Page(None, "", [para("Before."), table([["a", "b"], ["1", "2"]]), para("After.")])], 400)
    assert [c.text for c in small] == ["Before.\n\n| a | b |\n| 1 | 2 |\n\nAfter."]
    huge = ["id", "notes"], ["7", sentences("Long", 40)]
    chunks = chunk_pages([Page(None, "", [table(list(huge))])], max_chars=300)
    assert len(chunks) > 2 and all(len(c.text) <= 300 and c.text.startswith("| id | notes |\n") for c in chunks)
    headerless = chunk_pages([Page(None, "", [table([[str(n), "x" * 40] for n in range(30)], header=False)])], 200)
    assert all(not c.text.startswith("| 0 |") for c in headerless[1:])


def test_text_without_structure_chunks_as_before_and_whitespace_is_quick_to_skip():
    text = "\n\n".join(sentences(f"P{n}", 8) for n in range(40))
    chunks = chunk_pages([Page(1, text)], max_chars=500, overlap=50)
    assert all(c.headings == [] and len(c.text) <= 500 for c in chunks)
    assert chunk_pages([Page(1, " \n" * 50_000 + "word")], max_chars=1500)[0].text == "word"
