"""Short summaries of a document, for reports: extractive (offline) or from a chat model.

Two ways, one shape of answer (a few sentences of plain prose):

* :func:`extractive_summary` — no network, no model download: picks the document's own sentences
  that are most central to it, measured with the embedder that already embedded its chunks
  (the offline hashing embedder or OpenAI's). Sentences come from **sentencex** (Wikimedia's
  sentence segmenter: rule-based, about 300 languages through language fallbacks, no data to
  download, MIT). It was chosen over pysbd (22 languages, unmaintained since 2021), syntok
  (a handful of European languages) and blingfire (English-centred models, native library last
  released in 2021). Its English rules, the default here, also end sentences at CJK full stops
  (``。！？``), so a Japanese or Chinese document is split sensibly without knowing its language.
* :func:`chat_summary` — 2–3 sentences written by a chat model through the official ``openai``
  client (chat completions; any OpenAI-compatible server via ``base_url``). Failures become a
  :class:`SummaryError` whose ``transient`` flag tells the caller whether a later retry may help.

Both are pure functions of their arguments: the caller (the report job) decides which one to use
and records ``summary_method`` (``"openai:<model>"`` or ``"extractive"``).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Callable

import numpy as np

from webapp.core.embeddings import api_message

#: Sentences shorter than this (characters, after whitespace is tidied) are fragments: headings,
#: list items, captions. Shorter sentences are also skipped unless they have at least
#: ``MIN_SENTENCE_WORDS`` words or are mostly CJK (which has no spaces between words).
MIN_SENTENCE_CHARS = 20
MIN_SENTENCE_WORDS = 4
#: Longer "sentences" are usually tables, run-together lists or text without punctuation.
MAX_SENTENCE_CHARS = 300
#: At most this many candidate sentences are embedded (evenly spread over the document), which
#: bounds the cost of one summary: one embeddings request with OpenAI (≤ 300 characters each,
#: so ≤ 300,000 tokens), ≈ 0.1 s of CPU with the hashing embedder.
MAX_CANDIDATES = 1000
#: Characters of code, paths and markup; a sentence with more than ``MAX_CODE_CHARS`` of them
#: is a command line, a file path or a formula rather than prose.
CODE_CHARS = frozenset("\\{}$<>=_|~^*#@`")
MAX_CODE_CHARS = 2
#: A candidate this similar (cosine) to a sentence already picked says the same thing: skipped.
NEAR_DUPLICATE_SIMILARITY = 0.9
#: Share of letters among a candidate's non-space characters below which it is code, numbers
#: or a table row rather than prose.
MIN_LETTER_SHARE = 0.75

_CJK = r"\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
_SPACE_BETWEEN_CJK = re.compile(rf"(?<=[{_CJK}]) (?=[{_CJK}])")
_CJK_CHAR = re.compile(rf"[{_CJK}]")
# A sentence ends with terminal punctuation, possibly followed by closing quotes or brackets.
_SENTENCE_END = re.compile(r"[.!?。．｡！？…‼⁇⁈⁉؟।॥][\"'”’»›)\]）」』】]*$")
# ... and starts with a letter that is not lower case (a lower-case start is the tail of a
# sentence cut by a page or column break), possibly after opening quotes or brackets.
_SENTENCE_START = re.compile(r"^[\"'“‘«‹(\[（「『【]*[^\W\d_]")
# Full stops after which a following sentence needs no space (Chinese and Japanese prose).
_CJK_STOP = re.compile(r"[。．｡！？」』）]$")


class SummaryError(Exception):
    """The chat model could not write a summary; ``str(exc)`` is a sentence for people.

    Attributes:
        transient: True when the same request may succeed later (rate limit, server error,
            timeout, connection failure), False when it will not without a change (invalid key,
            unknown model, a rejected request).
    """

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


# --- extractive ----------------------------------------------------------------------------------


def extractive_summary(
    chunk_texts: list[str],
    chunk_vectors: np.ndarray,
    embed: Callable[[list[str]], np.ndarray],
    max_sentences: int = 3,
    max_chars: int = 600,
    *,
    language: str = "en",
) -> str:
    """The document's most central sentences, in document order: a summary without a language model.

    The document's centre is the mean of its chunk vectors; each candidate sentence is embedded
    with the same embedder and scored by its cosine similarity to that centre. The best-scoring
    sentences are taken while they fit ``max_sentences`` and ``max_chars`` (a near-duplicate of a
    sentence already taken is skipped) and returned in the order they appear in the document.

    Candidates are whole sentences of prose: at least ``MIN_SENTENCE_CHARS`` characters (and
    ``MIN_SENTENCE_WORDS`` words, unless mostly CJK), at most ``MAX_SENTENCE_CHARS``, starting
    with a letter that is not lower case, ending with terminal punctuation, mostly letters
    (``MIN_LETTER_SHARE``) and with at most ``MAX_CODE_CHARS`` characters of code or markup.
    Overlapping chunks repeat text: a sentence seen earlier in the document, or a part of one
    of the previous chunk's sentences, is not a candidate again. Whitespace inside a sentence
    (line breaks of the source) is collapsed to single spaces, and removed between CJK
    characters. When no sentence passes these filters, any sentence that fits is used; when none
    fits, the document's first sentence is shortened to ``max_chars`` with an ellipsis.

    With the offline hashing embedder "central" means lexically central: the sentences that
    share the most words and character n-grams with the whole document.

    Args:
        chunk_texts: the document's chunks in document order (they may overlap).
        chunk_vectors: their embeddings, shape (len(chunk_texts), d), rows L2-normalised.
        embed: the embedder that made ``chunk_vectors`` (e.g. ``HashingEmbedder().embed``):
            takes a list of texts, returns an array of shape (len(texts), d). It is called once,
            with at most ``MAX_CANDIDATES`` sentences.
        max_sentences: most sentences in the summary, ≥ 1.
        max_chars: most characters in the summary (sentences joined by single spaces), ≥ 1.
        language: ISO 639 code for the sentence rules (sentencex falls back through related
            languages to English; the English rules also split CJK text at ``。！？``).

    Returns:
        The summary, or ``""`` when the chunks hold no text.

    Raises:
        ValueError: ``max_sentences`` or ``max_chars`` below 1, or ``chunk_vectors`` does not
            have one row per chunk, or ``embed`` returns vectors of another dimension.
        Whatever ``embed`` raises (e.g. ``EmbeddingError``).
    """
    if max_sentences < 1 or max_chars < 1:
        raise ValueError("max_sentences and max_chars must be at least 1")
    vectors = np.asarray(chunk_vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(chunk_texts):
        raise ValueError(
            f"chunk_vectors has shape {vectors.shape}; expected one row per chunk ({len(chunk_texts)})"
        )
    sentences = _document_sentences(chunk_texts, language)
    if not sentences:
        return ""

    longest = min(MAX_SENTENCE_CHARS, max_chars)
    candidates = [s for s in sentences if _is_prose(s, longest)]
    if not candidates:
        candidates = [s for s in sentences if len(s) <= max_chars]
    if not candidates:
        return _shorten(sentences[0], max_chars)
    if len(candidates) > MAX_CANDIDATES:
        keep = np.linspace(0, len(candidates) - 1, MAX_CANDIDATES).round().astype(int)
        candidates = [candidates[i] for i in sorted(set(keep.tolist()))]

    centre = vectors.mean(axis=0)
    centre /= np.linalg.norm(centre) or 1.0
    candidate_vectors = _unit_rows(embed(candidates))
    if candidate_vectors.shape != (len(candidates), vectors.shape[1]):
        raise ValueError(
            f"embed returned shape {candidate_vectors.shape} for {len(candidates)} sentences; "
            f"the chunk vectors have {vectors.shape[1]} dimensions"
        )
    scores = candidate_vectors @ centre

    picked: list[int] = []
    length = 0
    for index in np.argsort(-scores, kind="stable").tolist():
        added = len(candidates[index]) + (1 if picked else 0)
        if length + added > max_chars:
            continue
        if picked and float(np.max(candidate_vectors[picked] @ candidate_vectors[index])) > NEAR_DUPLICATE_SIMILARITY:
            continue
        picked.append(index)
        length += added
        if len(picked) == max_sentences:
            break
    return _join([candidates[i] for i in sorted(picked)])


def _document_sentences(chunk_texts: list[str], language: str) -> list[str]:
    """Every sentence of the chunks once, tidied, in document order (overlaps removed)."""
    from sentencex import segment

    sentences: list[str] = []
    seen: set[str] = set()
    previous = ""  # the previous chunk's sentences: an overlap may start or end mid-sentence
    for text in chunk_texts:
        if not text or not text.strip():
            continue
        current = [sentence for sentence in map(_tidy, segment(language, text)) if sentence]
        for sentence in current:
            if sentence not in seen and sentence not in previous:
                sentences.append(sentence)
                seen.add(sentence)
        previous = "\n".join(current)
    return sentences


def _tidy(sentence: str) -> str:
    """Collapse whitespace (line breaks of the source) to single spaces; none between CJK characters.

    U+FFFE, which PDFium's text extraction leaves where a word was hyphenated at a line end
    ("compar\ufffeing"), is dropped, joining the word again.
    """
    return _SPACE_BETWEEN_CJK.sub("", " ".join(sentence.replace("\ufffe", "").split()))


def _is_prose(sentence: str, longest: int) -> bool:
    if not MIN_SENTENCE_CHARS <= len(sentence) <= longest or not _SENTENCE_END.search(sentence):
        return False
    start = _SENTENCE_START.match(sentence)
    if not start or start.group()[-1].islower():
        return False
    mostly_cjk = len(_CJK_CHAR.findall(sentence)) * 2 >= len(sentence)
    if not mostly_cjk and len(sentence.split()) < MIN_SENTENCE_WORDS:
        return False
    if sum(1 for ch in sentence if ch in CODE_CHARS) > MAX_CODE_CHARS:
        return False
    visible = [ch for ch in sentence if not ch.isspace()]
    letters = sum(1 for ch in visible if ch.isalpha() or unicodedata.category(ch) == "Mn")
    return letters >= MIN_LETTER_SHARE * len(visible)


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.ndim != 2:
        return matrix
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return matrix / norms


def _join(sentences: list[str]) -> str:
    """Sentences joined by a space, or by nothing after a CJK full stop (as CJK prose is written)."""
    text = ""
    for sentence in sentences:
        if text and not _CJK_STOP.search(text):
            text += " "
        text += sentence
    return text


def _shorten(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, at a space when one is near, with "…"."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space >= limit // 2:
        cut = cut[:space]
    return cut.rstrip() + "…"


# --- chat model ----------------------------------------------------------------------------------

SYSTEM_PROMPT = (
    "You summarise documents. Reply with a summary of the document the user sends in 2 to 3 "
    "sentences of plain prose, written in the document's own language. No title, no preamble, "
    "no lists, no Markdown."
)
TRUNCATION_NOTE = "\n\n[The document continues; only its beginning is shown.]"


def chat_summary(
    text: str,
    *,
    api_key: str,
    base_url: str | None,
    model: str,
    timeout: float,
    max_retries: int,
    max_input_chars: int = 12000,
) -> str:
    """A 2–3 sentence summary of ``text`` written by a chat model, in the document's language.

    One chat completions request (``openai.OpenAI(...).chat.completions.create``) with a short
    system prompt and the text as the user message. Only the first ``max_input_chars`` characters
    are sent (cut at a space when one is near, with a note that the document continues): 12,000
    characters are at most ≈ 12,000 tokens, far below any current model's context, and the
    beginning of a document usually says what it is about. No sampling or token-limit parameters
    are sent, so reasoning models and OpenAI-compatible servers accept the request as it is.

    Args:
        text: the document's extracted text.
        api_key: the API key (sent as ``Authorization: Bearer …``).
        base_url: an OpenAI-compatible server, e.g. ``http://localhost:8080/v1``; ``None`` for OpenAI.
        model: the chat model, e.g. ``gpt-4o-mini``.
        timeout: seconds per request.
        max_retries: retries of 408/409/429/5xx answers and connection failures, with the
            client's exponential backoff (0: a single attempt).
        max_input_chars: most characters of ``text`` sent, ≥ 1.

    Returns:
        The summary, whitespace-trimmed; ``""`` for a text that is empty or only whitespace
        (nothing is sent then).

    Raises:
        SummaryError: the service refused, failed or could not be reached after the retries, or
            answered without text. ``transient`` is True for 408/409/429/5xx answers, timeouts
            and connection failures.
        ValueError: ``max_input_chars`` below 1.
    """
    import openai

    if max_input_chars < 1:
        raise ValueError("max_input_chars must be at least 1")
    text = text.strip()
    if not text:
        return ""
    content = text if len(text) <= max_input_chars else _shorten(text, max_input_chars) + TRUNCATION_NOTE

    client = openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries)
    try:
        completion = client.chat.completions.create(
            model=model,
            messages=[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}],
        )
    except openai.APIStatusError as exc:
        status = exc.status_code
        raise SummaryError(
            f"the summary service answered HTTP {status}: {api_message(exc)}",
            transient=status in (408, 409, 429) or status >= 500,
        ) from exc
    except openai.APITimeoutError as exc:
        raise SummaryError(
            f"the summary service at {client.base_url} did not answer within {timeout:g} s", transient=True
        ) from exc
    except openai.APIConnectionError as exc:
        raise SummaryError(
            f"the summary service at {client.base_url} could not be reached: {exc}", transient=True
        ) from exc
    except openai.OpenAIError as exc:  # e.g. an answer that is not a chat completion
        raise SummaryError(f"the summary service gave an unusable answer: {exc}", transient=False) from exc
    finally:
        client.close()

    choices = completion.choices or []
    summary = (choices[0].message.content or "").strip() if choices else ""
    if not summary:
        reason = choices[0].finish_reason if choices else "no choices"
        raise SummaryError(f"the summary service returned no text (finish reason: {reason})", transient=False)
    return summary

