"""Import shims for module paths the previous release stored in Redis (remove in the release after).

RQ keeps each job's function and callbacks as dotted paths in its Redis hash, and rq-scheduler
keeps each timetable entry's function the same way; workers import them when they run the job.
Jobs enqueued before the modules moved into the layer subpackages (``webapp/core``,
``webapp/edge``, ``jobs/*_job.py``) still name the old paths, and a deploy does not wait for
every queued, scheduled or delayed job to run. So every process that runs jobs or their
callbacks (the worker, the scheduler, the web process's cancel) installs :class:`MovedModules` on
:data:`sys.meta_path` (:func:`install`, called by ``create_app``): importing an old path imports
the new module and registers the same module object under the old name too (no second copy of
module state). The table maps only paths RQ or rq-scheduler can have stored: job functions,
``on_failure``/``on_stopped`` callbacks, and the scheduler's ``fire``.

The new modules are named as strings and imported on demand, so the core imports nothing of the
job path.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

#: old module path → where its names live now (the previous release's stored paths).
MOVED: dict[str, tuple[str, ...]] = {
    "jobs.documents": ("jobs.document_job",),  # process_document
    "jobs.reports": ("jobs.report_job",),  # build_report
    "jobs.webhooks": ("jobs.webhook_job",),  # deliver_webhook
    "jobs.reconcile": ("jobs.reconcile_job",),  # reconcile
    "jobs.cleanup": ("jobs.retention_job", "jobs.orphans_job"),  # apply_retention; clean_orphans
    "jobs.diagnostics": ("jobs.ping_job",),  # ping
    "webapp.job_states": ("webapp.core.protocol.states",),  # on_job_failure, on_job_stopped
    "webapp.scheduling": ("webapp.core.schedules.table",),  # fire
}


class _AliasLoader(importlib.abc.Loader):
    """Loads an old path as the module at its new path (the same object), or, for a module split
    in two, as a module whose names are looked up in each new one in turn (PEP 562)."""

    def __init__(self, targets: tuple[str, ...]) -> None:
        self.targets = targets

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        modules = [importlib.import_module(target) for target in self.targets]
        if len(modules) == 1:
            return modules[0]
        alias = ModuleType(spec.name, f"Moved to {', '.join(self.targets)}.")

        def __getattr__(name: str):
            for module in modules:
                if hasattr(module, name):
                    return getattr(module, name)
            raise AttributeError(f"module {spec.name!r} (moved to {', '.join(self.targets)}) has no attribute {name!r}")

        alias.__getattr__ = __getattr__
        return alias

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the new module ran when it was imported."""


class MovedModules(importlib.abc.MetaPathFinder):
    """A :data:`sys.meta_path` finder for the paths in :data:`MOVED`."""

    def find_spec(self, fullname: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        targets = MOVED.get(fullname)
        if targets is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(targets))


def install() -> None:
    """Put :class:`MovedModules` on :data:`sys.meta_path` once per process (idempotent)."""
    if not any(isinstance(finder, MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(MovedModules())
