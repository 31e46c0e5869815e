"""A writer process for the crash and multi-process tests (run as a script).

Usage: proc_writer.py ROOT THREAD_ID COUNT TAG [--forever] [--normal]
Appends COUNT messages "TAG-i" to THREAD_ID (or forever), printing each acknowledged
seq on stdout as soon as its append returned. ``--normal``: durability normal (commits of a
few events then run on the event loop, store/sqlite.py), else full.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

from threadloom.config import Settings
from threadloom.service import ThreadService
from threadloom.store import SQLiteStore


async def main(root: str, thread_id: str, count: int, tag: str, forever: bool, durability: str) -> None:
    settings = Settings(root=Path(root), durability=durability)  # type: ignore[arg-type]
    async with ThreadService(SQLiteStore(settings.root, durability=settings.durability), settings) as svc:
        i = 0
        while forever or i < count:
            out = await svc.append(thread_id, [{"role": "user", "text": f"{tag}-{i}"}], single=True)
            print(f"{out.seq} {tag}-{i}", flush=True)
            i += 1


if __name__ == "__main__":
    root, tid, count, tag = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    durability = "normal" if "--normal" in sys.argv else "full"
    anyio.run(main, root, tid, count, tag, "--forever" in sys.argv, durability)
