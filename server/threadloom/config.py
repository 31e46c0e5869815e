"""Settings: defaults, then ``<root>/config.toml``, then ``THREADLOOM_*`` env vars, then CLI flags.

Invalid settings fail at start-up with a message naming the setting, the value and
where it came from.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import InvalidInputError
from .templates import DEFAULT_CONTINUATION_TEMPLATE, check_template

DEFAULT_ROOT = ".threadloom"
ENV_PREFIX = "THREADLOOM_"

DEFAULT_CONTEXT_WINDOW = 200_000
DEFAULT_TRIGGER_THRESHOLD = 0.9
DEFAULT_RESUME_CEILING_TOKENS = 16_000
DEFAULT_STALE_AFTER = 3600.0
DEFAULT_MAX_EVENT_BYTES = 1_048_576
DEFAULT_MAX_BATCH_EVENTS = 1000


class Settings(BaseModel):
    """Every tunable of a threadloom server; one instance per process."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    root: Path = Path(DEFAULT_ROOT)
    store: str = Field(default="sqlite", description="sqlite | memory")
    durability: Literal["full", "normal"] = "full"
    context_window: int = Field(default=DEFAULT_CONTEXT_WINDOW, ge=1000)
    trigger_threshold: float = Field(default=DEFAULT_TRIGGER_THRESHOLD, gt=0, le=1)
    resume_ceiling_tokens: int = Field(default=DEFAULT_RESUME_CEILING_TOKENS, ge=100)
    continuation_template: str = Field(default=DEFAULT_CONTINUATION_TEMPLATE, min_length=1, max_length=20_000)
    stale_after: float = Field(default=DEFAULT_STALE_AFTER, gt=0)
    sweep_interval: float = Field(default=30.0, gt=0)
    wait_default_timeout: float = Field(default=600.0, ge=0)
    max_event_bytes: int = Field(default=DEFAULT_MAX_EVENT_BYTES, ge=1024)
    max_batch_events: int = Field(default=DEFAULT_MAX_BATCH_EVENTS, ge=1)
    max_request_bytes: int = Field(default=16 * 1_048_576, ge=65536)
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
    token: str | None = None
    token_agents: list[str] | None = None

    @field_validator("continuation_template")
    @classmethod
    def _template_placeholders(cls, value: str) -> str:
        return check_template(value)


_ENV_KEYS = {name: ENV_PREFIX + name.upper() for name in Settings.model_fields}
_ENV_KEYS["root"] = "THREADLOOM_HOME"


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
    if isinstance(data.get("token_agents"), str):
        data["token_agents"] = [a.strip() for a in data["token_agents"].split(",") if a.strip()]
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            where = source.get(str(err["loc"][0]), "default")
            problems.append(f"setting {key}={err.get('input')!r} (from {where}): {err['msg']}")
        raise InvalidInputError("invalid settings: " + "; ".join(problems), rule="settings") from None
