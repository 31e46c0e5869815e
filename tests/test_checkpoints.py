"""Checkpoint events and the database hash chain, checked the way an outside verifier would."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from integrity_helpers import turn, written_thread
from threadloom.config import Settings
from threadloom.errors import InvalidInputError
from threadloom.integrity import GENESIS, TranscriptHashes
from threadloom.models import Status
from threadloom.service import ThreadService
from threadloom.store import MemoryStore, SQLiteStore

pytestmark = pytest.mark.anyio


def check_checkpoints(data: bytes, public_key: object) -> list[int]:
    """Verify every checkpoint of a transcript independently; return their line numbers."""
    seen = []
    offset = 0
    for n, line in enumerate(data.split(b"\n")[:-1], start=1):
        ev = json.loads(line)
        if ev["type"] == "checkpoint":
            digest = hashlib.sha256(data[:offset]).hexdigest()
            assert ev["sha256"] == digest, f"checkpoint at line {n}"
            public_key.verify(base64.b64decode(ev["signature"]), bytes.fromhex(digest))  # type: ignore[attr-defined]
            seen.append(n)
        offset += len(line) + 1
    return seen


def types(data: bytes) -> list[str]:
    return [json.loads(line)["type"] for line in data.split(b"\n")[:-1]]


async def test_a_checkpoint_follows_every_result_and_the_end(service: ThreadService) -> None:
    tid = await written_thread(service, turns=2)
    data = (await service.transcript(tid)).encode()
    kinds = types(data)
    after_results = [kinds[i + 1] for i, k in enumerate(kinds) if k == "result"]
    assert after_results == ["checkpoint", "checkpoint"]
    assert kinds[-2:] == ["status", "checkpoint"]
    assert check_checkpoints(data, service.store.signer.public_key) == [7, 13, 15]


async def test_checkpoints_sign_the_sha256_of_all_preceding_file_bytes(settings: Settings) -> None:
    async with ThreadService(SQLiteStore(settings.root, durability="normal"), settings) as svc:
        tid = await written_thread(svc, turns=3)
    data = (settings.root / "threads" / tid / "transcript.jsonl").read_bytes()
    public = load_pem_public_key((settings.root / "keys" / "ed25519.pub").read_bytes())
    assert len(check_checkpoints(data, public)) == 4


async def test_each_row_carries_the_hash_of_its_predecessor(service: ThreadService) -> None:
    tid = await written_thread(service, turns=1)
    prev = bytes(32)
    for ev in await service.all_events(tid):
        assert ev.prev_hash == prev.hex()
        prev = hashlib.sha256(prev + ev.line.encode() + b"\n").digest()
    assert (await service.store.read_integrity(tid)).chain_head == prev.hex()
    assert (await service.all_events(tid))[0].prev_hash == GENESIS


async def test_a_batch_with_a_result_gets_one_checkpoint_after_its_last_event(service: ThreadService) -> None:
    t = await service.create_thread()
    out = await service.append(t.thread_id, turn(0) + [{"type": "message", "role": "user", "text": "more"}])
    assert out.seqs == [2, 3, 4, 5, 6, 7]  # the checkpoint is the server's, not in seqs
    kinds = types((await service.transcript(t.thread_id)).encode())
    assert kinds == [
        "status",
        "message",
        "tool_use",
        "tool_result",
        "message",
        "result",
        "message",
        "checkpoint",
    ]
    nxt = await service.append(
        t.thread_id, [{"type": "message", "role": "user", "text": "next"}], single=True
    )
    assert nxt.seq == 9


async def test_appends_without_a_result_write_no_checkpoint(service: ThreadService) -> None:
    t = await service.create_thread()
    for i in range(5):
        await service.append(t.thread_id, [{"type": "message", "role": "user", "text": str(i)}])
    assert "checkpoint" not in types((await service.transcript(t.thread_id)).encode())


async def test_a_replayed_result_append_writes_no_second_checkpoint(service: ThreadService) -> None:
    t = await service.create_thread()
    ev = [{"type": "result", "cost": 0.1}]
    first = await service.append(t.thread_id, ev, idempotency_key="k1")
    again = await service.append(t.thread_id, ev, idempotency_key="k1")
    assert again.replayed and again.seqs == first.seqs
    assert types((await service.transcript(t.thread_id)).encode()).count("checkpoint") == 1
    assert (await service.get_thread(t.thread_id)).usage.spend == pytest.approx(0.1)


async def test_a_continued_status_ends_with_a_checkpoint(service: ThreadService) -> None:
    t = await service.create_thread()
    await service.append(t.thread_id, [{"type": "message", "role": "user", "text": "hi"}])
    thread = await service.get_thread(t.thread_id)
    await service.store.commit(service.status_ops(thread, Status.CONTINUED, "handoff"))
    kinds = types((await service.transcript(t.thread_id)).encode())
    assert kinds[-2:] == ["status", "checkpoint"]
    assert (await service.verify_thread(t.thread_id)).ok


async def test_clients_cannot_append_checkpoints(service: ThreadService) -> None:
    t = await service.create_thread()
    with pytest.raises(InvalidInputError, match="written by the server only"):
        await service.append(t.thread_id, [{"type": "checkpoint", "sha256": "0" * 64, "signature": "x"}])


async def test_another_process_appending_between_checkpoints_is_hashed_in(settings: Settings) -> None:
    """Two stores on one root (as two processes): each one's running hash misses the other's lines."""
    a = ThreadService(SQLiteStore(settings.root, durability="normal"), settings)
    b = ThreadService(SQLiteStore(settings.root, durability="normal"), settings)
    async with a, b:
        t = await a.create_thread()
        await a.append(t.thread_id, turn(0))
        await b.append(t.thread_id, turn(1))
        await a.append(t.thread_id, [{"type": "message", "role": "user", "text": "from a"}])
        await a.append(t.thread_id, turn(2))
        await b.update_thread(t.thread_id, status="completed")
        data = (await a.transcript(t.thread_id)).encode()
        assert len(check_checkpoints(data, a.store.signer.public_key)) == 4
        assert (await a.verify_thread(t.thread_id)).ok
        assert (await b.verify_thread(t.thread_id)).ok


async def test_a_reopened_store_continues_the_running_hash_from_the_database(settings: Settings) -> None:
    async with ThreadService(SQLiteStore(settings.root, durability="normal"), settings) as svc:
        tid = await written_thread(svc, turns=2, complete=False)
    async with ThreadService(SQLiteStore(settings.root, durability="normal"), settings) as svc:
        await svc.append(tid, turn(5))
        report = await svc.verify_thread(tid)
    assert report.ok and report.checkpoints == 3


def test_the_running_hash_reads_only_the_lines_it_lacks() -> None:
    cache = TranscriptHashes()
    lines = [f'{{"seq":{i}}}' for i in range(1, 101)]
    asked: list[tuple[int, int]] = []

    def fetch(after: int, upto: int) -> list[str]:
        asked.append((after, upto))
        return lines[after:upto]

    v = cache.view()
    full = hashlib.sha256("".join(x + "\n" for x in lines[:50]).encode()).hexdigest()
    assert v.digest("t", 50, fetch) == full and asked == [(0, 50)]
    v.extend("t", 50, lines[50:60])
    v.publish()
    asked.clear()
    w = cache.view()
    want = hashlib.sha256("".join(x + "\n" for x in lines[:70]).encode()).hexdigest()
    assert w.digest("t", 70, fetch) == want
    assert asked == [(60, 70)]  # only the gap since the known state


def test_an_unpublished_view_leaves_the_cache_alone() -> None:
    cache = TranscriptHashes()
    v = cache.view()
    v.digest("t", 3, lambda a, b: ["a", "b", "c"][a:b])
    assert cache.get("t") is None  # a rolled-back transaction publishes nothing
    v.publish()
    assert cache.get("t") is not None and cache.get("t")[0] == 3  # type: ignore[index]


async def test_a_store_without_checkpoints_writes_none(settings: Settings) -> None:
    async with ThreadService(MemoryStore(checkpoints=False), settings) as svc:
        tid = await written_thread(svc, turns=1)
        assert "checkpoint" not in types((await svc.transcript(tid)).encode())


async def test_thread_json_is_signed_over_its_canonical_json(settings: Settings) -> None:
    async with ThreadService(SQLiteStore(settings.root, durability="normal"), settings) as svc:
        tid = await written_thread(svc, turns=1)
        served = await svc.manifest_json(tid)
    raw = (settings.root / "threads" / tid / "thread.json").read_bytes()
    assert raw.decode() == served
    data = json.loads(raw)
    signature = base64.b64decode(data.pop("_signature"))
    body = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    public = load_pem_public_key((settings.root / "keys" / "ed25519.pub").read_bytes())
    public.verify(signature, body)  # type: ignore[union-attr]
    assert data["thread_id"] == tid and data["status"] == "completed"


def test_the_keys_folder_is_documented_beside_the_code() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "integrity.md").read_text()
    for word in ("ed25519.key", "ed25519.pub", "prev_hash", "checkpoint", "_signature", "capabilities.md"):
        assert word in doc
