"""A tiny model2vec model that a test builds on disk (no download): a word vocabulary,
hand-made vectors whose "topics" make synonyms close, written in model2vec's layout
(config.json, model.safetensors with an ``embeddings`` tensor, tokenizer.json)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

TOPICS: dict[str, list[str]] = {
    "flaky": ["flaky", "intermittent", "sporadic", "unreliable", "sometimes"],
    "login": ["login", "auth", "authentication", "signin", "credentials"],
    "test": ["test", "spec", "suite", "testing"],
    "failure": ["failure", "fails", "failing", "broken", "error"],
    "database": ["database", "postgres", "sql", "db", "tables"],
    "slow": ["slow", "sluggish", "latency", "lag", "performance"],
    "deploy": ["deploy", "release", "rollout", "ship", "shipping"],
    "cache": ["cache", "memoize", "caching", "redis"],
    "fix": ["fix", "fixed", "repair", "solve", "solved", "resolve"],
    "cooking": ["pasta", "recipe", "tomato", "sauce", "dinner"],
}
FILLER = ["the", "a", "we", "how", "did", "our", "it", "is", "was", "to", "of", "in", "and", "on"]
DIM = len(TOPICS) + 6


def build_model(folder: Path) -> Path:
    """Write the tiny model to ``folder`` and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]"]
    rows = [np.zeros(DIM), np.zeros(DIM)]
    rng = np.random.default_rng(7)
    for t, (_, words) in enumerate(TOPICS.items()):
        for w in words:
            v = np.zeros(DIM)
            v[t] = 1.0
            v[len(TOPICS) :] = rng.normal(0, 0.05, DIM - len(TOPICS))
            vocab.append(w)
            rows.append(v)
    for w in FILLER:
        vocab.append(w)
        rows.append(rng.normal(0, 0.02, DIM))
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    save_file({"embeddings": np.asarray(rows, dtype=np.float32)}, str(folder / "model.safetensors"))
    config = {
        "model_type": "model2vec",
        "architectures": ["StaticModel"],
        "hidden_dim": DIM,
        "normalize": True,
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder
