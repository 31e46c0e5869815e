"""Settings: defaults, then ``<root>/config.toml``, then ``THREADLOOM_*`` env vars, then CLI flags.

Invalid settings fail at start-up with a message naming the setting, the value and
where it came from.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import InvalidInputError
from .numbers import MAX_STALE_AFTER
from .templates import DEFAULT_CONTINUATION_TEMPLATE, check_template
from .tokens import TokenGrant

DEFAULT_ROOT = ".threadloom"
ENV_PREFIX = "THREADLOOM_"

DEFAULT_CONTEXT_WINDOW = 200_000
DEFAULT_TRIGGER_THRESHOLD = 0.9
DEFAULT_RESUME_CEILING_TOKENS = 16_000
DEFAULT_STALE_AFTER = 3600.0
DEFAULT_MAX_EVENT_BYTES = 1_048_576
DEFAULT_MAX_BATCH_EVENTS = 1000
DEFAULT_HTTP_HEADER_TIMEOUT = 10.0
DEFAULT_HTTP_BODY_TIMEOUT = 60.0
DEFAULT_HTTP_SESSION_IDLE_TIMEOUT = 1800.0
DEFAULT_HTTP_MAX_SESSIONS = 10_000


class Settings(BaseModel):
    """Every tunable of a threadloom server; one instance per process."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    root: Path = Path(DEFAULT_ROOT)
    store: str = Field(default="sqlite", description="sqlite | memory")
    durability: Literal["full", "normal"] = "full"
    context_window: int = Field(default=DEFAULT_CONTEXT_WINDOW, ge=1000)
    trigger_threshold: float = Field(default=DEFAULT_TRIGGER_THRESHOLD, gt=0, le=1, allow_inf_nan=False)
    resume_ceiling_tokens: int = Field(default=DEFAULT_RESUME_CEILING_TOKENS, ge=100)
    continuation_template: str = Field(default=DEFAULT_CONTINUATION_TEMPLATE, min_length=1, max_length=20_000)
    stale_after: float = Field(default=DEFAULT_STALE_AFTER, gt=0, le=MAX_STALE_AFTER, allow_inf_nan=False)
    sweep_interval: float = Field(default=30.0, gt=0, le=86_400, allow_inf_nan=False)
    wait_default_timeout: float = Field(default=600.0, ge=0, le=86_400, allow_inf_nan=False)
    max_event_bytes: int = Field(default=DEFAULT_MAX_EVENT_BYTES, ge=1024)
    max_batch_events: int = Field(default=DEFAULT_MAX_BATCH_EVENTS, ge=1)
    max_request_bytes: int = Field(default=16 * 1_048_576, ge=65536)
    max_append_bytes: int = Field(default=16 * 1_048_576, ge=1024, le=2**40)
    max_resource_bytes: int = Field(default=16 * 1_048_576, ge=65536, le=2**40)
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
    token: str | None = Field(default=None, repr=False)
    token_agents: list[str] | None = Field(default=None, min_length=1)
    tokens: list[TokenGrant] = Field(default_factory=list, repr=False)
    trusted_keys: list[Path] = Field(
        default_factory=list,
        max_length=1000,
        description="other roots' public key files (.pub) whose signatures verify calls known",
    )
    allowed_hosts: list[str] = Field(default_factory=list, max_length=1000)
    allowed_origins: list[str] = Field(default_factory=list, max_length=1000)
    http_header_timeout: float = Field(
        default=DEFAULT_HTTP_HEADER_TIMEOUT, gt=0, le=3600, allow_inf_nan=False
    )
    http_body_timeout: float = Field(default=DEFAULT_HTTP_BODY_TIMEOUT, gt=0, le=86_400, allow_inf_nan=False)
    http_session_idle_timeout: float = Field(
        default=DEFAULT_HTTP_SESSION_IDLE_TIMEOUT, gt=0, le=7 * 86_400, allow_inf_nan=False
    )
    http_max_sessions: int = Field(default=DEFAULT_HTTP_MAX_SESSIONS, ge=1, le=1_000_000)
    semantic_model: str | None = Field(
        default=None, min_length=1, max_length=1000, description="model2vec model folder or cached id"
    )
    semantic_tool_results: bool = False
    semantic_batch: int = Field(default=256, ge=1, le=10_000)

    @field_validator("continuation_template")
    @classmethod
    def _template_placeholders(cls, value: str) -> str:
        return check_template(value)

    @model_validator(mode="after")
    def _token_agents_need_a_token(self) -> Settings:
        if self.token_agents is not None and self.token is None:
            raise ValueError("token_agents limits the token setting, which is not set")
        return self

    def grants(self) -> list[TokenGrant]:
        """Every accepted bearer token with its scope: ``token`` (+ ``token_agents``), then ``tokens``."""
        head = [TokenGrant(token=self.token, agents=self.token_agents)] if self.token is not None else []
        return head + list(self.tokens)


_ENV_KEYS = {name: ENV_PREFIX + name.upper() for name in Settings.model_fields}
_ENV_KEYS["root"] = "THREADLOOM_HOME"
_LIST_KEYS = ("token_agents", "allowed_hosts", "allowed_origins", "trusted_keys")
"""Settings given in the environment as comma-separated lists."""
SECRET_KEYS = frozenset({"token", "tokens"})
"""Settings whose values no message ever quotes."""
MAX_QUOTE = 200


def quote_value(value: object, limit: int = MAX_QUOTE) -> str:
    """``repr(value)`` cut to ``limit`` characters (with the full length), for error messages."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def load_settings(overrides: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Settings:
    """Build settings from every source; raise InvalidInputError on a bad value.

    The root comes first (flag, THREADLOOM_HOME, default) since ``config.toml`` lives in it.
    """
    env = dict(os.environ if env is None else env)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    root = Path(overrides.get("root") or env.get("THREADLOOM_HOME") or DEFAULT_ROOT)
    data: dict[str, Any] = {}
    source: dict[str, str] = {}
    cfg = root / "config.toml"
    if cfg.is_file():
        try:
            with open(cfg, "rb") as f:
                file_data = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InvalidInputError(f"cannot read settings file {cfg}: {exc}", rule="config_file") from exc
        for k, v in file_data.items():
            data[k] = v
            source[k] = str(cfg)
    for name, var in _ENV_KEYS.items():
        if var in env and env[var] != "":
            data[name] = env[var]
            source[name] = f"${var}"
    for k, v in overrides.items():
        data[k] = v
        source[k] = "command line"
    data["root"] = root
    for key in _LIST_KEYS:
        if isinstance(data.get(key), str):
            data[key] = [a.strip() for a in data[key].split(",") if a.strip()]
    if isinstance(data.get("tokens"), str):  # $THREADLOOM_TOKENS: a JSON list of {token, agents?, name?}
        try:
            data["tokens"] = json.loads(data["tokens"])
        except ValueError:
            raise InvalidInputError(
                f"setting tokens (from {source.get('tokens')}) must be a JSON list of "
                '{"token": ..., "agents": [...], "name": ...} objects; it does not parse as JSON',
                rule="settings",
            ) from None
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(settings)"
            where = source.get(str(err["loc"][0]), "default") if err["loc"] else "settings"
            shown = "" if err["loc"] and err["loc"][0] in SECRET_KEYS else f"={quote_value(err.get('input'))}"
            problems.append(f"setting {key}{shown} (from {where}): {err['msg']}")
        raise InvalidInputError("invalid settings: " + "; ".join(problems), rule="settings") from None
