"""Summaries: extractive ones of real corpus text, and chat ones through the real ``openai`` client.

The extractive summaries run on documents from ``../shared/corpus`` (read there, never copied),
chunked by semantic-text-splitter as the pipeline does and embedded by Docket's own offline
:class:`HashingEmbedder`. The chat summaries go to :class:`LocalChatServer`, a Werkzeug WSGI app
on 127.0.0.1 in a thread of the pytest process that answers ``POST /v1/chat/completions`` the way
OpenAI does (and fails the way OpenAI fails when told to).
"""

from __future__ import annotations

import re
import time
from typing import Any

import numpy as np
import pypdfium2 as pdfium
import pytest
from semantic_text_splitter import TextSplitter
from sentencex import segment

from jobs.summaries import SYSTEM_PROMPT, SummaryError, chat_summary, extractive_summary
from tests.conftest import CORPUS
from tests.local_services import API_KEY, MODEL, SUMMARY, LocalChatServer
from webapp.local.embedded_redis import free_port
from webapp.core.embeddings import HashingEmbedder



@pytest.fixture(scope="module")
def embedder() -> HashingEmbedder:
    return HashingEmbedder()


def chunked(text: str, size: int = 1500, overlap: int = 150) -> list[str]:
    """The document's chunks as the pipeline makes them (CHUNK_SIZE 1500, CHUNK_OVERLAP 150 by default)."""
    return TextSplitter(size, overlap=overlap, trim=True).chunks(text)


def pdf_text(name: str) -> str:
    document = pdfium.PdfDocument(CORPUS / name)
    return "\n\n".join(page.get_textpage().get_text_range() for page in document)


def squeeze(text: str, cjk: bool) -> str:
    """Whitespace removed (CJK) or collapsed to single spaces; PDFium's U+FFFE hyphen marks dropped."""
    return re.sub(r"\s+", "" if cjk else " ", text.replace("\ufffe", "")).strip()


def assert_whole_sentences_in_order(summary: str, text: str, *, cjk: bool = False) -> list[str]:
    """``summary`` is a run of the document's own sentences (as sentencex splits the whole text),
    each whole, in document order, joined by single spaces (none in CJK); returns them."""
    units = [unit for unit in (squeeze(s, cjk) for s in segment("en", text)) if unit]
    rest, start, picked = squeeze(summary, cjk), 0, []
    while rest:
        match = next((i for i in range(start, len(units)) if rest.startswith(units[i])), None)
        assert match is not None, f"not a whole sentence of the document after sentence {start}: {rest[:80]!r}"
        picked.append(units[match])
        rest = rest[len(units[match]):].lstrip()
        start = match + 1
    for sentence in picked:
        assert re.search(r"[.!?。．！？][\"'”’)）」』]*$", sentence), f"not a whole sentence: {sentence!r}"
    return picked


# --- extractive ----------------------------------------------------------------------------------


def test_extractive_summary_of_war_and_peace_is_whole_central_sentences_in_order(embedder):
    text = (CORPUS / "war-and-peace-ch1.txt").read_text(encoding="utf-8")
    chunks = chunked(text, 800, 100)
    assert len(chunks) >= 3
    vectors = embedder.embed(chunks)

    summary = extractive_summary(chunks, vectors, embedder.embed)

    assert 0 < len(summary) <= 600
    assert "\n" not in summary and "  " not in summary  # the source's hard line wraps are gone
    sentences = assert_whole_sentences_in_order(summary, text)
    assert 1 <= len(sentences) <= 3
    assert "CHAPTER I" not in summary  # a heading is not a sentence
    # The picked sentences are among the most central of the document's sentences.
    centre = vectors.mean(axis=0)
    centre /= np.linalg.norm(centre)
    candidates = [s for s in (squeeze(s, False) for s in segment("en", text)) if 20 <= len(s) <= 300]
    scores = embedder.embed(candidates) @ centre
    picked = embedder.embed(sentences) @ centre
    assert picked.min() >= np.median(scores)


def test_extractive_summary_respects_max_sentences_and_max_chars(embedder):
    text = (CORPUS / "pypdf-extract-text.md").read_text(encoding="utf-8")
    chunks = chunked(text)
    vectors = embedder.embed(chunks)

    one = extractive_summary(chunks, vectors, embedder.embed, max_sentences=1)
    assert len(assert_whole_sentences_in_order(one, text)) == 1

    for limit in (120, 250, 600):
        summary = extractive_summary(chunks, vectors, embedder.embed, max_sentences=5, max_chars=limit)
        assert 0 < len(summary) <= limit
        assert_whole_sentences_in_order(summary, text)
    # Code blocks and Markdown markup are not prose.
    longer = extractive_summary(chunks, vectors, embedder.embed, max_sentences=5, max_chars=1000)
    assert "```" not in longer and "print(" not in longer


def test_extractive_summary_of_a_japanese_pdf_joins_sentences_without_spaces(embedder):
    text = pdf_text("jlreq-manual-ja.pdf")
    chunks = chunked(text)
    summary = extractive_summary(chunks, embedder.embed(chunks), embedder.embed, max_chars=300)

    assert 0 < len(summary) <= 300
    assert re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", summary)
    sentences = assert_whole_sentences_in_order(summary, text, cjk=True)
    assert len(sentences) >= 2
    assert "． " not in summary  # CJK sentences follow each other without a space


def test_overlapping_chunks_do_not_repeat_a_sentence(embedder):
    text = (CORPUS / "war-and-peace-ch1.txt").read_text(encoding="utf-8")
    chunks = chunked(text, 400, 300)  # heavy overlap: most sentences are in two or three chunks
    summary = extractive_summary(chunks, embedder.embed(chunks), embedder.embed, max_sentences=3)
    sentences = assert_whole_sentences_in_order(summary, text)
    assert len(sentences) == len(set(sentences)) == 3


def test_extractive_summary_of_nothing_is_empty_and_bad_arguments_are_refused(embedder):
    calls = []

    def embed(texts):
        calls.append(texts)
        return embedder.embed(texts)

    assert extractive_summary([], np.zeros((0, embedder.dimensions), np.float32), embed) == ""
    assert extractive_summary(["", "  \n "], np.zeros((2, embedder.dimensions), np.float32), embed) == ""
    assert calls == []  # nothing to embed, nothing embedded
    with pytest.raises(ValueError, match="one row per chunk"):
        extractive_summary(["one chunk"], np.zeros((2, 4), np.float32), embed)
    with pytest.raises(ValueError, match="at least 1"):
        extractive_summary(["Some text here."], embedder.embed(["Some text here."]), embed, max_sentences=0)


def test_text_without_prose_sentences_still_gets_a_summary_within_the_limit(embedder):
    words = "lorem ipsum dolor sit amet consectetur adipiscing elit " * 40  # no sentence end at all
    chunks = [words.strip()]
    summary = extractive_summary(chunks, embedder.embed(chunks), embedder.embed, max_chars=100)
    assert summary.startswith("lorem ipsum") and summary.endswith("…") and len(summary) <= 100


# --- chat ----------------------------------------------------------------------------------------


def summarise(server: LocalChatServer, text: str, **overrides: Any) -> str:
    settings = dict(api_key=API_KEY, base_url=server.url, model=MODEL, timeout=10, max_retries=0)
    return chat_summary(text, **{**settings, **overrides})


def test_chat_summary_sends_the_text_and_returns_the_models_summary(chat_server):
    text = (CORPUS / "war-and-peace-ch1.txt").read_text(encoding="utf-8")
    chat_server.reply = f"  {SUMMARY}\n"

    assert summarise(chat_server, text) == SUMMARY

    [request] = chat_server.requests
    assert request.model == MODEL and request.authorization == f"Bearer {API_KEY}"
    assert [m["role"] for m in request.messages] == ["system", "user"]
    assert request.messages[0]["content"] == SYSTEM_PROMPT
    assert "2 to 3 sentences" in SYSTEM_PROMPT and "language" in SYSTEM_PROMPT
    assert request.messages[1]["content"] == text.strip()


def test_chat_summary_sends_only_the_beginning_of_a_long_text(chat_server):
    text = pdf_text("dpr-paper-two-column.pdf")
    assert len(text) > 20_000
    summarise(chat_server, text, max_input_chars=5000)
    sent = chat_server.requests[0].messages[1]["content"]
    beginning, note = sent.split("\n\n[", 1)
    assert len(beginning) <= 5000 and text.startswith(beginning.removesuffix("…"))
    assert "only its beginning" in note


def test_chat_summary_of_an_empty_text_asks_nobody(chat_server):
    assert summarise(chat_server, " \n ") == ""
    assert chat_server.requests == []


@pytest.mark.parametrize(
    "mode, transient, expected",
    [
        pytest.param("unauthorized", False, ["HTTP 401", "Incorrect API key provided"], id="401"),
        pytest.param("server_error", True, ["HTTP 500", "The server had an error"], id="500"),
        pytest.param("rate_limited", True, ["HTTP 429", "Rate limit reached"], id="429"),
        pytest.param("empty", False, ["returned no text"], id="empty-answer"),
    ],
)
def test_a_failing_chat_service_raises_a_readable_summary_error(chat_server, mode, transient, expected):
    chat_server.mode = mode
    with pytest.raises(SummaryError) as caught:
        summarise(chat_server, "A short document about nothing in particular.", max_retries=0)
    error = caught.value
    assert error.transient is transient
    for text in expected:
        assert text in str(error)
    assert "\n" not in str(error) and "Traceback" not in str(error)
    assert len(chat_server.requests) == 1  # max_retries=0: one attempt


def test_a_transient_error_is_retried_by_the_client_before_it_is_raised(chat_server):
    chat_server.mode = "server_error"
    with pytest.raises(SummaryError) as caught:
        summarise(chat_server, "A short document.", max_retries=1)
    assert caught.value.transient is True
    assert [r.status for r in chat_server.requests] == [500, 500]


def test_an_unreachable_or_slow_service_is_a_transient_error(chat_server):
    with pytest.raises(SummaryError, match="could not be reached") as caught:
        chat_summary("Some text.", api_key=API_KEY, base_url=f"http://127.0.0.1:{free_port()}/v1", model=MODEL,
                     timeout=5, max_retries=0)
    assert caught.value.transient is True

    chat_server.mode, chat_server.delay = "slow", 2.0
    started = time.monotonic()
    with pytest.raises(SummaryError, match="did not answer within 0.5 s") as caught:
        summarise(chat_server, "Some text.", timeout=0.5)
    assert caught.value.transient is True
    assert time.monotonic() - started < 1.9
