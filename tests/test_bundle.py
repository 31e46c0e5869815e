"""Export and import: exact round trips, idempotence, conflicts, legacy JSONL, malformed lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from cli_helpers import cli, cli_json, msg, open_root, populate
from threadloom.bundle import EXPORT_FIELDS
from threadloom.errors import ConflictError, InvalidInputError
from threadloom.models import StoredEvent, render_line
from threadloom.service import ThreadService

HAS_SEARCH = hasattr(ThreadService, "search_threads")


async def snapshot(root: Path) -> dict[str, Any]:
    """Every thread (manifest and counters), its event lines, its chain and its mirror."""
    out: dict[str, Any] = {}
    async with open_root(root) as svc:
        for t in await svc.all_threads():
            out[t.thread_id] = {
                "thread": t.model_dump(mode="json", include=EXPORT_FIELDS),
                "lines": [e.line for e in await svc.all_events(t.thread_id)],
                "chain": [c.thread_id for c in await svc.chain_threads(t.thread_id)],
                "mirror": (root / "threads" / t.thread_id / "transcript.jsonl").read_text(),
            }
            if HAS_SEARCH:
                out[t.thread_id]["search"] = (await svc.search_threads("docs")).model_dump(mode="json")  # type: ignore[attr-defined]
    return out


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "src"
    return root, anyio.run(populate, root)


def test_export_then_import_into_an_empty_root_gives_identical_threads_events_and_chains(
    source: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    src, ids = source
    bundle = tmp_path / "run.jsonl"
    summary = cli_json(src, "export", "--all", "-o", str(bundle))
    assert summary["threads"] == 4 and summary["chains"] == 3 and summary["file"] == str(bundle)
    dst = tmp_path / "dst"
    report = cli_json(dst, "import", str(bundle))
    assert report["ok"] and sorted(report["imported"]) == sorted(ids.values())
    before, after = anyio.run(snapshot, src), anyio.run(snapshot, dst)
    assert after == before
    assert after[ids["a"]]["chain"] == [ids["a"], ids["a2"]]
    for _tid, snap in after.items():  # the mirror files are written too, byte-equal to the DB
        assert snap["mirror"] == "".join(line + "\n" for line in snap["lines"])


def test_bundles_hold_whole_chains_and_children_only_when_asked(
    source: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    src, ids = source
    one = cli_json(src, "export", ids["a2"], "-o", str(tmp_path / "one.jsonl"))
    assert sorted(one["thread_ids"]) == sorted([ids["a"], ids["a2"]])
    family = cli_json(src, "export", ids["parent"], "--children", "-o", str(tmp_path / "family.jsonl"))
    assert sorted(family["thread_ids"]) == sorted(ids.values())
    records = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    assert records[0]["kind"] == "threadloom-bundle" and records[-1] == {
        "kind": "end",
        "threads": 2,
        "events": one["events"],
    }
    assert {"kind": "chain", "chain_root_id": ids["a"], "thread_ids": [ids["a"], ids["a2"]]} in records


def test_export_without_output_writes_the_bundle_to_stdout(source: tuple[Path, dict[str, str]]) -> None:
    src, ids = source
    res = cli(src, "export", ids["b"])
    assert res.exit_code == 0
    kinds = [json.loads(line)["kind"] for line in res.stdout.splitlines()]
    assert kinds[0] == "threadloom-bundle" and kinds[-1] == "end" and kinds.count("thread") == 1


def test_importing_the_same_bundle_again_changes_nothing(
    source: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    src, ids = source
    bundle = tmp_path / "run.jsonl"
    cli_json(src, "export", "--all", "-o", str(bundle))
    dst = tmp_path / "dst"
    cli_json(dst, "import", str(bundle))
    first = anyio.run(snapshot, dst)
    again = cli_json(dst, "import", str(bundle), str(bundle))
    assert again["imported"] == [] and sorted(again["skipped"]) == sorted(ids.values()) and again["ok"]
    assert anyio.run(snapshot, dst) == first


def test_a_conflicting_thread_is_refused_unless_renamed(
    source: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    src, ids = source
    bundle = tmp_path / "run.jsonl"
    cli_json(src, "export", "--all", "-o", str(bundle))

    async def diverge() -> None:
        async with open_root(src) as svc:
            await svc.update_thread(ids["b"], title="renamed in place")

    anyio.run(diverge)
    res = cli(src, "import", str(bundle), "--json")
    assert res.exit_code == 1
    report = json.loads(res.stdout)
    assert [r["thread_id"] for r in report["refused"]] == [ids["b"]]
    assert "--rename" in report["refused"][0]["error"]
    assert sorted(report["skipped"]) == sorted([ids["parent"], ids["a"], ids["a2"]])

    renamed = cli_json(src, "import", str(bundle), "--rename")
    new_b = renamed["renamed"][ids["b"]]
    assert renamed["imported"] == [new_b] and new_b != ids["b"]
    got = cli_json(src, "show", new_b)
    assert got["thread"]["title"] == "run the tests" and got["thread"]["chain_root_id"] == new_b
    assert got["thread"]["parent_id"] == ids["parent"]  # the parent was not renamed: the link stays


def test_renaming_a_chain_rewrites_its_links_and_server_events(
    source: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    src, ids = source
    bundle = tmp_path / "chain.jsonl"
    cli_json(src, "export", ids["a"], "-o", str(bundle))

    async def diverge() -> None:
        async with open_root(src) as svc:
            await svc.update_thread(ids["a2"], metadata={"touched": True})

    anyio.run(diverge)
    report = cli_json(src, "import", str(bundle), "--rename")
    new_a, new_a2 = report["renamed"][ids["a"]], report["renamed"][ids["a2"]]
    chain = cli_json(src, "show", new_a)["chain"]
    assert [t["thread_id"] for t in chain] == [new_a, new_a2]
    assert chain[0]["continuation_thread_id"] == new_a2 and chain[1]["continuation_of"] == new_a
    assert {t["chain_root_id"] for t in chain} == {new_a}
    events = [
        json.loads(line)["event"] for line in cli(src, "tail", new_a, "--json", "-n", "0").stdout.splitlines()
    ]
    assert [e["to_thread_id"] for e in events if e["type"] == "handoff"] == [new_a2]


def test_a_malformed_line_refuses_its_thread_and_names_file_and_line(
    source: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    src, ids = source
    bundle = tmp_path / "run.jsonl"
    cli_json(src, "export", "--all", "-o", str(bundle))
    lines = bundle.read_text().splitlines()
    bad = next(
        i
        for i, line in enumerate(lines)
        if json.loads(line).get("thread_id") == ids["b"] and '"seq":2' in line
    )
    lines[bad] = lines[bad][:40]  # cut mid-object: not JSON any more
    bundle.write_text("\n".join(lines) + "\n")
    dst = tmp_path / "dst"
    res = cli(dst, "import", str(bundle), "--json")
    assert res.exit_code == 1
    report = json.loads(res.stdout)
    assert [r["thread_id"] for r in report["refused"]] == [ids["b"]]
    assert report["refused"][0]["where"] == f"{bundle}:{bad + 1}"
    assert "not valid JSON" in report["refused"][0]["error"]
    assert sorted(report["imported"]) == sorted([ids["parent"], ids["a"], ids["a2"]])
    human = cli(tmp_path / "dst2", "import", str(bundle))
    assert f"{bundle}:{bad + 1}" in human.stderr and human.exit_code == 1


def test_a_bad_event_in_a_chain_refuses_the_whole_chain(
    source: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    src, ids = source
    bundle = tmp_path / "run.jsonl"
    cli_json(src, "export", ids["a"], "-o", str(bundle))
    lines = bundle.read_text().splitlines()
    bad = next(i for i, line in enumerate(lines) if json.loads(line).get("thread_id") == ids["a2"])
    rec = json.loads(lines[bad])
    rec["event"]["type"] = "telepathy"
    lines[bad] = json.dumps(rec)
    bundle.write_text("\n".join(lines) + "\n")
    res = cli(tmp_path / "dst", "import", str(bundle), "--json")
    report = json.loads(res.stdout)
    assert res.exit_code == 1 and report["imported"] == []
    by_id = {r["thread_id"]: r for r in report["refused"]}
    assert set(by_id) == {ids["a"], ids["a2"]}
    assert by_id[ids["a2"]]["where"] == f"{bundle}:{bad + 1}" and "telepathy" in by_id[ids["a2"]]["error"]


def test_a_truncated_bundle_imports_only_complete_chains(
    source: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    src, ids = source
    bundle = tmp_path / "run.jsonl"
    cli_json(src, "export", "--all", "-o", str(bundle))
    lines = bundle.read_text().splitlines()
    bundle.write_text("\n".join(lines[:-3]) + "\n")  # the end record and the last events are gone
    res = cli(tmp_path / "dst", "import", str(bundle), "--json")
    report = json.loads(res.stdout)
    assert res.exit_code == 1
    assert any("no end record" in p for p in report["problems"])
    assert report["refused"] and all(r["thread_id"] not in report["imported"] for r in report["refused"])


LEGACY = [
    {
        "agentId": "coder",
        "createdAt": "2025-03-01T10:00:00Z",
        "updatedAt": "2025-03-01T10:05:00Z",
        "title": "fix the build",
        "taskId": "T-42",
        "status": "completed",
        "runtime": "old-agent 2.1",
    },
    {"role": "user", "content": "the build is red", "timestamp": "2025-03-01T10:00:01Z"},
    {"role": "assistant", "text": "looking at the log"},
    {"type": "tool_use", "id": "c1", "name": "sh", "input": {"cmd": "make"}},
    {"type": "tool_result", "tool_use_id": "c1", "output": "error: missing header"},
    {"role": "assistant", "content": [{"type": "text", "text": "fixed the include"}], "ts": 1740823500},
]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_a_legacy_jsonl_file_imports_with_untyped_lines_as_messages(tmp_path: Path) -> None:
    legacy = write_jsonl(tmp_path / "session.jsonl", LEGACY)
    root = tmp_path / "root"
    report = cli_json(root, "import", str(legacy))
    assert report["ok"] and len(report["imported"]) == 1
    tid = report["imported"][0]
    thread = cli_json(root, "show", tid)["thread"]
    assert (
        thread["agent_id"] == "coder"
        and thread["title"] == "fix the build"
        and thread["status"] == "completed"
    )
    assert (
        thread["created_at"] == "2025-03-01T10:00:00.000000Z"
        and thread["updated_at"] == "2025-03-01T10:05:00.000000Z"
    )
    assert thread["metadata"] == {"task_id": "T-42", "legacy": {"runtime": "old-agent 2.1"}}
    events = [
        json.loads(line)["event"] for line in cli(root, "tail", tid, "--json", "-n", "0").stdout.splitlines()
    ]
    assert [(e["seq"], e["type"]) for e in events] == [
        (1, "message"),
        (2, "message"),
        (3, "tool_use"),
        (4, "tool_result"),
        (5, "message"),
    ]
    assert events[0] == {
        "seq": 1,
        "ts": "2025-03-01T10:00:01.000000Z",
        "type": "message",
        "role": "user",
        "text": "the build is red",
    }
    assert events[1]["ts"] == events[0]["ts"]  # no time of its own: the previous line's
    assert events[4]["text"] == "fixed the include" and events[4]["ts"] == "2025-03-01T10:05:00.000000Z"
    assert thread["text_chars"] == sum(
        len(e.get("text", "")) for e in events if e["type"] == "message"
    ) + len("sh") + len('{"cmd":"make"}') + len("error: missing header")
    again = cli_json(root, "import", str(legacy))
    assert again["skipped"] == [tid] and again["imported"] == []


def test_a_malformed_legacy_line_refuses_that_file_only(tmp_path: Path) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", LEGACY)
    bad = write_jsonl(
        tmp_path / "bad.jsonl",
        [
            {"agentId": "coder", "createdAt": "2025-03-02T10:00:00Z", "title": "broken"},
            {"role": "user", "text": "fine"},
            {"role": "robot", "text": "not a role"},
            {"role": "user", "text": "never read"},
        ],
    )
    res = cli(tmp_path / "root", "import", str(bad), str(good), "--json")
    assert res.exit_code == 1
    report = json.loads(res.stdout)
    assert len(report["imported"]) == 1 and len(report["refused"]) == 1
    assert report["refused"][0]["where"] == f"{bad}:3" and "role" in report["refused"][0]["error"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b"\xff\xfe not text", "not UTF-8"),
        (b"[1, 2]\n", "must be a JSON object"),
        (b'{"kind": "threadloom-bundle", "format": 99}\n', "format 99 is not supported"),
    ],
)
def test_an_unreadable_file_is_one_line_and_imports_nothing(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(content)
    other = write_jsonl(tmp_path / "ok.jsonl", LEGACY)
    res = cli(tmp_path / "root", "import", str(other), str(path))
    assert res.exit_code == 1 and message in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert cli_json(tmp_path / "root", "ls")["threads"] == []


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    res = cli(tmp_path / "root", "import", str(tmp_path / "absent.jsonl"))
    assert res.exit_code == 1 and "absent.jsonl: no such file" in res.stderr


# ------------------------------------------------------------- the store op


@pytest.mark.anyio
async def test_import_threads_keeps_seqs_timestamps_and_counters(service: ThreadService) -> None:
    t = await service.create_thread(title="orig")
    await service.append(t.thread_id, [msg("hello"), {"type": "result", "input_tokens": 500}])
    t = await service.update_thread(t.thread_id, status="completed")
    events = await service.all_events(t.thread_id)
    await service.store.delete_threads([t.thread_id])
    await service.import_threads([(t, events)])
    back = await service.get_thread(t.thread_id)
    assert back.model_dump(include=EXPORT_FIELDS) == t.model_dump(include=EXPORT_FIELDS)
    assert [e.line for e in await service.all_events(t.thread_id)] == [e.line for e in events]
    with pytest.raises(ConflictError) as err:
        await service.import_threads([(t, events)])
    assert err.value.rule == "thread_exists"


@pytest.mark.anyio
async def test_import_threads_refuses_gaps_and_writes_nothing(service: ThreadService) -> None:
    t = await service.create_thread()
    await service.append(t.thread_id, [msg("a"), msg("b")])
    t = await service.get_thread(t.thread_id)
    events = await service.all_events(t.thread_id)
    await service.store.delete_threads([t.thread_id])
    other = (await service.create_thread()).thread_id
    gap = [events[0], events[2]]
    with pytest.raises(InvalidInputError) as err:
        await service.import_threads([(t.model_copy(update={"event_count": 2}), gap)])
    assert err.value.rule == "import_seq"
    line = render_line(1, events[0].ts, {"type": "message", "role": "user", "text": "x"})
    with pytest.raises(InvalidInputError):  # the count disagrees: and the first op must not stay either
        await service.import_threads(
            [
                (t, events),
                (
                    t.model_copy(update={"thread_id": "0123456789ab"}),
                    [StoredEvent("0123456789ab", 1, events[0].ts, "message", line)],
                ),
            ]
        )
    assert set((await service.store.get_threads([t.thread_id, "0123456789ab", other])).keys()) == {other}
