"""The architecture holds: the import contracts of ``.importlinter`` (import-linter) are kept.

* layers: the command line (``webapp.cli``) above the HTTP edge (``webapp.edge``) and the job path
  (``jobs``), which never import each other, above the local run tools (``webapp.local``), above
  the shared core (``webapp.core``), which imports none of them;
* no import circles among the project's modules, at any depth;
* the command-line client (``docket_client``, in ``client/``) imports nothing of ``webapp`` or
  ``jobs``: it works against any deployment through the public HTTP API.

import-linter reads every import statement, those inside functions included; the last test
proves it on one such import, so a function-level import cannot hide a layer breach or a circle.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp

from tests.conftest import ROOT


def lint_imports() -> subprocess.CompletedProcess:
    executable = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    return subprocess.run([executable, "--config", str(ROOT / ".importlinter"), "--no-cache"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_the_import_contracts_are_kept():
    result = lint_imports()
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "3 kept, 0 broken" in result.stdout, result.stdout[-3000:]


def test_the_layers_are_folders_and_each_has_modules():
    for package in ("webapp/core", "webapp/core/protocol", "webapp/core/workflows", "webapp/edge", "webapp/cli",
                    "webapp/local", "jobs", "jobs/worker"):
        folder = ROOT / package
        assert (folder / "__init__.py").exists(), package
        assert [path for path in folder.glob("*.py") if path.name != "__init__.py"], package
    # webapp itself keeps create_app and little else: every other module lives in a layer.
    assert sorted(path.name for path in (ROOT / "webapp").glob("*.py")) == ["__init__.py"]


def test_imports_inside_functions_are_part_of_the_graph():
    graph = grimp.build_graph("webapp", "jobs", cache_dir=None)
    # create_app imports the edge's blueprints inside the function body.
    assert graph.direct_import_exists(importer="webapp", imported="webapp.edge.api")
    details = graph.get_import_details(importer="webapp", imported="webapp.edge.api")
    assert details and details[0]["line_contents"].startswith("from webapp.edge import")
