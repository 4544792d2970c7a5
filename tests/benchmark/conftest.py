"""Fixtures of the benchmark tests: a throw-away PostgreSQL server (see tests/_postgres.py)."""

from tests._postgres import postgres_server, postgres_url  # noqa: F401 (fixtures)
