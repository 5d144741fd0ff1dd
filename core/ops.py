"""The op set: names, contracts, weight formats. Every backend implements the required ops.

Kernels are plain functions. They receive the *native arrays* of the backend's buffers
(numpy arrays for cpu:numpy, torch tensors for cuda:triton, ...) and write into a
preallocated `out`; they never allocate activations. Shapes use T = tokens in the step,
D = model width, H/KV = query/kv heads, hd = head size, S = cache length, V = vocabulary.
Activations and the KV cache use the device's compute dtype; `pos`, `ids` and sampled
tokens are int32; RoPE tables are float32. `core/reference.py` is the executable spec.

Required ops
  embedding(out[T,D], table[V,D], ids[T])            out[t] = table[ids[t]]
  rmsnorm(out[T,D], x[T,D], weight[D], eps)         out = x / sqrt(mean(x^2) + eps) * weight
  linear(out[T,N], x[T,K], w: Weight)                out = x @ W^T   (W is N x K, any format)
  rope(q[T,H,hd], k[T,KV,hd], pos[1], cos[S,hd/2], sin[S,hd/2])
        in place; token t sits at position p = pos[0] + t; each adjacent pair
        (x[2i], x[2i+1]) is rotated by the angle whose cos/sin are cos[p,i], sin[p,i]
  attention(out[T,H,hd], q[T,H,hd], k[T,KV,hd], v[T,KV,hd],
            k_cache[S,KV,hd], v_cache[S,KV,hd], pos[1], scale)
        writes k, v into cache rows pos[0] .. pos[0]+T-1, then for every query t and head h:
        out[t,h] = softmax(scale * q[t,h] . K[j, h // (H/KV)]  for j <= pos[0]+t) @ V
  silu_mul(out[T,N], gate[T,N], up[T,N])             out = gate * sigmoid(gate) * up
  add(out[T,D], a[T,D], b[T,D])                      out = a + b   (out may alias a)
  argmax(out[T], logits[T,V])                        out[t] = index of the max of logits[t]

Optional ops (where a backend lacks one, the executor composes it from required ops, or
the host does its work; also where the kernel has an attribute `pays(device, config, dtype)`
that returns False: the composed ops are faster for that model on that device)
  rmsnorm_linear(out[T,N], x[T,K], weight[K], eps, w: Weight)    linear(rmsnorm(x))
  linear_add(out[T,N], x[T,K], w: Weight, residual[T,N])         out = residual + x @ W^T
                                                                 (out may alias residual)
  rmsnorm_linear_rope(out[T,N], x[T,K], weight[K], eps, w: Weight, pos[1],
                      cos[S,hd/2], sin[S,hd/2], heads)
        rmsnorm_linear, then its first heads * hd columns (the q and k heads of a fused qkv
        projection) rotated as rope rotates q and k. One GEMV can then do both.
  rmsnorm_swiglu(out[T,F], x[T,K], weight[K], eps, w: Weight)    W = [W1; W3] (2F x K):
        g | u = rmsnorm_linear(x, weight, eps, W) split in halves; out = silu_mul(g, u)
  rmsnorm_linear_argmax(ids[T], logits[T,V], x[T,K], weight[K], eps, w: Weight)
        logits = rmsnorm_linear(x, weight, eps, w), then ids = argmax(logits) of the logits
        as stored: a greedy decode step's classifier and pick. One GEMV can pick as it goes.
  linear_add_ffn(x[1,D], attn[1,Q], wo: Weight, weight[D], eps, w13: Weight, w2: Weight,
                 scratch[1,D])
        One token, x float32 (see below): x = linear_add(attn, wo, x), then
        x += rmsnorm_swiglu(x, weight, eps, w13) @ W2^T, in place; scratch is float32 too
        and free for the op's use. The second half of a layer as one op, so a backend can
        run the FFN as one kernel split over its hidden width, each program adding its part
        into x, without the link between two GEMVs. Where a backend has it (dense weights),
        the executor keeps a decode step's residual stream in float32 and stores w2 column-
        major: W2^T [F, D] row-major, passed as its [D, F] view (strides (1, D)); that
        backend's linear_add takes such a W for several tokens.
  sample(out[1], logits[1,V], params[4], u[1])
        params = (temperature, top_k, top_p, min_p) as float32; u ~ U[0,1) float32.
        Samples one token from softmax(logits / temperature) restricted by top-k, top-p,
        min-p, exactly as reference.sample does, so a decode step needs no host round-trip.
  rope_attention(out[T,H,hd], q[T,H,hd], k[T,KV,hd], v[T,KV,hd],
                 k_cache[S,KV,hd], v_cache[S,KV,hd], pos[1], cos[S,hd/2], sin[S,hd/2], scale)
        attention of the rotated q, k (rope, then attention): the cache gets the rotated keys,
        rounded to its dtype as rope's in-place result would be; q and k themselves may be
        left rotated or not. One kernel can then do both.
  advance(pos[1], ids[1], picked[R])                 picked[pos[0] % R] = ids[0]; pos[0] += 1
        Ends a replayed decode step: the next step finds its position without a copy from
        the host, and the picked id waits in a slot that the next R - 1 steps leave alone,
        so the host may read it while they run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

REQUIRED_OPS = ("embedding", "rmsnorm", "linear", "rope", "attention", "silu_mul", "add",
                "argmax")
OPTIONAL_OPS = ("rmsnorm_linear", "linear_add", "rmsnorm_linear_rope", "rmsnorm_swiglu",
                "rope_attention", "rmsnorm_linear_argmax", "linear_add_ffn", "sample",
                "advance")
ALL_OPS = REQUIRED_OPS + OPTIONAL_OPS

DENSE = "dense"        # weight format of an unquantized matrix in the compute dtype


@dataclass
class Weight:
    """A matrix W (out_features x in_features) as a backend stores it for one weight format.

    `parts` holds native arrays: for `dense` {"w": [N, K]}; for a quantized format whatever its
    scheme packs (e.g. q8_0: {"q": int8 [N, K], "s": float32 [N, K // group]}).
    """
    fmt: str
    shape: tuple[int, int]
    parts: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class KernelKey:
    backend: str
    op: str
    fmt: str = DENSE

    def __str__(self) -> str:
        return f"(backend={self.backend!r}, op={self.op!r}, weight format={self.fmt!r})"

