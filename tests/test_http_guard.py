"""HTTP on every bind: Host (421) and Origin (403) checked, tokens required off loopback,
long enough, matched with any case of `Bearer`; several tokens, each with its scope."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import PYTHON
from http_helpers import Echo, asgi_call, post, serve_http
from threadloom.config import Settings, load_settings
from threadloom.errors import InvalidInputError
from threadloom.http import check_bind, guard_app
from threadloom.http_guard import SCOPE_KEY
from threadloom.scope import EVERY_AGENT
from threadloom.tokens import MIN_TOKEN_CHARS, TokenGrant, new_token

LONG = "t" * 40
OTHER = "o" * 40


def settings_for(host: str, **kw: object) -> Settings:
    return Settings(host=host, **kw)


RULES = [
    # bind, Host, Origin, status
    ("127.0.0.1", "127.0.0.1:8765", None, 200),
    ("127.0.0.1", "localhost:8765", "http://localhost:8765", 200),
    ("127.0.0.1", "LOCALHOST:8765", None, 200),
    ("127.0.0.1", "evil.example:8765", None, 421),
    ("127.0.0.1", "evil.example", "http://evil.example", 421),
    ("127.0.0.1", "127.0.0.1:8765", "http://evil.example", 403),
    ("127.0.0.1", "127.0.0.1:8765", "null", 403),
    ("127.0.0.1", None, None, 421),
    ("127.0.0.2", "127.0.0.2:8765", None, 200),
    ("127.0.0.2", "127.0.0.2:8765", "http://127.0.0.2:8765", 200),
    ("127.0.0.2", "evil.example", "http://evil.example", 421),
    ("127.0.0.2", "127.0.0.2:8765", "http://evil.example:8765", 403),
    ("::1", "[::1]:8765", "http://[::1]:8765", 200),
    ("::1", "[::1]:8765", "http://[::2]:8765", 403),
    ("10.1.2.3", "10.1.2.3", "https://10.1.2.3", 200),
    ("10.1.2.3", "10.1.2.4", None, 421),
    ("0.0.0.0", "localhost:9", None, 200),
    ("0.0.0.0", "evil.example:9", None, 421),
    ("0.0.0.0", "127.0.0.1:9", "http://evil.example", 403),
]


@pytest.mark.anyio
@pytest.mark.parametrize("bind,host,origin,status", RULES)
async def test_host_and_origin_are_checked_on_every_bind(
    bind: str, host: str, origin: str, status: int
) -> None:
    headers = {"Authorization": f"Bearer {LONG}"}
    if host is not None:
        headers["Host"] = host
    if origin is not None:
        headers["Origin"] = origin
    app = guard_app(Echo(), settings_for(bind, token=LONG))
    got, _, body, _ = await asgi_call(app, headers=headers)
    assert got == status, body
    if status == 421:
        assert json.loads(body)["error"] == "host_not_allowed"
    if status == 403:
        assert json.loads(body)["error"] == "origin_not_allowed"


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/mcp", "/", "/threads/abc", "/static/x.js"])
async def test_the_guard_covers_every_path_not_only_mcp(path: str) -> None:
    app = guard_app(Echo(), settings_for("127.0.0.2"))
    bad, _, _, _ = await asgi_call(app, "GET", path, {"Host": "evil.example"})
    good, _, _, _ = await asgi_call(app, "GET", path, {"Host": "127.0.0.2:1"})
    assert (bad, good) == (421, 200)


@pytest.mark.anyio
async def test_configured_hosts_and_origins_are_allowed_as_well() -> None:
    s = settings_for(
        "0.0.0.0",
        token=LONG,
        allowed_hosts=["mcp.example.com"],
        allowed_origins=["https://app.example", "https://ide.example:*"],
    )
    app = guard_app(Echo(), s)
    auth = {"Authorization": f"Bearer {LONG}"}
    cases = [
        ({"Host": "mcp.example.com:443"}, 200),
        ({"Host": "mcp.example.com", "Origin": "https://app.example"}, 200),
        ({"Host": "mcp.example.com", "Origin": "https://app.example:8443"}, 403),
        ({"Host": "mcp.example.com", "Origin": "https://ide.example:3000"}, 200),
        ({"Host": "other.example.com"}, 421),
    ]
    for headers, status in cases:
        got, _, _, _ = await asgi_call(app, headers={**auth, **headers})
        assert got == status, headers


@pytest.mark.anyio
async def test_a_bad_host_is_refused_before_the_token_is_even_looked_at() -> None:
    app = guard_app(Echo(), settings_for("0.0.0.0", token=LONG))
    assert (await asgi_call(app, headers={"Host": "evil.example"}))[0] == 421
    assert (await asgi_call(app, headers={"Host": "localhost"}))[0] == 401


@pytest.mark.anyio
@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
async def test_the_bearer_scheme_is_matched_in_any_case(scheme: str) -> None:
    app = guard_app(Echo(), settings_for("127.0.0.1", token=LONG))
    status, _, _, _ = await asgi_call(app, headers={"Host": "localhost", "Authorization": f"{scheme} {LONG}"})
    assert status == 200


@pytest.mark.anyio
@pytest.mark.parametrize(
    "auth", [None, "Bearer", "Bearer ", f"Basic {LONG}", LONG, f"Bearer {LONG}x", "Bearer " + OTHER]
)
async def test_anything_but_a_configured_token_gets_401(auth: str | None) -> None:
    app = guard_app(Echo(), settings_for("127.0.0.1", token=LONG))
    headers = {"Host": "localhost"}
    if auth is not None:
        headers["Authorization"] = auth
    status, hdrs, body, _ = await asgi_call(app, headers=headers)
    assert status == 401 and hdrs["www-authenticate"].startswith("Bearer")
    assert LONG not in body.decode()


@pytest.mark.anyio
async def test_several_tokens_each_carry_their_own_agent_scope() -> None:
    s = settings_for(
        "0.0.0.0",
        token=LONG,
        tokens=[TokenGrant(token=OTHER, agents=["alice", "bob"], name="ci"), TokenGrant(token="x" * 32)],
    )
    inner = Echo()
    app = guard_app(inner, s)
    seen = {}
    for tok in (LONG, OTHER, "x" * 32):
        await asgi_call(app, headers={"Host": "localhost", "Authorization": f"Bearer {tok}"})
        assert inner.seen is not None
        seen[tok] = inner.seen[SCOPE_KEY]
    assert seen[LONG] is EVERY_AGENT and seen["x" * 32] is EVERY_AGENT
    assert seen[OTHER].agents == {"alice", "bob"} and seen[OTHER].label == "ci"
    assert seen[OTHER].allows("alice") and not seen[OTHER].allows("carol")


@pytest.mark.parametrize(
    "host,token,rule",
    [
        ("0.0.0.0", None, "http_token_required"),
        ("10.0.0.5", "short-token", "http_token_short"),
        ("0.0.0.0", "t" * (MIN_TOKEN_CHARS - 1), "http_token_short"),
        ("0.0.0.0", " " * 40, "http_token_blank"),
        ("127.0.0.1", "   ", "http_token_blank"),
        ("0.0.0.0", "t" * 20 + " " + "t" * 20, "http_token_blank"),
    ],
)
def test_weak_tokens_are_refused_at_start_up(host: str, token: str | None, rule: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        check_bind(settings_for(host, token=token))
    assert info.value.rule == rule
    if token and token.strip():
        assert token not in info.value.message


def test_strong_or_loopback_tokens_are_accepted() -> None:
    check_bind(settings_for("0.0.0.0", token="t" * MIN_TOKEN_CHARS))
    check_bind(settings_for("127.0.0.1", token="short"))
    check_bind(settings_for("127.0.0.2"))


def test_one_token_given_twice_is_refused() -> None:
    s = settings_for("0.0.0.0", token=LONG, tokens=[TokenGrant(token=LONG, agents=["a"])])
    with pytest.raises(InvalidInputError) as info:
        check_bind(s)
    assert info.value.rule == "http_token_duplicate"


def test_tokens_come_from_the_settings_file_and_the_environment(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "config.toml").write_text(
        f'[[tokens]]\ntoken = "{LONG}"\nagents = ["alice"]\nname = "alice-ci"\n\n[[tokens]]\ntoken = "{OTHER}"\n'
    )
    s = load_settings({"root": root}, env={})
    assert [(g.agents, g.name) for g in s.grants()] == [(["alice"], "alice-ci"), (None, None)]
    env = {"THREADLOOM_TOKENS": json.dumps([{"token": "z" * 40, "agents": ["bob", "carol"]}])}
    s = load_settings({"root": root}, env=env)
    assert [g.agents for g in s.grants()] == [["bob", "carol"]]
    s = load_settings(
        {"root": tmp_path / "none"}, env={"THREADLOOM_TOKEN": LONG, "THREADLOOM_TOKEN_AGENTS": "a, b"}
    )
    assert [(g.token, g.agents) for g in s.grants()] == [(LONG, ["a", "b"])]


@pytest.mark.parametrize(
    "env,needle",
    [
        ({"THREADLOOM_TOKENS": "not json " + LONG}, "JSON list"),
        ({"THREADLOOM_TOKENS": json.dumps([{"token": LONG, "agents": ["bad id!"]}])}, "agent_id"),
        ({"THREADLOOM_TOKENS": json.dumps([{"token": LONG, "agent": ["a"]}])}, "tokens.0.agent"),
        ({"THREADLOOM_TOKEN_AGENTS": "a"}, "token_agents"),
    ],
)
def test_bad_token_settings_are_refused_without_quoting_a_token(
    tmp_path: Path, env: dict, needle: str
) -> None:
    with pytest.raises(InvalidInputError) as info:
        load_settings({"root": tmp_path}, env=env)
    assert needle in info.value.message
    assert LONG not in info.value.message


def test_threadloom_token_prints_a_fresh_strong_token(cli_env: dict) -> None:
    out = [
        subprocess.run(
            [PYTHON, "-m", "threadloom", "token"], env=cli_env, capture_output=True, text=True, timeout=60
        )
        for _ in range(2)
    ]
    tokens = [o.stdout.strip() for o in out]
    assert all(o.returncode == 0 for o in out)
    assert tokens[0] != tokens[1]
    for t in tokens:
        assert len(t) >= MIN_TOKEN_CHARS and t.isascii() and " " not in t
    check_bind(settings_for("0.0.0.0", token=tokens[0]))
    assert len(new_token()) == 43


# ------------------------------------------------------------------ real servers


@pytest.mark.slow
def test_a_second_loopback_address_gets_host_and_origin_checks(tmp_path: Path, cli_env: dict) -> None:
    with serve_http(tmp_path / "root", cli_env, host="127.0.0.2") as port:
        assert post("127.0.0.2", port, {"Host": "evil.example", "Origin": "http://evil.example"})[0] == 421
        assert post("127.0.0.2", port, {"Origin": "http://evil.example"})[0] == 403
        status, body = post("127.0.0.2", port, {})
        assert status == 200 and "serverInfo" in body


@pytest.mark.slow
def test_a_public_bind_with_a_token_checks_host_and_origin_too(tmp_path: Path, cli_env: dict) -> None:
    token = new_token()
    env = dict(cli_env, THREADLOOM_TOKEN=token)
    with serve_http(tmp_path / "root", env, host="0.0.0.0") as port:
        auth = {"Authorization": f"bearer {token}"}
        assert post("127.0.0.1", port, {**auth, "Host": "evil.example"})[0] == 421
        assert post("127.0.0.1", port, {**auth, "Origin": "http://evil.example"})[0] == 403
        assert post("127.0.0.1", port, {})[0] == 401
        status, body = post("127.0.0.1", port, auth)
        assert status == 200 and "serverInfo" in body


@pytest.mark.slow
def test_serve_refuses_a_short_token_off_loopback(tmp_path: Path, cli_env: dict) -> None:
    proc = subprocess.run(
        [
            PYTHON,
            "-m",
            "threadloom",
            "serve",
            "--http",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--token",
            "hunter2",
        ],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "[http_token_short]" in proc.stderr or "at least 32" in proc.stderr
    assert "hunter2" not in proc.stderr and "threadloom token" in proc.stderr


def test_scoped_tokens_are_accepted_at_start_up() -> None:
    check_bind(settings_for("0.0.0.0", token=LONG, token_agents=["alice"]))
    check_bind(settings_for("0.0.0.0", tokens=[TokenGrant(token=OTHER, agents=["alice", "bob"])]))
