"""threadloom: durable threads for LLM agents, served over MCP."""

from __future__ import annotations

from .config import Settings, load_settings
from .errors import (
    ConflictError,
    IntegrityError,
    InvalidInputError,
    InvalidStateError,
    LimitExceededError,
    NotFoundError,
    StoreUnavailableError,
    ThreadContinuedError,
    ThreadloomError,
)
from .models import Status, Thread
from .service import ThreadService

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "Settings",
    "load_settings",
    "Status",
    "Thread",
    "ThreadService",
    "ThreadloomError",
    "NotFoundError",
    "InvalidInputError",
    "InvalidStateError",
    "ThreadContinuedError",
    "ConflictError",
    "LimitExceededError",
    "IntegrityError",
    "StoreUnavailableError",
]
