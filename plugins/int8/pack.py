"""Packing a matrix W [N, K] into q8_0: every row split into groups of `group` consecutive
values with one float32 scale each,

    parts = {"q": int8 [N, K], "s": float32 [N, K // group]},  meta = {"group": group}
    W[n, k] ~= q[n, k] * s[n, k // group]

Symmetric: s = max|group| / 127, q = round(w / s) in [-127, 127]. Groups never straddle
rows, so a kernel can dequantize any block of rows on its own.
"""
from __future__ import annotations

import numpy as np

from polyllama import QuantizedArray
from polyllama.reference import quantize_groups

FMT = "q8_0"
GROUPS = (64, 32, 16, 8, 4, 2, 1)      # preferred first; small ones only for odd widths


def pick_group(k: int) -> int:
    """The largest group size that divides the row width k."""
    return next(g for g in GROUPS if k % g == 0)


def pack(w):
    """(parts, meta) of a float [N, K] array, or of a QuantizedArray as stored in a file:
    one whose groups lie within rows keeps its int8 values and scales as they are."""
    n, k = w.shape
    if isinstance(w, QuantizedArray):
        if w.fmt == FMT and k % w.group == 0:
            return ({"q": np.ascontiguousarray(w.q, dtype=np.int8),
                     "s": np.asarray(w.scales, dtype=np.float32).reshape(n, k // w.group)},
                    {"group": w.group})
        w = w.dequantize()
    group = pick_group(k)
    q, s = quantize_groups(np.asarray(w, dtype=np.float32), group)
    return {"q": q, "s": s.reshape(n, k // group)}, {"group": group}
