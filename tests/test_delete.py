"""Deleting threads: idempotent, whole chains only, ended threads only unless forced; the MCP
tool exists only when the server allows it."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from mcp import Client

from cli_helpers import cli, cli_json, hand_off, msg, populate
from threadloom.errors import InvalidStateError
from threadloom.mcp_server import build_server
from threadloom.service import ThreadService


async def finished(service: ThreadService, **kw: object) -> str:
    tid = (await service.create_thread(**kw)).thread_id  # type: ignore[arg-type]
    await service.update_thread(tid, status="completed")
    return tid


@pytest.mark.anyio
async def test_delete_is_idempotent(service: ThreadService) -> None:
    tid = await finished(service)
    first = await service.delete_threads([tid])
    assert first.deleted == [tid] and first.missing == []
    again = await service.delete_threads([tid])
    assert again.deleted == [] and again.missing == [tid]
    assert await service.store.get_threads([tid]) == {}


@pytest.mark.anyio
async def test_deleting_one_member_of_a_chain_is_refused_unless_the_chain_goes(
    service: ThreadService,
) -> None:
    a = (await service.create_thread()).thread_id
    await service.append(a, [msg("x")])
    b = await hand_off(service, a)
    await service.update_thread(b, status="completed")
    with pytest.raises(InvalidStateError) as err:
        await service.delete_threads([b])
    assert (
        err.value.rule == "delete_partial_chain" and a in err.value.message and "--chain" in err.value.message
    )
    assert set(await service.store.get_threads([a, b])) == {a, b}
    both = await service.delete_threads([b], chain=True)
    assert sorted(both.deleted) == sorted([a, b])


@pytest.mark.anyio
async def test_naming_every_member_of_a_chain_deletes_it(service: ThreadService) -> None:
    a = (await service.create_thread()).thread_id
    await service.append(a, [msg("x")])
    b = await hand_off(service, a)
    await service.update_thread(b, status="cancelled")
    assert sorted((await service.delete_threads([a, b])).deleted) == sorted([a, b])


@pytest.mark.anyio
async def test_a_thread_that_has_not_ended_needs_force(service: ThreadService) -> None:
    tid = (await service.create_thread()).thread_id
    await service.append(tid, [msg("busy")])
    with pytest.raises(InvalidStateError) as err:
        await service.delete_threads([tid])
    assert err.value.rule == "delete_active" and "running" in err.value.message
    assert (await service.delete_threads([tid], force=True)).deleted == [tid]


@pytest.mark.anyio
async def test_dry_run_reports_without_deleting(service: ThreadService) -> None:
    tid = await finished(service)
    assert (await service.delete_threads([tid], dry_run=True)).deleted == [tid]
    assert tid in await service.store.get_threads([tid])


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_the_delete_tool_exists_only_when_the_server_allows_it(
    service: ThreadService, mode: str
) -> None:
    async with Client(build_server(service), mode=mode) as c:  # type: ignore[arg-type]
        names = {t.name for t in (await c.list_tools()).tools}
        assert "delete_thread" not in names and "create_thread" in names
    tid = await finished(service)
    async with Client(build_server(service, allow_delete=True), mode=mode) as c:  # type: ignore[arg-type]
        tools = {t.name: t for t in (await c.list_tools()).tools}
        assert tools["delete_thread"].annotations.destructive_hint is True
        r = await c.call_tool("delete_thread", {"thread_id": tid})
        assert not r.is_error and r.structured_content == {"deleted": [tid], "missing": []}
        r = await c.call_tool("delete_thread", {"thread_id": tid})
        assert not r.is_error and r.structured_content == {"deleted": [], "missing": [tid]}
        running = (await service.create_thread()).thread_id
        await service.append(running, [msg("busy")])
        r = await c.call_tool("delete_thread", {"thread_id": running})
        assert r.is_error and "[delete_active]" in r.content[0].text
        assert running in await service.store.get_threads([running])


def test_cli_delete_json_and_chain_rule(tmp_path: Path) -> None:
    root = tmp_path / "root"
    ids = anyio.run(populate, root)
    res = cli(root, "delete", ids["a"], "--yes")
    assert res.exit_code == 1 and "--chain" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    got = cli_json(root, "delete", ids["a"], "--chain", "--yes")
    assert sorted(got["deleted"]) == sorted([ids["a"], ids["a2"]])
    assert not (root / "threads" / ids["a"]).exists() and not (root / "threads" / ids["a2"]).exists()
    again = cli_json(root, "delete", ids["a"], "--yes")
    assert again == {"deleted": [], "missing": [ids["a"]]}
    preview = json.loads(cli(root, "delete", ids["b"], "--dry-run", "--json").stdout)
    assert preview["deleted"] == [ids["b"]] and preview["dry_run"] is True
    assert ids["b"] in {t["thread_id"] for t in cli_json(root, "ls")["threads"]}


def test_cli_delete_off_a_terminal_needs_yes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    ids = anyio.run(populate, root)
    res = cli(root, "delete", ids["b"])
    assert res.exit_code == 1 and "--yes" in res.stderr
    assert ids["b"] in {t["thread_id"] for t in cli_json(root, "ls")["threads"]}


def test_serve_offers_allow_delete(tmp_path: Path) -> None:
    res = cli(tmp_path, "serve", "--help")
    assert "--allow-delete" in res.stdout


@pytest.mark.anyio
@pytest.mark.slow
async def test_serve_allow_delete_registers_the_tool_over_stdio(tmp_path: Path, cli_env: dict) -> None:
    from mcp import StdioServerParameters

    from conftest import PYTHON

    for flags, present in (([], False), (["--allow-delete"], True)):
        params = StdioServerParameters(
            command=PYTHON,
            args=["-m", "threadloom", "serve", "--root", str(tmp_path / "root"), *flags],
            env=cli_env,
        )
        async with Client(params) as c:
            names = {t.name for t in (await c.list_tools()).tools}
        assert ("delete_thread" in names) is present
