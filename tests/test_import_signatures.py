"""Imported threads verify (issue 14.9): the source's signatures are kept with the key that made
them, the importing root countersigns the import, ``verify`` says "imported, signed by key K
(known / unknown)", a root can be told to trust another root's key, and ``threadloom verify``
works against PostgreSQL (``--store``)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest

from cli_helpers import cli, cli_json, msg, open_root, populate
from threadloom.bundle import import_files
from threadloom.integrity import KEYS_DIR, PUBLIC_KEY_FILE
from threadloom.service import ThreadService
from threadloom.verify import VerifyReport


@pytest.fixture
def exported(tmp_path: Path) -> tuple[Path, dict[str, str], Path]:
    src = tmp_path / "src"
    ids = anyio.run(populate, src)
    bundle = tmp_path / "run.jsonl"
    cli_json(src, "export", "--all", "-o", str(bundle))
    return src, ids, bundle


def key_id(root: Path) -> str:
    return cli_json(root, "key")["key_id"]


def reports(root: Path) -> dict[str, dict[str, Any]]:
    res = cli(root, "verify", "--all", "--json")
    out = json.loads(res.stdout)
    return {r["thread_id"]: r for r in out["reports"]} | {"_exit": res.exit_code}  # type: ignore[dict-item]


def test_imported_threads_verify_as_signed_by_the_source_key(
    exported: tuple[Path, dict[str, str], Path], tmp_path: Path
) -> None:
    src, ids, bundle = exported
    dst = tmp_path / "dst"
    assert cli_json(dst, "import", str(bundle))["ok"]
    got = reports(dst)
    assert got.pop("_exit") == 0, [r["summary"] for r in got.values() if not r["ok"]]
    source_key = key_id(src)
    for tid in ids.values():
        r = got[tid]
        assert r["ok"], r["problems"]
        assert r["imported"]["countersigned_by"] == key_id(dst)
        assert r["imported"]["events"] == r["events"]
        signers = {u["key_id"]: u for u in r["imported"]["signed_by"]}
        assert list(signers) == [source_key]  # every thread of the run ended: each has checkpoints
        assert signers[source_key]["known"] is False and signers[source_key]["checkpoints"] >= 1
        assert f"signed by key {source_key} (unknown)" in r["summary"]
        assert "forged" not in r["summary"]
    human = cli(dst, "verify", ids["a"])
    assert human.exit_code == 0 and f"signed by key {source_key} (unknown)" in human.stdout


def test_a_trusted_key_makes_the_signer_known(
    exported: tuple[Path, dict[str, str], Path], tmp_path: Path
) -> None:
    src, ids, bundle = exported
    dst = tmp_path / "dst"
    cli_json(dst, "import", str(bundle))
    pub = src / KEYS_DIR / PUBLIC_KEY_FILE
    added = cli_json(dst, "trust", str(pub))
    assert added["trusted"][0]["key_id"] == key_id(src) and added["trusted"][0]["new"] is True
    assert cli_json(dst, "trust", str(pub))["trusted"][0]["new"] is False  # twice changes nothing
    assert [k["key_id"] for k in cli_json(dst, "trust", "--list")["keys"]] == [key_id(src)]
    r = reports(dst)[ids["a"]]
    assert r["ok"] and r["imported"]["signed_by"][0]["known"] is True
    assert f"signed by key {key_id(src)} (known)" in r["summary"]


def test_the_trusted_keys_setting_names_key_files(
    exported: tuple[Path, dict[str, str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, ids, bundle = exported
    dst = tmp_path / "dst"
    cli_json(dst, "import", str(bundle))
    monkeypatch.setenv("THREADLOOM_TRUSTED_KEYS", str(src / KEYS_DIR / PUBLIC_KEY_FILE))
    assert reports(dst)[ids["b"]]["imported"]["signed_by"][0]["known"] is True


def test_trust_refuses_a_file_that_is_not_a_public_key(tmp_path: Path) -> None:
    bad = tmp_path / "not.pub"
    bad.write_text("hello")
    res = cli(tmp_path / "dst", "trust", str(bad))
    assert res.exit_code == 2 and "[public_key_format]" in res.stderr


def test_an_imported_row_edited_afterwards_fails(
    exported: tuple[Path, dict[str, str], Path], tmp_path: Path
) -> None:
    _src, ids, bundle = exported
    dst = tmp_path / "dst"
    cli_json(dst, "import", str(bundle))
    with sqlite3.connect(dst / "threads.db") as conn:
        conn.execute(
            "UPDATE events SET line = replace(line, 'build the docs', 'delete the repo')"
            " WHERE thread_id = ? AND seq = 2",
            (ids["a"],),
        )
    r = reports(dst)[ids["a"]]
    assert not r["ok"] and r["first_bad_line"] == 2
    assert {"hash_chain", "import_hash"} <= {p["rule"] for p in r["problems"]}


def test_a_forged_import_record_fails_its_countersignature(
    exported: tuple[Path, dict[str, str], Path], tmp_path: Path
) -> None:
    _src, ids, bundle = exported
    dst = tmp_path / "dst"
    cli_json(dst, "import", str(bundle))
    with sqlite3.connect(dst / "threads.db") as conn:
        (text,) = conn.execute(
            "SELECT record FROM thread_imports WHERE thread_id = ?", (ids["b"],)
        ).fetchone()
        record = json.loads(text)
        record["imported_at"] = "2020-01-01T00:00:00.000000Z"
        conn.execute(
            "UPDATE thread_imports SET record = ? WHERE thread_id = ?", (json.dumps(record), ids["b"])
        )
    r = reports(dst)[ids["b"]]
    assert not r["ok"] and "import_countersignature" in {p["rule"] for p in r["problems"]}


def test_a_bundle_edited_before_import_imports_but_fails_verification(
    exported: tuple[Path, dict[str, str], Path], tmp_path: Path
) -> None:
    _src, ids, bundle = exported
    text = bundle.read_text().replace("build the docs", "delete the repo")
    forged = tmp_path / "forged.jsonl"
    forged.write_text(text)
    dst = tmp_path / "dst"
    assert cli_json(dst, "import", str(forged))["ok"]  # evidence is kept, never refused
    r = reports(dst)[ids["a"]]
    assert not r["ok"] and r["first_bad_line"] is not None
    assert "checkpoint_hash" in {p["rule"] for p in r["problems"]}


def forge_first_checkpoint(bundle: Path, tid: str, out: Path, *, keyless: bool = False) -> None:
    lines = bundle.read_text().splitlines()
    for i, line in enumerate(lines):
        rec = json.loads(line)
        if keyless and rec.get("kind") == "threadloom-bundle":
            del rec["keys"]
        if keyless and rec.get("kind") == "thread":
            del rec["signed_by"]
        if rec.get("kind") == "event" and rec["thread_id"] == tid and rec["event"]["type"] == "checkpoint":
            sig = rec["event"]["signature"]
            rec["event"]["signature"] = ("A" if sig[0] != "A" else "B") + sig[1:]
            tid = ""  # only the first
        lines[i] = json.dumps(rec, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    out.write_text("\n".join(lines) + "\n")


def test_a_forged_checkpoint_signature_in_a_bundle_fails(
    exported: tuple[Path, dict[str, str], Path], tmp_path: Path
) -> None:
    """The bundle says key K signed it, and K does not verify it: forged before the import."""
    src, ids, bundle = exported
    forged = tmp_path / "forged.jsonl"
    forge_first_checkpoint(bundle, ids["a"], forged)
    dst = tmp_path / "dst"
    cli_json(dst, "import", str(forged))
    r = reports(dst)[ids["a"]]
    assert not r["ok"]
    problem = next(p for p in r["problems"] if p["rule"] == "checkpoint_signature")
    assert key_id(src) in problem["message"] and "forged" in problem["message"]


def test_a_bundle_without_keys_imports_as_signed_by_an_unknown_key(
    exported: tuple[Path, dict[str, str], Path], tmp_path: Path
) -> None:
    """A bundle of an older threadloom names no key: its signatures cannot be checked, which
    verify says plainly; the countersignature still proves nothing changed since the import."""
    _src, ids, bundle = exported
    old = tmp_path / "old.jsonl"
    forge_first_checkpoint(bundle, "", old, keyless=True)
    dst = tmp_path / "dst"
    cli_json(dst, "import", str(old))
    r = reports(dst)[ids["a"]]
    assert r["ok"], r["problems"]
    assert [u["key_id"] for u in r["imported"]["signed_by"]] == [None]
    assert "a key this root has never seen (unknown)" in r["summary"]


def test_a_re_exported_thread_keeps_every_signer(
    exported: tuple[Path, dict[str, str], Path], tmp_path: Path
) -> None:
    """A -> B -> C: what A signed stays A's, what B added (a resume) is B's."""
    src, ids, bundle = exported
    b_root, c_root = tmp_path / "b", tmp_path / "c"
    cli_json(b_root, "import", str(bundle))

    async def resume() -> str:
        async with open_root(b_root) as svc:
            out = await svc.resume(ids["b"], "try the tests again")
            await svc.append(out.thread.thread_id, [msg("passed", "assistant"), {"type": "result"}])
            return out.thread.thread_id

    resumed = anyio.run(resume)
    again = tmp_path / "again.jsonl"
    cli_json(b_root, "export", "--all", "-o", str(again))
    cli_json(c_root, "import", str(again))
    got = reports(c_root)
    assert got.pop("_exit") == 0, [r["summary"] for r in got.values() if not r["ok"]]
    signers = [u["key_id"] for u in got[ids["b"]]["imported"]["signed_by"]]
    assert signers == [key_id(src), key_id(b_root)]  # A's checkpoints, then B's after the resume
    assert [u["key_id"] for u in got[resumed]["imported"]["signed_by"]] == [key_id(b_root)]


def test_a_renamed_import_verifies_and_says_so(
    exported: tuple[Path, dict[str, str], Path], tmp_path: Path
) -> None:
    src, ids, bundle = exported
    lines = []
    for line in bundle.read_text().splitlines():  # other manifests under the same ids: a conflict
        rec = json.loads(line)
        if rec.get("kind") == "thread":
            rec["thread"]["title"] = "a copy"
        lines.append(json.dumps(rec, separators=(",", ":"), sort_keys=True, ensure_ascii=False))
    copy = tmp_path / "copy.jsonl"
    copy.write_text("\n".join(lines) + "\n")
    assert cli_json(src, "import", "--rename", str(copy))["renamed"]  # into the root it came from
    got = reports(src)
    assert got.pop("_exit") == 0, [r["summary"] for r in got.values() if not r["ok"]]
    renamed = [r for r in got.values() if r["imported"] is not None]
    assert len(renamed) == len(ids)
    assert {r["imported"]["renamed_from"] for r in renamed} == set(ids.values())
    assert all(u["known"] for r in renamed for u in r["imported"]["signed_by"])  # its own key


def test_a_legacy_file_import_verifies(tmp_path: Path) -> None:
    legacy = tmp_path / "old.jsonl"
    legacy.write_text(
        json.dumps({"agentId": "old", "createdAt": "2024-01-01T00:00:00Z", "title": "legacy"})
        + "\n"
        + json.dumps({"role": "user", "content": "hello"})
        + "\n"
    )
    dst = tmp_path / "dst"
    report = cli_json(dst, "import", str(legacy))
    r = reports(dst)[report["imported"][0]]
    assert r["ok"], r["problems"]  # a completed thread without a checkpoint: the countersignature covers it
    assert r["imported"]["signed_by"] == []


async def _resume_imported(root: Path, tid: str) -> VerifyReport:
    async with open_root(root) as svc:
        out = await svc.resume(tid, "one more thing")
        return await svc.verify_thread(out.previous_thread_id)


def test_an_imported_thread_can_be_resumed(
    exported: tuple[Path, dict[str, str], Path], tmp_path: Path
) -> None:
    _src, ids, bundle = exported
    dst = tmp_path / "dst"
    cli_json(dst, "import", str(bundle))
    report = anyio.run(_resume_imported, dst, ids["b"])
    assert report.ok, report.problems


def test_verify_works_against_postgresql(pg_dsn: str, tmp_path: Path) -> None:
    from threadloom.config import Settings
    from threadloom.service import ThreadService
    from threadloom.store.postgres import PostgresStore

    async def make() -> str:
        async with ThreadService(PostgresStore(pg_dsn), Settings(root=tmp_path / "root")) as svc:
            t = await svc.create_thread()
            await svc.append(t.thread_id, [msg("hello"), {"type": "result"}])
            return t.thread_id

    tid = anyio.run(make)
    root = tmp_path / "elsewhere"  # no threads.db: the data is in PostgreSQL
    res = cli(root, "verify", tid, "--store", pg_dsn)
    assert res.exit_code == 0, res.stderr + res.stdout
    assert f"{tid}: ok" in res.stdout
    res = cli(root, "verify", "--all", "--json", "--store", pg_dsn)
    assert res.exit_code == 0 and json.loads(res.stdout)["threads"] == 1


@pytest.mark.anyio
async def test_imports_verify_on_every_backend(
    service: ThreadService, exported: tuple[Path, dict[str, str], Path]
) -> None:
    src, ids, bundle = exported
    report = await import_files(service, [bundle])
    assert sorted(report.imported) == sorted(ids.values())
    for tid in ids.values():
        r = await service.verify_thread(tid)
        assert r.ok, r.problems
        assert r.imported is not None and [u.key_id for u in r.imported.signed_by] == [key_id(src)]
    out = await service.resume(ids["b"], "again")  # the quick check hands imported threads to the full one
    assert out.previous_thread_id == ids["b"]
    again = await service.verify_thread(ids["b"])
    assert again.ok and again.imported is not None  # B's own thread_resumed and checkpoint after them
    assert {u.key_id for u in again.imported.signed_by} == {key_id(src)}
    assert await service.delete_threads([ids["b"]], chain=True, force=True)
    assert await service.store.import_records([ids["b"]]) == {}


@pytest.mark.anyio
async def test_a_thread_deleted_and_imported_again_under_its_id_signs_its_new_lines(
    service: ThreadService, tmp_path: Path
) -> None:
    """The running hash a process keeps of a thread must not outlive the thread: an import
    under the same id with other lines would otherwise sign a checkpoint over the old ones."""
    from threadloom.bundle import collect_chains, export_bundle

    t = await service.create_thread()
    await service.append(t.thread_id, [msg("first words"), msg("an answer", "assistant")])
    bundle = tmp_path / "one.jsonl"
    with open(bundle, "w") as f:
        await export_bundle(service, await collect_chains(service, [t.thread_id]), f)
    await service.delete_threads([t.thread_id], force=True)
    bundle.write_text(bundle.read_text().replace("first words", "other words"))
    assert (await import_files(service, [bundle])).imported == [t.thread_id]
    await service.append(t.thread_id, [msg("more"), {"type": "result"}])  # a checkpoint, signed here
    report = await service.verify_thread(t.thread_id)
    assert report.ok, report.problems
