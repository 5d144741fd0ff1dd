"""The LLaMA executor, written once in terms of the ops of core/ops.py.

build() resolves every kernel and uploads the weights; forward only fills preallocated
buffers. The token id and the position live in device buffers, so a backend may capture the
whole decode step (Device.decode_runner) and replay it. On such a backend a prefill pads its
tokens to the next of PREFILL_ROWS (or PREFILL_CHUNK) and replays a recording of that length
too; only the classifier, on the last real token, runs eagerly.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from . import reference
from .checkpoint import Checkpoint
from .config import LlamaConfig
from .device import Device, canonical_dtype
from .errors import ContextLengthError, DeviceError, UsageError
from .ops import DENSE, REQUIRED_OPS, Weight
from .registry import get_registry
from .tensor import Tensor

PREFILL_CHUNK = 512          # prompt tokens per prefill pass (bounds prefill scratch memory)
PREFILL_ROWS = (16, 32, 64, 128, 256, 384)  # lengths replayed prefills pad to, or PREFILL_CHUNK
PICKED_SLOTS = 8             # decode steps whose picked ids stay readable (the host runs 1 ahead)


@dataclass
class Layer:
    attn_norm: object        # [D]
    wqkv: Weight             # [H*hd + 2*KV*hd, D]: wq, wk, wv stacked
    wo: Weight               # [D, H*hd]
    ffn_norm: object         # [D]
    w13: Weight              # [2F, D]: w1 (gate) and w3 (up) stacked
    w2: Weight               # [D, F]
    k_cache: object          # [S, KV, hd]
    v_cache: object          # [S, KV, hd]


class Workspace:
    """Activation buffers for up to `rows` tokens, allocated once."""

    def __init__(self, device: Device, c: LlamaConfig, rows: int, dtype: str,
                 residual: str | None = None):
        self.rows, self.c = rows, c
        e = device.empty
        self.ids = e((rows,), "int32")
        self.x = e((rows, c.dim), residual or dtype)           # residual stream
        self.h = e((rows, c.dim), dtype)                       # normed input / scratch
        self.tmp = e((rows, c.dim), residual or dtype)         # linear output before add
        self.qkv = e((rows, c.q_dim + 2 * c.kv_dim), dtype)
        self.attn = e((rows, c.q_dim), dtype)
        self.gu = e((rows, 2 * c.hidden_dim), dtype)
        self.act = e((rows, c.hidden_dim), dtype)

    def views(self, T: int) -> SimpleNamespace:
        """Natives for a step of T <= rows tokens (the first T rows of every buffer)."""
        c = self.c
        rows = {n: getattr(self, n).narrow(0, 0, T) for n in
                ("x", "h", "tmp", "qkv", "attn", "gu", "act")}
        q, k, v = rows["qkv"].split_last(c.q_dim, c.kv_dim, c.kv_dim)
        gate, up = rows["gu"].split_last(c.hidden_dim, c.hidden_dim)
        return SimpleNamespace(
            T=T, ids=self.ids.narrow(0, 0, T).native,
            **{n: t.native for n, t in rows.items()},
            q=_heads(q, T, c.n_heads, c.hd),
            k=_heads(k, T, c.n_kv_heads, c.hd), v=_heads(v, T, c.n_kv_heads, c.hd),
            attn3=rows["attn"].view(T, c.n_heads, c.hd).native,
            gate=gate.native, up=up.native,
            last=rows["x"].narrow(0, T - 1, 1).native)


def _heads(t, T, n, hd):
    """[T, n*hd] column view -> [T, n, hd] view (row stride kept)."""
    return Tensor(t.buffer, (T, n, hd), (t.strides[0], hd, 1), t.offset).native


class Model:
    def __init__(self, config: LlamaConfig, device: Device, dtype: str, ctx: int):
        self.config, self.device, self.dtype, self.ctx = config, device, dtype, ctx
        self.weight_bytes = 0

    # ------------------------------------------------------------------ build
    @classmethod
    def build(cls, ckpt: Checkpoint, device: Device, dtype: str | None = None,
              ctx: int | None = None, quant: str | None = None) -> "Model":
        c = ckpt.config
        dtype = canonical_dtype(dtype) if dtype else device.default_dtype
        if dtype not in device.supported_dtypes:
            raise DeviceError(f"{device.spec} does not compute in {dtype}; it supports "
                              f"{', '.join(device.supported_dtypes)}")
        ctx = min(c.max_seq_len, 4096) if ctx is None else ctx
        if not 1 <= ctx <= 1 << 20:
            raise UsageError(f"context size {ctx} is out of range")
        self = cls(c, device, dtype, ctx)
        self._resolve_kernels(quant)
        up = self._upload
        self.tok_embeddings = up(ckpt.dense("tok_embeddings"))
        self.norm = up(ckpt.dense("norm"))
        if "output" in ckpt.tensors:
            self.output = self._weight(ckpt, ["output"])
        elif self.pack is not None:          # tied: the classifier gets its own packed copy
            self.output = self._weight(ckpt, ["tok_embeddings"])
        else:
            self.output = Weight(DENSE, (c.vocab_size, c.dim), {"w": self.tok_embeddings})
        kv = device.empty((2, c.n_layers, ctx, c.n_kv_heads, c.hd), dtype)
        self.layers = []
        for i in range(c.n_layers):
            p = f"layers.{i}."
            self.layers.append(Layer(
                attn_norm=up(ckpt.dense(p + "attn_norm")),
                wqkv=self._weight(ckpt, [p + "wq", p + "wk", p + "wv"]),
                wo=self._weight(ckpt, [p + "wo"]),
                ffn_norm=up(ckpt.dense(p + "ffn_norm")),
                w13=self._weight(ckpt, [p + "w1", p + "w3"]),
                w2=self._weight(ckpt, [p + "w2"], columns=self.ffn_k is not None),
                k_cache=_cache(kv, 0, i, ctx, c), v_cache=_cache(kv, 1, i, ctx, c)))
        cos, sin = reference.rope_tables(c.hd, ctx, c.rope_theta, c.rope_scaling)
        self.cos = device.upload(cos, "float32", share=True).native
        self.sin = device.upload(sin, "float32", share=True).native
        self.scale = 1.0 / float(np.sqrt(c.hd))
        self.kv_bytes = kv.buffer.nbytes
        self.pos = device.empty((1,), "int32")
        self._device_pos = None              # what pos holds once queued work has run, if known
        self.picked = device.empty((PICKED_SLOTS,), "int32") if self.advance_k else None
        self.logits = device.empty((1, c.vocab_size), dtype)
        self.decode_ws = Workspace(device, c, 1, dtype,
                                   "float32" if self.ffn_k is not None else None)
        self._decode = self.decode_ws.views(1)
        self._prefill_ws = None
        self._runners = {}
        self._prefill_runners = {}
        return self

    def _resolve_kernels(self, quant):
        reg, b = get_registry(), self.device.backend_id
        self.k = SimpleNamespace(**{op: reg.kernel(b, op) for op in REQUIRED_OPS})
        self.fmt = DENSE
        self.pack = None
        if quant:
            if quant not in reg.quant_schemes:
                raise UsageError(f"unknown quantization {quant!r}; installed: "
                                 f"{', '.join(reg.quant_schemes) or 'none'}")
            scheme = reg.quant_schemes[quant]
            self.fmt, self.pack = scheme.fmt, scheme.pack
        self.linear = reg.kernel(b, "linear", self.fmt)

        def optional(op, *fmt):
            """The backend's kernel for an optional op (for weight format fmt), else None; None
            too where the kernel's `pays` says the composed ops are faster for this model on
            this device (see core/ops.py)."""
            if not reg.has_kernel(b, op, *fmt):
                return None
            fn = reg.kernel(b, op, *fmt)
            pays = getattr(fn, "pays", None)
            return fn if pays is None or pays(self.device, self.config, self.dtype) else None
        self.linear_add_k = optional("linear_add", self.fmt)
        self.rmsnorm_linear_k = optional("rmsnorm_linear", self.fmt)
        self.qkv_rope_k = optional("rmsnorm_linear_rope", self.fmt)
        self.swiglu_k = optional("rmsnorm_swiglu", self.fmt)
        self.rope_attention_k = optional("rope_attention")
        self.argmax_k = optional("rmsnorm_linear_argmax", self.fmt)
        self.ffn_k = optional("linear_add_ffn", self.fmt)
        self.sample_k, self.advance_k = optional("sample"), optional("advance")

    def _upload(self, host, dtype=None, columns=False):
        """host on the device (in the model's dtype unless given); columns: a matrix stored
        column-major, its native the [N, K] view with strides (1, N)."""
        host = np.asarray(host, dtype=np.float32) if dtype is None else host
        t = self.device.upload(np.ascontiguousarray(host.T) if columns else host,
                               dtype or self.dtype, share=True)
        self.weight_bytes += t.buffer.nbytes
        if columns:
            return Tensor(t.buffer, host.shape, (1, host.shape[0]), t.offset).native
        return t.native

    def _weight(self, ckpt: Checkpoint, names: list[str], columns: bool = False) -> Weight:
        """Stack the named matrices by rows into one Weight of the model's format. A single
        matrix reaches a quantization scheme as stored, so it may keep a file's own int8.
        columns: a dense matrix is stored column-major (see linear_add_ffn in ops.py)."""
        if len(names) == 1:
            host = ckpt.tensors[names[0]] if self.pack is not None else ckpt.dense(names[0])
        else:
            host = np.concatenate([ckpt.dense(n) for n in names])
        if self.pack is None:
            return Weight(DENSE, tuple(host.shape), {"w": self._upload(host, columns=columns)})
        parts, meta = self.pack(host)
        return Weight(self.fmt, tuple(host.shape),
                      {k: self._upload(v, v.dtype.name) for k, v in parts.items()}, meta)

    # ------------------------------------------------------------------ forward
    def _step(self, a: SimpleNamespace, pick: str = "logits") -> None:
        """One forward pass over a.T tokens at position pos; logits of the last token (and the
        pick, see decode)."""
        self._layers(a)
        self._classify(a, pick)

    def _layers(self, a: SimpleNamespace) -> None:
        """The residual stream a.x of a.T tokens after every layer (keys and values cached)."""
        self.k.embedding(a.x, self.tok_embeddings, a.ids)
        for L in self.layers:
            self._attention(L, a)
            if a.T == 1 and self.ffn_k is not None:
                self.ffn_k(a.x, a.attn, L.wo, L.ffn_norm, self.config.norm_eps, L.w13, L.w2,
                           a.tmp)
                continue
            self._linear_add(a.x, a.attn, L.wo, a.tmp)
            self._ffn(L, a)

    def _attention(self, L: Layer, a: SimpleNamespace) -> None:
        """a.attn: the layer's attention over the RMSNorm of a.x (its keys and values cached),
        through the most fused ops the backend has."""
        k, c, pos = self.k, self.config, self.pos.native
        if self.rope_attention_k is not None:
            self._norm_linear(a.qkv, a.x, L.attn_norm, L.wqkv, a.h)
            self.rope_attention_k(a.attn3, a.q, a.k, a.v, L.k_cache, L.v_cache, pos, self.cos,
                                  self.sin, self.scale)
            return
        if self.qkv_rope_k is not None:
            self.qkv_rope_k(a.qkv, a.x, L.attn_norm, c.norm_eps, L.wqkv, pos, self.cos, self.sin,
                            c.n_heads + c.n_kv_heads)
        else:
            self._norm_linear(a.qkv, a.x, L.attn_norm, L.wqkv, a.h)
            k.rope(a.q, a.k, pos, self.cos, self.sin)
        k.attention(a.attn3, a.q, a.k, a.v, L.k_cache, L.v_cache, pos, self.scale)

    def _ffn(self, L: Layer, a: SimpleNamespace) -> None:
        """The residual stream a.x plus the layer's SwiGLU feed-forward of its RMSNorm."""
        if self.swiglu_k is not None:
            self.swiglu_k(a.act, a.x, L.ffn_norm, self.config.norm_eps, L.w13)
        else:
            self._norm_linear(a.gu, a.x, L.ffn_norm, L.w13, a.h)
            self.k.silu_mul(a.act, a.gate, a.up)
        self._linear_add(a.x, a.act, L.w2, a.tmp)

    def _classify(self, a: SimpleNamespace, pick: str = "logits") -> None:
        """The last token's logits, and the pick (see decode): fused with the classifier
        where the backend has rmsnorm_linear_argmax."""
        if pick == "argmax" and self.argmax_k is not None:
            self.argmax_k(self.decode_ws.ids.native, self.logits.native, a.last, self.norm,
                          self.config.norm_eps, self.output)
            return
        self._norm_linear(self.logits.native, a.last, self.norm, self.output,
                          self._decode.h)
        self._pick(pick)

    def _norm_linear(self, out, x, norm_w, w, scratch):
        if self.rmsnorm_linear_k is not None:
            self.rmsnorm_linear_k(out, x, norm_w, self.config.norm_eps, w)
        else:
            self.k.rmsnorm(scratch, x, norm_w, self.config.norm_eps)
            self.linear(out, scratch, w)

    def _linear_add(self, x, inp, w, scratch):
        if self.linear_add_k is not None:
            self.linear_add_k(x, inp, w, x)
        else:
            self.linear(scratch, inp, w)
            self.k.add(x, x, scratch)

    def _set_pos(self, pos: int) -> None:
        """Make pos the position of the next queued step (no copy when a decode step's
        advance already left it there)."""
        if pos != self._device_pos:
            self._device_pos = None
            self.device.allocator.copyin(self.pos, np.array([pos], dtype=np.int32))
            self._device_pos = pos

    def prefill(self, ids, pos: int = 0) -> None:
        """Run the prompt tokens ids (at positions pos..) through the model, in chunks;
        leaves the last token's logits in self.logits."""
        ids = np.asarray(ids, dtype=np.int32)
        self.check_room(pos, len(ids))
        for start in range(0, len(ids), PREFILL_CHUNK):
            chunk = ids[start:start + PREFILL_CHUNK]
            if len(chunk) == 1:
                self.device.allocator.copyin(self.decode_ws.ids, chunk)
                self._set_pos(pos + start)
                self._step(self._decode)
                continue
            if self._prefill_ws is None:
                self._prefill_ws = Workspace(self.device, self.config, PREFILL_CHUNK,
                                             self.dtype)
            ws = self._prefill_ws
            rows = self._replayed_rows(pos + start, len(chunk))
            padding = np.full(max(rows - len(chunk), 0), chunk[-1], np.int32)
            self.device.allocator.copyin(ws.ids.narrow(0, 0, len(chunk) + len(padding)),
                                         np.concatenate([chunk, padding]))
            self._set_pos(pos + start)
            if not rows:
                self._step(ws.views(len(chunk)))
                continue
            runner = self._prefill_runners.get(rows)
            if runner is None:
                runner = self._prefill_runners[rows] = self.device.decode_runner(
                    lambda a=ws.views(rows): self._layers(a))
            runner()
            self._classify(ws.views(len(chunk)))

    def _replayed_rows(self, pos: int, T: int) -> int:
        """The padded length a replaying device records for T tokens at pos, or 0 (run
        eagerly). The padding tokens' keys and values land in the cache past the prompt,
        where later tokens overwrite them before anything reads them: they must fit it."""
        if not self.device.replays():
            return 0
        rows = min([r for r in PREFILL_ROWS if r >= T] + [PREFILL_CHUNK])
        return rows if pos + rows <= self.ctx else 0

    def decode(self, pos: int, token: int | None = None, pick: str = "logits") -> None:
        """One token at position pos. token=None reads the id left in the device buffer by the
        previous pick. pick: "logits" (leave logits), "argmax" or "sample" (also write the
        next id into the device buffer, see pick_on_device)."""
        self.check_room(pos, 1)
        if token is not None:
            self.set_token(token)
        self._set_pos(pos)
        runner = self._runners.get(pick)
        if runner is None:
            runner = self._runners[pick] = self.device.decode_runner(
                lambda: (self._step(self._decode, pick), self._advance()))
        self._device_pos = None
        runner()
        if self.advance_k is not None:
            self._device_pos = pos + 1

    def _advance(self) -> None:
        if self.advance_k is not None:
            self.advance_k(self.pos.native, self.decode_ws.ids.native, self.picked.native)

    def picked_id(self, pos: int) -> Tensor:
        """The device buffer holding the id that the decode step at pos picked. With the
        advance op it is a slot later steps leave alone (see reads_ahead)."""
        if self.advance_k is None:
            return self.decode_ws.ids
        return self.picked.narrow(0, pos % PICKED_SLOTS, 1)

    def reads_ahead(self) -> bool:
        """Whether the host may queue the next decode step before it reads this one's id:
        the device runs asynchronously and the id waits in a slot the next step leaves
        alone (Device.read_async may copy it while that step runs)."""
        return self.device.asynchronous and self.advance_k is not None

    def set_token(self, token: int) -> None:
        self.device.allocator.copyin(self.decode_ws.ids, np.array([token], dtype=np.int32))

    # ------------------------------------------------------------------ picking tokens
    def can_sample_on_device(self) -> bool:
        return self.sample_k is not None

    def setup_sampling(self, temperature, top_k, top_p, min_p) -> None:
        if not hasattr(self, "sample_params"):
            self.sample_params = self.device.empty((4,), "float32")
            self.sample_u = self.device.empty((1,), "float32")
        self.device.allocator.copyin(self.sample_params, np.array(
            [temperature, top_k, top_p, min_p], dtype=np.float32))

    def set_uniform(self, u: float) -> None:
        self.device.allocator.copyin(self.sample_u, np.array([u], dtype=np.float32))

    def _pick(self, pick: str) -> None:
        if pick == "argmax":
            self.k.argmax(self.decode_ws.ids.native, self.logits.native)
        elif pick == "sample":
            self.sample_k(self.decode_ws.ids.native, self.logits.native,
                          self.sample_params.native, self.sample_u.native)

    def pick_on_device(self, pick: str) -> int:
        """Write the next token id into the device buffer from the current logits; return it."""
        self._pick(pick)
        return self.read_token()

    def read_token(self) -> int:
        return int(self.decode_ws.ids.numpy()[0])

    def read_logits(self) -> np.ndarray:
        return self.logits.numpy()[0]

    def check_room(self, pos: int, n: int) -> None:
        if pos + n > self.ctx:
            raise ContextLengthError(
                f"{pos + n} tokens do not fit the context of {self.ctx} tokens; shorten the "
                f"prompt or raise --ctx-size (the model was trained for "
                f"{self.config.max_seq_len})")


def _cache(kv, which: int, layer: int, ctx: int, c: LlamaConfig):
    """The [ctx, KV, hd] slice of the stacked cache kv[2, L, ctx, KV, hd]."""
    size = ctx * c.n_kv_heads * c.hd
    offset = kv.offset + (which * c.n_layers + layer) * size
    return Tensor(kv.buffer, (ctx, c.n_kv_heads, c.hd), None, offset).native
