"""The command line: ``flask --app wsgi ingest`` and the run command (``dev``)."""
