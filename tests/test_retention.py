"""``threadloom gc``: whole chains only, never half of one, never a parent under a kept child."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import anyio
import pytest

from cli_helpers import cli, cli_json, hand_off, msg, open_root, populate
from threadloom.errors import InvalidInputError
from threadloom.models import Status, parse_iso
from threadloom.retention import parse_age, parse_statuses, plan_gc, run_gc
from threadloom.service import ThreadService


async def ids_in(root: Path) -> set[str]:
    async with open_root(root) as svc:
        return {t.thread_id for t in await svc.all_threads()}


def test_gc_dry_run_lists_whole_chains_and_deletes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    ids = anyio.run(populate, root)
    got = cli_json(root, "gc", "--older-than", "0s", "--dry-run")
    assert got["dry_run"] is True and got["deleted"] == 0
    chains = {c["chain_root_id"]: c["thread_ids"] for c in got["chains"]}
    assert chains[ids["a"]] == [ids["a"], ids["a2"]]
    assert sorted(got["thread_ids"]) == sorted(ids.values())
    assert anyio.run(ids_in, root) == set(ids.values())


def test_gc_deletes_finished_chains_with_their_mirrors(tmp_path: Path) -> None:
    root = tmp_path / "root"
    ids = anyio.run(populate, root)
    got = cli_json(root, "gc", "--older-than", "0s", "--status", "error", "--yes")
    assert got["thread_ids"] == [ids["b"]] and got["deleted"] == 1
    assert anyio.run(ids_in, root) == {ids["parent"], ids["a"], ids["a2"]}
    assert not (root / "threads" / ids["b"]).exists()


def test_gc_never_breaks_a_chain_whose_end_is_still_running(tmp_path: Path) -> None:
    root = tmp_path / "root"

    async def setup() -> tuple[str, str, str]:
        async with open_root(root) as svc:
            a = (await svc.create_thread(title="long")).thread_id
            await svc.append(a, [msg("work")])
            b = await hand_off(svc, a)  # a is continued (ended), b runs on
            done = (await svc.create_thread(title="done")).thread_id
            await svc.update_thread(done, status="completed")
            return a, b, done

    a, b, done = anyio.run(setup)
    got = cli_json(root, "gc", "--older-than", "0s", "--yes")
    assert got["thread_ids"] == [done]
    assert anyio.run(ids_in, root) == {a, b}


def test_gc_keeps_a_parent_whose_child_stays(tmp_path: Path) -> None:
    root = tmp_path / "root"

    async def setup() -> tuple[str, str]:
        async with open_root(root) as svc:
            p = (await svc.create_thread()).thread_id
            kid = (await svc.create_thread(parent_id=p)).thread_id
            await svc.append(kid, [msg("still going")])
            await svc.update_thread(p, status="completed")
            return p, kid

    p, kid = anyio.run(setup)
    got = cli_json(root, "gc", "--older-than", "0s", "--yes")
    assert got["thread_ids"] == [] and got["kept_chains"] == 2
    assert anyio.run(ids_in, root) == {p, kid}


@pytest.mark.anyio
async def test_a_chain_with_one_recent_member_stays_whole(service: ThreadService) -> None:
    a = (await service.create_thread()).thread_id
    await service.append(a, [msg("old work")])
    b = await hand_off(service, a)
    await service.update_thread(b, status="completed")
    old, new = await service.get_thread(a), await service.get_thread(b)
    assert old.updated_at < new.updated_at
    between = parse_iso(new.updated_at)  # cutoff: a is older, b is not
    plan = await plan_gc(service, timedelta(0), now=between)
    assert plan.doomed == [] and "was updated at" in plan.kept[0].reason
    later = await plan_gc(service, timedelta(0), now=between + timedelta(seconds=1))
    assert [t.thread_id for c in later.doomed for t in c.threads] == [a, b]
    assert await run_gc(service, later) == (2, [])
    assert await service.store.get_threads([a, b]) == {}


@pytest.mark.anyio
async def test_gc_skips_a_chain_that_changed_after_the_plan(service: ThreadService) -> None:
    t = (await service.create_thread()).thread_id
    await service.update_thread(t, status="completed")
    plan = await plan_gc(
        service, timedelta(0), now=parse_iso((await service.get_thread(t)).updated_at) + timedelta(1)
    )
    await service.update_thread(t, metadata={"keep": True})
    assert await run_gc(service, plan) == (0, [t])
    assert (await service.get_thread(t)).status == Status.COMPLETED


@pytest.mark.parametrize(
    ("text", "seconds"), [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("2w", 1209600), ("45s", 45)]
)
def test_ages_take_a_unit(text: str, seconds: int) -> None:
    assert parse_age(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["30", "d", "-1d", "3 days", ""])
def test_an_age_without_a_unit_is_refused(text: str) -> None:
    with pytest.raises(InvalidInputError):
        parse_age(text)


def test_gc_statuses_are_end_statuses_only() -> None:
    assert parse_statuses("completed, error") == {Status.COMPLETED, Status.ERROR}
    with pytest.raises(InvalidInputError, match="running"):
        parse_statuses("running")


def test_gc_without_yes_off_a_terminal_refuses_and_deletes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    ids = anyio.run(populate, root)
    res = cli(root, "gc", "--older-than", "0s")
    assert res.exit_code == 1 and "--yes" in res.stderr
    assert ids["b"] in res.stdout  # what it would delete is shown first
    assert anyio.run(ids_in, root) == set(ids.values())


def test_gc_vacuum_runs_after_deleting(tmp_path: Path) -> None:
    root = tmp_path / "root"
    anyio.run(populate, root)
    res = cli(root, "gc", "--older-than", "0s", "--yes", "--vacuum")
    assert res.exit_code == 0 and "vacuumed" in res.stderr
    assert anyio.run(ids_in, root) == set()
    assert json.loads(cli(root, "ls", "--json").stdout)["threads"] == []
