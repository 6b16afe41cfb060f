"""Embeddings: the vectors that make chunks searchable.

Three embedders share one interface (:class:`Embedder`), chosen by ``EMBEDDER``
(:func:`embedder_kind`):

* :class:`WordLlamaEmbedder` (``wordllama``) — the offline default: WordLlama's static token
  embeddings (256 dimensions, weights and tokenizer inside the ``wordllama`` wheel), mean-pooled.
  Semantic, CPU only, never downloads. Best of the offline embedders on ``bench/retrieval.py``.
* :class:`HashingEmbedder` (``hashing``) — feature hashing of word and character n-grams
  (scikit-learn's ``HashingVectorizer``). Lexical, no model at all, deterministic.
* :class:`OpenAIEmbedder` (``openai``) — the official ``openai`` client; any OpenAI-compatible
  server via ``OPENAI_BASE_URL``. Chosen when ``OPENAI_API_KEY`` is set and ``EMBEDDER`` is not.

Every vector is float32 and L2-normalised, so cosine similarity is a dot product. Each chunk
records :attr:`Embedder.name`; a search only compares vectors of the same name (one vector space).
"""

from __future__ import annotations

import base64
import logging
import threading
from collections import Counter
from functools import lru_cache
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import numpy as np

from webapp.core.metrics import counted_embed

# OpenAI embeddings API limits (platform.openai.com/docs/api-reference/embeddings/create):
OPENAI_MAX_INPUTS_PER_REQUEST = 2048
OPENAI_MAX_TOKENS_PER_REQUEST = 300_000
OPENAI_MAX_TOKENS_PER_INPUT = 8192
#: Requests one :meth:`OpenAIEmbedder.embed` call keeps in flight at once (per job), when its texts
#: need several: the waits overlap instead of adding up. The shared budgets
#: (``OPENAI_REQUESTS_PER_MINUTE``, ``OPENAI_TOKENS_PER_MINUTE``) are taken per request, so the
#: sum over every job and machine stays within them.
MAX_REQUESTS_IN_FLIGHT = 4


class EmbeddingError(Exception):
    """The embedding service refused or failed; ``str(exc)`` is a human sentence.

    Attributes:
        transient: ``True`` for failures that may pass (HTTP 408/409/429/5xx, timeouts, an
            unreachable service), after the client's own retries; ``False`` for a refusal
            that will repeat (401, 400, a malformed answer).
        retry_after: seconds until Docket's own rate limit frees budget, when that is why the
            request was not sent (:mod:`webapp.core.workflows.rate_limits`); ``None`` otherwise.
    """

    def __init__(self, message: str, transient: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.retry_after = retry_after


class Embedder(Protocol):
    name: str  # identifies the vector space, e.g. "openai:text-embedding-3-small"

    def embed(self, texts: Sequence[str], on_batch: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Embed ``texts``; return a float32 array of shape (len(texts), dimensions), rows L2-normalised.

        ``on_batch(done, total)`` is called after each request with counts of texts.
        Raises :class:`EmbeddingError` when the service fails after its retries.
        """


def token_upper_bound(text: str) -> int:
    """An upper bound of the tokens OpenAI counts for ``text``: its UTF-8 length in bytes.

    OpenAI's embedding models use byte-level BPE (cl100k_base), where every token covers at
    least one byte. (tiktoken would give the exact count but downloads its tables on first use.)
    """
    return len(text.encode("utf-8"))


def batches(
    texts: Sequence[str],
    max_inputs: int = OPENAI_MAX_INPUTS_PER_REQUEST,
    max_tokens: int = OPENAI_MAX_TOKENS_PER_REQUEST,
) -> Iterator[tuple[int, int]]:
    """Split ``texts`` into request-sized runs; yield ``(start, stop)`` index pairs.

    Each run has at most ``max_inputs`` texts and at most ``max_tokens`` tokens by
    :func:`token_upper_bound` (OpenAI: ≤ 2048 inputs and ≤ 300,000 tokens per request).

    Raises:
        ValueError: one text alone exceeds ``max_tokens`` or OpenAI's 8192-token per-input limit.
    """
    start, tokens = 0, 0
    for index, text in enumerate(texts):
        size = token_upper_bound(text)
        if size > min(max_tokens, OPENAI_MAX_TOKENS_PER_INPUT):
            raise ValueError(f"input {index} may have {size} tokens, over the per-input limit")
        if index > start and (index - start >= max_inputs or tokens + size > max_tokens):
            yield start, index
            start, tokens = index, 0
        tokens += size
    if start < len(texts):
        yield start, len(texts)


def _normalise(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return matrix / norms


class HashingEmbedder:
    """Offline and lexical: hashed word 1–2-grams and character 3–5-grams, 2 × 1024 dimensions.

    Stateless and deterministic (MurmurHash3), so the web process and every worker produce the
    same vector for the same text. Good for lexical similarity; not a semantic model.
    """

    features_per_analyzer = 1024
    dimensions = 2 * features_per_analyzer
    name = f"hashing-v1:{dimensions}"
    batch_size = 256  # texts per transform: bounds memory (dense float32 rows of 8 KB each)

    def __init__(self) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer

        common = dict(n_features=self.features_per_analyzer, alternate_sign=False)
        self._word = HashingVectorizer(analyzer="word", ngram_range=(1, 2), token_pattern=r"(?u)\b\w+\b",
                                       norm="l2", lowercase=True, **common)
        # Raw counts of one (already lowercased) word's padded character 3-5-grams: see _char_vectors.
        self._char_of_word = HashingVectorizer(analyzer="char_wb", ngram_range=(3, 5), norm=None,
                                               lowercase=False, **common)

    @counted_embed  # embedding calls and errors, by embedder (GET /metrics)
    def embed(self, texts: Sequence[str], on_batch: Callable[[int, int], None] | None = None) -> np.ndarray:
        vectors = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start:start + self.batch_size])
            word = self._word.transform(batch).toarray()
            vectors[start:start + len(batch)] = _normalise(np.hstack([word, self._char_vectors(batch)]))
            if on_batch:
                on_batch(start + len(batch), len(texts))
        return vectors

    def _char_vectors(self, texts: list[str]) -> np.ndarray:
        """The character part of each text's vector, exactly as scikit-learn's
        ``HashingVectorizer(analyzer="char_wb", ngram_range=(3, 5), norm="l2").transform(texts)``
        computes it, for about half the CPU.

        ``char_wb`` takes its n-grams from each whitespace-separated word of the lowercased text
        on its own, so a text's counts are the sum of its words' counts. Each distinct word of
        the batch is hashed once (by scikit-learn) and the sums are one sparse product; the counts
        are whole numbers, so the vectors are equal bit for bit (``tests/test_units.py``). The
        character n-grams were 1.1 s of the 3.9 s of CPU one copy of the corpus costs.

        Returns:
            A dense float64 array of shape (len(texts), 1024), rows L2-normalised (zero rows stay zero).
        """
        from scipy import sparse
        from sklearn.preprocessing import normalize

        vocabulary: dict[str, int] = {}
        rows: list[int] = []
        columns: list[int] = []
        counts: list[int] = []
        for row, text in enumerate(texts):
            for word, count in Counter(text.lower().split()).items():
                rows.append(row)
                columns.append(vocabulary.setdefault(word, len(vocabulary)))
                counts.append(count)
        if not vocabulary:  # only empty or whitespace texts (scikit-learn cannot hash zero words)
            return np.zeros((len(texts), self.features_per_analyzer))
        words_of_texts = sparse.csr_matrix((counts, (rows, columns)), shape=(len(texts), len(vocabulary)),
                                           dtype=np.float64)
        return normalize(words_of_texts @ self._char_of_word.transform(list(vocabulary))).toarray()


class WordLlamaEmbedder:
    """Offline and semantic: WordLlama's static token embeddings, mean-pooled (the default).

    WordLlama (``wordllama`` on PyPI, MIT) distils the token-embedding table of a large language
    model into 256-dimensional vectors; its wheel holds the weights (``l2_supercat_256``, 16 MB of
    float16) and the tokenizer, so nothing is downloaded. A text's vector is the mean of its
    tokens' vectors, L2-normalised: synonyms and paraphrases land close ("cancel the contract" ↔
    "termination clause"), which hashing n-grams cannot do.

    The model is loaded on the first :meth:`embed` (0.5–0.8 s and +65 MB of RSS, measured: the
    32,000 × 256 table as float32 plus the tokenizer), once per process and never at import. The
    worker embeds its warm-up texts before it forks (``jobs/worker/``), so its processes share
    the loaded table. Loading writes no file and opens no socket: see :func:`_load_wordllama`.
    """

    config_name = "l2_supercat"
    dimensions = 256
    name = f"wordllama:{config_name}-{dimensions}"
    batch_size = 256  # texts per sparse product: bounds memory (a 256 × 32,000 count matrix, sparse)

    def __init__(self) -> None:
        self._model: Any = None
        self._lock = threading.Lock()

    def _loaded(self) -> Any:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = _load_wordllama(self.config_name, self.dimensions)
        return self._model

    @counted_embed  # embedding calls and errors, by embedder (GET /metrics)
    def embed(self, texts: Sequence[str], on_batch: Callable[[int, int], None] | None = None) -> np.ndarray:
        """See :class:`Embedder`. Empty and whitespace-only texts get a zero vector (as with hashing).

        The pooling is a sparse product (token counts × embedding table) rather than
        ``WordLlamaInference.embed``, which gathers a (texts × longest text's tokens × 256) float32
        array per batch (≈ 100 MB for 256 chunks of 400 tokens): here memory grows with the
        tokens themselves, and a text of any length is embedded whole (never truncated).

        Raises:
            EmbeddingError: the packaged model files are missing (a broken installation).
        """
        from scipy import sparse

        model = self._loaded()
        table = model.embedding  # (vocabulary, 256) float32
        vectors = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start:start + self.batch_size]
            # One text at a time: Tokenizer.encode stays on this thread, while encode_batch starts
            # a Rust thread pool that must not exist before the worker forks.
            ids = [model.tokenizer.encode(text, add_special_tokens=False).ids if text.strip() else []
                   for text in batch]
            rows = np.repeat(np.arange(len(batch)), [len(row) for row in ids])
            columns = np.clip(np.fromiter((i for row in ids for i in row), dtype=np.int64, count=len(rows)),
                              0, table.shape[0] - 1)
            counts = sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, columns)),
                                       shape=(len(batch), table.shape[0]))
            vectors[start:start + len(batch)] = _normalise(counts @ table)  # the mean's direction
            if on_batch:
                on_batch(start + len(batch), len(texts))
        return vectors


def _load_wordllama(config_name: str, dimensions: int) -> Any:
    """Load the WordLlama model packaged in the ``wordllama`` wheel, without the network.

    ``WordLlama.load`` looks for the packaged weights in ``wordllama/weights/`` (found) but for
    the tokenizer in ``wordllama/tokenizer/`` while the wheel has it in ``wordllama/tokenizers/``;
    it then tries ``<cache_dir>/tokenizers/``. With ``cache_dir`` set to the package's own folder
    that second place is the packaged file, so nothing is copied or written; and
    ``disable_download=True`` turns any miss into ``FileNotFoundError`` instead of an HTTP request
    to Hugging Face.

    Returns:
        A ``wordllama.WordLlamaInference`` (its tokenizer truncates nothing; padding is set to the
        longest text of a batch, which leaves a single ``encode`` unpadded).

    Raises:
        EmbeddingError: (permanent) the packaged files are not there.
    """
    from pathlib import Path

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    import wordllama  # its __init__ calls logging.basicConfig(level=INFO): undone below

    root.handlers[:] = handlers
    root.setLevel(level)
    package = Path(wordllama.__file__).parent
    try:
        model = wordllama.WordLlama.load(config_name, cache_dir=package, dim=dimensions, disable_download=True)
    except FileNotFoundError as exc:
        raise EmbeddingError(f"the WordLlama model packaged with wordllama {wordllama.__version__} "
                             f"was not found ({exc}); reinstall requirements.txt or set EMBEDDER=hashing") from exc
    return model


class OpenAIEmbedder:
    """Embeddings from the OpenAI API (or any OpenAI-compatible server at ``base_url``).

    The client retries rate limits and 5xx answers itself (``max_retries``, exponential backoff).
    ``batch_size`` caps the inputs per request below OpenAI's 2048 for servers that take fewer.

    ``rate_limits``: the settings of the budgets shared by every process
    (:func:`rate_limit_settings`; ``None``: unlimited). Each request first takes 1 unit of
    ``openai.requests`` and its inputs' :func:`token_upper_bound` of ``openai.tokens``
    (:func:`webapp.core.workflows.rate_limits.acquire_all`), and requests are cut to fit the tokens budget.
    A job's first request waits at most ``RATE_LIMIT_MAX_WAIT`` seconds (then the job is
    rescheduled: nothing is lost); once the job has made requests
    (:func:`webapp.core.workflows.rate_limits.spent_in_run`) it waits up to one window (``OPENAI_RATE_WINDOW``,
    60 s) if that is longer, since rescheduling then would throw away the requests already made
    — and a document that needs more than one window's budget would be rescheduled for ever.
    """

    def __init__(self, api_key: str, model: str, base_url: str | None = None, timeout: float = 60,
                 max_retries: int = 3, batch_size: int = OPENAI_MAX_INPUTS_PER_REQUEST,
                 rate_limits: Mapping[str, Any] | None = None) -> None:
        import openai

        self.model = model
        self.name = f"openai:{model}"
        self.batch_size = batch_size
        self.rate_limits = dict(rate_limits) if rate_limits else None
        # The request being sent by this thread: {"texts", "sent"} (a retry takes budget too).
        self._sending = threading.local()
        http_client = (openai.DefaultHttpxClient(event_hooks={"request": [self._before_send]})
                       if self.rate_limits else None)
        self._client = openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries,
                                     http_client=http_client)

    def _before_send(self, request: Any) -> None:
        """httpx's hook before every HTTP attempt: a retry of the ``openai`` client (after a 429,
        a 5xx or a timeout) is a request the API counts too, so it takes the budget again; the
        first attempt's units were taken by :meth:`embed` (which can cut a request to the budget).

        Raises:
            RateLimited: see :meth:`_take_budget` (a ``BaseException``: the client's retry loop,
                which catches ``Exception``, lets it through).
        """
        sending = getattr(self._sending, "request", None)
        if sending is None:
            return
        if sending["sent"]:
            self._take_budget(sending["texts"], sending["run"])
        sending["sent"] = True

    def _take_budget(self, texts: Sequence[str], run: threading.Event | None = None) -> None:
        """Take this request's units of the shared OpenAI budgets, waiting in place for at most
        ``RATE_LIMIT_MAX_WAIT`` seconds; in a job that already made requests (in this run, or
        in this :meth:`embed` call: ``run`` set), for at most the longer of that and
        ``OPENAI_RATE_WINDOW``. Sets ``run`` once the units are taken.

        Raises:
            RateLimited: the budget stays used up longer (in an RQ job the worker reschedules
                the job, ``jobs/worker/``; elsewhere :meth:`embed` answers an EmbeddingError).
        """
        from rq import get_current_job

        from webapp.core.workflows.rate_limits import SEND_MARGIN, acquire_all, spent_in_run

        settings = self.rate_limits or {}
        max_wait = float(settings.get("RATE_LIMIT_MAX_WAIT", 5))
        if get_current_job() is not None and (spent_in_run() or (run is not None and run.is_set())):
            max_wait = max(max_wait, float(settings.get("OPENAI_RATE_WINDOW") or 60) + SEND_MARGIN)
        acquire_all(settings, {"openai.requests": 1,
                               "openai.tokens": sum(token_upper_bound(text) for text in texts)}, max_wait=max_wait)
        if run is not None:
            run.set()

    def load(self) -> None:
        """Load what the client's first request would load (its embeddings resource and the
        modules and response types behind it), without sending a request or opening a socket:
        the worker's warm-up calls it before forking, so each worker process's first document
        does not pay it (≈ 13 ms per process, measured in a forked child)."""
        self._client.embeddings  # noqa: B018 - the client builds its resource on first access

    @counted_embed  # embedding calls and errors, by embedder (GET /metrics)
    def embed(self, texts: Sequence[str], on_batch: Callable[[int, int], None] | None = None) -> np.ndarray:
        """See :class:`Embedder`. Texts are cut into requests at the API's limits (and the tokens
        budget's largest take); when there are several, up to :data:`MAX_REQUESTS_IN_FLIGHT` are
        in flight at once (threads, each request taking its own units of the shared budgets
        first, so the rate limits hold for the sum), and ``on_batch`` is called here, in this
        thread, as each answer arrives (``done`` counts the texts answered so far).

        Raises:
            EmbeddingError: a request failed (the first failure; requests not yet sent are not sent).
            RateLimited: in an RQ job, a request's budget stayed used up (the worker reschedules the job).
        """
        import contextvars
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        from webapp.core.workflows.rate_limits import largest_cost, mark_spent

        max_tokens = OPENAI_MAX_TOKENS_PER_REQUEST
        if self.rate_limits:
            max_tokens = min(max_tokens, largest_cost(self.rate_limits, "openai.tokens") or max_tokens)
        spans = list(batches(texts, max_inputs=self.batch_size, max_tokens=max_tokens))
        run = threading.Event()  # a request of this call took budget
        answers: dict[int, list[np.ndarray]] = {}
        if len(spans) <= 1 or MAX_REQUESTS_IN_FLIGHT <= 1:
            for index, (start, stop) in enumerate(spans):
                answers[index] = self._request(texts, start, stop, run)
                if on_batch:
                    on_batch(stop, len(texts))
        else:
            # Each request runs in a copy of this thread's context: RQ's current job and the
            # run's spent budget (contextvars) are seen there as here.
            pool = ThreadPoolExecutor(min(MAX_REQUESTS_IN_FLIGHT, len(spans)), thread_name_prefix="embed")
            try:
                pending = {pool.submit(contextvars.copy_context().run, self._request, texts, start, stop, run): index
                           for index, (start, stop) in enumerate(spans)}
                done_texts = 0
                while pending:
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        index = pending.pop(future)
                        answers[index] = future.result()  # the first failure is raised here
                        done_texts += spans[index][1] - spans[index][0]
                        if on_batch:
                            on_batch(done_texts, len(texts))
            finally:
                # Also when interrupted here (a stop, the time limit): requests not yet sent are
                # dropped, and the ones in flight end in their threads without being waited for.
                pool.shutdown(wait=False, cancel_futures=True)
        if run.is_set():
            mark_spent()  # this run made requests: later ones may wait a window (spent_in_run)
        rows = [row for index in range(len(spans)) for row in answers[index]]
        if not rows:
            return np.zeros((0, 0), dtype=np.float32)
        if len({row.shape for row in rows}) != 1:
            raise EmbeddingError("the embedding service returned vectors of different lengths")
        return _normalise(np.stack(rows))

    def _request(self, texts: Sequence[str], start: int, stop: int, run: threading.Event) -> list[np.ndarray]:
        """One request: the vectors of ``texts[start:stop]``, in order, as float32 rows.

        Raises:
            EmbeddingError: the service refused or failed (after the client's retries), or
                answered the wrong number of vectors; a rate limit used up outside an RQ job.
            RateLimited: in an RQ job, the budget stayed used up.
        """
        import openai
        from rq import get_current_job

        from webapp.core.protocol.job_errors import RateLimited

        try:
            if self.rate_limits:
                try:
                    self._take_budget(texts[start:stop], run)
                except RateLimited:
                    if get_current_job() is None or not run.is_set():
                        raise
                    # Another request of this call took its units while this one waited with
                    # the short wait of a run that had spent nothing: now it waits as one that has.
                    self._take_budget(texts[start:stop], run)
                self._sending.request = {"texts": texts[start:stop], "sent": False, "run": run}
            # base64: the client hands the string through and numpy decodes it at once; with
            # "float" the client builds a Python float per dimension through its models
            # (≈1.3 s of CPU for 644 inputs of 64 dimensions, measured).
            response = self._client.embeddings.create(
                model=self.model, input=list(texts[start:stop]), encoding_format="base64"
            )
        except RateLimited as exc:
            if get_current_job() is not None:
                raise  # the worker reschedules the job
            # Outside a job (a search query, a script) nothing can reschedule it: a transient
            # error, answered as for a 429 (the API: 429 rate_limited with Retry-After).
            raise EmbeddingError(f"the embedding service's rate limit is used up: {exc.message}",
                                 transient=True, retry_after=exc.retry_after) from None
        except openai.APIStatusError as exc:
            raise EmbeddingError(
                f"the embedding service answered HTTP {exc.status_code}: {api_message(exc)}",
                transient=exc.status_code in (408, 409, 429) or exc.status_code >= 500,
            ) from exc
        except openai.APIConnectionError as exc:  # also APITimeoutError
            raise EmbeddingError(
                f"the embedding service at {self._client.base_url} could not be reached: {exc}",
                transient=True,
            ) from exc
        finally:
            self._sending.request = None
        data = sorted(response.data, key=lambda item: item.index)
        if len(data) != stop - start:
            raise EmbeddingError(
                f"the embedding service returned {len(data)} vectors for {stop - start} inputs"
            )
        return [_decode_vector(item.embedding) for item in data]


def _decode_vector(embedding: str | list[float]) -> np.ndarray:
    """One embedding as float32: OpenAI's base64 of little-endian float32, or the list of floats
    a compatible server that ignores ``encoding_format`` sends instead."""
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4")
    return np.asarray(embedding, dtype=np.float32)


def api_message(exc: Any) -> str:
    """The service's own error message from an ``openai.APIStatusError`` (OpenAI's ``error.message``)."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    return str(getattr(exc, "message", exc))


EMBEDDERS = ("wordllama", "hashing", "openai")  # the values of EMBEDDER
DEFAULT_EMBEDDER = "wordllama"  # without EMBEDDER and OPENAI_API_KEY: see bench/results/retrieval.md


def embedder_kind(config: Mapping[str, Any]) -> str:
    """Which embedder the configuration selects: ``EMBEDDER`` when set; else ``openai`` when
    ``OPENAI_API_KEY`` is set (as before ``EMBEDDER`` existed); else :data:`DEFAULT_EMBEDDER`.

    Raises:
        ValueError: ``EMBEDDER`` is not one of :data:`EMBEDDERS`, or is ``openai`` without
            ``OPENAI_API_KEY``.
    """
    kind = (config.get("EMBEDDER") or "").strip().lower()
    if not kind:
        return "openai" if config.get("OPENAI_API_KEY") else DEFAULT_EMBEDDER
    if kind not in EMBEDDERS:
        raise ValueError(f"EMBEDDER must be one of {', '.join(EMBEDDERS)}, not {config.get('EMBEDDER')!r}")
    if kind == "openai" and not config.get("OPENAI_API_KEY"):
        raise ValueError("EMBEDDER=openai needs OPENAI_API_KEY")
    return kind


def embedder_name(config: Mapping[str, Any]) -> str:
    """The vector-space name the configuration selects, without building the embedder (or
    loading a model): ``wordllama:l2_supercat-256``, ``hashing-v1:2048`` or ``openai:<model>``.

    Raises:
        ValueError: see :func:`embedder_kind`.
    """
    kind = embedder_kind(config)
    if kind == "openai":
        return f"openai:{config['EMBEDDING_MODEL']}"
    return WordLlamaEmbedder.name if kind == "wordllama" else HashingEmbedder.name


def embedder_from_config(config: Mapping[str, Any]) -> Embedder:
    """The embedder the configuration selects (:func:`embedder_kind`).

    Built once per process for the same settings and reused: the worker builds it before it
    forks its worker processes (see ``jobs/worker/``), so a job never pays for it. No
    embedder holds a connection, a file or a thread when built (the OpenAI client connects on
    its first request, in the worker process; WordLlama loads its table on the first
    :meth:`~WordLlamaEmbedder.embed`, which the worker's warm-up calls before forking), so the
    shared instance is safe to fork.

    Raises:
        ValueError: see :func:`embedder_kind`.
    """
    kind = embedder_kind(config)
    if kind != "openai":
        return _build_embedder(kind, None, "", None, 0, 0, 0)
    return _build_embedder(
        kind,
        config.get("OPENAI_API_KEY"),
        config["EMBEDDING_MODEL"],
        config.get("OPENAI_BASE_URL"),
        config.get("OPENAI_TIMEOUT", 60),
        config.get("OPENAI_MAX_RETRIES", 3),
        config.get("EMBEDDING_BATCH_SIZE", OPENAI_MAX_INPUTS_PER_REQUEST),
        rate_limit_settings(config),
    )


class SpaceUnavailable(ValueError):
    """No embedder can be built here for a vector space (:func:`embedder_for_space`); ``str(exc)``
    says why in a sentence."""


def embedder_for_space(config: Mapping[str, Any], space: str) -> Embedder:
    """The embedder that makes the vectors of vector space ``space`` (a ``Chunk.embedding_model``),
    whatever ``EMBEDDER`` selects: a search ranks each space's chunks against the query embedded
    by that space's own model, so documents not yet re-embedded after an ``EMBEDDER`` change stay
    findable.

    Args:
        config: the app's configuration; an OpenAI space takes ``OPENAI_API_KEY``,
            ``OPENAI_BASE_URL``, the timeouts, batch size and rate limits from it, and its model
            from ``space`` (``openai:<model>``).
        space: the vector space's name, e.g. ``wordllama:l2_supercat-256``, ``hashing-v1:2048``,
            ``openai:text-embedding-3-small``.

    Returns:
        The embedder (built once per process for the same settings, as :func:`embedder_from_config`);
        its ``name`` is ``space``.

    Raises:
        SpaceUnavailable: an OpenAI space without ``OPENAI_API_KEY``, or a space no embedder of
            this version makes (an older hashing or WordLlama version, an unknown name).
    """
    if space == WordLlamaEmbedder.name:
        return _build_embedder("wordllama", None, "", None, 0, 0, 0)
    if space == HashingEmbedder.name:
        return _build_embedder("hashing", None, "", None, 0, 0, 0)
    if space.startswith("openai:") and len(space) > len("openai:"):
        if not config.get("OPENAI_API_KEY"):
            raise SpaceUnavailable(f"vector space {space} needs OPENAI_API_KEY to embed a query")
        return _build_embedder(
            "openai",
            config.get("OPENAI_API_KEY"),
            space[len("openai:"):],
            config.get("OPENAI_BASE_URL"),
            config.get("OPENAI_TIMEOUT", 60),
            config.get("OPENAI_MAX_RETRIES", 3),
            config.get("EMBEDDING_BATCH_SIZE", OPENAI_MAX_INPUTS_PER_REQUEST),
            rate_limit_settings(config),
        )
    raise SpaceUnavailable(f"no embedder of this version of Docket makes vector space {space}")


#: What the OpenAI budgets need from the configuration (webapp/core/workflows/rate_limits.py).
RATE_LIMIT_SETTINGS = ("REDIS_URL", "REDIS_TLS_VERIFY", "OPENAI_REQUESTS_PER_MINUTE", "OPENAI_TOKENS_PER_MINUTE",
                       "OPENAI_RATE_WINDOW", "RATE_LIMIT_MAX_WAIT")


def rate_limit_settings(config: Mapping[str, Any]) -> tuple[tuple[str, Any], ...] | None:
    """The settings of the shared OpenAI budgets as ``((name, value), …)`` (hashable: part of the
    embedder's cache key), or ``None`` when neither ``OPENAI_REQUESTS_PER_MINUTE`` nor
    ``OPENAI_TOKENS_PER_MINUTE`` is set (then no request touches Redis)."""
    if not (config.get("OPENAI_REQUESTS_PER_MINUTE") or config.get("OPENAI_TOKENS_PER_MINUTE")):
        return None
    return tuple((name, config.get(name)) for name in RATE_LIMIT_SETTINGS)


@lru_cache(maxsize=8)
def _build_embedder(
    kind: str, api_key: str | None, model: str, base_url: str | None, timeout: float, max_retries: int,
    batch_size: int, rate_limits: tuple[tuple[str, Any], ...] | None = None,
) -> Embedder:
    if kind == "openai":
        return OpenAIEmbedder(api_key=api_key, model=model, base_url=base_url, timeout=timeout,
                              max_retries=max_retries, batch_size=batch_size, rate_limits=dict(rate_limits or ()))
    if kind == "wordllama":
        return WordLlamaEmbedder()
    return HashingEmbedder()


def to_blob(vector: np.ndarray) -> bytes:
    """A vector as little-endian float32 bytes (4 bytes per dimension)."""
    return np.asarray(vector, dtype="<f4").tobytes()


def from_blobs(blobs: Sequence[bytes], dimensions: int) -> np.ndarray:
    """Stack float32 blobs into a (len(blobs), dimensions) array."""
    if not blobs:
        return np.zeros((0, dimensions), dtype=np.float32)
    return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), dimensions)
