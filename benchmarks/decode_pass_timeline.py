"""Where the one-kernel decode pass (cuda:triton decode_pass.py) spends a step, per stage.

Random weights of a named shape, a 512-token prompt in the KV cache, one pass at position
512 with the consumers' global-timer stamps (after the wait, input staged, stage done),
summed up per stage kind in microseconds:
  wait     from the last program's end of the previous stage to this program's start;
  staging  the input vector into shared memory (rmsnorm, swiglu or the attention merge);
  work     the row blocks (or the attention item): mean over programs / the slowest.

    python benchmarks/decode_pass_timeline.py tinyllama-1.1b
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from polyllama import get_device
from polyllama.bench import SHAPES, random_checkpoint
from polyllama.model import Model
from polyllama.plugins.cuda_triton import decode_pass

KINDS = ("qkv", "attention", "o", "w13", "w2", "classifier")


def timeline(dev, shape: str) -> None:
    c = SHAPES[shape]
    model = Model.build(random_checkpoint(c), dev, ctx=1024)
    why = decode_pass.unsupported(model)
    if why:
        print(f"{shape}: no one-kernel pass ({why})")
        return
    model.prefill(np.random.default_rng(1).integers(0, c.vocab_size, 512), 0)
    model.decode(512, token=3)                     # builds the pass
    run = decode_pass._PASSES[model]
    S = 5 * c.n_layers + 1
    stamps = torch.zeros(run.sms, S, 3, dtype=torch.int64, device=model.logits.native.device)
    for _ in range(3):
        run(model.logits.native, model.decode_ws.ids.native, model.pos.native, stamps)
    torch.cuda.synchronize()
    t = stamps.double().cpu() / 1e3
    start, staged, done = t[..., 0], t[..., 1], t[..., 2]
    total = done.max().item() - start[:, 0].min().item()
    print(f"{shape}: {total:.1f} us from the first start to the last stage's end "
          f"({run.sms} programs, {run.slots} ring slots)")
    last_done = done.max(dim=0).values
    print("  stage        wait    staging   work mean / max   (sum over layers of the max)")
    for m, name in enumerate(KINDS):
        stages = [s for s in range(S) if (s % 5 == m and s < S - 1) or (m == 5 and s == S - 1)]
        wait = torch.stack([start[:, s] - (last_done[s - 1] if s else start[:, 0].min())
                            for s in stages])
        staging = torch.stack([staged[:, s] - start[:, s] for s in stages])
        work = torch.stack([done[:, s] - staged[:, s] for s in stages])
        if name == "attention":                   # no staging stamp: all of it is work
            work = torch.stack([done[:, s] - start[:, s] for s in stages])
            staging = torch.zeros_like(work)
        print(f"  {name:10s} {wait.mean():6.2f}  {staging.mean():6.2f}    {work.mean():6.2f} / "
              f"{work.max(dim=1).values.mean():6.2f}   ({work.max(dim=1).values.sum():7.1f})")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("shapes", nargs="*", default=["tinyllama-1.1b"])
    args = p.parse_args(argv)
    dev = get_device("cuda:triton")
    for shape in args.shapes:
        timeline(dev, shape)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
