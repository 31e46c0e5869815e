"""A process racing for a run lease (run as a script by test_leases.py).

Usage: proc_lease.py sqlite ROOT | postgres DSN  THREAD_ID OWNER GO_FILE
Opens the store, waits until GO_FILE exists, calls acquire_thread once and prints
``won`` or ``lost <rule>``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import anyio

from threadloom.config import Settings
from threadloom.errors import ThreadloomError
from threadloom.service import ThreadService
from threadloom.store import SQLiteStore
from threadloom.store.base import Store


async def main(kind: str, where: str, thread_id: str, owner: str, go: str) -> None:
    store: Store
    if kind == "sqlite":
        store = SQLiteStore(Path(where), durability="normal")
        settings = Settings(root=Path(where), durability="normal")
    else:
        from threadloom.store.postgres import PostgresStore

        store = PostgresStore(where, pool_size=2)
        settings = Settings()
    async with ThreadService(store, settings) as svc:
        await svc.get_thread(thread_id)  # connections warm: the race is the acquire itself
        print("ready", flush=True)
        while not os.path.exists(go):
            time.sleep(0.0005)
        try:
            await svc.acquire_thread(thread_id, owner, 60)
            print("won", flush=True)
        except ThreadloomError as exc:
            print(f"lost {exc.rule}", flush=True)


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:6])
