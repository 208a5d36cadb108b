"""WSGI entry point for gunicorn: each worker process builds its own app (and loads its own model)."""

from api.app import create_app

app = create_app()
