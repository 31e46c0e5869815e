"""threadloom: durable threads for LLM agents, served over MCP.

The names below are loaded on first use (PEP 562), so that ``threadloom hook`` can start
without importing the service (see threadloom.entry).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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

_WHERE = {
    "Settings": "config",
    "load_settings": "config",
    "Status": "models",
    "Thread": "models",
    "ThreadService": "service",
    **{
        name: "errors"
        for name in (
            "ThreadloomError",
            "NotFoundError",
            "InvalidInputError",
            "InvalidStateError",
            "ThreadContinuedError",
            "ConflictError",
            "LimitExceededError",
            "IntegrityError",
            "StoreUnavailableError",
        )
    },
}

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'threadloom' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
