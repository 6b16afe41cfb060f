"""Entry point: ``gunicorn wsgi:app`` (web) and ``flask --app wsgi …`` (CLI, worker).

The one place where the two halves meet: the web app (``webapp``) and the job path's worker
commands (``jobs.worker.cli``: ``flask rq worker``, ``flask rq ping``). ``webapp`` never imports
``jobs``; see ``tests/test_layers.py``.
"""

from jobs.worker.cli import rq_cli
from webapp import create_app

app = create_app()
app.cli.add_command(rq_cli)
