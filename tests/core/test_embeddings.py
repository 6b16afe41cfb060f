"""The embedders (webapp/core/embeddings.py): WordLlama offline and semantic, the EMBEDDER setting, the
vector-space names, and the retrieval benchmark (bench/retrieval.py) on a few questions."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import subprocess
import sys

import numpy as np
import pytest

from webapp.core.config import load_config
from webapp.core.embeddings import (DEFAULT_EMBEDDER, HashingEmbedder, OpenAIEmbedder, WordLlamaEmbedder,
                               embedder_from_config, embedder_kind, embedder_name)

from tests.conftest import ROOT

QUERY = "how can the contract be cancelled"
TERMINATION = ("Termination clause. Either party may terminate this Agreement at any time by giving the other "
               "party thirty (30) days' written notice.")
UNRELATED = ("Ducks are waterfowl of the family Anatidae; the females build their nests on the ground near "
             "water and lay up to a dozen eggs.")

# Run in a fresh interpreter: every way out to the network raises, HOME is empty, and the model
# must not be loaded by importing the module or building the embedder, only by the first embed.
OFFLINE_SCRIPT = r"""
import hashlib, socket, sys
def refuse(*args, **kwargs):
    raise OSError(f"network access attempted: {args[1:] or kwargs}")
socket.socket.connect = socket.socket.connect_ex = refuse
socket.create_connection = socket.getaddrinfo = refuse
from webapp.core.embeddings import embedder_from_config
embedder = embedder_from_config({"EMBEDDER": "wordllama", "OPENAI_API_KEY": None, "EMBEDDING_MODEL": "unused"})
assert "wordllama" not in sys.modules, "the model package was imported before the first embed"
vector = embedder.embed([sys.argv[1]])[0]
assert "wordllama" in sys.modules
print(embedder.name, hashlib.sha256(vector.tobytes()).hexdigest())
"""


@pytest.fixture(scope="module")
def wordllama() -> WordLlamaEmbedder:
    return embedder_from_config({"EMBEDDER": "wordllama", "EMBEDDING_MODEL": "unused"})


def test_wordllama_loads_from_its_wheel_without_network_or_writes(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT, TERMINATION], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    name, digest = result.stdout.split()
    assert name == WordLlamaEmbedder.name == "wordllama:l2_supercat-256"
    assert list(tmp_path.iterdir()) == []  # no cache folder, no download under HOME
    # The same text gives the same vector in another process: web and workers share one space.
    here = embedder_from_config({"EMBEDDER": "wordllama", "EMBEDDING_MODEL": "unused"}).embed([TERMINATION])[0]
    assert hashlib.sha256(here.tobytes()).hexdigest() == digest


def test_wordllama_vectors_are_normalised_float32_of_256_dimensions(wordllama):
    vectors = wordllama.embed([QUERY, TERMINATION, UNRELATED])
    assert vectors.shape == (3, 256) == (3, WordLlamaEmbedder.dimensions)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_a_cancelled_contract_is_closer_to_a_termination_clause_than_to_unrelated_text(wordllama):
    query, termination, unrelated = wordllama.embed([QUERY, TERMINATION, UNRELATED])
    assert query @ termination > query @ unrelated + 0.2


def test_wordllama_is_deterministic_whatever_the_batch(wordllama):
    alone = wordllama.embed([TERMINATION])
    in_a_batch = wordllama.embed([UNRELATED, "", TERMINATION, QUERY * 50])
    assert np.array_equal(alone[0], in_a_batch[2])
    assert np.array_equal(alone, wordllama.embed([TERMINATION]))


def test_wordllama_gives_zero_vectors_for_empty_texts_and_no_rows_for_none(wordllama):
    vectors = wordllama.embed(["", "   \n\t", QUERY])
    assert vectors.shape == (3, 256)
    assert not vectors[:2].any() and np.isclose(np.linalg.norm(vectors[2]), 1)
    assert wordllama.embed([]).shape == (0, 256)


def test_wordllama_embeds_a_very_long_text_whole(wordllama):
    long_text = (TERMINATION + " ") * 20_000  # ≈ 2.5 MB, ≈ 600,000 tokens: never padded or cut
    long_vector, clause = wordllama.embed([long_text, TERMINATION])
    assert np.isclose(np.linalg.norm(long_vector), 1) and np.all(np.isfinite(long_vector))
    assert long_vector @ clause > 0.99


def test_wordllama_reports_progress_per_batch(wordllama):
    calls = []
    wordllama.embed([QUERY] * (WordLlamaEmbedder.batch_size + 1), on_batch=lambda done, total: calls.append((done, total)))
    assert calls == [(WordLlamaEmbedder.batch_size, WordLlamaEmbedder.batch_size + 1),
                     (WordLlamaEmbedder.batch_size + 1, WordLlamaEmbedder.batch_size + 1)]


def _embed_in_child(connection) -> None:
    embedder = embedder_from_config({"EMBEDDER": "wordllama", "EMBEDDING_MODEL": "unused"})
    connection.send(embedder.embed([TERMINATION, QUERY]).tobytes())
    connection.close()


def test_a_model_loaded_before_fork_works_in_the_forked_process(wordllama):
    """As the worker does: warm up (load) in the parent, fork, embed in the child."""
    expected = wordllama.embed([TERMINATION, QUERY])
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_embed_in_child, args=(sender,))
    child.start()
    assert receiver.poll(60), "the forked process did not answer within 60 s"
    assert receiver.recv() == expected.tobytes()
    child.join(10)
    assert child.exitcode == 0


@pytest.mark.parametrize(("settings", "kind"), [
    ({}, DEFAULT_EMBEDDER),
    ({"OPENAI_API_KEY": "sk-x"}, "openai"),  # as before EMBEDDER existed
    ({"OPENAI_API_KEY": "sk-x", "EMBEDDER": "wordllama"}, "wordllama"),
    ({"OPENAI_API_KEY": "sk-x", "EMBEDDER": "hashing"}, "hashing"),
    ({"EMBEDDER": " Hashing "}, "hashing"),
    ({"EMBEDDER": "openai", "OPENAI_API_KEY": "sk-x"}, "openai"),
])
def test_embedder_selection(settings, kind):
    config = {"EMBEDDING_MODEL": "text-embedding-3-small", **settings}
    assert embedder_kind(config) == kind
    names = {"wordllama": "wordllama:l2_supercat-256", "hashing": "hashing-v1:2048",
             "openai": "openai:text-embedding-3-small"}
    assert embedder_name(config) == names[kind]
    embedder = embedder_from_config(config)
    assert embedder.name == names[kind]
    assert isinstance(embedder, {"wordllama": WordLlamaEmbedder, "hashing": HashingEmbedder,
                                 "openai": OpenAIEmbedder}[kind])
    assert embedder_from_config(dict(config)) is embedder  # built once per process


def test_the_default_embedder_is_wordllama_and_the_tests_use_it(app):
    assert DEFAULT_EMBEDDER == "wordllama"
    assert embedder_name(app.config) == WordLlamaEmbedder.name


@pytest.mark.parametrize(("env", "message"), [
    ({"EMBEDDER": "bert"}, "EMBEDDER must be wordllama, hashing or openai"),
    ({"EMBEDDER": "openai"}, "EMBEDDER=openai needs OPENAI_API_KEY"),
])
def test_a_bad_embedder_setting_is_refused_at_start(tmp_path, env, message):
    with pytest.raises(ValueError, match=message):
        load_config(tmp_path, env)
    with pytest.raises(ValueError, match=message.split()[0]):
        embedder_kind({"EMBEDDING_MODEL": "m", **env})


def test_embedder_setting_from_the_environment(tmp_path):
    assert load_config(tmp_path, {})["EMBEDDER"] is None  # resolved by embedder_kind
    assert load_config(tmp_path, {"EMBEDDER": "HASHING"})["EMBEDDER"] == "hashing"
    # Local embedders do not wait on the network: one worker process per core, not two.
    assert load_config(tmp_path, {"OPENAI_API_KEY": "sk-x", "EMBEDDER": "wordllama"})["WORKER_CONCURRENCY"] \
        == load_config(tmp_path, {})["WORKER_CONCURRENCY"]


def test_retrieval_benchmark_runs_on_a_few_questions(tmp_path):
    output = tmp_path / "retrieval.md"
    result = subprocess.run(
        [sys.executable, "-m", "bench.retrieval", "--limit-questions", "3", "--embedders", "hashing,wordllama",
         "--modes", "vector", "--output", str(output)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "EMBEDDER")})
    assert result.returncode == 0, result.stderr
    text = output.read_text()
    assert text.startswith("# Retrieval benchmark") and "Questions: 3 " in text
    rows = [line for line in text.splitlines() if line.startswith(("| hashing-v1:2048 | vector", "| wordllama:"))]
    assert len(rows) == 2
    for row in rows:
        recall = float(row.split("|")[3].strip(" *"))
        assert 0 <= recall <= 1
    assert "| dpr-synonyms | semantic | en |" in text
