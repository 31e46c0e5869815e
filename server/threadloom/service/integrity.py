"""Verification before a transcript becomes context again (handoff, resume) and the signed files."""

from __future__ import annotations

import anyio

from .. import capabilities as caps_md
from .. import visibility
from ..errors import (
    NotFoundError,
)
from ..integrity import Signer
from ..mirror import manifest_bytes
from ..models import (
    check_thread_id,
)
from ..trust import PublicKey, trusted_keys
from ..verify import VerificationFailed, VerifyReport, lagging, verify_snapshot
from ..verify_anchored import verify_anchored
from .base import (
    ANCHORED_INLINE_LINES,
    VERIFY_LAG_RETRIES,
    ServiceBase,
    log,
)


class IntegrityChecks(ServiceBase):
    """Verification before a transcript becomes context again (handoff, resume) and the signed files."""

    async def verify_thread(self, thread_id: str) -> VerifyReport:
        """Verify the thread's signatures, checkpoints, hash chain and mirrors (DESIGN §8).

        A mirror write of another process still in flight looks like a short transcript or
        an older thread.json; that is read again a few times before it is reported.
        """
        await visibility.visible(self.store, thread_id)
        signer = self.store.signer
        for attempt in range(VERIFY_LAG_RETRIES + 1):
            snap = await self.store.read_integrity(thread_id)
            if attempt == VERIFY_LAG_RETRIES or not lagging(snap):
                break
            await anyio.sleep(0.02 * (attempt + 1))
        trusted = self.trusted_keys() if snap.imported is not None else None
        return await anyio.to_thread.run_sync(verify_snapshot, snap, signer, trusted)

    @property
    def signer(self) -> Signer:
        """The key this service signs with: the root's ``keys/`` (or, on PostgreSQL, the key the
        database shares with every server); its public half is what verifiers trust."""
        return self.store.signer

    def trusted_keys(self) -> dict[str, PublicKey]:
        """Other roots' public keys this root trusts (trust.py): ``keys/trusted/`` and the
        ``trusted_keys`` setting, read afresh so that `threadloom trust` applies at once."""
        return trusted_keys(self.settings.root, self.settings.trusted_keys)

    async def ensure_verified(self, thread_id: str, *, force: bool = False) -> VerifyReport:
        """Verify before rebuilding messages (resume, handoff): raise unless it is intact.

        ``force`` (operators only, never an MCP tool) logs the problems and goes on.

        Raises:
            VerificationFailed: an IntegrityError (``rule='integrity_failed'``) with the first
                problem in its message and the whole report on ``.report``.
        """
        quick = await self._verify_anchored(thread_id)
        if quick is not None:
            return quick
        report = await self.verify_thread(thread_id)
        if report.ok:
            return report
        if force:
            log.warning("thread %s failed verification, going on (--force): %s", thread_id, report.summary)
            return report
        raise VerificationFailed(report)

    async def _verify_anchored(self, thread_id: str) -> VerifyReport | None:
        """The intact thread's report from the quick check (verify_anchored.py), or None when
        it must be verified in full (a problem, a write in flight, no usable anchor)."""
        snap = await self.store.read_anchored(check_thread_id(thread_id))
        if snap is None:
            return None
        signer = self.store.signer
        if len(snap.tail) > ANCHORED_INLINE_LINES:
            found = await anyio.to_thread.run_sync(verify_anchored, snap, signer)
        else:
            found = verify_anchored(snap, signer)
        if found is None:
            return None
        self.store.trust_verified(thread_id, found.events, found.state)
        return found.report

    async def manifest_json(self, thread_id: str) -> str:
        """The thread's signed ``thread.json`` (the same bytes the mirror writes)."""
        thread = await self.get_thread(thread_id)
        return manifest_bytes(thread, self.store.signer).decode()

    async def capabilities_md(self, thread_id: str) -> str:
        """The thread's signed ``capabilities.md``. Raises NotFoundError when it has none."""
        thread = await self.get_thread(thread_id)
        if thread.capabilities is None:
            raise NotFoundError(
                f"thread {thread_id} has no capabilities (give create_thread(capabilities=...))",
                rule="capabilities_not_found",
            )
        return caps_md.render(thread_id, thread.capabilities, self.store.signer).decode()
