"""Loaders for the llama2.c checkpoint family: legacy v0, v1 (fp32), v2 (int8) and the
KuiperLLama int8 export ("version 3"). See FORMATS.md for the layouts.

Which format a file is comes from the file itself:
- first u32 is 0x616b3432 ("ak42"): the 256-byte header, whose version field says v1 or v2;
- otherwise the first 7 i32 are read as `dim, hidden, L, H, KV, V, S`. A v0 file (7-int header)
  and a KuiperLLama file (8-int header, the 8th being group_size) share those 7 ints, so the
  one whose header predicts the file size exactly wins. The 8th int only counts as a group
  size when it lies in 1..2**20: read as an i32, the first weight of a v0 file is negative or
  far larger than that unless it is a denormal. Should both sizes match, the file is refused.
The expected size is computed from the header and compared before anything is mapped, so a
truncated file or one with trailing data is an error, never a silent misread. Weights are
read-only views over one mmap: nothing is copied.
"""
from __future__ import annotations

import mmap
import os
import struct

import numpy as np

from .checkpoint import Checkpoint, QuantizedArray, expected_shapes
from .config import LlamaConfig
from .errors import ModelFormatError

MAGIC = 0x616B3432               # "ak42" as a little-endian u32
V1_HEADER = 256
LEGACY_HEADER = 7 * 4
KUIPER_HEADER = 8 * 4
MAX_GROUP = 1 << 20

F32, Q8, SKIP = "f32", "q8", "skip"   # how a plan entry is stored (SKIP: f32, not kept)


def load_llama2c(path) -> Checkpoint:
    """Load any llama2.c-family checkpoint; raise ModelFormatError on anything malformed."""
    path = os.fspath(path)
    size = _file_size(path)
    try:
        with open(path, "rb") as f:
            fmt, config, header, plan, group = _detect(path, size, f.read(V1_HEADER))
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise ModelFormatError(f"{path}: cannot read the checkpoint ({e.strerror})") from None
    tensors, offset = {}, header
    for name, shape, kind in plan:
        n = int(np.prod(shape))
        if kind == Q8:
            q = np.frombuffer(buf, np.int8, n, offset).reshape(shape)
            scales = np.frombuffer(buf, "<f4", n // group, offset + n)
            tensors[name] = QuantizedArray(q, scales, group)
        elif kind == F32:
            tensors[name] = np.frombuffer(buf, "<f4", n, offset).reshape(shape)
        offset += _nbytes(shape, kind, group)
    meta = {"group_size": group} if group else {}
    return Checkpoint(config, tensors, fmt, path, meta=meta).validate()


def _file_size(path: str) -> int:
    if not os.path.exists(path):
        raise ModelFormatError(f"{path}: no such file; pass the path of a llama2.c .bin checkpoint")
    if os.path.isdir(path):
        raise ModelFormatError(f"{path} is a directory; pass the llama2.c .bin checkpoint file "
                               "inside it")
    size = os.path.getsize(path)
    if size == 0:
        raise ModelFormatError(f"{path}: the file is empty (an interrupted download or copy?)")
    if size < LEGACY_HEADER:
        raise ModelFormatError(f"{path}: {size} bytes is too small for any llama2.c header "
                               f"(at least {LEGACY_HEADER})")
    return size


def _detect(path: str, size: int, head: bytes):
    """(format, config, header bytes, plan, group size or 0) of the file, or an error."""
    (word,) = struct.unpack_from("<I", head)
    if word == MAGIC:
        return _detect_versioned(path, size, head)
    ints = struct.unpack_from("<7i", head)
    try:
        config = _config(ints[:5] + (abs(ints[5]), ints[6]), shared=ints[5] > 0)
    except ModelFormatError as e:
        raise ModelFormatError(f"{path}: unknown format: no llama2.c magic 0x{MAGIC:08x} (first "
                               f"word is 0x{word:08x}), and as a legacy header: {e}") from None
    candidates = {"llama2c-v0": (LEGACY_HEADER, _plan_v0(config), 0)}
    group = struct.unpack_from("<i", head, LEGACY_HEADER)[0] if size >= KUIPER_HEADER else 0
    if 0 < group <= MAX_GROUP:
        plan = _plan_v3(config)
        if _divides(plan, group):
            candidates["kuiper-int8"] = (KUIPER_HEADER, plan, group)
        elif _expected(*candidates["llama2c-v0"]) != size:
            _check_group(path, plan, group)
    fits = [fmt for fmt, c in candidates.items() if _expected(*c) == size]
    if len(fits) > 1:
        raise ModelFormatError(f"{path}: ambiguous file: its size fits both a llama2.c v0 and a "
                               "KuiperLLama int8 header; convert it to llama2.c v1")
    if not fits:
        wanted = " or ".join(f"{_expected(*c)} ({fmt})" for fmt, c in candidates.items())
        raise ModelFormatError(f"{path}: expected {wanted} bytes for this header "
                               f"({_describe(config)}), file has {size}: the file is truncated "
                               "or has trailing data, or is not a llama2.c checkpoint")
    header, plan, group = candidates[fits[0]]
    return fits[0], config, header, plan, group


def _detect_versioned(path: str, size: int, head: bytes):
    if len(head) < V1_HEADER:
        raise ModelFormatError(f"{path}: expected at least {V1_HEADER} bytes for the llama2.c "
                               f"header, file has {size} (truncated)")
    version, *ints = struct.unpack_from("<8i", head, 4)
    if version not in (1, 2):
        raise ModelFormatError(f"{path}: unknown llama2.c version {version} (this reader knows "
                               "versions 1 and 2, and the magic-less v0 and KuiperLLama files)")
    shared = head[36]
    if shared not in (0, 1):
        raise ModelFormatError(f"{path}: shared_classifier flag is {shared}, expected 0 or 1 "
                               "(corrupt header)")
    config = _config(tuple(ints), shared=bool(shared))
    if version == 1:
        plan, group = _plan_v1(config), 0
    else:
        plan, group = _plan_v2(config), struct.unpack_from("<i", head, 37)[0]
        if group <= 0:
            raise ModelFormatError(f"{path}: group size {group} in the header must be positive")
        _check_group(path, plan, group)
    expected = _expected(V1_HEADER, plan, group)
    if expected != size:
        raise ModelFormatError(f"{path}: expected {expected} bytes for this header (llama2.c v"
                               f"{version}, {_describe(config)}), file has {size}: the file is "
                               "truncated or has trailing data")
    return f"llama2c-v{version}", config, V1_HEADER, plan, group


def _config(ints: tuple, shared: bool) -> LlamaConfig:
    dim, hidden, layers, heads, kv_heads, vocab, seq = ints
    return LlamaConfig(dim=dim, hidden_dim=hidden, n_layers=layers, n_heads=heads,
                       n_kv_heads=kv_heads, vocab_size=vocab, max_seq_len=seq,
                       tie_embeddings=shared).validated()


def _describe(c: LlamaConfig) -> str:
    return (f"dim={c.dim} hidden={c.hidden_dim} layers={c.n_layers} heads={c.n_heads} "
            f"kv_heads={c.n_kv_heads} vocab={c.vocab_size} seq_len={c.max_seq_len}"
            f"{'' if c.tie_embeddings else ' unshared classifier'}")


def _divides(plan, group: int) -> bool:
    return all(int(np.prod(shape)) % group == 0 for _, shape, kind in plan if kind == Q8)


def _check_group(path: str, plan, group: int) -> None:
    """Raise naming the first int8 tensor that `group` does not divide."""
    for name, shape, kind in plan:
        if kind == Q8 and int(np.prod(shape)) % group:
            raise ModelFormatError(f"{path}: group size {group} does not divide tensor {name} "
                                   f"of shape {shape} ({int(np.prod(shape))} values): the header "
                                   "is corrupt")


def _nbytes(shape, kind: str, group: int) -> int:
    n = int(np.prod(shape))
    return n + 4 * (n // group) if kind == Q8 else 4 * n


def _expected(header: int, plan, group: int) -> int:
    return header + sum(_nbytes(shape, kind, group) for _, shape, kind in plan)


# -- file layouts: (canonical name, shape, storage) in file order --------------------------

def _each_layer(config: LlamaConfig, kinds: str, storage: str):
    """All layers of the first kind, then all layers of the next, and so on."""
    shapes = expected_shapes(config)
    return [(f"layers.{i}.{k}", shapes[f"layers.{i}.{k}"], storage)
            for k in kinds.split() for i in range(config.n_layers)]


def _one(config: LlamaConfig, name: str, storage: str):
    return [(name, expected_shapes(config)[name], storage)]


def _classifier(config: LlamaConfig, storage: str):
    return [] if config.tie_embeddings else _one(config, "output", storage)


def _plan_v0(c: LlamaConfig):
    rope_table = ("rope_table", (c.max_seq_len, c.hd // 2), SKIP)
    return (_one(c, "tok_embeddings", F32) + _each_layer(c, "attn_norm wq wk wv wo", F32)
            + _each_layer(c, "ffn_norm w1 w2 w3", F32) + _one(c, "norm", F32)
            + [rope_table, rope_table] + _classifier(c, F32))


def _plan_v1(c: LlamaConfig):
    return (_each_layer(c, "attn_norm ffn_norm", F32) + _one(c, "norm", F32)
            + _one(c, "tok_embeddings", F32) + _each_layer(c, "wq wk wv wo w1 w2 w3", F32)
            + _classifier(c, F32))


def _plan_v2(c: LlamaConfig):
    return (_each_layer(c, "attn_norm ffn_norm", F32) + _one(c, "norm", F32)
            + _one(c, "tok_embeddings", Q8) + _each_layer(c, "wq wk wv wo w1 w2 w3", Q8)
            + _classifier(c, Q8))


def _plan_v3(c: LlamaConfig):
    return (_each_layer(c, "wq wk wv wo w1 w2 w3", Q8) + _classifier(c, Q8)
            + _one(c, "tok_embeddings", F32) + _each_layer(c, "attn_norm ffn_norm", F32)
            + _one(c, "norm", F32))
