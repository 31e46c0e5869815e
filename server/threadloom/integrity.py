"""Keys, signatures and transcript hashes (DESIGN §8; the scheme is in docs/integrity.md).

- One Ed25519 key pair per root under ``<root>/keys/``: ``ed25519.key`` (PKCS#8 PEM,
  mode 0600) and ``ed25519.pub`` (SubjectPublicKeyInfo PEM). It is created on first use;
  every later process on the root loads the same key. A store that already holds threads
  never gets a new key silently: a missing or unreadable key is an :class:`IntegrityError`.
- Signatures are standard base64 of the 64-byte Ed25519 signature.
- ``thread.json`` is signed over the canonical JSON of the manifest without ``_signature``.
- A ``checkpoint`` event records ``sha256`` = SHA-256 (hex) of every transcript byte before
  its line and ``signature`` over the 32 raw digest bytes.
- Each event row stores ``prev_hash`` = h(n-1) of the database hash chain
  ``h(0) = 32 zero bytes, h(n) = SHA-256(h(n-1) || line(n) || "\\n")``; the thread row keeps h(N).

The store keeps the running SHA-256 of each transcript in memory (:class:`TranscriptHashes`),
so a checkpoint hashes only the lines since the previous one, never the whole transcript.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import IntegrityError
from .models import canonical_json

log = logging.getLogger("threadloom.integrity")

KEYS_DIR = "keys"
PRIVATE_KEY_FILE = "ed25519.key"
PUBLIC_KEY_FILE = "ed25519.pub"
SIGNATURE_FIELD = "_signature"
GENESIS = "0" * 64
"""``prev_hash`` of a thread's first event (32 zero bytes, hex)."""
HASH_CACHE_THREADS = 4096
"""Running transcript hashes kept per process (least recently used are dropped)."""

__all__ = [
    "Signer",
    "GENESIS",
    "chain_next",
    "chain_hashes",
    "checkpoint_payload",
    "sign_manifest",
    "TranscriptHashes",
    "HashView",
]


# ------------------------------------------------------------------------- keys


class Signer:
    """An Ed25519 key pair: signs with the private key, verifies with the public key.

    ``Signer.for_root(root)`` is lazy: the key is read (or created) by :meth:`load`, which the
    store calls once it knows whether it holds threads already. ``Signer.ephemeral()`` is an
    in-memory key for the memory store.
    """

    def __init__(self, keys_dir: Path | None = None, private: Ed25519PrivateKey | None = None) -> None:
        self.keys_dir = keys_dir
        self._private = private
        self._public: Ed25519PublicKey | None = private.public_key() if private else None

    @classmethod
    def ephemeral(cls) -> Signer:
        """A fresh key that lives only in this process."""
        return cls(None, Ed25519PrivateKey.generate())

    @classmethod
    def for_root(cls, root: Path) -> Signer:
        """The key of ``root`` (``<root>/keys/``), loaded by :meth:`load`."""
        return cls(Path(root) / KEYS_DIR)

    @property
    def loaded(self) -> bool:
        return self._private is not None

    @property
    def private_path(self) -> Path | None:
        return None if self.keys_dir is None else self.keys_dir / PRIVATE_KEY_FILE

    @property
    def public_path(self) -> Path | None:
        return None if self.keys_dir is None else self.keys_dir / PUBLIC_KEY_FILE

    def load(self, *, allow_create: bool) -> None:
        """Read the root's key, creating it first when ``allow_create`` and it does not exist.

        Two processes creating the key at once end up with the same one (the file is
        published with a hard link, which fails if another process won).

        Raises:
            IntegrityError: the key is missing and may not be created (the store holds
                threads signed with it), unreadable, or its public key file disagrees.
        """
        if self._private is not None:
            return
        assert self.keys_dir is not None
        priv_path, pub_path = self.private_path, self.public_path
        assert priv_path is not None and pub_path is not None
        if not priv_path.exists():
            if not allow_create:
                raise IntegrityError(
                    f"the signing key {priv_path} is missing but this root already holds threads signed "
                    f"with it: restore {self.keys_dir} from a backup (a new key would make every existing "
                    "signature fail verification); refusing to start without it",
                    rule="signing_key_missing",
                )
            self._create(priv_path)
        self._private = _read_private(priv_path)
        self._public = self._private.public_key()
        self._ensure_public_file(pub_path)

    def _create(self, priv_path: Path) -> None:
        assert self.keys_dir is not None
        self.keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _publish_once(priv_path, pem, 0o600)
        log.info("created the signing key %s", priv_path)

    def _ensure_public_file(self, pub_path: Path) -> None:
        want = self.public_pem
        try:
            have = pub_path.read_bytes()
        except FileNotFoundError:
            _publish_once(pub_path, want, 0o644)
            return
        except OSError as exc:
            raise IntegrityError(
                f"cannot read the public key {pub_path}: {exc}", rule="signing_key_unreadable"
            ) from exc
        if have != want:
            raise IntegrityError(
                f"the public key {pub_path} does not belong to the private key beside it: restore both "
                "from the same backup (or delete the .pub file to have it derived again)",
                rule="public_key_mismatch",
            )

    def _key(self) -> Ed25519PrivateKey:
        if self._private is None:
            raise IntegrityError(
                "the signing key is not loaded yet (open the store first)", rule="signing_key_missing"
            )
        return self._private

    @property
    def public_key(self) -> Ed25519PublicKey:
        self._key()
        assert self._public is not None
        return self._public

    @property
    def public_pem(self) -> bytes:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def key_id(self) -> str:
        """First 16 hex digits of the SHA-256 of the raw public key (for reports)."""
        raw = self.public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return hashlib.sha256(raw).hexdigest()[:16]

    @property
    def private_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM (to share it through a database)."""
        return self._key().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def adopt(self, pem: bytes) -> None:
        """Sign and verify from now on with the private key ``pem`` (kept in memory only)."""
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise IntegrityError(
                "the shared signing key is not an Ed25519 key", rule="signing_key_unreadable"
            )
        self._private = key
        self._public = key.public_key()

    def sign(self, data: bytes) -> str:
        """Base64 of the Ed25519 signature of ``data``."""
        return base64.b64encode(self._key().sign(data)).decode("ascii")

    def verify(self, data: bytes, signature: object) -> bool:
        """True when ``signature`` (base64 text) is this key's signature of ``data``."""
        if not isinstance(signature, str):
            return False
        try:
            raw = base64.b64decode(signature, validate=True)
            self.public_key.verify(raw, data)
        except (InvalidSignature, ValueError):
            return False
        return True


def _read_private(path: Path) -> Ed25519PrivateKey:
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise IntegrityError(
            f"the signing key {path} cannot be read: {exc.strerror or exc}; fix its owner/permissions "
            "(it must be readable by the server, mode 0600)",
            rule="signing_key_unreadable",
        ) from exc
    if stat.S_IMODE(st.st_mode) & 0o077:
        log.warning(
            "the signing key %s is readable by others (mode %o); it should be 0600",
            path,
            stat.S_IMODE(st.st_mode),
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise IntegrityError(
            f"the signing key {path} is not a readable PEM private key ({exc}); restore it from a backup",
            rule="signing_key_unreadable",
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise IntegrityError(f"the signing key {path} is not an Ed25519 key", rule="signing_key_unreadable")
    return key


def _publish_once(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` unless it exists: written to a temp file, fsynced, then linked."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process published first: theirs wins
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # pragma: no cover - directories that cannot be fsynced
        pass


# ------------------------------------------------------------------ manifests


def sign_manifest(data: dict[str, Any], signer: Signer) -> dict[str, Any]:
    """``data`` plus ``_signature`` over its canonical JSON (without any old signature)."""
    body = {k: v for k, v in data.items() if k != SIGNATURE_FIELD}
    return {**body, SIGNATURE_FIELD: signer.sign(canonical_json(body).encode())}


def manifest_signature_ok(data: dict[str, Any], signer: Signer) -> bool:
    """True when ``data[_signature]`` signs the canonical JSON of the rest of ``data``."""
    body = {k: v for k, v in data.items() if k != SIGNATURE_FIELD}
    return signer.verify(canonical_json(body).encode(), data.get(SIGNATURE_FIELD))


# ---------------------------------------------------------------- hash chain


def chain_next(prev_hash: str, line: str) -> str:
    """h(n) = SHA-256(h(n-1) || line(n) || "\\n"), hex."""
    return hashlib.sha256(bytes.fromhex(prev_hash) + line.encode() + b"\n").hexdigest()


def chain_hashes(head: str | None, lines: Sequence[str]) -> tuple[list[str], str]:
    """The ``prev_hash`` of each new line after chain head ``head``, and the new head."""
    prev = head or GENESIS
    prevs = []
    for line in lines:
        prevs.append(prev)
        prev = chain_next(prev, line)
    return prevs, prev


# --------------------------------------------------------------- checkpoints


def checkpoint_payload(signer: Signer, digest_hex: str) -> dict[str, Any]:
    """The fields of a ``checkpoint`` event over a transcript prefix with SHA-256 ``digest_hex``."""
    return {"type": "checkpoint", "sha256": digest_hex, "signature": signer.sign(bytes.fromhex(digest_hex))}


FetchLines = Callable[[int, int], Sequence[str | bytes]]
"""Lines of one thread with ``after < seq <= upto``, in seq order, from the database.

Any list whose items joined by newlines give those lines will do (a backend may hand
them over as one pre-joined value, text or UTF-8 bytes): the hash sees ``item + "\\n"``
for each item."""


class TranscriptHashes:
    """Running SHA-256 of each thread's transcript, per process (bounded, least recently used out).

    Writers never touch it directly: a transaction works on a :class:`HashView` and
    publishes it only when the transaction committed, so a rollback leaves no trace.

    A state is **trusted** when every line it covers went through this process: the thread
    was created here and every append extended it, or verification proved the lines it
    covers (:meth:`trust`). A state that read lines from the database to catch up (a new
    process, another process's appends) hashes whatever the database held: it signs
    checkpoints like any other, but is no anchor for verification (:meth:`anchor`).
    Read from the writer and the readers' threads, hence the lock.
    """

    def __init__(self, max_threads: int = HASH_CACHE_THREADS) -> None:
        self._states: OrderedDict[str, tuple[int, Any, bool]] = OrderedDict()
        self._max = max_threads
        self._lock = threading.Lock()

    def view(self, parents: Sequence[HashView] = ()) -> HashView:
        """A scratch view over the cache and the (uncommitted) ``parents``, newest last."""
        return HashView(self, tuple(parents))

    def get(self, thread_id: str) -> tuple[int, Any, bool] | None:
        with self._lock:
            state = self._states.get(thread_id)
            if state is not None:
                self._states.move_to_end(thread_id)
            return state

    def put(self, thread_id: str, seq: int, state: Any, trusted: bool = False) -> None:
        with self._lock:
            self._states[thread_id] = (seq, state, trusted)
            self._states.move_to_end(thread_id)
            while len(self._states) > self._max:
                self._states.popitem(last=False)

    def forget(self, thread_id: str) -> None:
        with self._lock:
            self._states.pop(thread_id, None)

    def anchor(self, thread_id: str) -> tuple[int, Any] | None:
        """(seq, a copy of the hash of lines 1..seq) when the state is trusted, else None."""
        with self._lock:
            state = self._states.get(thread_id)
            if state is None or not state[2]:
                return None
            return state[0], state[1].copy()

    def trusted_states(self) -> list[tuple[str, int, str]]:
        """(thread id, seq, hex SHA-256 of lines 1..seq) of every trusted state (anchors.py)."""
        with self._lock:
            return [(tid, s[0], s[1].hexdigest()) for tid, s in self._states.items() if s[2] and s[0]]

    def trust(self, thread_id: str, seq: int, state: Any) -> None:
        """Verification proved lines 1..``seq`` hash to ``state``: keep it as an anchor, unless
        the cache already holds a newer state (a writer went on meanwhile)."""
        with self._lock:
            have = self._states.get(thread_id)
            if have is not None and (have[0] > seq or (have[0] == seq and have[2])):
                return
            self._states[thread_id] = (seq, state.copy(), True)
            self._states.move_to_end(thread_id)
            while len(self._states) > self._max:
                self._states.popitem(last=False)


class HashView:
    """Running hashes as one transaction sees them: its own changes over its parents and the cache."""

    def __init__(self, cache: TranscriptHashes, parents: tuple[HashView, ...]) -> None:
        self._cache = cache
        self._parents = parents
        self._mine: dict[str, tuple[int, Any, bool]] = {}

    def _lookup(self, thread_id: str) -> tuple[int, Any, bool] | None:
        if thread_id in self._mine:
            return self._mine[thread_id]
        for view in reversed(self._parents):
            if thread_id in view._mine:
                return view._mine[thread_id]
        return self._cache.get(thread_id)

    def start(self, thread_id: str) -> None:
        """A thread was created in this transaction: its (empty) transcript is known exactly."""
        self._mine[thread_id] = (0, hashlib.sha256(), True)

    def extend(self, thread_id: str, count_before: int, lines: Sequence[str]) -> None:
        """Lines were appended after seq ``count_before``; extend the running hash if it is there."""
        state = self._lookup(thread_id)
        if state is None or state[0] != count_before:
            return  # unknown here (another process wrote, or evicted): digest() catches up
        h = state[1].copy()
        for line in lines:
            h.update(line.encode())
            h.update(b"\n")
        self._mine[thread_id] = (count_before + len(lines), h, state[2])

    def digest(self, thread_id: str, upto: int, fetch: FetchLines) -> str:
        """SHA-256 (hex) of the transcript bytes of seqs 1..``upto``; reads only the lines it lacks."""
        state = self._lookup(thread_id)
        if state is not None and state[0] <= upto:
            seq, h, trusted = state[0], state[1].copy(), state[2]
        else:
            seq, h, trusted = 0, hashlib.sha256(), False
        if seq < upto:
            trusted = False  # lines read from the database, as it holds them now
            for line in fetch(seq, upto):
                h.update(line if isinstance(line, bytes) else line.encode())
                h.update(b"\n")
        self._mine[thread_id] = (upto, h.copy(), trusted)
        return h.hexdigest()

    def trusted(self, thread_id: str) -> tuple[int, str] | None:
        """(seq, hex SHA-256 of lines 1..seq) as this transaction left the thread, when trusted."""
        state = self._lookup(thread_id)
        if state is None or not state[2]:
            return None
        return state[0], state[1].hexdigest()

    def publish(self) -> None:
        """Make this view's states the cache's (call once its transaction committed)."""
        for tid, (seq, h, trusted) in self._mine.items():
            self._cache.put(tid, seq, h, trusted)
        self._mine.clear()
