"""``threadloom doctor``: check a root and say, for each problem, how to fix it.

Checks run from the outside in: the folder (exists, permissions, free disk), SQLite itself
(version, FTS5), the database file (WAL mode, schema version, quick_check), the signing
keys when a ``keys/`` folder exists, and then the data through a store opened *without*
its start-up mirror repair: mirror drift (``transcript.jsonl``/``thread.json`` against the
database), mirror folders without a thread, and running threads whose heartbeat is stale.

``fix=True`` repairs what can be repaired (mirrors completed from the database, WAL mode,
modes, stale threads moved to error/timeout; files moved aside only when confirmed) and
checks again; ``recover=True`` first rebuilds events the database lost from the mirrors
(recover.py).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import anyio

from .config import Settings
from .drift import compare, describe
from .errors import ThreadloomError
from .mirror import (
    MANIFEST,
    REVIEWED,
    SET_ASIDE,
    TRANSCRIPT,
    manifest_bytes,
    set_aside,
    set_aside_files,
    set_aside_stamp,
)
from .models import THREAD_ID_RE
from .private import loose_paths, tighten
from .semantic import health as semantic_health
from .service import ThreadService

MIN_SQLITE = (3, 24, 0)  # row values (3.15) for paging, UPSERT (3.24); tested with 3.40
MIN_FREE_BYTES = 256 * 1024 * 1024
WARN_FREE_BYTES = 2 * 1024 * 1024 * 1024
MIRROR_SETTLE = (
    0.3  # seconds to wait before looking at a differing mirror again (it is written just after commit)
)
PRIVATE_MODE_MASK = 0o077

Level = Literal["ok", "warn", "problem"]


@dataclass
class Check:
    """One line of the report: what was checked, how it went, and the fix when it went wrong."""

    name: str
    level: Level
    detail: str
    fix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ok(name: str, detail: str) -> Check:
    return Check(name, "ok", detail)


def _problem(name: str, detail: str, fix: str) -> Check:
    return Check(name, "problem", detail, fix)


def _warn(name: str, detail: str, fix: str) -> Check:
    return Check(name, "warn", detail, fix)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


# ----------------------------------------------------------------- the folder


def check_root(root: Path) -> list[Check]:
    if not root.exists():
        return [
            _problem(
                "root",
                f"{root} does not exist",
                "pass --root (or set THREADLOOM_HOME) to the folder threadloom serve uses",
            )
        ]
    if not root.is_dir():
        return [_problem("root", f"{root} is not a folder", "point --root at a threadloom data folder")]
    out = []
    if not os.access(root, os.R_OK | os.W_OK | os.X_OK):
        out.append(
            _problem(
                "permissions",
                f"{root} is not readable and writable by this user",
                f"chown to this user or chmod u+rwx {root}",
            )
        )
    else:
        mode = stat.S_IMODE(root.stat().st_mode)
        if mode & 0o002:
            out.append(
                _problem(
                    "permissions", f"{root} is writable by every user (mode {mode:o})", f"chmod o-w {root}"
                )
            )
        elif mode & 0o007:
            out.append(
                _warn(
                    "permissions",
                    f"{root} is readable by other users (mode {mode:o}); transcripts may hold secrets",
                    f"chmod o-rwx {root}",
                )
            )
        else:
            out.append(_ok("permissions", f"{root} is private to its owner and group (mode {mode:o})"))
        out.append(check_modes(root))
    db = root / "threads.db"
    if db.exists() and not os.access(db, os.R_OK | os.W_OK):
        out.append(
            _problem(
                "permissions",
                f"{db} is not readable and writable by this user",
                f"chown to this user or chmod u+rw {db}",
            )
        )
    usage = shutil.disk_usage(root)
    used = sum(p.stat().st_size for p in root.glob("threads.db*") if p.is_file())
    detail = f"{_human(usage.free)} free on the file system; the database takes {_human(used)}"
    if usage.free < MIN_FREE_BYTES:
        out.append(
            _problem(
                "disk",
                detail,
                "free disk space, or run `threadloom gc --older-than 30d` and `threadloom gc --vacuum`",
            )
        )
    elif usage.free < WARN_FREE_BYTES:
        out.append(_warn("disk", detail, "free disk space soon; appends fail when the disk is full"))
    else:
        out.append(_ok("disk", detail))
    return out


def check_modes(root: Path) -> Check:
    """Folders 0700 and files 0600 under the root (the public key aside): transcripts hold secrets."""
    loose = [(p, m) for p, m in loose_paths(root) if p != root]  # the root itself is checked above
    if not loose:
        return _ok("modes", "every folder and file under the root is private to its owner (0700/0600)")
    shown = ", ".join(f"{p.relative_to(root)} ({m:o})" for p, m in loose[:5])
    more = f" and {len(loose) - 5} more" if len(loose) > 5 else ""
    return _warn(
        "modes",
        f"{len(loose)} folder(s) or file(s) under the root are open to other users: {shown}{more}",
        f"run `threadloom doctor --fix` (removes group and other permissions), or chmod -R go-rwx {root}",
    )


# -------------------------------------------------------------------- SQLite


def check_sqlite(settings: Settings | None = None) -> list[Check]:
    engine = ThreadService.engine_health(settings or Settings())
    if engine is None:
        return []
    out = []
    if engine.version_info < MIN_SQLITE:
        out.append(
            _problem(
                "sqlite",
                f"SQLite {engine.version} is older than {'.'.join(map(str, MIN_SQLITE))}",
                "use a Python built against a newer SQLite",
            )
        )
    else:
        out.append(_ok("sqlite", f"SQLite {engine.version}"))
    if engine.fts5_error is None:
        out.append(_ok("fts5", "FTS5 full-text search is available"))
    else:
        out.append(
            _problem(
                "fts5",
                f"FTS5 is not available in this SQLite ({engine.fts5_error})",
                "use a Python whose sqlite3 has FTS5 (python.org and most distributions do)",
            )
        )
    return out


def check_database(root: Path, settings: Settings | None = None) -> tuple[list[Check], bool]:
    """Checks of the database file through a read-only look (the service's
    ``inspect_database``: nothing is migrated or changed); (checks, usable by a store)."""
    found = ThreadService.inspect_database((settings or Settings()).model_copy(update={"root": root}))
    if found is None:
        return [], True
    db = found.path
    if not found.exists:
        return [
            _problem(
                "database",
                f"{db} does not exist",
                "start `threadloom serve` on this root once, or `threadloom import` a bundle into it",
            )
        ], False
    if found.open_error is not None:
        return [
            _problem(
                "database", f"cannot open {db}: {found.open_error}", "check the file's owner and permissions"
            )
        ], False
    out = []
    mode = found.journal_mode
    if mode is not None:
        if mode.lower() == "wal":
            out.append(_ok("wal", "journal mode is WAL"))
        else:
            out.append(
                _problem(
                    "wal",
                    f"journal mode is {mode}, not WAL: processes block each other",
                    "run `threadloom doctor --fix` (sets WAL)",
                )
            )
    current, known = found.schema_version, found.schema_known
    if current is not None:
        if current > known:
            out.append(
                _problem(
                    "schema",
                    f"schema version {current} is newer than this threadloom knows ({known})",
                    "upgrade threadloom",
                )
            )
            return out, False
        if current < known:
            out.append(
                _warn(
                    "schema",
                    f"schema version {current} of {known}: migrations pending",
                    "they run on the next `threadloom serve` (or `threadloom doctor --fix`)",
                )
            )
        else:
            out.append(_ok("schema", f"schema version {current}"))
    if found.quick_check is not None:
        if found.quick_check == "ok":
            out.append(_ok("integrity", "SQLite quick_check passed"))
        else:
            out.append(
                _problem(
                    "integrity",
                    f"SQLite quick_check: {found.quick_check}",
                    "stop every threadloom process, copy the root, then `sqlite3 threads.db .recover`",
                )
            )
    if found.read_error is not None:
        out.append(
            _problem(
                "database",
                f"{db} cannot be read: {found.read_error}",
                "check the file; restore from a backup",
            )
        )
        return out, False
    return out, (current or 0) >= 1


# ---------------------------------------------------------------------- keys


def _key_kind(name: str, data: bytes) -> tuple[str, str | None]:
    """('private'|'public', problem or None) for a key file's bytes."""
    public = name.endswith(".pub") or "public" in name.lower()
    kind = "public" if public else "private"
    if not data.strip():
        return kind, "the file is empty"
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:  # cannot parse here: judge by shape only
        serialization = None  # type: ignore[assignment]
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        if serialization is None:
            return kind, None
        try:
            if b"PRIVATE" in text.split(b"\n", 1)[0]:
                key = serialization.load_pem_private_key(text, password=None)
                kind = "private"
                if not isinstance(key, ed25519.Ed25519PrivateKey):
                    return kind, f"a {type(key).__name__}, not an Ed25519 key"
            else:
                key = serialization.load_pem_public_key(text)
                kind = "public"
                if not isinstance(key, ed25519.Ed25519PublicKey):
                    return kind, f"a {type(key).__name__}, not an Ed25519 key"
        except (ValueError, TypeError) as exc:
            return kind, f"not a readable PEM key ({str(exc).split('. See ')[0].rstrip('.')})"
        return kind, None
    if text.startswith(b"ssh-ed25519 "):
        return "public", None
    if len(data) == 32:  # raw Ed25519 key bytes
        return kind, None
    try:
        decoded = bytes.fromhex(text.decode())
    except ValueError:
        decoded = b""
    if len(decoded) == 32:
        return kind, None
    import base64
    import binascii

    try:
        if len(base64.b64decode(text, validate=True)) == 32:
            return kind, None
    except (binascii.Error, ValueError):
        pass
    return kind, "not an Ed25519 key in a format threadloom reads (PEM, raw, hex or base64 of 32 bytes)"


def check_keys(root: Path) -> list[Check]:
    keys = root / "keys"
    if not keys.exists():
        return []
    if not keys.is_dir():
        return [
            _problem(
                "keys", f"{keys} is not a folder", f"move {keys} away; a new key pair is made on first use"
            )
        ]
    out = []
    files = sorted(p for p in keys.iterdir() if p.is_file() and not p.name.startswith("."))
    privates = 0
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            out.append(
                _problem(
                    "keys",
                    f"{path} cannot be read: {exc.strerror or exc}",
                    f"chown to this user and chmod 600 {path}",
                )
            )
            continue
        kind, problem = _key_kind(path.name, data)
        if problem:
            out.append(
                _problem(
                    "keys",
                    f"{path} ({kind} key) is broken: {problem}",
                    "restore the key from a backup; signatures made with the lost key cannot be "
                    "verified with a new one",
                )
            )
            continue
        if kind == "private":
            privates += 1
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & PRIVATE_MODE_MASK:
                out.append(
                    _problem(
                        "keys",
                        f"private key {path} is readable by others (mode {mode:o})",
                        f"chmod 600 {path}",
                    )
                )
                continue
        out.append(
            _ok("keys", f"{path.name}: {kind} key present" + (" and private" if kind == "private" else ""))
        )
    if not privates and not any(c.level == "problem" for c in out):
        out.append(_problem("keys", f"{keys} holds no private key", "restore the key pair from a backup"))
    mismatch = _pair_mismatch(files)
    if mismatch:
        out.append(
            _problem(
                "keys",
                mismatch,
                "restore the matching key pair from a backup (the public key is what verifiers trust)",
            )
        )
    return out


def _pair_mismatch(files: list[Path]) -> str | None:
    """A PEM private key and PEM public key in the same folder that do not belong together."""
    try:
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        return None
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    privates, publics = {}, {}
    for path in files:
        try:
            text = path.read_bytes().strip()
            if not text.startswith(b"-----BEGIN"):
                continue
            if b"PRIVATE" in text.split(b"\n", 1)[0]:
                privates[path.name] = (
                    serialization.load_pem_private_key(text, password=None).public_key().public_bytes(*raw)
                )
            else:
                publics[path.name] = serialization.load_pem_public_key(text).public_bytes(*raw)
        except (OSError, ValueError, TypeError):
            continue  # reported above
    if len(privates) == 1 and publics:
        ((priv_name, want),) = privates.items()
        wrong = [name for name, have in publics.items() if have != want]
        if wrong:
            return f"public key {', '.join(wrong)} does not belong to private key {priv_name}"
    return None


# ------------------------------------------------------------------ the data


async def check_data(
    service: ThreadService,
    root: Path,
    *,
    progress: Callable[[int], None] = lambda n: None,
    on_total: Callable[[int], None] = lambda n: None,
) -> list[Check]:
    mirror_root = root / "threads"
    dirs = {p.name for p in mirror_root.iterdir() if p.is_dir()} if mirror_root.is_dir() else set()
    threads = await service.all_threads()
    on_total(len(threads))
    out: list[Check] = []
    drifted = [f"{tid}: {problem}" for tid, problem in await find_drift(service, root, threads, progress)]
    asides = await find_set_aside(service, root, sorted(dirs))
    if drifted:
        shown = "; ".join(drifted[:5]) + (f"; and {len(drifted) - 5} more" if len(drifted) > 5 else "")
        out.append(
            _problem(
                "mirrors",
                f"{len(drifted)} of {len(threads)} thread mirrors differ from the database ({shown})",
                "run `threadloom doctor --fix` (rewrites mirrors from the database, "
                "which is the commit point)",
            )
        )
    if asides:
        shown = "; ".join(asides[:5]) + (f"; and {len(asides) - 5} more" if len(asides) > 5 else "")
        out.append(
            _problem(
                "mirrors",
                f"{len(asides)} transcript(s) were set aside because they held lines the database lacks "
                f"({shown})",
                "run `threadloom doctor --recover`: it restores the lines whose signatures verify with "
                "this root's key, reports the rest, and marks each file reviewed (nothing is deleted)",
            )
        )
    if not drifted and not asides:
        out.append(_ok("mirrors", f"{len(threads)} thread mirrors match the database"))
    known = {t.thread_id for t in threads}
    lost = check_lost(root, known)
    if lost is not None:
        out.append(lost)
    orphans = sorted(
        d
        for d in dirs
        if THREAD_ID_RE.fullmatch(d) and d not in known and not _transcript_lines(mirror_root / d)
    )
    if orphans:
        out.append(
            _problem(
                "orphans",
                f"{len(orphans)} mirror folder(s) without a thread in the database "
                f"({', '.join(orphans[:5])})",
                "run `threadloom doctor --fix` (sets them aside beside the others, nothing is deleted)",
            )
        )
    stale = await service.stale_threads(time.time())
    if stale:
        names = ", ".join(t.thread_id for t in stale[:5])
        out.append(
            _problem(
                "stale",
                f"{len(stale)} running thread(s) with no heartbeat for longer than their "
                f"stale_after ({names})",
                "`threadloom serve` sweeps them to error (timeout); or run `threadloom doctor --fix`",
            )
        )
    else:
        out.append(_ok("stale", "no running thread is past its stale_after"))
    return out


async def find_drift(
    service: ThreadService, root: Path, threads: list[Any], progress: Callable[[int], None] = lambda n: None
) -> list[tuple[str, str]]:
    """(thread id, what differs) for every thread whose mirror files disagree with the database.

    A live server writes a mirror just after its commit, so a difference is looked at again
    after a short pause and reported only if it is still there.
    """
    suspects = []
    for t in threads:
        if await _mirror_problem(service, root / "threads" / t.thread_id, t.thread_id):
            suspects.append(t.thread_id)
        progress(1)
    if suspects:
        await anyio.sleep(MIRROR_SETTLE)
    out = []
    for tid in suspects:
        problem = await _mirror_problem(service, root / "threads" / tid, tid)
        if problem:
            out.append((tid, problem))
    return out


async def find_set_aside(service: ThreadService, root: Path, dirs: list[str]) -> list[str]:
    """One line per set-aside transcript not reviewed yet: its thread, name and how it compares."""
    out = []
    for name in dirs:
        for path in set_aside_files(root / "threads" / name):
            try:
                data = path.read_bytes()
            except OSError as exc:
                out.append(f"{name}: {path.name} cannot be read ({exc.strerror})")
                continue
            try:
                db = [e.line.encode() for e in await service.all_events(name)]
            except ThreadloomError:
                db = []
            drift = compare(data, db)
            out.append(f"{name}: {path.name} {describe(drift)}")
    return out


async def _mirror_problem(service: ThreadService, d: Path, thread_id: str) -> str | None:
    try:
        on_disk = (d / TRANSCRIPT).read_bytes()
    except FileNotFoundError:
        on_disk = None
    except OSError as exc:
        return f"{TRANSCRIPT} cannot be read ({exc.strerror})"
    try:
        snapshot = (d / MANIFEST).read_bytes()
    except FileNotFoundError:
        snapshot = None
    except OSError as exc:
        return f"{MANIFEST} cannot be read ({exc.strerror})"
    try:
        thread = await service.get_thread(thread_id)
        db_text = (await service.transcript(thread_id)).encode()
    except ThreadloomError:
        return None  # deleted meanwhile: nothing to compare
    if on_disk is None:
        if thread.event_count:
            return f"{TRANSCRIPT} is missing"
    elif on_disk != db_text:
        return _first_difference(on_disk, db_text)
    if snapshot is None:
        return f"{MANIFEST} is missing"
    try:
        have = {k: v for k, v in json.loads(snapshot).items() if not k.startswith("_")}  # "_signature" etc.
    except (ValueError, AttributeError):
        return f"{MANIFEST} is not a JSON object"
    want = json.loads(manifest_bytes(thread))
    if have != want:
        fields = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
        return f"{MANIFEST} differs in {', '.join(fields[:5])}"
    return None


def _first_difference(disk: bytes, db: bytes) -> str:
    a, b = disk.split(b"\n"), db.split(b"\n")
    if a and not a[-1]:
        a.pop()
    if b and not b[-1]:
        b.pop()
    for i, (x, y) in enumerate(zip(a, b), start=1):
        if x != y:
            return f"{TRANSCRIPT} line {i} differs from the database"
    if len(a) < len(b):
        return f"{TRANSCRIPT} lacks the database's lines from {len(a) + 1} on"
    return f"{TRANSCRIPT} has {len(a) - len(b)} line(s) beyond the database's {len(b)}"


# --------------------------------------------------------------------- runner


@dataclass
class Report:
    root: str
    checks: list[Check]
    fixed: list[str]

    @property
    def ok(self) -> bool:
        return not any(c.level == "problem" for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "root": self.root,
            "problems": sum(c.level == "problem" for c in self.checks),
            "warnings": sum(c.level == "warn" for c in self.checks),
            "checks": [c.as_dict() for c in self.checks],
            "fixed": self.fixed,
        }


Confirm = Callable[[list[str]], bool]
"""Asked once with every step of ``--fix`` that moves a file aside; True lets them run."""


def _never(steps: list[str]) -> bool:
    return False


async def run_doctor(
    settings: Settings,
    *,
    fix: bool = False,
    recover: bool = False,
    confirm: Confirm = _never,
    progress: Callable[[int], None] = lambda n: None,
    on_total: Callable[[int], None] = lambda n: None,
) -> Report:
    """Every check on ``settings.root``; with ``recover``, rebuild lost events from the mirrors
    first; with ``fix``, the repairs (steps that move files aside only if ``confirm`` agrees)."""
    root = Path(settings.root)
    fixed: list[str] = []
    extra: list[Check] = []
    sqlite_root = settings.store == "sqlite" and (root / "threads.db").exists()
    if recover and settings.store == "sqlite" and (sqlite_root or (root / "threads").is_dir()):
        from .recover import run_recovery

        rec = await run_recovery(settings)
        fixed += [r.line() for r in rec.threads]
        fixed += [f"marked {name} reviewed (kept)" for name in rec.reviewed]
        if rec.error:
            extra.append(
                _problem(
                    "recover", rec.error, "fix what it names and run `threadloom doctor --recover` again"
                )
            )
        elif rec.untrusted_lines:
            extra.append(
                _warn(
                    "recover",
                    f"recovered {rec.recovered_events} event(s); {rec.untrusted_lines} line(s) could not be "
                    "trusted (no checkpoint signed by this root's key covers them) and were not imported",
                    "the files that hold them are kept beside the mirrors (….reviewed): compare them by hand",
                )
            )
        else:
            extra.append(_ok("recover", f"recovered {rec.recovered_events} event(s) from the mirrors"))
    if fix and sqlite_root:
        done, skipped = await _repair(settings, confirm)
        fixed += done
        if skipped:
            extra.append(
                _problem(
                    "fix",
                    f"{len(skipped)} repair step(s) were not run: they move files aside and were not confirmed "
                    f"({'; '.join(skipped[:5])}{'; and more' if len(skipped) > 5 else ''})",
                    "run `threadloom doctor --fix` on a terminal to be asked, or add --yes",
                )
            )
    if settings.store != "sqlite":
        checks = [
            _warn(
                "store",
                f"the {settings.store} store is not checked here: doctor checks SQLite roots "
                "(folder, database file, mirrors)",
                "use the database's own tools for its health",
            )
        ]
        if root.is_dir():
            checks += check_keys(root)
        return Report(str(root), checks, fixed)
    checks = check_root(root)
    if root.is_dir():
        checks += check_sqlite(settings)
        db_checks, usable = check_database(root, settings)
        checks += db_checks
        checks += check_keys(root)
        if usable:
            service = ThreadService.for_settings(settings, repair=False)
            try:
                async with service:
                    checks += await check_data(service, root, progress=progress, on_total=on_total)
                    state, detail, fix = await semantic_health(service.semantic)
                    checks.append(Check("semantic", state, detail, fix))
            except ThreadloomError as exc:
                checks.append(_problem("database", exc.message, "check the file; restore from a backup"))
        else:  # no usable database: every thread folder with lines is all that is left
            lost = check_lost(root, set())
            if lost is not None:
                checks.append(lost)
    return Report(str(root), checks + extra, fixed)


def _transcript_lines(folder: Path) -> int:
    try:
        return (folder / TRANSCRIPT).read_bytes().count(b"\n")
    except OSError:
        return 0


def check_lost(root: Path, known: set[str]) -> Check | None:
    """Thread folders with transcript lines whose thread the database does not hold: a lost
    database (a WAL cut to nothing, a restore) next to the only copy of its threads."""
    d = root / "threads"
    if not d.is_dir():
        return None
    lost = {
        p.name: n
        for p in d.iterdir()
        if p.is_dir() and THREAD_ID_RE.fullmatch(p.name) and p.name not in known
        for n in [_transcript_lines(p)]
        if n
    }
    if not lost:
        return None
    names = ", ".join(sorted(lost)[:5])
    return _problem(
        "lost",
        f"{len(lost)} thread folder(s) hold {sum(lost.values())} transcript line(s) but the database "
        f"has no such thread{'s' if len(lost) > 1 else ''} ({names}"
        f"{', …' if len(lost) > 5 else ''}): the database lost them (a cut WAL, a restored backup)",
        "stop every server on this root, then run `threadloom doctor --recover`: it rebuilds the "
        "threads whose thread.json and checkpoints verify with this root's key",
    )


async def _plan_fix(
    service: ThreadService, root: Path, threads: list[Any]
) -> tuple[list[str], list[tuple[str, Path, str]]]:
    """What ``--fix`` would do: (notes of what it leaves alone, [(thread, path to set aside, why)])."""
    leave: list[str] = []
    moves: list[tuple[str, Path, str]] = []
    for tid, _problem_text in await find_drift(service, root, threads):
        folder = root / "threads" / tid
        if folder.exists() and not folder.is_dir():
            moves.append((tid, folder, f"threads/{tid} is a file, not a folder"))
            continue
        try:
            data = (folder / TRANSCRIPT).read_bytes()
        except OSError:
            data = None
        if data is not None:
            db = [e.line.encode() for e in await service.all_events(tid)]
            drift = compare(data, db)
            if drift.kind == "holds":
                if drift.file_lines > drift.db_lines:
                    leave.append(
                        f"{tid}: transcript.jsonl {describe(drift)}, lines the database may have lost: "
                        "left as found for `threadloom doctor --recover`"
                    )
                else:
                    moves.append((tid, folder / TRANSCRIPT, f"{TRANSCRIPT} {describe(drift)}"))
        manifest = folder / MANIFEST
        if manifest.is_file() and await _manifest_differs(service, tid, manifest):
            moves.append((tid, manifest, f"{MANIFEST} differs from the database"))
    return leave, moves


async def _manifest_differs(service: ThreadService, tid: str, path: Path) -> bool:
    try:
        have = {k: v for k, v in json.loads(path.read_bytes()).items() if not k.startswith("_")}
        thread = await service.get_thread(tid)
    except (OSError, ValueError, AttributeError):
        return True
    except ThreadloomError:
        return False
    return have != json.loads(manifest_bytes(thread))


async def _repair(settings: Settings, confirm: Confirm) -> tuple[list[str], list[str]]:
    """The repairs of ``--fix``: (what was done, steps skipped for want of confirmation).

    Safe steps run without asking: WAL and migrations (by opening the store), mirrors
    completed from the database, modes tightened, stale threads swept. Steps that move a file
    aside (the file is the backup: renamed beside itself, never deleted) run only if
    ``confirm`` agrees. A transcript holding more lines than the database, and an orphan
    folder with transcript lines, are never moved: they are ``--recover``'s."""
    root = Path(settings.root)
    fixed: list[str] = []
    service = ThreadService.for_settings(settings, repair=False)
    async with service:  # opening sets WAL and runs pending migrations
        threads = await service.all_threads()
        known = {t.thread_id for t in threads}
        leave, moves = await _plan_fix(service, root, threads)
        fixed += [f"left {note}" for note in leave]
        mirror_root = root / "threads"
        for d in sorted(mirror_root.iterdir()) if mirror_root.is_dir() else []:
            if d.is_dir() and THREAD_ID_RE.fullmatch(d.name) and d.name not in known:
                if _transcript_lines(d):
                    fixed.append(
                        f"left the mirror folder {d.name} (a thread the database lacks, with transcript "
                        "lines) for `threadloom doctor --recover`"
                    )
                else:
                    moves.append((d.name, d, f"mirror folder {d.name} has no thread in the database"))
        steps = [f"set {p.relative_to(root)} aside ({why})" for _tid, p, why in moves]
        skipped: list[str] = []
        if moves and not confirm(steps):
            skipped, moves = steps, []
        for _tid, path, _why in moves:
            if path.is_dir():
                aside = path.rename(path.with_name(f"{path.name}{SET_ASIDE}{set_aside_stamp()}"))
            else:
                aside = set_aside(path)
                if path.name == TRANSCRIPT:  # seen and confirmed by the operator: reviewed
                    aside = aside.rename(aside.with_name(aside.name + REVIEWED))
            fixed.append(f"set {path.relative_to(root)} aside as {aside.name} (kept)")
        n = await service.reconcile_mirrors([t.thread_id for t in threads])
        if n:
            fixed.append(f"completed the mirrors of {n} thread(s) from the database")
        tightened = tighten([(p, m) for p, m in loose_paths(root) if p != root])
        if tightened:
            fixed.append(f"removed group and other permissions from {len(tightened)} folder(s) and file(s)")
        swept = await service.sweep_stale()
        if swept:
            fixed.append(f"moved {len(swept)} stale running thread(s) to error (timeout)")
    return fixed, skipped
