"""What every loader returns: a config plus host-side tensors under canonical names.

Canonical names (llama2.c / Meta naming, q and k rows in the adjacent-pair RoPE layout):
  tok_embeddings [V, D]        norm [D]           output [V, D] (absent when tied)
  layers.{i}.attn_norm [D]     layers.{i}.ffn_norm [D]
  layers.{i}.wq [H*hd, D]      layers.{i}.wk [KV*hd, D]    layers.{i}.wv [KV*hd, D]
  layers.{i}.wo [D, H*hd]      layers.{i}.w1 [F, D]  layers.{i}.w2 [D, F]  layers.{i}.w3 [F, D]
A tensor is a numpy array (any float dtype, usually a read-only view over an mmap) or a
QuantizedArray that keeps a file's int8 blocks until a weight format decides what to do.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import LlamaConfig
from .errors import ModelFormatError
from . import reference


@dataclass
class QuantizedArray:
    """Group-wise symmetric int8 (q8_0): w = q * scales[flat_index // group]."""
    q: np.ndarray                 # int8, shape of the matrix
    scales: np.ndarray            # float32, one per `group` consecutive values (flattened)
    group: int
    fmt: str = "q8_0"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.q.shape)

    def dequantize(self) -> np.ndarray:
        return reference.dequantize_groups(self.q, self.scales, self.group)


HostTensor = Any   # np.ndarray | QuantizedArray


def expected_shapes(c: LlamaConfig) -> dict[str, tuple[int, ...]]:
    shapes = {"tok_embeddings": (c.vocab_size, c.dim), "norm": (c.dim,)}
    if not c.tie_embeddings:
        shapes["output"] = (c.vocab_size, c.dim)
    per_layer = {"attn_norm": (c.dim,), "ffn_norm": (c.dim,),
                 "wq": (c.q_dim, c.dim), "wk": (c.kv_dim, c.dim), "wv": (c.kv_dim, c.dim),
                 "wo": (c.dim, c.q_dim), "w1": (c.hidden_dim, c.dim),
                 "w2": (c.dim, c.hidden_dim), "w3": (c.hidden_dim, c.dim)}
    for i in range(c.n_layers):
        for name, shape in per_layer.items():
            shapes[f"layers.{i}.{name}"] = shape
    return shapes


@dataclass
class Checkpoint:
    config: LlamaConfig
    tensors: dict[str, HostTensor]
    format: str                           # e.g. "llama2c-v1", "gguf", "safetensors"
    path: str
    tokenizer: Any = None                 # a core.tokenizer.Tokenizer when the file embeds one
    chat_template: str | None = None      # Jinja source from the model files
    meta: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> "Checkpoint":
        """Raise ModelFormatError on a missing, unexpected or misshapen tensor."""
        want = expected_shapes(self.config)
        missing = sorted(set(want) - set(self.tensors))
        if missing:
            raise ModelFormatError(f"{self.path}: missing tensors {missing[:5]}"
                                   f"{' ...' if len(missing) > 5 else ''}")
        for name, shape in want.items():
            got = tuple(self.tensors[name].shape)
            if got != shape:
                raise ModelFormatError(f"{self.path}: tensor {name} has shape {got}, "
                                       f"the config implies {shape}")
        return self

    def dense(self, name: str) -> np.ndarray:
        """The tensor as a float array (dequantized if it was stored quantized)."""
        t = self.tensors[name]
        return t.dequantize() if isinstance(t, QuantizedArray) else t

    def weight_bytes(self) -> int:
        total = 0
        for t in self.tensors.values():
            total += (t.q.nbytes + t.scales.nbytes) if isinstance(t, QuantizedArray) else t.nbytes
        return total
