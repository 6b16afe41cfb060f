"""A fetched web page: its main content, without navigation, headers, footers and side bars.

trafilatura (2.3, Apache-2.0; the extractor the web-corpus and RAG crawlers use: it scored best of
the open extractors in Barbaresi's 2021 ACL demo paper and in ScrapingHub's article-extraction
benchmark) finds the page's main content and writes it as Markdown — headings ``#``, tables as
pipe rows, lists — which :mod:`jobs.readers.markdown` turns into Docket's blocks, so a web page's
chunks carry heading paths and whole table rows like an uploaded document's.

Why only for fetched pages: an uploaded HTML file is a document someone chose to hand over (an
export, a saved report) where every part is content — trafilatura would drop a table of contents
or a short section it takes for boilerplate — so uploads keep :mod:`jobs.readers.html`, which reads
everything a reader of the page sees. A page fetched from a site carries the site's menus, cookie
banners and footers on every page, which would repeat in every document's chunks and crowd search
results.
"""

from __future__ import annotations

from jobs.readers.base import CharBudget, Extraction


def read_web_page(data: bytes, budget: CharBudget) -> Extraction:
    """The main content of the HTML page ``data`` (trafilatura, Markdown output with tables), read
    as Markdown; the whole page by :func:`jobs.readers.html.read_html` when trafilatura finds no
    main content.

    Raises:
        DocumentTooLarge: ``too_many_chars`` as soon as the text passes ``budget``'s limit.
        DocumentError: ``damaged_file`` when the page cannot be parsed at all, ``no_text`` when
            it holds only whitespace.
    """
    import trafilatura

    from jobs.readers.html import read_html
    from jobs.readers.plain import read_text

    main = trafilatura.extract(data, output_format="markdown", include_tables=True, include_links=False,
                               include_images=False, include_comments=False, favor_recall=True,
                               with_metadata=False, deduplicate=False)
    if not (main and main.strip()):  # no main content found (a page of links, an app shell): all of it
        return read_html(data, budget)
    return read_text(main.encode("utf-8"), budget, markdown=True)
