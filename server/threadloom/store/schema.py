"""Schema versions: named migrations applied in order, recorded in ``schema_migrations``.

A database whose recorded version is newer than the code knows is refused with a
clear message instead of being written by code that does not understand it.
"""

from __future__ import annotations

import sqlite3

from ..errors import StoreUnavailableError
from .fts import EXTERNAL_CONTENT_SQL
from .fts import MIGRATION_SQL as SEARCH_INDEX_SQL
from .fts import VIEW as SEARCH_VIEW
from .fts import VIEW_SQL as SEARCH_VIEW_SQL
from .pgappend import FUNCTION_SQL as APPEND_FUNCTION_SQL
from .pgappend import LEASE_SIGNATURE as LEASE_APPEND_SIGNATURE
from .pgappend import OLD_SIGNATURE as OLD_APPEND_SIGNATURE
from .pgvectors import MIGRATION as PG_VECTORS_MIGRATION
from .sqlrows import DEFAULT_ACCOUNTS, register_functions
from .sqlvectors import MIGRATION_SQL as VECTORS_SQL

SQLITE_MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001_threads_events",
        """
        CREATE TABLE threads (
            thread_id        TEXT PRIMARY KEY,
            agent_id         TEXT NOT NULL,
            parent_id        TEXT,
            status           TEXT NOT NULL,
            created_at       TEXT NOT NULL,
            updated_at       TEXT NOT NULL,
            heartbeat_at     TEXT NOT NULL,
            heartbeat_epoch  REAL NOT NULL,
            stale_after      REAL NOT NULL,
            chain_root_id    TEXT NOT NULL,
            event_count      INTEGER NOT NULL DEFAULT 0,
            text_chars       INTEGER NOT NULL DEFAULT 0,
            input_tokens     INTEGER,
            transcript_bytes INTEGER NOT NULL DEFAULT 0,
            version          INTEGER NOT NULL DEFAULT 1,
            doc              TEXT NOT NULL
        );
        CREATE INDEX threads_created ON threads (created_at, thread_id);
        CREATE INDEX threads_agent ON threads (agent_id, created_at);
        CREATE INDEX threads_parent ON threads (parent_id, created_at);
        CREATE INDEX threads_status ON threads (status);
        CREATE INDEX threads_updated ON threads (updated_at);
        CREATE INDEX threads_chain ON threads (chain_root_id);
        CREATE TABLE events (
            id        INTEGER PRIMARY KEY,
            thread_id TEXT NOT NULL,
            seq       INTEGER NOT NULL,
            ts        TEXT NOT NULL,
            type      TEXT NOT NULL,
            line      TEXT NOT NULL,
            UNIQUE (thread_id, seq)
        );
        CREATE TABLE idempotency (
            thread_id    TEXT NOT NULL,
            key          TEXT NOT NULL,
            request_hash TEXT NOT NULL,
            seqs         TEXT NOT NULL,
            created_at   TEXT NOT NULL,
            PRIMARY KEY (thread_id, key)
        ) WITHOUT ROWID;
        """,
    ),
    (
        "0002_integrity_accounts",
        """
        ALTER TABLE events ADD COLUMN prev_hash TEXT;
        ALTER TABLE threads ADD COLUMN chain_head TEXT;
        ALTER TABLE threads ADD COLUMN accounts TEXT;
        CREATE TABLE meta (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        ) WITHOUT ROWID;
        """,
    ),
    ("0003_search_index", SEARCH_INDEX_SQL),
]


def _filter_index_statements() -> list[str]:
    """One index per combination of the ``list_threads`` filters, each ending in the
    newest-first order (created_at, thread_id), so a filtered page is read off one index
    without a sort (issue 17: a status filter sorted in a temporary B-tree, 75x the
    unfiltered call at 100,000 threads)."""
    out = []
    for cols in LIST_FILTER_INDEXES:
        name = "threads_by_" + "_".join(c.removesuffix("_id") for c in cols)
        out.append(f"DROP INDEX IF EXISTS {name}")
        out.append(f"CREATE INDEX {name} ON threads ({', '.join(cols)}, created_at, thread_id)")
    return out


LIST_FILTER_INDEXES: list[tuple[str, ...]] = [
    ("agent_id",),
    ("parent_id",),
    ("status",),
    ("agent_id", "status"),
    ("parent_id", "status"),
    ("parent_id", "agent_id"),
    ("parent_id", "agent_id", "status"),
]
"""The filter columns of each index (agent_id, parent_id, status: every combination)."""

_REPLACED_INDEXES = ["threads_agent", "threads_parent", "threads_status"]


def _partial_parent_index_statements() -> list[str]:
    """The filter indexes that name ``parent_id`` again, holding only threads that have a
    parent: ``list_threads`` filters by a parent's id and never asks for ``parent_id IS
    NULL``, so the top-level threads (most of a store) were dead weight in four of the seven
    indexes (issue 17 item 3; the query plans are the same: tests/test_list_filters.py)."""
    out = []
    for cols in LIST_FILTER_INDEXES:
        if "parent_id" not in cols:
            continue
        name = "threads_by_" + "_".join(c.removesuffix("_id") for c in cols)
        out.append(f"DROP INDEX IF EXISTS {name}")
        out.append(
            f"CREATE INDEX {name} ON threads ({', '.join(cols)}, created_at, thread_id)"
            " WHERE parent_id IS NOT NULL"
        )
    return out


SQLITE_MIGRATIONS.append(
    (
        "0004_list_filter_indexes",
        ";\n".join([*(f"DROP INDEX IF EXISTS {n}" for n in _REPLACED_INDEXES), *_filter_index_statements()]),
    )
)
SQLITE_MIGRATIONS.append(("0005_search_external_content", EXTERNAL_CONTENT_SQL))
SQLITE_MIGRATIONS.append(
    (
        "0006_thread_imports",
        """
        CREATE TABLE IF NOT EXISTS thread_imports (
            thread_id TEXT PRIMARY KEY,
            record    TEXT NOT NULL
        ) WITHOUT ROWID;
        """,
    )
)
"""The countersigned record of each imported thread (provenance.py)."""
SQLITE_MIGRATIONS.append(("0007_vectors", VECTORS_SQL))
SQLITE_MIGRATIONS.append(
    (
        "0008_forks",
        """
        ALTER TABLE threads ADD COLUMN fork_of TEXT;
        CREATE INDEX threads_fork ON threads (fork_of) WHERE fork_of IS NOT NULL;
        """,
    )
)
SQLITE_MIGRATIONS.append(
    (
        "0009_leases",
        """
        ALTER TABLE threads ADD COLUMN lease_owner TEXT;
        ALTER TABLE threads ADD COLUMN lease_expires REAL;
        ALTER TABLE threads ADD COLUMN lease_ttl REAL;
        """,
    )
)

SQLITE_MIGRATIONS.append(
    (
        "0010_lean_events",
        f"""
        DROP VIEW IF EXISTS {SEARCH_VIEW};
        CREATE TABLE events_lean (
            id        INTEGER PRIMARY KEY,
            thread_id TEXT NOT NULL,
            seq       INTEGER NOT NULL,
            type      TEXT NOT NULL,
            line      TEXT NOT NULL,
            prev_hash BLOB,
            ts        TEXT,
            UNIQUE (thread_id, seq)
        );
        INSERT INTO events_lean (id, thread_id, seq, type, line, prev_hash, ts)
            SELECT id, thread_id, seq, type, line, tl_hash_value(prev_hash), tl_stored_ts(ts, line)
            FROM events ORDER BY id;
        DROP TABLE events;
        ALTER TABLE events_lean RENAME TO events;
        {SEARCH_VIEW_SQL.strip()};
        UPDATE threads SET doc = tl_lean_manifest(doc);
        UPDATE threads SET accounts = NULL WHERE accounts = '{DEFAULT_ACCOUNTS}';
        {";".join(_partial_parent_index_statements())}
        """,
    )
)
"""Events and manifests hold nothing their row can rebuild (store/sqlrows.py, issue 17
item 3): ``prev_hash`` as 32 bytes, ``ts`` only where the line does not carry it, the
manifest without what columns hold or what is None, no accounts for a thread that has
used nothing, the filter indexes on ``parent_id`` without the threads that have none. The rows keep their ids, so the
search index and the vectors still point at them; the view over the events is made again."""


def apply_sqlite_migrations(conn: sqlite3.Connection, migrations: list[tuple[str, str]]) -> int:
    """Apply the pending migrations under the write lock; return the schema version."""
    register_functions(conn)  # the row conversions of 0010 (store/sqlrows.py)
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0]
        if current > len(migrations):
            raise StoreUnavailableError(
                f"the database schema is version {current} but this threadloom knows only up to "
                f"{len(migrations)}: upgrade threadloom (refusing to touch a newer database)",
                rule="schema_too_new",
            )
        for version, (name, sql) in enumerate(migrations, start=1):
            if version <= current:
                continue
            for statement in sql.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, datetime('now'))",
                (version, name),
            )
        conn.execute("COMMIT")
        return len(migrations)
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class SchemaTooNew(Exception):
    """The database was migrated by a newer threadloom than this one."""

    def __init__(self, current: int, known: int) -> None:
        super().__init__(
            f"the database schema is version {current} but this threadloom knows only up to {known}: "
            "upgrade threadloom (refusing to touch a newer database)"
        )


POSTGRES_MIGRATIONS: list[tuple[str, list[str]]] = [
    (
        "0001_threads_events",
        [
            """CREATE TABLE threads (
                thread_id        TEXT PRIMARY KEY,
                agent_id         TEXT NOT NULL,
                parent_id        TEXT,
                status           TEXT NOT NULL,
                created_at       TEXT NOT NULL,
                updated_at       TEXT NOT NULL,
                heartbeat_at     TEXT NOT NULL,
                heartbeat_epoch  DOUBLE PRECISION NOT NULL,
                stale_after      DOUBLE PRECISION NOT NULL,
                chain_root_id    TEXT NOT NULL,
                event_count      BIGINT NOT NULL DEFAULT 0,
                text_chars       BIGINT NOT NULL DEFAULT 0,
                input_tokens     BIGINT,
                transcript_bytes BIGINT NOT NULL DEFAULT 0,
                version          BIGINT NOT NULL DEFAULT 1,
                doc              TEXT NOT NULL
            )""",
            "CREATE INDEX threads_created ON threads (created_at, thread_id)",
            "CREATE INDEX threads_agent ON threads (agent_id, created_at)",
            "CREATE INDEX threads_parent ON threads (parent_id, created_at)",
            "CREATE INDEX threads_status ON threads (status)",
            "CREATE INDEX threads_updated ON threads (updated_at)",
            "CREATE INDEX threads_chain ON threads (chain_root_id)",
            """CREATE TABLE events (
                thread_id TEXT NOT NULL,
                seq       BIGINT NOT NULL,
                ts        TEXT NOT NULL,
                type      TEXT NOT NULL,
                line      TEXT NOT NULL,
                PRIMARY KEY (thread_id, seq)
            )""",
            """CREATE TABLE idempotency (
                thread_id    TEXT NOT NULL,
                key          TEXT NOT NULL,
                request_hash TEXT NOT NULL,
                seqs         TEXT NOT NULL,
                created_at   TEXT NOT NULL,
                PRIMARY KEY (thread_id, key)
            )""",
        ],
    ),
]

POSTGRES_MIGRATIONS.append(
    (
        "0002_integrity_accounts",
        [
            "ALTER TABLE events ADD COLUMN prev_hash TEXT",
            "ALTER TABLE threads ADD COLUMN chain_head TEXT",
            "ALTER TABLE threads ADD COLUMN accounts TEXT",
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        ],
    )
)

POSTGRES_MIGRATIONS.append(
    (
        "0003_search_index",
        [
            # one row per event of an indexed type; tsv is built in Python (store/pgsearch.py)
            """CREATE TABLE search_docs (
                thread_id TEXT NOT NULL,
                seq       BIGINT NOT NULL,
                id        BIGINT GENERATED ALWAYS AS IDENTITY,
                body      TEXT,
                tools     TEXT,
                tsv       tsvector NOT NULL,
                PRIMARY KEY (thread_id, seq)
            )""",
            "CREATE INDEX search_docs_tsv ON search_docs USING gin (tsv)",
            "CREATE INDEX search_docs_id ON search_docs (id)",
        ],
    )
)
POSTGRES_SEARCH_VERSION = len(POSTGRES_MIGRATIONS)
"""The migration that creates ``search_docs``: applying it also indexes the events already there."""

POSTGRES_MIGRATIONS.append(("0004_append_function", [APPEND_FUNCTION_SQL]))
POSTGRES_MIGRATIONS.append(
    (
        "0005_list_filter_indexes",
        [*(f"DROP INDEX IF EXISTS {n}" for n in _REPLACED_INDEXES), *_filter_index_statements()],
    )
)
POSTGRES_MIGRATIONS.append(
    (
        "0006_thread_imports",
        ["CREATE TABLE IF NOT EXISTS thread_imports (thread_id TEXT PRIMARY KEY, record TEXT NOT NULL)"],
    )
)
"""The countersigned record of each imported thread (provenance.py)."""

POSTGRES_MIGRATIONS.append(("0007_vectors", PG_VECTORS_MIGRATION))
POSTGRES_MIGRATIONS.append(
    (
        "0008_forks",
        [
            "ALTER TABLE threads ADD COLUMN fork_of TEXT",
            "CREATE INDEX threads_fork ON threads (fork_of) WHERE fork_of IS NOT NULL",
        ],
    )
)

POSTGRES_MIGRATIONS.append(
    (
        "0009_leases",
        [
            "ALTER TABLE threads ADD COLUMN lease_owner TEXT",
            "ALTER TABLE threads ADD COLUMN lease_expires DOUBLE PRECISION",
            "ALTER TABLE threads ADD COLUMN lease_ttl DOUBLE PRECISION",
            f"DROP FUNCTION IF EXISTS {OLD_APPEND_SIGNATURE}",
            APPEND_FUNCTION_SQL,
        ],
    )
)
POSTGRES_MIGRATIONS.append(
    (
        "0010_search_docs_without_text",
        [
            f"DROP FUNCTION IF EXISTS {LEASE_APPEND_SIGNATURE}",
            "ALTER TABLE search_docs DROP COLUMN IF EXISTS body, DROP COLUMN IF EXISTS tools",
            APPEND_FUNCTION_SQL,
            *_partial_parent_index_statements(),
        ],
    )
)
"""``search_docs`` keeps the tsvector only; the text is read from the events it indexes
(store/pgsearch.py); the filter indexes on ``parent_id`` leave out the threads without one. Dropping the columns is instant and frees their space as rows are
rewritten; ``VACUUM FULL search_docs`` gives it back at once (docs/postgres.md)."""
