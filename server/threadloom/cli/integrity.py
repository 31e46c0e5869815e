"""Integrity: ``verify`` (signatures, checkpoints, hash chains, mirrors), ``key`` (this root's
public key) and ``trust`` (other roots' keys)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ..config import Settings
from ..errors import ThreadloomError
from ..service import ThreadService
from .common import MAINTAIN, JsonOpt, Out, RootOpt, command, fail, open_service, run, settings_from


@command(panel=MAINTAIN, code=2)
def verify(
    thread_id: Annotated[str | None, typer.Argument(help="the thread to verify (12 hex digits)")] = None,
    all_threads: Annotated[bool, typer.Option("--all", help="verify every thread of the root")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the report(s) as JSON on stdout")] = False,
    root: RootOpt = None,
    store: Annotated[
        str | None,
        typer.Option("--store", help="sqlite (default, the root's threads.db) or a postgresql:// URL"),
    ] = None,
) -> None:
    """Verify signatures, checkpoints, the hash chain and the mirror files of one thread or
    of all (--all). Imported threads are checked with the key that signed them (reported as
    known or unknown, see `threadloom trust`). Exit code 0 when everything is intact, 1 when
    a problem was found."""
    if (thread_id is None) == (not all_threads):
        fail("give a thread id or --all (not both)", 2)
    settings = settings_from(root=root, store=store)
    ok = run(_verify, settings, thread_id, as_json)
    raise typer.Exit(0 if ok else 1)


async def _verify(settings: Settings, thread_id: str | None, as_json: bool) -> bool:
    # read as found: no start-up repair before the check (it would complete what it reports)
    async with open_service(settings) as service:
        if thread_id is not None:
            report = await service.verify_thread(thread_id)
            if as_json:
                typer.echo(report.model_dump_json(indent=2))
            else:
                _print_report(report)
            return report.ok
        ids = await _all_thread_ids(service)
        reports = []
        progress = _progress(len(ids)) if sys.stderr.isatty() else None
        if progress is not None:
            progress.start()
            task = progress.add_task("verifying", total=len(ids))
        try:
            for tid in ids:
                reports.append(await _verify_one(service, tid))
                if progress is not None:
                    progress.advance(task)
        finally:
            if progress is not None:
                progress.stop()
        failed = [r for r in reports if not r.ok]
        if as_json:
            out = {
                "ok": not failed,
                "threads": len(reports),
                "failed": len(failed),
                "reports": [r.model_dump(mode="json") for r in reports],
            }
            typer.echo(json.dumps(out, indent=2, ensure_ascii=False))
        else:
            for r in failed:
                _print_report(r)
            typer.echo(
                f"{len(reports)} thread(s) verified: {len(reports) - len(failed)} intact, {len(failed)} with problems"
            )
        return not failed


async def _verify_one(service: ThreadService, tid: str) -> Any:
    """One thread's report; a thread that cannot be verified at all is a failed report, never the end of --all."""
    from ..verify import VerifyProblem, VerifyReport

    try:
        return await service.verify_thread(tid)
    except (ThreadloomError, OSError) as exc:
        rule = exc.rule if isinstance(exc, ThreadloomError) else "unreadable"
        text = exc.message if isinstance(exc, ThreadloomError) else f"{exc.strerror or exc}"
        problem = VerifyProblem(source="database", rule=rule, message=f"cannot verify: {text}"[:500])
        return VerifyReport(
            thread_id=tid,
            ok=False,
            problems=[problem],
            summary=f"database: {problem.message}",
            events=0,
            checkpoints=0,
            files_checked=False,
            key_id=service.signer.key_id,
        )


async def _all_thread_ids(service: ThreadService) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        page = await service.list_threads(limit=200, cursor=cursor)
        ids += [t.thread_id for t in page.threads]
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor


def _progress(total: int) -> object:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )


def _print_report(report: object) -> None:
    from ..verify import VerifyReport

    assert isinstance(report, VerifyReport)
    if report.ok:
        typer.echo(
            f"{report.thread_id}: ok ({report.events} events, {report.checkpoints} checkpoints, "
            f"files {'checked' if report.files_checked else 'not kept'})"
        )
        if report.imported is not None:
            typer.echo(f"  {report.imported.describe()}")
        return
    first = f", first bad line {report.first_bad_line}" if report.first_bad_line is not None else ""
    typer.echo(f"{report.thread_id}: {len(report.problems)} problem(s){first}")
    if report.imported is not None:
        typer.echo(f"  {report.imported.describe()}")
    for p in report.problems:
        where = f"{p.source}:{p.line}" if p.line is not None else p.source
        typer.echo(f"  {where}  [{p.rule}] {p.message}")


@command(panel=MAINTAIN, code=2)
def key(
    root: RootOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help='print {"key_id", "public_key", "path"}')] = False,
) -> None:
    """Print this root's signing key id and public key: what another root's operator gives to
    `threadloom trust` so that threads exported from here verify there as signed by a known key."""
    from ..integrity import Signer

    settings = settings_from(root=root)
    signer = Signer.for_root(settings.root)
    if signer.public_path is None or not signer.public_path.exists():
        fail(
            f"{settings.root} has no signing key yet ({signer.public_path} is missing): start the server once",
            2,
        )
    from ..trust import parse_public_key

    pub = parse_public_key(signer.public_path.read_bytes(), where=str(signer.public_path))  # type: ignore[union-attr]
    if as_json:
        typer.echo(json.dumps({"key_id": pub.key_id, "public_key": pub.pem, "path": str(signer.public_path)}))
    else:
        typer.echo(f"key {pub.key_id} ({signer.public_path})")
        typer.echo(pub.pem, nl=False)


@command(panel=MAINTAIN, code=2)
def trust(
    files: Annotated[
        list[Path] | None,
        typer.Argument(help="another root's public key file (its keys/ed25519.pub)", show_default=False),
    ] = None,
    list_: Annotated[bool, typer.Option("--list", help="list the keys this root trusts")] = False,
    root: RootOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Trust other roots' public keys: imported threads they signed then verify as "signed by
    key K (known)". The key is kept in ROOT/keys/trusted/ (the trusted_keys setting names
    more files); verification of threads this root signed is unchanged."""
    from ..trust import trust_key, trusted_keys

    settings = settings_from(root=root)
    out = Out(as_json)
    if bool(files) == list_:
        fail("give public key files to trust, or --list", 2)
    if list_:
        keys = trusted_keys(settings.root, settings.trusted_keys)
        if out.json:
            out.emit({"keys": [{"key_id": k, "public_key": v.pem} for k, v in keys.items()]})
        else:
            for kid in keys:
                typer.echo(kid)
            out.note(f"{len(keys)} trusted key(s)")
        return
    added = []
    for f in files or []:
        with open(f, "rb") as fh:
            data = fh.read(16_385)
        pub, new = trust_key(settings.root, data, where=str(f))
        added.append({"key_id": pub.key_id, "file": str(f), "new": new})
        if not out.json:
            out.note(f"{'trusting' if new else 'already trusted:'} key {pub.key_id} ({f})")
    if out.json:
        out.emit({"trusted": added})
