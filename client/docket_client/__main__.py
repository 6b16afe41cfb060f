"""``python -m docket_client``: the same as the ``docket`` command."""

from docket_client.cli import run

run()
