"""What the benchmark scripts share: CUDA-event timing, and a model set up for one decode
step replayed as a CUDA graph."""
from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

from polyllama import get_device
from polyllama.bench import SHAPES, decode_bytes, random_checkpoint, random_prompt
from polyllama.model import Model

PROMPT = 512             # tokens in the KV cache before the timed decode step


def cuda_triton_and_bandwidth():
    """The cuda:triton device and its copy bandwidth in bytes/s (printed: every floor in
    these scripts divides by it)."""
    dev = get_device("cuda:triton")
    bandwidth = dev.measure_bandwidth()
    print(f"{dev.name()}: copy bandwidth {bandwidth / 1e12:.3f} TB/s")
    return dev, bandwidth


def shape_parser(doc: str, defaults: list[str]) -> argparse.ArgumentParser:
    """A script's argument parser (its docstring's first line as the description) taking
    model shapes as positional arguments."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("shapes", nargs="*", default=defaults)
    return p


def for_each_shape(shapes, measure) -> None:
    """measure(device, shape, copy bandwidth) for each shape on cuda:triton, freeing the
    cached device memory of one shape's model before the next."""
    dev, bandwidth = cuda_triton_and_bandwidth()
    for shape in shapes:
        measure(dev, shape, bandwidth)
        torch.cuda.empty_cache()


def median_us(run, replays: int = 20, batches: int = 7) -> float:
    """Microseconds per call of run(): each of `batches` batches times `replays` calls back
    to back between two CUDA events; the median batch mean."""
    times = []
    for _ in range(batches):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / replays)
    return statistics.median(times)


def interleaved_us(runs, floor: float, rounds: int = 2) -> list[list[float]]:
    """Microseconds per call of each of runs, timed `rounds` times, interleaved (a round
    times every run once), each time over replays of about 60 ms (floor: us per call)."""
    replays = max(20, int(60_000 / floor))
    times = [[] for _ in runs]
    for _ in range(rounds):
        for t, run in zip(times, runs):
            t.append(median_us(run, replays))
    return times


def graph_us(fn, replays=20, batches=7) -> float:
    """Microseconds per call of fn, captured once as a CUDA graph and replayed."""
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return median_us(g.replay, replays, batches)


class TwoGemvFfn(Model):
    """The executor with linear_add_ffn withheld: each layer's FFN runs as the w1|w3 and w2
    GEMVs, w2 stored row-major and the residual stream in the compute dtype, as before that
    op (perf-notes attempt 40). The experiments written against that chain build this."""

    def _resolve_kernels(self, quant):
        super()._resolve_kernels(quant)
        self.ffn_k = None


def model_after_prompt(dev, shape: str, quant: str | None = None, prompt: int = PROMPT,
                       ffn_op: bool = True) -> Model:
    """A model of the named shape on random weights, `prompt` tokens in its KV cache, set
    for the decode step at that position; ffn_op=False: a TwoGemvFfn."""
    c = SHAPES[shape]
    model = (Model if ffn_op else TwoGemvFfn).build(random_checkpoint(c), dev,
                                                     ctx=max(1024, prompt + 512), quant=quant)
    model.prefill(random_prompt(c, prompt), 0)
    model._set_pos(prompt)
    model.set_token(3)
    return model


def greedy_step(model):
    """The decode step these scripts time: a forward pass at the set position and the argmax
    pick on the device (the token the next step reads), fused as the executor fuses them."""
    def step():
        model._step(model._decode, "argmax")
    return step


def replayed(dev, step):
    """step as a captured CUDA graph: a first eager run compiles the kernels and allocates
    their workspaces, a second call records, later calls replay."""
    run = dev.decode_runner(step)
    run()
    run()
    torch.cuda.synchronize()
    return run


def replayed_against_first(dev, model, variants) -> list:
    """(name, replay, logits error) per (name, step) of variants: each step recorded as a
    CUDA graph and replayed once on token 3, its logits set against the first variant's
    (relative to their largest)."""
    runners, want = [], None
    for name, step in variants:
        run = replayed(dev, step)
        model.set_token(3)                 # the pick changed it: every variant sees token 3
        run()
        logits = model.logits.native.float().cpu().numpy()
        want = logits if want is None else want
        runners.append((name, run, float(np.abs(logits - want).max() / np.abs(want).max())))
    return runners


def print_against_first(dev, model, shape: str, floor: float, variants) -> None:
    """Each (name, step) of variants replayed (logits set against the first variant's) and
    timed twice, interleaved; a row each: both rounds, the better one's share of the floor,
    the logits error."""
    runners = replayed_against_first(dev, model, variants)
    times = interleaved_us([run for _, run, _ in runners], floor)
    for (name, _, err), (first, second) in zip(runners, times):
        print(f"{shape:15s} {name:34s} {first:8.1f} {second:8.1f} us  "
              f"{100 * floor / min(first, second):5.1f}% of the floor ({floor:.1f} us)  "
              f"logits off by {err:.1e} of the largest", flush=True)


def floor_us(model, bandwidth: float) -> float:
    """The step's bandwidth floor: the weight bytes it reads over the copy bandwidth."""
    return decode_bytes(model) / bandwidth * 1e6
