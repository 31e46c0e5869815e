"""The one error tree of threadloom.

    ThreadloomError                 base: every message names the rule and the value
    ├── NotFoundError               a thread (or other object) does not exist
    ├── InvalidInputError           a value breaks a validation rule
    ├── InvalidStateError           the operation is illegal in the thread's status
    │   └── ThreadContinuedError    the thread handed off; names the chain's end
    ├── ConflictError               a concurrent change or a reused key disagrees
    ├── LimitExceededError          a size, budget or limit would be exceeded
    ├── IntegrityError              a signature, hash or mirror does not match
    └── StoreUnavailableError       the backend failed after bounded retries

Backends translate driver errors into these classes at one choke point, so no
caller imports ``sqlite3`` or ``psycopg``; the MCP layer turns them into tool
errors and the CLI into one-line messages.
"""

from __future__ import annotations

__all__ = [
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


class ThreadloomError(Exception):
    """Base class: ``rule`` is a short machine-readable name of what failed."""

    rule: str = "error"

    def __init__(self, message: str, *, rule: str | None = None) -> None:
        super().__init__(message)
        if rule is not None:
            self.rule = rule

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.rule


class NotFoundError(ThreadloomError):
    """The named thread or object does not exist."""

    rule = "not_found"


class InvalidInputError(ThreadloomError):
    """A value breaks a validation rule (the message names rule and value)."""

    rule = "invalid_input"


class InvalidStateError(ThreadloomError):
    """The operation is not allowed in the thread's current status."""

    rule = "invalid_state"


class ThreadContinuedError(InvalidStateError):
    """The thread was continued; ``current_thread_id`` is where to append instead."""

    rule = "thread_continued"

    def __init__(self, message: str, *, current_thread_id: str) -> None:
        super().__init__(message)
        self.current_thread_id = current_thread_id


class ConflictError(ThreadloomError):
    """A concurrent change won, or an idempotency key was reused with other content."""

    rule = "conflict"


class LimitExceededError(ThreadloomError):
    """A size limit, budget or per-thread limit would be exceeded."""

    rule = "limit_exceeded"


class IntegrityError(ThreadloomError):
    """Stored data failed a signature, hash or mirror check."""

    rule = "integrity"


class StoreUnavailableError(ThreadloomError):
    """The storage backend failed even after bounded retries."""

    rule = "store_unavailable"
