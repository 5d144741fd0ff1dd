"""What picking the next token costs a cuda:triton decode step: greedy against sampled.

Random weights of a named shape, a 512-token prompt in the KV cache; the decode step at
position 512, with its pick on the device, replayed as a CUDA graph. A random model's
logits are nearly flat, so settings without a small top-k (or min-p) make the sampler
search the whole vocabulary: the worst case.

    python benchmarks/sampling_speed.py tinyllama-1.1b llama3.2-1b
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from polyllama.bench import SHAPES, random_checkpoint
from polyllama.model import Model

from timing import cuda_triton_and_bandwidth, median_us

SETTINGS = [("greedy", None),
            ("defaults (0.8, top-k 40, top-p 0.95, min-p 0.05)", (0.8, 40, 0.95, 0.05)),
            ("top-p 0.95 only", (0.8, 0, 0.95, 0.0)),
            ("temperature only", (0.8, 0, 1.0, 0.0))]


def measure(dev, shape: str) -> None:
    c = SHAPES[shape]
    model = Model.build(random_checkpoint(c), dev, ctx=1024)
    model.prefill(np.random.default_rng(1).integers(0, c.vocab_size, 512), 0)
    model._set_pos(512)
    model.set_token(3)
    for name, params in SETTINGS:
        pick = "argmax" if params is None else "sample"
        if params is not None:
            model.setup_sampling(*params)
            model.set_uniform(0.3)

        def step():
            model._step(model._decode)
            model._pick(pick)

        run = dev.decode_runner(step)
        run()                                     # eager run, then capture
        run()
        torch.cuda.synchronize()
        print(f"{shape:15s} {name:50s} {median_us(run, 20):9.1f} us/step", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("shapes", nargs="*", default=["tinyllama-1.1b", "llama3.2-1b"])
    args = p.parse_args(argv)
    dev, _ = cuda_triton_and_bandwidth()
    for shape in args.shapes:
        measure(dev, shape)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
