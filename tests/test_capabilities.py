"""capabilities.md: validated at create, written once, signed, served as a resource."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from mcp import Client
from mcp.shared.exceptions import MCPError

from integrity_helpers import CAPS
from threadloom import capabilities as caps_md
from threadloom.config import Settings
from threadloom.errors import InvalidInputError, NotFoundError
from threadloom.integrity import Signer
from threadloom.mcp_server import build_server
from threadloom.service import ThreadService
from threadloom.store import SQLiteStore

pytestmark = pytest.mark.anyio


@pytest.fixture
async def sq(settings: Settings) -> AsyncIterator[ThreadService]:
    async with ThreadService(SQLiteStore(settings.root, durability="normal"), settings) as svc:
        yield svc


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("tools", "must be an object"),
        ({"tools": [{"description": "no name"}]}, "capabilities.tools.0.name"),
        ({"tools": [{"name": "a"}, {"name": "a"}]}, "repeated: ['a']"),
        ({"tools": [], "extra": 1}, "capabilities.extra"),
        ({"tools": "read"}, "capabilities.tools"),
    ],
)
async def test_malformed_capabilities_are_refused_naming_the_field(
    service: ThreadService, value: object, needle: str
) -> None:
    with pytest.raises(InvalidInputError, match="capabilities") as err:
        await service.create_thread(capabilities=value)  # type: ignore[arg-type]
    assert needle in err.value.message and err.value.rule == "capabilities_shape"
    assert (await service.list_threads()).threads == []


async def test_the_capabilities_are_kept_in_the_manifest(service: ThreadService) -> None:
    t = await service.create_thread(capabilities=CAPS)
    assert t.capabilities == CAPS
    assert (await service.get_thread(t.thread_id)).capabilities == CAPS


async def test_capabilities_md_holds_the_tools_and_the_tree_and_is_signed(
    sq: ThreadService, settings: Settings
) -> None:
    t = await sq.create_thread(capabilities=CAPS)
    data = (settings.root / "threads" / t.thread_id / "capabilities.md").read_bytes()
    text = data.decode()
    assert text.startswith(f"# Capabilities of thread {t.thread_id}\n")
    assert '```json\n[\n  {\n    "description": "read a file"' in text
    assert "```text\n├── fs\n│   └── read\n└── net\n    └── search\n```" in text
    body, signature = data.rsplit(b"\n<!-- threadloom-signature ed25519 ", 1)
    public = load_pem_public_key((settings.root / "keys" / "ed25519.pub").read_bytes())
    public.verify(base64.b64decode(signature.split(b" ")[0]), body)  # type: ignore[union-attr]
    assert data.decode() == await sq.capabilities_md(t.thread_id)


async def test_capabilities_md_is_written_once(sq: ThreadService, settings: Settings) -> None:
    t = await sq.create_thread(capabilities=CAPS)
    path = settings.root / "threads" / t.thread_id / "capabilities.md"
    before = path.stat()
    await sq.append(t.thread_id, [{"type": "message", "role": "user", "text": "hi"}])
    await sq.update_thread(t.thread_id, title="renamed", status="completed")
    after = path.stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


async def test_a_thread_without_capabilities_has_no_file_and_no_resource(
    sq: ThreadService, settings: Settings
) -> None:
    t = await sq.create_thread()
    assert not (settings.root / "threads" / t.thread_id / "capabilities.md").exists()
    with pytest.raises(NotFoundError, match="has no capabilities"):
        await sq.capabilities_md(t.thread_id)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_capabilities_go_in_through_create_thread_and_out_as_a_resource(
    service: ThreadService, mode: str
) -> None:
    async with Client(build_server(service), mode=mode) as c:
        r = await c.call_tool("create_thread", {"title": "caps", "capabilities": CAPS})
        assert not r.is_error, r.content
        tid = r.structured_content["thread_id"]  # type: ignore[index]
        text = (await c.read_resource(f"thread://{tid}/capabilities.md")).contents[0].text  # type: ignore[union-attr]
        assert text == await service.capabilities_md(tid)
        assert caps_md.split_signed(text.encode()) is not None
        bare = (await c.call_tool("create_thread", {})).structured_content["thread_id"]  # type: ignore[index]
        with pytest.raises(MCPError):
            await c.read_resource(f"thread://{bare}/capabilities.md")
        bad = await c.call_tool("create_thread", {"capabilities": {"tools": [{"description": "x"}]}})
        assert bad.is_error


def test_a_text_tree_is_kept_verbatim_and_fences_outgrow_backticks() -> None:
    signer = Signer.ephemeral()
    data = caps_md.render(
        "0123456789ab", {"tools": [{"name": "t", "description": "uses ``` inside"}], "tree": "a\n  b"}, signer
    )
    text = data.decode()
    assert "````json\n" in text and "\n````\n" in text  # a longer fence than the content's ```
    assert "```text\na\n  b\n```" in text
    body, sig = caps_md.split_signed(data)  # type: ignore[misc]
    assert signer.verify(body, sig)
