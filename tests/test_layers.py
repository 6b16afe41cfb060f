"""The layers stay as the README's architecture says: core ← HTTP edge, core ← job path.

* the core (configuration, database and migrations, models, the job protocol — registry,
  launch, state machine, control —, queues, storage, embeddings, file types, processes)
  imports neither the edge nor ``jobs``;
* the HTTP edge (blueprints, errors, views, the upload path, CLI) never imports ``jobs``;
* ``jobs`` imports only the core of ``webapp``.

Read from the source (every ``import``, also inside functions), so a lazy import cannot hide.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

CORE = {"webapp.config", "webapp.db", "webapp.migrations", "webapp.models", "webapp.queues", "webapp.storage",
        "webapp.embeddings", "webapp.filetypes", "webapp.processes", "webapp.embedded_redis", "webapp.supervisor",
        # the job protocol: registry, launch, state machine, errors, control, webhooks
        "webapp.job_kinds", "webapp.launch", "webapp.job_states", "webapp.job_errors", "webapp.job_control",
        "webapp.job_events",  # live job events on Redis pub/sub, published by the state machine
        "webapp.rate_limits",  # rate limits shared by every worker on every machine (Redis)
        "webapp.webhooks", "webapp.report_files",
        "webapp.egress",  # requests to URLs users give (webhooks, URL fetches): the SSRF check and the connection
        # tokens and secrets at rest
        "webapp.tokens", "webapp.encryption",
        # periodic jobs: the schedule table and the rq-scheduler process
        "webapp.scheduling",
        # queue statistics for operators (RQ's registries + the Job table)
        "webapp.queue_stats",
        # pgvector columns and HNSW indexes, full-text index (search structures beside the models)
        "webapp.vector_index",
        # workflows: delayed jobs (rq-scheduler timetable), batch callbacks (chords)
        "webapp.delayed_jobs", "webapp.chords",
        # operations: structured logs, Prometheus metrics
        "webapp.logs", "webapp.metrics"}


def module_names(package: str) -> list[str]:
    return sorted(
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in (ROOT / package).rglob("*.py")
    )


def imported_project_modules(module: str) -> set[str]:
    """The ``webapp``/``jobs`` modules that ``module`` imports anywhere in its source."""
    path = ROOT / Path(*module.split("."))
    source = (path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).read_text()
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name.split(".")[0] in ("webapp", "jobs"))
    modules = set(module_names("webapp")) | set(module_names("jobs"))
    return {name for name in found if name in modules and name not in ("webapp", "jobs")}


def test_the_core_list_names_real_modules():
    assert CORE <= set(module_names("webapp"))


@pytest.mark.parametrize("module", module_names("webapp"))
def test_webapp_never_imports_jobs_and_the_core_never_imports_the_edge(module):
    imported = imported_project_modules(module)
    assert not {name for name in imported if name.startswith("jobs")}, f"{module} imports the job path"
    if module in CORE:
        assert imported <= CORE, f"core module {module} imports {sorted(imported - CORE)}"


@pytest.mark.parametrize("module", module_names("jobs"))
def test_jobs_import_only_the_core_of_webapp(module):
    webapp_modules = {name for name in imported_project_modules(module) if name.startswith("webapp")}
    assert webapp_modules <= CORE, f"{module} imports {sorted(webapp_modules - CORE)} of the HTTP edge"
