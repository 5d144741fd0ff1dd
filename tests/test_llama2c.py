"""llama2.c-family loaders: files written from the transformers reference weights read back
exactly (fp32) or within the int8 rounding bound; malformed files give ModelFormatError."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from polyllama.checkpoint import QuantizedArray
from polyllama.errors import ModelFormatError
from polyllama.llama2c import load_llama2c

import refmodel
from formats import MAGIC, WRITERS
from refmodel import CONFIGS, canonical_weights, make_hf_model

SEQ = 128
GROUP = 16
INT8 = ("llama2c-v2", "kuiper-int8")


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def ref(request):
    model = make_hf_model(request.param)
    return request.param, model, canonical_weights(model)


def write(path, fmt, name, weights, **kw):
    _, _, _, heads, kv, _, _ = CONFIGS[name]
    if fmt in INT8:
        kw.setdefault("group", GROUP)
    WRITERS[fmt](path, weights, heads, kv, SEQ, **kw)
    return path


def dequantize(t: QuantizedArray) -> np.ndarray:
    """Independent of polyllama: each run of `group` flattened values times its scale."""
    groups = t.q.astype(np.float64).reshape(-1, t.group)
    return (groups * t.scales.astype(np.float64)[:, None]).reshape(t.q.shape)


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_reads_back_every_tensor(tmp_path, ref, fmt):
    name, model, weights = ref
    ckpt = load_llama2c(write(tmp_path / "model.bin", fmt, name, weights))
    dim, hidden, layers, heads, kv, vocab, tied = CONFIGS[name]
    c = ckpt.config
    assert ckpt.format == fmt
    assert (c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size,
            c.max_seq_len, c.tie_embeddings) == (dim, hidden, layers, heads, kv, vocab, SEQ, tied)
    assert set(ckpt.tensors) == set(weights)
    for key, src in weights.items():
        t = ckpt.tensors[key]
        kept_f32 = src.ndim == 1 or (fmt == "kuiper-int8" and key == "tok_embeddings")
        if fmt in INT8 and not kept_f32:
            assert isinstance(t, QuantizedArray) and t.group == GROUP, key
            assert t.q.dtype == np.int8 and t.q.shape == src.shape
            groups = src.reshape(-1, GROUP)
            np.testing.assert_allclose(t.scales, np.abs(groups).max(axis=1) / 127, rtol=1e-6)
            bound = t.scales.astype(np.float64)[:, None] * 0.5 * (1 + 1e-5)
            err = np.abs(dequantize(t) - src).reshape(-1, GROUP)
            assert (err <= bound).all(), key
        else:
            assert isinstance(t, np.ndarray) and t.dtype == np.float32, key
            np.testing.assert_array_equal(t, src, err_msg=key)
            assert not t.flags.owndata and not t.flags.writeable, "expected a view over the mmap"


@pytest.mark.parametrize("fmt", sorted(WRITERS))
@pytest.mark.parametrize("damage", ["truncate", "append"])
def test_size_mismatch_is_refused(tmp_path, ref, fmt, damage):
    name, _, weights = ref
    path = write(tmp_path / "model.bin", fmt, name, weights)
    data = path.read_bytes()
    path.write_bytes(data[:-4] if damage == "truncate" else data + b"junk")
    with pytest.raises(ModelFormatError, match=rf"expected .*{len(data)}.* bytes for this header"
                                               rf".*file has {len(path.read_bytes())}"):
        load_llama2c(path)


def _header_v1(**changes) -> bytes:
    v = dict(version=1, dim=64, hidden=160, layers=2, heads=8, kv=2, vocab=96, seq=SEQ,
             shared=1, group=None)
    v.update(changes)
    head = struct.pack("<Ii7iB", MAGIC, v["version"], v["dim"], v["hidden"], v["layers"],
                       v["heads"], v["kv"], v["vocab"], v["seq"], v["shared"])
    if v["group"] is not None:
        head += struct.pack("<i", v["group"])
    return head + b"\0" * (256 - len(head)) + b"\0" * 4096


@pytest.mark.parametrize("changes, message", [
    (dict(version=7), "unknown llama2.c version 7"),
    (dict(dim=0), "dim=0"),
    (dict(hidden=-160), "hidden_dim=-160"),
    (dict(dim=60, heads=8), "not divisible by n_heads=8"),
    (dict(heads=8, kv=3), "not a multiple of n_kv_heads=3"),
    (dict(vocab=-96), "vocab_size=-96"),
    (dict(shared=5), "shared_classifier flag is 5"),
    (dict(version=2, group=0), "group size 0"),
    (dict(version=2, group=7), "group size 7 does not divide tensor"),
])
def test_bad_versioned_header(tmp_path, changes, message):
    path = tmp_path / "bad.bin"
    path.write_bytes(_header_v1(**changes))
    with pytest.raises(ModelFormatError, match=message):
        load_llama2c(path)


def test_bad_legacy_header(tmp_path):
    path = tmp_path / "bad.bin"
    path.write_bytes(struct.pack("<7i", 64, 160, 2, 6, 2, 96, SEQ) + b"\0" * 4096)
    with pytest.raises(ModelFormatError, match="no llama2.c magic .*not divisible by n_heads=6"):
        load_llama2c(path)


def test_unknown_magic(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<I", 3) + b"\xff" * 4096)
    with pytest.raises(ModelFormatError, match="unknown format: no llama2.c magic"):
        load_llama2c(path)


def test_kuiper_group_that_does_not_divide(tmp_path, ref):
    name, _, weights = ref
    path = write(tmp_path / "model.bin", "kuiper-int8", name, weights)
    data = bytearray(path.read_bytes())
    data[28:32] = struct.pack("<i", 7)
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="group size 7 does not divide tensor layers.0.wq"):
        load_llama2c(path)


def test_v2_is_checked_with_its_own_group(tmp_path, ref):
    name, _, weights = ref
    path = write(tmp_path / "model.bin", "llama2c-v2", name, weights, group=8)
    ckpt = load_llama2c(path)
    assert ckpt.meta["group_size"] == 8 and ckpt.tensors["layers.1.w2"].group == 8


@pytest.mark.parametrize("case, message", [
    ("empty", "the file is empty"),
    ("tiny", "too small for any llama2.c header"),
    ("directory", "is a directory"),
    ("missing", "no such file"),
    ("short-v1", "expected at least 256 bytes"),
])
def test_unreadable_paths(tmp_path, case, message):
    path = tmp_path / "model.bin"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "tiny":
        path.write_bytes(b"\x01\x02\x03")
    elif case == "directory":
        path.mkdir()
    elif case == "short-v1":
        path.write_bytes(_header_v1()[:100])
    with pytest.raises(ModelFormatError, match=message):
        load_llama2c(path)


# -- the whole model through each file format, against transformers ----------------------

def hf_with_file_weights(model, tensors):
    """A copy of the transformers model whose weights are the file's, int8 ones dequantized
    by the test: the reference then computes with exactly what the file holds."""
    import copy
    import torch
    hf = copy.deepcopy(model)
    sd, c = hf.state_dict(), hf.config
    plain = {k: dequantize(t) if isinstance(t, QuantizedArray) else t for k, t in tensors.items()}
    for name, w in refmodel.hf_weights(plain, c.num_attention_heads,
                                       c.num_key_value_heads).items():
        with torch.no_grad():
            sd[name].copy_(torch.from_numpy(w))
    return hf


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_whole_model_matches_transformers(tmp_path, ref, fmt):
    name, model, weights = ref
    ckpt = load_llama2c(write(tmp_path / "model.bin", fmt, name, weights))
    hf = hf_with_file_weights(model, ckpt.tensors) if fmt in INT8 else model
    refmodel.assert_matches_transformers(ckpt, hf)


def test_cpu_numpy_computes_on_the_mapped_file_without_copying(tmp_path, ref):
    from polyllama import get_device
    from polyllama.model import Model
    name, _, weights = ref
    ckpt = load_llama2c(write(tmp_path / "model.bin", "llama2c-v1", name, weights))
    model = Model.build(ckpt, get_device("cpu:numpy"))
    assert np.shares_memory(model.layers[0].wo.parts["w"], ckpt.tensors["layers.0.wo"])
    assert np.shares_memory(model.tok_embeddings, ckpt.tensors["tok_embeddings"])
