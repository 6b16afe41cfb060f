"""Retrieval benchmark: does search find the page that answers a question?

    .venv/bin/python -m bench.retrieval [--embedders hashing,wordllama] [--modes vector,hybrid]
                                        [--limit-questions N] [--chunk-size 1500] [--output PATH]

``bench/retrieval_questions.tsv`` holds questions written by reading the documents of the shared
corpora (``../shared/corpus`` and ``../shared/corpus-formats``), each with the document and the
1-based page range that answers it (page 1 for formats without pages; a slide is a page). About
half are paraphrases whose words differ from the text's ("where were the townspeople hiding" →
"living in caves"), half ask for an exact name or number; most are English, a few German,
Russian, Korean and Japanese. Column ``answer_in`` says where the answer is: ``text`` (running
text), or only ``scan`` (a scanned page: found only through OCR), ``table`` (a table row of a
PDF, a sheet or a CSV file), ``heading`` (a question naming a section whose page does not, or
barely, name it: found through the chunk's heading path) or ``slide`` (a slide's shapes, table or
speaker notes).

For each embedder (``hashing``, ``wordllama``; ``openai`` only when ``OPENAI_API_KEY`` is set) the
whole corpus is ingested in-process through the project's own pipeline into a temporary SQLite
database: the upload path (:func:`webapp.core.documents.accept_uploads`: type detection, storage,
rows) and the document job's body (:func:`jobs.document_job.run_document_job`: extract → chunk →
embed → store), with a private Redis for the queue the uploads are enqueued on (no worker takes
them: the jobs run here). Files the service refuses or fails (scans, damaged, password-protected)
are part of the corpus and count only as noise. Then every question goes through
:func:`webapp.core.search.search_chunks` with ``k=5`` in each ranking ``mode`` ("vector": the
embedding's cosine; "hybrid": fused with full-text search, when the search module has it).

A *hit* is a result chunk of the right document whose pages overlap the answer's pages.
*recall@5* is the share of questions with a hit in the top 5; *MRR@5* the mean of 1/rank of the
first hit (0 without one). The table is printed and written to ``bench/results/retrieval.md``.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
CORPUS = ROOT.parent / "shared" / "corpus"
CORPUS_FORMATS = ROOT.parent / "shared" / "corpus-formats"
ANSWER_KINDS = ("text", "scan", "table", "heading", "slide")
QUESTIONS = Path(__file__).resolve().parent / "retrieval_questions.tsv"
OUTPUT = Path(__file__).resolve().parent / "results" / "retrieval.md"
K = 5
OFFLINE_EMBEDDERS = ("hashing", "wordllama")
MODES = ("vector", "hybrid")


@dataclass(frozen=True)
class Question:
    """One benchmark question: the document (corpus file name) and 1-based pages that answer it."""

    id: str
    lang: str
    type: str  # "semantic" (words differ from the text) or "exact" (a name or a number)
    file: str
    first_page: int
    last_page: int
    text: str
    answer_in: str = "text"  # one of ANSWER_KINDS


def load_questions(path: Path = QUESTIONS) -> list[Question]:
    """Read the questions file (tab-separated: id, lang, type, file, pages, question, answer_in).

    ``pages`` is ``N`` or ``N-M`` (inclusive). Raises ``ValueError`` on a malformed row or a
    document that is in neither corpus.
    """
    questions = []
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
            first, _, last = row["pages"].partition("-")
            if not any((folder / row["file"]).is_file() for folder in (CORPUS, CORPUS_FORMATS)):
                raise ValueError(f"question {row['id']}: {row['file']} is in neither {CORPUS} nor {CORPUS_FORMATS}")
            if row["type"] not in ("semantic", "exact"):
                raise ValueError(f"question {row['id']}: type must be semantic or exact")
            answer_in = row.get("answer_in") or "text"
            if answer_in not in ANSWER_KINDS:
                raise ValueError(f"question {row['id']}: answer_in must be one of {', '.join(ANSWER_KINDS)}")
            questions.append(Question(row["id"], row["lang"], row["type"], row["file"], int(first),
                                      int(last or first), row["question"], answer_in))
    return questions


def is_hit(result: dict[str, Any], question: Question) -> bool:
    """A search result answers ``question``: same document, overlapping pages (no pages: page 1)."""
    start = result["page_start"] or 1
    end = result["page_end"] or start
    return result["filename"] == question.file and start <= question.last_page and end >= question.first_page


def first_hit_rank(results: Sequence[dict[str, Any]], question: Question) -> int | None:
    """1-based rank of the first hit among ``results``, or ``None``."""
    return next((rank for rank, result in enumerate(results, 1) if is_hit(result, question)), None)


def search_modes() -> tuple[str, ...]:
    """The ranking modes :func:`webapp.core.search.search_chunks` accepts (``mode`` parameter), or
    just ``("vector",)`` while it has none."""
    from webapp.core.search import search_chunks

    return MODES if "mode" in inspect.signature(search_chunks).parameters else ("vector",)


def corpus_files(only: Iterable[str] | None = None) -> list[Path]:
    """The documents of both corpora, each in its ``MANIFEST.tsv`` order (``only``: just these file
    names)."""
    wanted = set(only) if only is not None else None
    paths = []
    for folder in (CORPUS, CORPUS_FORMATS):
        with open(folder / "MANIFEST.tsv", newline="", encoding="utf-8") as fh:
            names = [row["file"] for row in csv.DictReader(fh, delimiter="\t")]
        paths += [folder / name for name in names if wanted is None or name in wanted]
    return paths


def run_embedder(embedder: str, questions: Sequence[Question], modes: Sequence[str], files: Sequence[Path],
                 workdir: Path, chunk_size: int | None = None) -> dict[str, Any]:
    """Ingest ``files`` with ``embedder`` into a fresh SQLite database and ask every question.

    Returns:
        ``{"embedder", "vector_space", "ingest_s", "documents", "finished", "chunks",
        "ranks": {mode: {question id: rank or None}}, "query_ms": {mode: mean ms per query}}``;
        a mode the search module does not accept has ``ranks[mode] = None``.
    """
    from benchmarks.common import BENCH_SECRET_KEY, private_redis
    from jobs.document_job import run_document_job
    from jobs.document_errors import JobError
    from jobs.tracking import JobTracker
    from webapp import create_app
    from webapp.core.db import connection, create_tables
    from webapp.core.documents import accept_uploads, read_path
    from webapp.core.embeddings import embedder_name
    from webapp.edge.json_errors import ServiceError
    from webapp.core.models import Chunk
    from webapp.core.search import search_chunks

    workdir.mkdir(parents=True, exist_ok=True)
    supported = search_modes()
    settings: dict[str, Any] = {
        "DATABASE_URL": f"sqlite:///{workdir / 'retrieval.sqlite3'}",
        "STORAGE_PATH": str(workdir / "uploads"),
        "SECRET_KEY": BENCH_SECRET_KEY,
        "EMBEDDER": embedder,
    }
    if embedder != "openai":
        settings["OPENAI_API_KEY"] = None
    if chunk_size:
        settings["CHUNK_SIZE"] = chunk_size
    with private_redis(workdir / "redis") as redis_url:
        app = create_app({**settings, "REDIS_URL": redis_url})
        with app.app_context():
            create_tables()
            started = time.perf_counter()
            finished = 0
            documents = []
            with connection():
                for path in files:
                    try:
                        documents.append(accept_uploads([read_path(path)], reprocess=True, owner="bench")
                                         .files[0].document)
                    except ServiceError:
                        pass  # refused at upload (the empty file), as the API would
            for document in documents:
                try:
                    result = run_document_job(document.id, JobTracker(document.job_id), app.config)
                    finished += "skipped" not in result
                except JobError:
                    pass  # scans, damaged and password-protected files fail by design
            ingest_s = time.perf_counter() - started
            with connection():
                chunks = Chunk.select().where(Chunk.embedding_model == embedder_name(app.config)).count()
            ranks: dict[str, dict[str, int | None] | None] = {}
            query_ms: dict[str, float | None] = {}
            for mode in modes:
                if mode not in supported:
                    ranks[mode], query_ms[mode] = None, None
                    continue
                ranks[mode] = {}
                started = time.perf_counter()
                with connection():
                    for question in questions:
                        kwargs = {"mode": mode} if len(supported) > 1 else {}
                        results = search_chunks(question.text, K, **kwargs)
                        ranks[mode][question.id] = first_hit_rank(results, question)
                query_ms[mode] = 1000 * (time.perf_counter() - started) / max(len(questions), 1)
    return {"embedder": embedder, "vector_space": embedder_name(app.config), "ingest_s": ingest_s,
            "documents": len(files), "finished": finished, "chunks": chunks, "ranks": ranks, "query_ms": query_ms}


def scores(ranks: dict[str, int | None], questions: Sequence[Question]) -> tuple[float, float]:
    """``(recall@5, MRR@5)`` of ``ranks`` over ``questions`` (0 for an empty list)."""
    if not questions:
        return 0.0, 0.0
    hits = [ranks[q.id] for q in questions]
    return (sum(rank is not None for rank in hits) / len(questions),
            sum(1 / rank for rank in hits if rank is not None) / len(questions))


def markdown(runs: Sequence[dict[str, Any]], questions: Sequence[Question], modes: Sequence[str],
             chunk_size: int) -> str:
    """The results as markdown: one summary table, then every question's rank per run."""
    groups = {
        "semantic": [q for q in questions if q.type == "semantic"],
        "exact": [q for q in questions if q.type == "exact"],
        "not English": [q for q in questions if q.lang != "en"],
        **{f"in {kind}": [q for q in questions if q.answer_in == kind] for kind in ANSWER_KINDS},
    }
    structured = [q for q in questions if q.answer_in != "text"]
    lines = [
        f"Questions: {len(questions)} ({len(groups['semantic'])} semantic, {len(groups['exact'])} exact name/number, "
        f"{len(groups['not English'])} not in English; answered in running text {len(groups['in text'])}, only in "
        + ", ".join(f"a {kind} {len(groups['in ' + kind])}" for kind in ANSWER_KINDS[1:])
        + f"); k = {K}; chunks of ≤ {chunk_size} characters.",
        "",
        "| embedder | mode | recall@5 | MRR@5 | recall@5 / MRR@5 scan, table, heading, slide (" + str(len(structured))
        + ") | " + " | ".join(f"recall@5 {name}" for name in groups) + " | chunks | ingest s | ms/query |",
        "|---|---|---|---|---|" + "---|" * len(groups) + "---|---|---|",
    ]
    for run in runs:
        for mode in modes:
            ranks = run["ranks"][mode]
            if ranks is None:
                lines.append(f"| {run['vector_space']} | {mode} | n/a | n/a | n/a | n/a | n/a | {run['chunks']} "
                             f"| {run['ingest_s']:.1f} | n/a |")
                continue
            recall, mrr = scores(ranks, questions)
            structured_recall, structured_mrr = scores(ranks, structured)
            parts = [f"{scores(ranks, group)[0]:.2f}" if group else "–" for group in groups.values()]
            lines.append(f"| {run['vector_space']} | {mode} | **{recall:.2f}** | {mrr:.2f} "
                         f"| **{structured_recall:.2f}** / {structured_mrr:.2f} | {' | '.join(parts)} "
                         f"| {run['chunks']} | {run['ingest_s']:.1f} | {run['query_ms'][mode]:.0f} |")
    lines += ["", "*ingest s* (every corpus file through upload and the document job) and *ms/query* are wall "
              "times on a shared machine: indicative only. A miss is a question whose answering pages are in "
              "none of the 5 results."]
    columns = [(run, mode) for run in runs for mode in modes if run["ranks"][mode] is not None]
    lines += [
        "",
        "Rank of the first chunk from the answering pages (– : not in the top 5):",
        "",
        "| question | type | lang | answer in | " + " | ".join(f"{run['embedder']} {mode}" for run, mode in columns)
        + " |",
        "|---|---|---|---|" + "---|" * len(columns),
    ]
    for question in questions:
        cells = [str(run["ranks"][mode][question.id] or "–") for run, mode in columns]
        lines.append(f"| {question.id} | {question.type} | {question.lang} | {question.answer_in} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_embedders = OFFLINE_EMBEDDERS + (("openai",) if os.environ.get("OPENAI_API_KEY") else ())
    parser.add_argument("--embedders", default=",".join(default_embedders),
                        help="comma-separated: hashing, wordllama, openai (default: %(default)s)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: vector, hybrid")
    parser.add_argument("--limit-questions", type=int, default=None, metavar="N",
                        help="only the first N questions, and only the documents they name (a quick check)")
    parser.add_argument("--chunk-size", type=int, default=None, help="CHUNK_SIZE (default: the configuration's)")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="markdown file to write (default: %(default)s)")
    args = parser.parse_args(argv)

    embedders = [name.strip() for name in args.embedders.split(",") if name.strip()]
    modes = [name.strip() for name in args.modes.split(",") if name.strip()]
    if any(mode not in MODES for mode in modes):
        parser.error(f"--modes: choose among {', '.join(MODES)}")
    if "openai" in embedders and not os.environ.get("OPENAI_API_KEY"):
        parser.error("--embedders openai needs OPENAI_API_KEY")
    questions = load_questions()
    files = corpus_files()
    if args.limit_questions is not None:
        questions = questions[:args.limit_questions]
        files = corpus_files({q.file for q in questions})
    from webapp.core.config import load_config

    chunk_size = args.chunk_size or load_config(tempfile.gettempdir(), {})["CHUNK_SIZE"]
    runs = []
    for embedder in embedders:
        with tempfile.TemporaryDirectory(prefix=f"retrieval-{embedder}-") as workdir:
            runs.append(run_embedder(embedder, questions, modes, files, Path(workdir), args.chunk_size))
    table = markdown(runs, questions, modes, chunk_size)
    command = " ".join(["python -m bench.retrieval", *(argv if argv is not None else sys.argv[1:])])
    header = (f"# Retrieval benchmark\n\n`{command}` — {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
              f"{platform.node()}, {os.cpu_count()} CPUs; {len(files)} corpus files ingested per embedder.\n\n")
    print(table, end="")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(header + table, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
