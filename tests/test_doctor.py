"""``threadloom doctor``: each problem found, named, with its fix; --fix repairs what is safe."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest

from cli_helpers import cli, msg, open_root, populate


def doctor(root: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    res = cli(root, "doctor", "--json", *extra)
    return res.exit_code, json.loads(res.stdout)


def by_name(report: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [c for c in report["checks"] if c["name"] == name]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    anyio.run(populate, r)
    os.chmod(r, 0o700)
    return r


def test_a_healthy_root_passes_every_check(root: Path) -> None:
    code, report = doctor(root)
    assert code == 0 and report["ok"] and report["problems"] == 0
    names = {c["name"] for c in report["checks"]}
    assert {
        "permissions",
        "disk",
        "sqlite",
        "fts5",
        "wal",
        "schema",
        "integrity",
        "mirrors",
        "stale",
    } <= names
    assert all(
        c["level"] == "ok" for c in report["checks"] if c["name"] != "disk"
    )  # disk depends on the machine


def test_a_drifted_mirror_is_reported_with_its_line_and_fixed_by_fix(root: Path) -> None:
    tid = sorted(p.name for p in (root / "threads").iterdir())[0]
    path = root / "threads" / tid / "transcript.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace('"type"', '"tipe"')
    path.write_text("".join(lines))
    code, report = doctor(root)
    assert code == 1 and not report["ok"]
    [mirrors] = by_name(report, "mirrors")
    assert mirrors["level"] == "problem" and f"{tid}: transcript.jsonl line 2 differs" in mirrors["detail"]
    assert "doctor --fix" in mirrors["fix"]
    edited = path.read_bytes()
    code, unconfirmed = doctor(root, "--fix")  # not a terminal: moving the file aside needs --yes
    assert code == 1 and path.read_bytes() == edited
    [skipped] = by_name(unconfirmed, "fix")
    assert "--yes" in skipped["fix"] and f"threads/{tid}/transcript.jsonl" in skipped["detail"]
    code, fixed = doctor(root, "--fix", "--yes")
    assert code == 0 and fixed["fixed"] and by_name(fixed, "mirrors")[0]["level"] == "ok"
    [kept] = (root / "threads" / tid).glob("transcript.jsonl.set-aside-*")
    assert kept.read_bytes() == edited  # the backup of what --fix changed


def test_an_edited_manifest_snapshot_is_drift_too(root: Path) -> None:
    tid = sorted(p.name for p in (root / "threads").iterdir())[0]
    path = root / "threads" / tid / "thread.json"
    data = json.loads(path.read_text())
    data["title"] = "forged"
    path.write_text(json.dumps(data))
    code, report = doctor(root)
    assert code == 1 and "thread.json differs in title" in by_name(report, "mirrors")[0]["detail"]


def test_a_broken_key_file_is_reported(root: Path) -> None:
    keys = root / "keys"
    shutil.rmtree(keys, ignore_errors=True)  # the store made a key pair: start from none
    keys.mkdir()
    (keys / "ed25519.key").write_text(
        "-----BEGIN PRIVATE KEY-----\nnot base64 at all!\n-----END PRIVATE KEY-----\n"
    )
    os.chmod(keys / "ed25519.key", 0o600)
    code, report = doctor(root)
    assert code == 1
    [key] = by_name(report, "keys")
    assert key["level"] == "problem" and "ed25519.key" in key["detail"] and "broken" in key["detail"]
    assert key["fix"]


def test_a_private_key_readable_by_others_is_reported_with_chmod(root: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    keys = root / "keys"
    shutil.rmtree(keys, ignore_errors=True)  # the store made a key pair: start from none
    keys.mkdir()
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (keys / "ed25519.key").write_bytes(pem)
    (keys / "signing.pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    os.chmod(keys / "ed25519.key", 0o644)
    code, report = doctor(root)
    assert code == 1
    bad = [c for c in by_name(report, "keys") if c["level"] == "problem"]
    assert len(bad) == 1 and "readable by others" in bad[0]["detail"] and "chmod 600" in bad[0]["fix"]
    os.chmod(keys / "ed25519.key", 0o600)
    code, report = doctor(root)
    assert [c["level"] for c in by_name(report, "keys")] == ["ok"] * len(by_name(report, "keys"))


def test_an_empty_keys_folder_has_no_key(root: Path) -> None:
    shutil.rmtree(root / "keys", ignore_errors=True)
    (root / "keys").mkdir()
    code, report = doctor(root)
    assert code == 1 and "holds no private key" in by_name(report, "keys")[0]["detail"]


def test_a_database_not_in_wal_mode_is_a_problem_that_fix_repairs(root: Path) -> None:
    conn = sqlite3.connect(root / "threads.db")
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()
    code, report = doctor(root)
    assert code == 1 and by_name(report, "wal")[0]["level"] == "problem"
    code, report = doctor(root, "--fix")
    assert code == 0 and by_name(report, "wal")[0]["level"] == "ok"


def test_stale_running_threads_and_orphan_mirrors_are_reported_and_fixed(tmp_path: Path) -> None:
    root = tmp_path / "root"

    async def setup() -> str:
        async with open_root(root) as svc:
            t = (await svc.create_thread(stale_after=0.001)).thread_id
            await svc.append(t, [msg("then silence")])
            return t

    tid = anyio.run(setup)
    os.chmod(root, 0o700)
    (root / "threads" / "0123456789ab").mkdir()
    code, report = doctor(root)
    assert code == 1
    assert tid in by_name(report, "stale")[0]["detail"]
    assert "0123456789ab" in by_name(report, "orphans")[0]["detail"]
    code, report = doctor(root, "--fix", "--yes")
    assert code == 0, report
    assert not (root / "threads" / "0123456789ab").exists()
    assert any("stale" in f for f in report["fixed"])


def test_a_missing_root_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    code, report = doctor(tmp_path / "nowhere")
    assert (
        code == 1
        and report["checks"][0]["name"] == "root"
        and "does not exist" in report["checks"][0]["detail"]
    )
    assert not (tmp_path / "nowhere").exists()


def test_human_output_prints_ok_and_problem_lines_with_fixes(root: Path) -> None:
    shutil.rmtree(root / "keys", ignore_errors=True)
    (root / "keys").mkdir()
    res = cli(root, "doctor")
    assert res.exit_code == 1
    assert "OK" in res.stdout and "PROBLEM" in res.stdout and "fix:" in res.stdout
    assert "problem(s)" in res.stdout


def test_a_public_key_of_another_pair_is_reported(root: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    keys = root / "keys"
    shutil.rmtree(keys, ignore_errors=True)  # the store made a key pair: start from none
    keys.mkdir()
    mine, other = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    (keys / "ed25519.key").write_bytes(
        mine.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    os.chmod(keys / "ed25519.key", 0o600)
    (keys / "ed25519.pub").write_bytes(
        other.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    code, report = doctor(root)
    assert code == 1
    assert any("does not belong to private key ed25519.key" in c["detail"] for c in by_name(report, "keys"))
