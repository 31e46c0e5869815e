"""Shared fixtures: every store-touching test runs once per backend."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from threadloom.config import Settings
from threadloom.service import ThreadService
from threadloom.store import MemoryStore, SQLiteStore
from threadloom.store.base import Store

BACKENDS = ["memory", "sqlite"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_backend(kind: str, root: Path) -> Store:
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        return SQLiteStore(root, durability="normal")
    raise ValueError(kind)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(root=tmp_path / "root", durability="normal")


@pytest.fixture
async def store(backend: str, settings: Settings) -> AsyncIterator[Store]:
    s = make_backend(backend, settings.root)
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
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "server") + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


PYTHON = sys.executable
