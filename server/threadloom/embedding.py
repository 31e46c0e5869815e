"""The local embedding model of the ``semantic`` extra (model2vec static embeddings).

``pip install 'threadloom[semantic]'`` brings model2vec (numpy, tokenizers, safetensors:
no PyTorch, CPU only). The model is named by the ``semantic_model`` setting: a local
directory in model2vec's layout (``config.json``, ``model.safetensors``,
``tokenizer.json``) or a Hugging Face model id (``minishlab/potion-base-8M``) that must
already be in the local Hugging Face cache. Nothing is ever downloaded here: a missing
model is an error that says how to get it.

Vectors leave this module as unit-length float32 little-endian bytes, the form every
store keeps (cosine similarity is then a dot product).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from .errors import InvalidInputError, ThreadloomError

__all__ = [
    "EXTRA",
    "SemanticUnavailableError",
    "Embedder",
    "extra_missing",
    "load_embedder",
    "resolve_model_dir",
]

EXTRA = "threadloom[semantic]"
INSTALL = f"pip install '{EXTRA}'"
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")
MAX_TEXT_CHARS = 8000
"""Text past this many characters is not embedded (a static model averages its tokens anyway)."""


class SemanticUnavailableError(ThreadloomError):
    """Semantic search was asked for but the extra or the model is missing."""

    rule = "semantic_unavailable"


def extra_missing() -> str | None:
    """Why the semantic extra cannot be used here (None when it can)."""
    try:
        import model2vec  # noqa: F401
        import numpy  # noqa: F401
    except ImportError as exc:
        return f"{exc.name or 'model2vec'} is not installed"
    return None


def _hf_cache() -> Path:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        return Path(HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - model2vec depends on huggingface_hub
        home = os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface"))
        return Path(home) / "hub"


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in MODEL_FILES)


def how_to_get(spec: str) -> str:
    """The instructions a missing-model error gives."""
    if "/" in spec and not Path(spec).expanduser().is_absolute() and spec.count("/") == 1:
        return (
            f"download it once on a machine with network access: `huggingface-cli download {spec}` (or "
            f"`python -c \"from model2vec import StaticModel; StaticModel.from_pretrained('{spec}')\"`), "
            f"which puts it in the Hugging Face cache ({_hf_cache()}); or copy its folder here and set "
            "semantic_model to that folder's path"
        )
    return (
        "set semantic_model to a folder holding a model2vec model (config.json, model.safetensors, "
        "tokenizer.json: e.g. the folder `StaticModel.save_pretrained()` writes, or a snapshot of "
        "minishlab/potion-base-8M), or to a Hugging Face model id already in the local cache"
    )


def resolve_model_dir(spec: str) -> Path:
    """The local folder of the model named by ``spec`` (a path or a cached hub id).

    Raises:
        SemanticUnavailableError: no such folder, or not a complete model2vec model.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidInputError("semantic_model must be a model folder or a model id", rule="semantic_model")
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_dir() and _complete(path):
            return path
        missing = [n for n in MODEL_FILES if not (path / n).is_file()]
        raise SemanticUnavailableError(
            f"semantic_model {spec!r:.200} is not a model2vec model folder (missing: {', '.join(missing)}); "
            + how_to_get(spec),
            rule="semantic_model_missing",
        )
    if spec.count("/") == 1 and not spec.startswith(("/", ".", "~")):
        snapshots = _hf_cache() / f"models--{spec.replace('/', '--')}" / "snapshots"
        found = [p for p in snapshots.iterdir() if p.is_dir() and _complete(p)] if snapshots.is_dir() else []
        if found:
            return max(found, key=lambda p: p.stat().st_mtime)
        raise SemanticUnavailableError(
            f"semantic model {spec!r:.200} is not in the local Hugging Face cache ({_hf_cache()}) and "
            "threadloom never downloads models; " + how_to_get(spec),
            rule="semantic_model_missing",
        )
    raise SemanticUnavailableError(
        f"semantic_model {spec!r:.200} is neither an existing folder nor a model id (owner/name); "
        + how_to_get(spec),
        rule="semantic_model_missing",
    )


class Embedder:
    """A loaded model2vec model: texts in, unit float32 vectors out (thread-safe)."""

    def __init__(self, spec: str, model: Any) -> None:
        self.spec = spec
        self.model = model
        self.dim = int(model.dim)
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        """What the stores record with each vector: vectors of another model are never compared."""
        return f"{self.spec}#{self.dim}"

    def encode(self, texts: list[str]) -> Any:
        """An (n, dim) float32 array of unit vectors (zero rows for texts with no known token)."""
        import numpy as np

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        cut = [t[:MAX_TEXT_CHARS] for t in texts]
        with self._lock:  # the tokenizer is shared
            vectors = self.model.encode(cut, use_multiprocessing=False, show_progress_bar=False)
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dim)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        np.divide(vectors, norms, out=vectors, where=norms > 0)
        return vectors

    def encode_bytes(self, texts: list[str]) -> list[bytes]:
        """:meth:`encode` as the bytes the stores keep (b"" for a text with no known token)."""
        vectors = self.encode(texts)
        raw = vectors.astype("<f4", copy=False).tobytes()
        step = 4 * self.dim
        known = vectors.any(axis=1).tolist()
        return [raw[i * step : (i + 1) * step] if known[i] else b"" for i in range(len(known))]


_cache: dict[str, Embedder] = {}
_cache_lock = threading.Lock()


def load_embedder(spec: str | None) -> Embedder:
    """Load (once per process) the model named by ``spec``.

    Raises:
        SemanticUnavailableError: the extra is not installed, no model is configured, or
            the model is not on this machine (the message says how to get it).
    """
    why = extra_missing()
    if why is not None:
        raise SemanticUnavailableError(
            f"semantic search needs the semantic extra ({why}): {INSTALL}, then set semantic_model",
            rule="semantic_unavailable",
        )
    if not spec:
        raise SemanticUnavailableError(
            "semantic search needs a model: set semantic_model (config.toml, $THREADLOOM_SEMANTIC_MODEL) "
            "to a model2vec model folder or a cached model id such as minishlab/potion-base-8M",
            rule="semantic_model_unset",
        )
    with _cache_lock:
        if spec in _cache:
            return _cache[spec]
        folder = resolve_model_dir(spec)
        # the indexer embeds on one worker thread next to the appends: no tokenizer thread pool
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from model2vec import StaticModel

        try:
            model = StaticModel.from_pretrained(folder, force_download=False)
        except Exception as exc:
            raise SemanticUnavailableError(
                f"cannot load the semantic model from {folder}: {exc}; " + how_to_get(spec),
                rule="semantic_model_missing",
            ) from exc
        _cache[spec] = embedder = Embedder(spec, model)
        return embedder
