"""Another process writing to a root, for the browser tests (run as a script).

Usage: web_proc.py ROOT append THREAD_ID TEXT | ROOT handoff THREAD_ID | ROOT child PARENT_ID TITLE
Prints one line once the commit is acknowledged: the seq, or the new thread's id.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

from threadloom.config import Settings
from threadloom.service import ThreadService
from threadloom.store import SQLiteStore


async def main(root: str, verb: str, thread_id: str, text: str) -> None:
    settings = Settings(root=Path(root), durability="normal")
    async with ThreadService(SQLiteStore(settings.root, durability="normal"), settings) as svc:
        if verb == "append":
            out = await svc.append(thread_id, [{"role": "assistant", "text": text}], single=True)
            print(out.seq, flush=True)
        elif verb == "child":
            child = await svc.create_thread(parent_id=thread_id, title=text)
            print(child.thread_id, flush=True)
        else:
            hop = await svc.handoff(thread_id, summary="handed off by the browser test")
            print(hop.thread_id, flush=True)


if __name__ == "__main__":
    argv = sys.argv[1:]
    anyio.run(main, argv[0], argv[1], argv[2], argv[3] if len(argv) > 3 else "")
