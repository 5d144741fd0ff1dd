"""What the token loop adds to the replayed decode step, per token.

Random weights of a named shape, 512 prompt tokens, then N greedy decode steps three ways,
each timed twice, interleaved, in one process (wall clock per step, median of 5 runs):
- the decode step's graph replayed back to back, nothing read (the loop's ceiling);
- the token loop as shipped: the graph advances the position itself, and the host copies
  each picked id from its own slot on a second stream, one step ahead;
- the loop as it was before the advance op: a host copy of the position before each step,
  and the picked id copied back in stream order between steps, one step ahead.

    python benchmarks/token_loop.py tinyllama-1.1b llama3.2-1b
"""
from __future__ import annotations

import statistics
import time

import torch

from polyllama.bench import SHAPES, random_prompt
from polyllama.generate import SamplingParams, TokenLoop
from timing import PROMPT, floor_us, for_each_shape, model_after_prompt, shape_parser

N = 128


def stream_ordered_read(tensor):
    """Device.read_async as it was: the copy queued on the step's own stream."""
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    done = torch.cuda.Event()
    done.record()
    return lambda: done.synchronize() or host.numpy()


def measure(dev, shape: str, bandwidth: float) -> None:
    model = model_after_prompt(dev, shape)
    prompt = random_prompt(SHAPES[shape], PROMPT)
    model.decode(PROMPT, pick="argmax")             # records the graph with the advance op
    shipped = model._runners["argmax"]
    advance = model.advance_k
    model.advance_k, model._runners = None, {}
    model.decode(PROMPT, pick="argmax")             # and without it
    before = model._runners["argmax"]
    model.advance_k, model._runners = advance, {"argmax": shipped}
    tokens = {}

    def replay_only():
        model._device_pos = None                    # each replay advances it: start over
        model._set_pos(PROMPT)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(N):
            shipped()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / N

    def token_loop():
        loop = TokenLoop(model, SamplingParams(temperature=0))
        tokens["shipped"] = list(loop.run(prompt, N + 1))
        return loop.stats.decode_s / N

    def loop_before():
        model.prefill(prompt, 0)
        out = [model.pick_on_device("argmax")]
        t0 = time.perf_counter()
        pending = None
        for i in range(N):
            model._device_pos = None                # the position copied before every step
            model._set_pos(PROMPT + i)
            before()
            following = stream_ordered_read(model.decode_ws.ids.native)
            if pending is not None:
                out.append(int(pending()[0]))
            pending = following
        out.append(int(pending()[0]))
        seconds = time.perf_counter() - t0
        tokens["before"] = out
        return seconds / N

    ways = {"graph replays only": replay_only, "token loop (shipped)": token_loop,
            "token loop before the advance op": loop_before}
    results = {name: [] for name in ways}
    for _ in range(2):
        for name, run in ways.items():
            results[name].append(1e6 * statistics.median(run() for _ in range(5)))
    if tokens["shipped"] != tokens["before"]:
        raise SystemExit(f"{shape}: the two loops read different tokens")
    floor = floor_us(model, bandwidth)
    print(f"{shape}: floor {floor:.1f} us; {N} greedy tokens after {PROMPT}, per token:")
    for name, runs in results.items():
        us = min(runs)
        print(f"  {name:34s} {us:7.1f} us  {100 * floor / us:5.1f}% of the floor  "
              f"(rounds: {', '.join(f'{r:.1f}' for r in runs)})", flush=True)


def main(argv=None) -> None:
    args = shape_parser(__doc__, ["tinyllama-1.1b", "llama3.2-1b"]).parse_args(argv)
    for_each_shape(args.shapes, measure)


if __name__ == "__main__":
    main()
