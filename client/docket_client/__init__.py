"""Docket's command-line client (``docket``): the public HTTP API from a terminal or a script.

Installable on its own (``pip install ./client``): it needs click, requests (with
requests-toolbelt for streamed uploads) and rich, never the server's packages.
"""

__version__ = "0.1.0"
