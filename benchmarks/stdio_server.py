"""threadloom over stdio plus a no-op tool, so benchmarks can compare against the SDK's floor.

The transport is the one ``threadloom serve`` runs (threadloom/stdio.py), not the SDK's.

python benchmarks/stdio_server.py ROOT [full|normal] [postgresql://DSN]

With a DSN the store is PostgreSQL (keys under ROOT); otherwise SQLite under ROOT.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from threadloom.config import Settings  # noqa: E402
from threadloom.mcp_server import build_server  # noqa: E402
from threadloom.service import ThreadService  # noqa: E402
from threadloom.stdio import run_stdio  # noqa: E402
from threadloom.store import SQLiteStore  # noqa: E402
from threadloom.store.base import Store  # noqa: E402


def open_store(root: Path, durability: str, dsn: str) -> Store:
    if not dsn:
        return SQLiteStore(root, durability=durability)  # type: ignore[arg-type]
    from threadloom.integrity import Signer
    from threadloom.store.postgres import PostgresStore

    return PostgresStore(dsn, durability=durability, signer=Signer.for_root(root))  # type: ignore[arg-type]


async def main(root: str, durability: str, dsn: str) -> None:
    settings = Settings(root=Path(root), durability=durability)  # type: ignore[arg-type]
    async with ThreadService(open_store(settings.root, durability, dsn), settings) as service:
        server = build_server(service)

        @server.tool()
        async def noop() -> str:
            """Does nothing: the SDK's own per-call floor."""
            return "ok"

        await run_stdio(server, settings.max_request_bytes)


if __name__ == "__main__":
    anyio.run(
        main,
        sys.argv[1],
        sys.argv[2] if len(sys.argv) > 2 else "full",
        sys.argv[3] if len(sys.argv) > 3 else "",
    )
