"""Which kernels of a cuda:triton decode step hold up the step, and by how much.

Random weights of a named shape, a 512-token prompt in the KV cache; the decode step at
position 512 is replayed as a CUDA graph under torch.profiler. Kernels overlap (each one
launches early and waits for the one before it), so each kernel is charged its increment:
its end minus the latest end before it. Increments add up to the step. They are summed per
role (per layer: qkv with RoPE, attention, o, w13, w2; once: embedding, classifier, sampling)
and set beside the time each GEMV's weight bytes take at the copy bandwidth, so a GEMV
whose increment exceeds that time shows a link that costs streaming time. Where the FFN is
one kernel (linear_add_ffn), w13 and w2 are its role "ffn".

    python benchmarks/decode_timeline.py tinyllama-1.1b llama2-7b [--quant int8]
"""
from __future__ import annotations

import collections
import json
import os
import tempfile

import torch
from torch.profiler import ProfilerActivity, profile

from timing import (for_each_shape, greedy_step, median_us, model_after_prompt, replayed,
                    shape_parser)

REPLAYS = 4          # profiled replays; the second-to-last one is read


def kernel_spans(run) -> list[tuple[str, float, float]]:
    """(name, start us, end us) of every kernel of one run(), in start order."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(REPLAYS):
            run()
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = [e for e in json.load(f)["traceEvents"] if e.get("cat") == "kernel"]
    events.sort(key=lambda e: e["ts"])
    n = len(events) // REPLAYS
    return [(e["name"], e["ts"], e["ts"] + e["dur"]) for e in events[-2 * n:-n]]


def roles(names: list[str], n_layers: int) -> list[str]:
    """Each kernel's role: layer kernels repeat with the same names; GEMVs in layer order."""
    per = (len(names) - 3) // n_layers     # embedding before the layers; classifier, pick after
    layer = names[1:1 + per]
    if per * n_layers + 3 != len(names) or names[1 + per:1 + 2 * per] != layer:
        raise SystemExit(f"unexpected kernel sequence ({len(names)} kernels)")
    gemvs = iter(["qkv", "o", "w13", "w2"])
    layer_roles = [next(gemvs) if "gemv" in n else n.strip("_").removesuffix("_kernel")
                   for n in layer]
    return ["embedding"] + layer_roles * n_layers + ["classifier", "sampling"]


def charged(spans, keys) -> dict:
    """{key: [kernels, us]}: each kernel of spans (in start order) charged its increment, its
    end minus the latest end before it (none below 0, so they add up to the step), summed
    under its key."""
    totals = collections.defaultdict(lambda: [0, 0.0])
    latest = spans[0][1]
    for key, (_, _, end) in zip(keys, spans):
        totals[key][0] += 1
        totals[key][1] += max(0.0, end - latest)
        latest = max(latest, end)
    return totals


def timeline(dev, shape: str, bandwidth: float, quant: str | None) -> None:
    model = model_after_prompt(dev, shape, quant)
    step = greedy_step(model)

    run = replayed(dev, step)
    step_us = median_us(run, 50)
    spans = kernel_spans(run)
    per_role = charged(spans, roles([s[0] for s in spans], model.config.n_layers))
    layer0 = model.layers[0]
    weights = dict(qkv=[layer0.wqkv], o=[layer0.wo], w13=[layer0.w13], w2=[layer0.w2],
                   ffn=[layer0.w13, layer0.w2], classifier=[model.output])
    total = sum(us for _, us in per_role.values())
    print(f"\n{shape} ({quant or 'bf16'}): step {step_us:.1f} us (graph replay), "
          f"{total:.1f} us under the profiler")
    print(f"{'role':12s} {'kernels':>7s} {'us each':>8s} {'bytes at copy rate':>19s} "
          f"{'excess each':>12s} {'excess total':>13s}")
    for role, (count, us) in sorted(per_role.items(), key=lambda kv: -kv[1][1]):
        each = us / count
        line = f"{role:12s} {count:7d} {each:8.2f}"
        if role in weights:
            ideal = sum(p.numel() * p.element_size() for w in weights[role]
                        for p in w.parts.values()) / bandwidth * 1e6
            line += f" {ideal:16.2f} us {each - ideal:9.2f} us {count * (each - ideal):10.1f} us"
        else:
            line += f" {'':19s} {each:9.2f} us {us:10.1f} us"
        print(line, flush=True)


def main(argv=None) -> None:
    p = shape_parser(__doc__, ["tinyllama-1.1b", "llama2-7b"])
    p.add_argument("--quant", choices=["int8"], default=None)
    args = p.parse_args(argv)
    for_each_shape(args.shapes, lambda dev, shape, bandwidth:
                   timeline(dev, shape, bandwidth, args.quant))


if __name__ == "__main__":
    main()
