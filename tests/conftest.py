"""Shared fixtures: every store-touching test runs once per backend."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from threadloom.config import Settings
from threadloom.service import ThreadService
from threadloom.store import MemoryStore, SQLiteStore
from threadloom.store.base import Store

BACKENDS = ["memory", "sqlite", "postgres"]
PG_URL = os.environ.get("THREADLOOM_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
_pg_problem: list[str | None] = []


def pg_unreachable() -> str | None:
    """Why PostgreSQL cannot be used for tests, or None when it can (checked once)."""
    if not _pg_problem:
        try:
            import psycopg

            with psycopg.connect(PG_URL, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
            _pg_problem.append(None)
        except Exception as exc:  # any failure means: skip, saying why
            _pg_problem.append(f"PostgreSQL not reachable at {PG_URL}: {exc}".strip())
    return _pg_problem[0]


@contextmanager
def pg_schema() -> Iterator[str]:
    """A fresh schema for one test; yields a DSN whose search_path points at it."""
    import psycopg

    name = f"tl_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{name}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {name} CASCADE")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_backend(kind: str, root: Path, dsn: str | None = None) -> Store:
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        return SQLiteStore(root, durability="normal")
    if kind == "postgres":
        from threadloom.store.postgres import PostgresStore

        assert dsn is not None
        return PostgresStore(dsn, pool_size=4)
    raise ValueError(kind)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(root=tmp_path / "root", durability="normal")


@contextmanager
def pg_test_schema() -> Iterator[str]:
    """:func:`pg_schema`, or skip the test saying why when PostgreSQL is unreachable."""
    problem = pg_unreachable()
    if problem:
        pytest.skip(problem)
    with pg_schema() as dsn:
        yield dsn


@pytest.fixture
def backend_dsn(backend: str) -> Iterator[str | None]:
    """A private PostgreSQL schema for postgres runs (skipped, saying why, when unreachable)."""
    if backend != "postgres":
        yield None
        return
    with pg_test_schema() as dsn:
        yield dsn


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    """A private PostgreSQL schema for a PostgreSQL-only test."""
    with pg_test_schema() as dsn:
        yield dsn


@pytest.fixture
async def store(backend: str, settings: Settings, backend_dsn: str | None) -> AsyncIterator[Store]:
    s = make_backend(backend, settings.root, backend_dsn)
    async with s:
        yield s


@pytest.fixture
async def service(store: Store, settings: Settings) -> AsyncIterator[ThreadService]:
    yield ThreadService(store, settings)


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """Environment for subprocesses: the package importable, the root in tmp."""
    env = dict(os.environ)
    env["THREADLOOM_HOME"] = str(tmp_path / "root")
    env["PYTHONPATH"] = (
        str(Path(__file__).resolve().parents[1] / "server") + os.pathsep + env.get("PYTHONPATH", "")
    )
    env["PYTHONUNBUFFERED"] = "1"
    return env


PYTHON = sys.executable
