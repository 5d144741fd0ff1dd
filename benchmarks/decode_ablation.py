"""Where a cuda:triton decode step goes: the step replayed as a CUDA graph with ops removed.

Random weights of a named shape, a 512-token prompt in the KV cache, one decode step at
position 512 replayed back to back (CUDA events, median of 7 batches). Removing an op makes
the output wrong but shows what that op costs on the step's critical path; "GEMVs only"
is the ceiling of a chain of one GEMV kernel per weight matrix.

    python benchmarks/decode_ablation.py tinyllama-1.1b llama2-7b
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from polyllama.bench import SHAPES, random_checkpoint
from polyllama.model import Model

from timing import cuda_triton_and_bandwidth, median_us


def step_us(device, step, replays: int) -> float:
    runner = device.decode_runner(step)
    runner()                                  # eager run, then capture
    runner()
    torch.cuda.synchronize()
    return median_us(runner, replays)


def ablate(dev, shape: str, bandwidth: float) -> None:
    c = SHAPES[shape]
    model = Model.build(random_checkpoint(c), dev, ctx=1024)
    model.prefill(np.random.default_rng(1).integers(0, c.vocab_size, 512), 0)
    model._set_pos(512)
    model.set_token(3)
    unread = (c.vocab_size - 1) * c.dim * 2 if not c.tie_embeddings else 0
    floor_us = (model.weight_bytes - unread) / bandwidth * 1e6
    kernels = vars(model.k).copy()

    def step():
        model._step(model._decode)
        model._pick("argmax")

    def skip(*args):
        pass

    replays = max(10, int(50_000 / floor_us))
    for name, removed in (("whole step", ()), ("no rope", ("rope",)),
                          ("no attention", ("attention",)),
                          ("GEMVs only", ("rope", "attention"))):
        vars(model.k).update(kernels)
        vars(model.k).update({op: skip for op in removed})
        us = step_us(dev, step, replays)
        print(f"{shape:15s} {name:13s} {us:8.1f} us/step  {100 * floor_us / us:5.1f}% "
              f"of the floor ({floor_us:.1f} us)", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("shapes", nargs="*", default=["tinyllama-1.1b", "llama2-7b"])
    args = p.parse_args(argv)
    dev, bandwidth = cuda_triton_and_bandwidth()
    for shape in args.shapes:
        ablate(dev, shape, bandwidth)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
