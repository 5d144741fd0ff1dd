"""Where a cuda:triton decode step goes: the step replayed as a CUDA graph with ops removed.

Random weights of a named shape, a 512-token prompt in the KV cache, one decode step at
position 512 replayed back to back (CUDA events, median of 7 batches). Removing an op makes
the output wrong but shows what that op costs on the step's critical path; "GEMVs only"
is the ceiling of a chain of one GEMV kernel per weight matrix. RoPE runs as its own kernel
here (the qkv GEMV's fused rotation withheld), so that it can be removed.

    python benchmarks/decode_ablation.py tinyllama-1.1b llama2-7b
"""
from __future__ import annotations

from timing import (floor_us, for_each_shape, greedy_step, median_us, model_after_prompt,
                    replayed, shape_parser)


def step_us(device, step, replays: int) -> float:
    return median_us(replayed(device, step), replays)


def ablate(dev, shape: str, bandwidth: float) -> None:
    model = model_after_prompt(dev, shape)
    model.qkv_rope_k = None
    floor = floor_us(model, bandwidth)
    kernels = vars(model.k).copy()
    step = greedy_step(model)

    def skip(*args):
        pass

    replays = max(10, int(50_000 / floor))
    for name, removed in (("whole step", ()), ("no rope", ("rope",)),
                          ("no attention", ("attention",)),
                          ("GEMVs only", ("rope", "attention"))):
        vars(model.k).update(kernels)
        vars(model.k).update({op: skip for op in removed})
        us = step_us(dev, step, replays)
        print(f"{shape:15s} {name:13s} {us:8.1f} us/step  {100 * floor / us:5.1f}% "
              f"of the floor ({floor:.1f} us)", flush=True)


def main(argv=None) -> None:
    args = shape_parser(__doc__, ["tinyllama-1.1b", "llama2-7b"]).parse_args(argv)
    for_each_shape(args.shapes, ablate)


if __name__ == "__main__":
    main()
