"""The structure of Markdown text: ATX (``# Title``) and setext (``Title`` over ``===``/``---``)
headings and GitHub pipe tables, outside fenced code blocks, by a scan of its lines.

Not markdown-it-py (installed, 4.3): its token stream for 5 MB of hostile Markdown (1,250,000
one-word list items) took 88 s and 2.5 GB, in the worker process itself (Markdown is not read in
a process of its own). This scan keeps only the blocks it finds: a regular expression finds the
few lines that can start one (``#``, a fence, a ``===``/``---`` underline, a line with ``|``),
and everything between becomes a paragraph, the document's own text (lists, quotes and code as
written).
"""

from __future__ import annotations

import re

from jobs.readers.base import HEADING, PARAGRAPH, TABLE, Block, markdown_row

# Lines that may start a block (CommonMark: up to three spaces of indentation).
# A table's header line is a candidate only when a delimiter row with a pipe follows it.
_CANDIDATE = re.compile(r"^ {0,3}(?:#{1,6}(?:[ \t]|$)|`{3,}|~{3,}|=+[ \t]*$|-+[ \t]*$)"
                        r"|^[^\n]*\|[^\n]*(?=\n {0,3}[|:-][ \t:|-]*(?:\n|$))", re.MULTILINE)
# Most candidate lines looked at (≈ 1 s of scanning): past them the text has no blocks (it is
# chunked as plain text), so hostile Markdown of a heading or fence per line costs neither time
# nor a Block per line.
MAX_CANDIDATES = 200_000
_ATX = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_DELIMITER_ROW = re.compile(r" {0,3}\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*")
_PIPE = re.compile(r"(?<!\\)\|")


def markdown_blocks(text: str) -> list[Block] | None:
    """The blocks of Markdown ``text`` in order: headings (ATX levels 1–6; setext ``=`` 1,
    ``-`` 2), tables (GitHub pipe tables: a header row, a delimiter row, then rows with ``|``;
    written back as :func:`markdown_row` rows, header first, the delimiter row left out) and the
    text between as paragraphs. Nothing inside a fenced code block (```` ``` ```` or ``~~~``) is
    a heading or a table.

    Cost: one regular-expression pass and work per candidate line; memory: the blocks (the text
    once more). ``None`` (no structure known) for text of more than :data:`MAX_CANDIDATES` such
    lines."""
    blocks: list[Block] = []
    done = 0  # end of the last block found: text before a block's start is a paragraph
    fence: str | None = None  # the open code fence's marker
    skip = 0  # candidates before this offset belong to a table already read
    boundary = -1  # end of the last fence, heading or table line: a setext paragraph may follow it
    for number, match in enumerate(_CANDIDATE.finditer(text)):
        if number >= MAX_CANDIDATES:
            return None
        start = match.start()
        if start < skip:
            continue
        end = _line_end(text, start)
        line = text[start:end]
        fenced = _FENCE.match(line)
        if fence is not None:
            if fenced and fenced.group(1)[0] == fence[0] and len(fenced.group(1)) >= len(fence) \
                    and not line[fenced.end():].strip():
                fence, boundary = None, end
            continue
        if fenced and not (fenced.group(1)[0] == "`" and "`" in line[fenced.end():]):
            fence = fenced.group(1)
            continue
        atx = _ATX.fullmatch(line)
        if atx:
            done = _paragraph(blocks, text, done, start)
            title = (atx.group(2) or "").strip()
            if title:
                blocks.append(Block(HEADING, title, len(atx.group(1))))
            done = boundary = end
            continue
        stripped = line.strip()
        if stripped and set(stripped) <= {"=", "-"} and len(set(stripped)) == 1 and start > done:
            previous_start = _line_start(text, start - 1)
            previous = text[previous_start:start - 1]
            before = text[_line_start(text, previous_start - 1):previous_start - 1] if previous_start > 0 else ""
            if previous.strip() and (not before.strip() or previous_start - 1 == boundary) and "|" not in previous \
                    and not previous.lstrip().startswith(("-", "*", "+", ">", "#")):
                done = _paragraph(blocks, text, done, previous_start)
                blocks.append(Block(HEADING, previous.strip(), 1 if stripped[0] == "=" else 2))
                done = boundary = end
            continue
        if "|" in line and end < len(text):
            delimiter_end = _line_end(text, end + 1)
            delimiter = text[end + 1:delimiter_end]
            if "|" in delimiter and _DELIMITER_ROW.fullmatch(delimiter) and \
                    len(_cells(delimiter)) == len(_cells(line)):
                rows = [markdown_row(_cells(line))]
                position = delimiter_end
                while position < len(text):
                    row_end = _line_end(text, position + 1)
                    row = text[position + 1:row_end]
                    if "|" not in row or not row.strip():
                        break
                    rows.append(markdown_row(_cells(row)))
                    position = row_end
                done = _paragraph(blocks, text, done, start)
                blocks.append(Block(TABLE, "\n".join(rows), rows=rows, header=len(rows) > 1))
                done = skip = boundary = position
    _paragraph(blocks, text, done, len(text))
    return blocks


def _line_end(text: str, start: int) -> int:
    end = text.find("\n", start)
    return len(text) if end < 0 else end


def _line_start(text: str, position: int) -> int:
    return text.rfind("\n", 0, max(position, 0)) + 1 if position > 0 else 0


def _cells(line: str) -> list[str]:
    """A pipe-table line's cells: split at unescaped ``|``, the outer pipes dropped."""
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    return [cell.strip().replace("\\|", "|") for cell in _PIPE.split(line)]


def _paragraph(blocks: list[Block], text: str, start: int, end: int) -> int:
    """Add ``text[start:end]`` as a paragraph when it holds any text; return ``end``."""
    if start < end:
        part = text[start:end].strip("\n")
        if part.strip():
            blocks.append(Block(PARAGRAPH, part))
    return end
