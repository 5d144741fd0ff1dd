"""Are the decode kernels' tile settings still the best ones for the whole decode step?

`linear._gemv_config` picks (rows per program, values per tile, warps) from a matrix's shape
alone, tuned on sweeps of single GEMVs. A variant overrides it for some of the step's
matrices (qkv, o, w1|w3, w2, the classifier; a tile of None means whole rows), or sets the
decode attention's positions per tile (for any group of query heads), (kv head, split)
programs per multiprocessor, and warps with more programs than multiprocessors and with
fewer. The whole decode step (random weights, 512 tokens in the KV cache unless --position
says otherwise, argmax pick) is replayed as a CUDA graph; every variant is timed twice,
interleaved, in one process. With dense weights the FFN is one kernel (linear_add_ffn, not
a GEMV): the w13 and w2 variants then change nothing.

    python benchmarks/step_configs.py llama2-7b tinyllama-1.1b llama3.2-1b
    python benchmarks/step_configs.py llama3.2-1b --position 3000 --only attention
    python benchmarks/step_configs.py tinyllama-1.1b llama2-7b --quant int8
"""
from __future__ import annotations

import triton

from polyllama.plugins.cuda_triton import attention, linear
from timing import (floor_us, for_each_shape, greedy_step, interleaved_us,
                    model_after_prompt, replayed, shape_parser)

WHOLE_ROWS = ("qkv", "o", "w13", "classifier")         # K <= 4096 in these shapes
VARIANTS = [
    ("shipped", {}),
    ("whole-row matrices: 4 rows, 8 warps", {r: (4, None, 8) for r in WHOLE_ROWS}),
    ("whole-row matrices: 2 rows, 8 warps", {r: (2, None, 8) for r in WHOLE_ROWS}),
    ("whole-row matrices: 1 row, 4 warps", {r: (1, None, 4) for r in WHOLE_ROWS}),
    ("w13: 4 rows, 8 warps", {"w13": (4, None, 8)}),
    ("w13: 8 rows, 8 warps", {"w13": (8, None, 8)}),
    ("w13: 4 rows, 4 warps", {"w13": (4, None, 4)}),
    ("qkv and o: 2 rows, 4 warps (before)", {"qkv": (2, None, 4), "o": (2, None, 4)}),
    ("qkv and o: 4 rows, 4 warps", {"qkv": (4, None, 4), "o": (4, None, 4)}),
    ("qkv and o: 8 rows, 8 warps", {"qkv": (8, None, 8), "o": (8, None, 8)}),
    ("qkv and o: 16 rows, 8 warps", {"qkv": (16, None, 8), "o": (16, None, 8)}),
    ("qkv and o: 4 rows, 2 warps", {"qkv": (4, None, 2), "o": (4, None, 2)}),
    ("qkv and o: 4 rows, 8 warps", {"qkv": (4, None, 8), "o": (4, None, 8)}),
    ("classifier: 4 rows, 8 warps", {"classifier": (4, None, 8)}),
    ("classifier: 8 rows, 4 warps", {"classifier": (8, None, 4)}),
    ("w13: 8 rows, 4 warps", {"w13": (8, None, 4)}),
    ("w2: 2 x 2048, 4 warps", {"w2": (2, 2048, 4)}),
    ("w2: 4 x 2048, 8 warps", {"w2": (4, 2048, 8)}),
    ("w2: 8 x 1024, 8 warps", {"w2": (8, 1024, 8)}),
    ("w2: 4 x 1024, 4 warps", {"w2": (4, 1024, 4)}),
    ("w2: 2 x 4096, 8 warps", {"w2": (2, 4096, 8)}),
    ("w2: 16 x 1024, 8 warps", {"w2": (16, 1024, 8)}),
    ("w2: 8 x 1024, 4 warps", {"w2": (8, 1024, 4)}),
    ("attention: 32 positions a tile, 4 warps (before)", {"attention": (32, 1, 4, 4)}),
    ("attention: 16 positions a tile", {"attention": (16, 1, 4, 8)}),
    ("attention: 128 positions a tile", {"attention": (128, 1, 4, 8)}),
    ("attention: 4 warps always", {"attention": (64, 1, 4, 4)}),
    ("attention: 8 warps always", {"attention": (64, 1, 8, 8)}),
    ("attention: 2 programs per SM", {"attention": (64, 2, 4, 8)}),
    ("attention: 128 positions a tile, 4 warps always", {"attention": (128, 1, 4, 4)}),
    ("attention: 128 positions a tile, 2 programs per SM", {"attention": (128, 2, 4, 8)}),
    ("attention: 256 positions a tile", {"attention": (256, 1, 4, 8)}),
]
ATTENTION = ("DECODE_BLOCK_S", "SPLIT_PER_SM", "DECODE_WARPS", "FEW_PROGRAMS_WARPS",
             "WIDE_GROUP_BLOCK_S")
EVERY_MATRIX = ("qkv", "o", "w13", "w2", "classifier")
Q8_VARIANTS = [             # with --quant int8: the q8_0 GEMV's (rows, tile, warps)
    ("shipped", {}),
] + [(f"q8: {rows} x {tile or 'whole rows'}, {warps} warps",
      {r: (rows, tile, warps) for r in EVERY_MATRIX})
     for rows, tile, warps in ((2, 2048, 4), (8, 2048, 8), (4, 2048, 8), (8, 1024, 4),
                               (4, 1024, 4), (16, 1024, 8), (2, None, 4), (4, None, 8))] + [
    ("q8 w2: 8 x 1024, 8 warps", {"w2": (8, 1024, 8)}),
]


def roles(model) -> dict:
    """(rows, columns) of each decode matrix -> its name (w13: gate and up rows stacked)."""
    c = model.config
    D, F = c.dim, c.hidden_dim
    qkv = (c.n_heads + 2 * c.n_kv_heads) * c.hd
    return {(qkv, D): "qkv", (D, D): "o", (2 * F, D): "w13", (D, F): "w2",
            (c.vocab_size, D): "classifier"}


def overriding(shipped, names: dict, over: dict):
    """A _gemv_config (or _gemv_q8_config) that answers `over` for the matrices it names,
    else as shipped."""
    def config(N, K, *group):
        name = names.get((N, K))
        if name not in over:
            return shipped(N, K, *group)
        rows, tile, warps = over[name]
        return rows, tile or triton.next_power_of_2(K), warps
    return config


def sweep(dev, shape: str, bandwidth: float, position: int, only: str,
          quant: str | None) -> None:
    model = model_after_prompt(dev, shape, quant, prompt=position)
    floor = floor_us(model, bandwidth)
    names = roles(model)
    step = greedy_step(model)
    config = "_gemv_q8_config" if quant else "_gemv_config"
    runners, shipped = [], getattr(linear, config)
    shipped_attention = [getattr(attention, name) for name in ATTENTION]
    try:
        for label, over in Q8_VARIANTS if quant else VARIANTS:   # read at capture
            if only not in label and label != "shipped":
                continue
            setattr(linear, config, overriding(shipped, names, over))
            over_attention = over.get("attention")      # its tile for any group
            for name, value in zip(ATTENTION, over_attention + over_attention[:1]
                                   if over_attention else shipped_attention):
                setattr(attention, name, value)
            runners.append((label, replayed(dev, step)))
    finally:
        setattr(linear, config, shipped)
        for name, value in zip(ATTENTION, shipped_attention):
            setattr(attention, name, value)
    times = interleaved_us([run for _, run in runners], floor)
    for (label, _), (first, second) in zip(runners, times):
        print(f"{shape:15s} @{position:<5d} {label:48s} {first:8.1f} {second:8.1f} us  "
              f"{100 * floor / min(first, second):5.1f}% of the floor ({floor:.1f} us)",
              flush=True)


def main(argv=None) -> None:
    p = shape_parser(__doc__, ["llama2-7b", "tinyllama-1.1b", "llama3.2-1b"])
    p.add_argument("--position", type=int, default=512, help="tokens in the KV cache")
    p.add_argument("--only", default="", help="only the variants whose label has this")
    p.add_argument("--quant", choices=["int8"], help="sweep the q8_0 GEMV's settings instead")
    args = p.parse_args(argv)
    for_each_shape(args.shapes, lambda dev, shape, bandwidth: sweep(
        dev, shape, bandwidth, args.position, args.only, args.quant))


if __name__ == "__main__":
    main()
