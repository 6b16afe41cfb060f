"""WSGI entry point: ``gunicorn wsgi:app`` (web) and ``flask --app wsgi …`` (CLI, worker)."""

from webapp import create_app

app = create_app()
