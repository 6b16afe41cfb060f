"""How Docket's worker processes run jobs: the ``flask rq worker`` command and the worker model."""
