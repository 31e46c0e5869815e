"""Store backends behind one interface; :func:`open_store` picks one from settings."""

from __future__ import annotations

from ..config import Settings
from ..errors import InvalidInputError
from ..integrity import Signer
from .base import Store
from .memory import MemoryStore
from .sqlite import SQLiteStore

__all__ = ["Store", "MemoryStore", "SQLiteStore", "make_store"]


def make_store(settings: Settings) -> Store:
    """The store named by ``settings.store``: ``sqlite`` under ``settings.root``, ``memory``,
    or a ``postgresql://`` URL.

    A sqlite store signs with the root's key (``<root>/keys``); a memory store with a key
    that lives as long as the process.
    """
    if settings.store == "sqlite":
        return SQLiteStore(
            settings.root, durability=settings.durability, signer=Signer.for_root(settings.root)
        )
    if settings.store == "memory":
        return MemoryStore()
    if settings.store.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore  # psycopg is imported only when asked for

        return PostgresStore(
            settings.store, durability=settings.durability, signer=Signer.for_root(settings.root)
        )
    raise InvalidInputError(
        f"store must be 'sqlite', 'memory' or a postgresql:// URL; got {settings.store!r}",
        rule="store_kind",
    )
