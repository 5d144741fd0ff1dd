"""Model hyperparameters, validated once so no loader can hand the executor nonsense."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from .errors import ModelFormatError


@dataclass(frozen=True)
class LlamaConfig:
    dim: int                       # model width
    hidden_dim: int                # FFN width
    n_layers: int
    n_heads: int                   # query heads
    n_kv_heads: int                # key/value heads (GQA when < n_heads)
    vocab_size: int
    max_seq_len: int               # context length the model was trained for
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    head_dim: int | None = None    # None: dim // n_heads
    rope_scaling: dict | None = field(default=None, compare=False)  # e.g. {"rope_type": "llama3", ...}
    tie_embeddings: bool = True    # classifier shares tok_embeddings

    @property
    def hd(self) -> int:
        return self.head_dim if self.head_dim is not None else self.dim // self.n_heads

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.hd

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.hd

    def with_(self, **changes) -> "LlamaConfig":
        return replace(self, **changes).validated()

    def validated(self) -> "LlamaConfig":
        """Return self, or raise ModelFormatError naming the first value that makes no sense."""
        ints = dict(dim=self.dim, hidden_dim=self.hidden_dim, n_layers=self.n_layers,
                    n_heads=self.n_heads, n_kv_heads=self.n_kv_heads,
                    vocab_size=self.vocab_size, max_seq_len=self.max_seq_len)
        for name, value in ints.items():
            if not isinstance(value, int) or value <= 0 or value > 1 << 24:
                raise ModelFormatError(f"model header: {name}={value!r} is not a sensible size "
                                       "(the file is probably corrupt or not a llama checkpoint)")
        if self.head_dim is None and self.dim % self.n_heads:
            raise ModelFormatError(f"model header: dim={self.dim} is not divisible by "
                                   f"n_heads={self.n_heads}")
        if self.n_kv_heads > self.n_heads or self.n_heads % self.n_kv_heads:
            raise ModelFormatError(f"model header: n_heads={self.n_heads} is not a multiple of "
                                   f"n_kv_heads={self.n_kv_heads}")
        if self.hd % 2:
            raise ModelFormatError(f"model header: head size {self.hd} is odd; RoPE needs pairs")
        if not (0 < self.norm_eps < 1):
            raise ModelFormatError(f"model header: norm_eps={self.norm_eps} is out of range")
        if not self.rope_theta > 0:
            raise ModelFormatError(f"model header: rope_theta={self.rope_theta} must be positive")
        return self
