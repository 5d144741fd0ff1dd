"""`polyllama bench`: prefill and decode speed of a named model shape on random weights.

At batch 1 a decode step reads every weight once, so its floor is the bytes one token reads
over the device's memory bandwidth. When the backend can measure that bandwidth
(Device.measure_bandwidth: a large device-to-device copy, bytes read plus written) the bench
does so in the same run and reports the share of the floor reached. Backend-agnostic: it
drives the executor like the generation loop does and imports no GPU library.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from dataclasses import asdict, dataclass, field

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .checkpoint import Checkpoint, expected_shapes
from .config import LlamaConfig
from .device import DTYPE_SIZES, canonical_dtype
from .errors import UsageError

SHAPES = {
    "smollm2-135m": LlamaConfig(dim=576, hidden_dim=1536, n_layers=30, n_heads=9, n_kv_heads=3,
                                vocab_size=49152, max_seq_len=8192, rope_theta=100000.0,
                                tie_embeddings=True),
    "tinyllama-1.1b": LlamaConfig(dim=2048, hidden_dim=5632, n_layers=22, n_heads=32,
                                  n_kv_heads=4, vocab_size=32000, max_seq_len=2048,
                                  tie_embeddings=False),
    "llama2-7b": LlamaConfig(dim=4096, hidden_dim=11008, n_layers=32, n_heads=32, n_kv_heads=32,
                             vocab_size=32000, max_seq_len=4096, tie_embeddings=False),
    "llama3.2-1b": LlamaConfig(dim=2048, hidden_dim=8192, n_layers=16, n_heads=32, n_kv_heads=8,
                               vocab_size=128256, max_seq_len=131072, rope_theta=500000.0,
                               rope_scaling={"rope_type": "llama3", "factor": 32.0,
                                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                             "original_max_position_embeddings": 8192},
                               tie_embeddings=True),
}
POOL = 1 << 24            # random float32 values every weight of a random checkpoint views


def random_checkpoint(config: LlamaConfig, seed: int = 0) -> Checkpoint:
    """Random weights made cheaply: each matrix row is a window into one shared random pool,
    each at its own offset (never zeros; nothing is materialized until upload)."""
    rng = np.random.default_rng(seed)
    pool = (rng.standard_normal(POOL) * 0.02).astype(np.float32)
    tensors = {}
    for name, shape in expected_shapes(config).items():
        off = int(rng.integers(0, POOL // 4))
        if len(shape) == 1:
            tensors[name] = 1.0 + pool[off:off + shape[0]]
            continue
        n, k = shape
        step = min(k, (POOL - off - k) // max(n - 1, 1))
        tensors[name] = as_strided(pool[off:], shape, (step * 4, 4))
    return Checkpoint(config, tensors, "random", f"<random {seed}>").validate()


def random_prompt(config: LlamaConfig, prompt_len: int, seed: int = 0) -> np.ndarray:
    """The prompt ids a bench run with this seed prefills (peers are given the same)."""
    return np.random.default_rng(seed + 1).integers(0, config.vocab_size, prompt_len)


def decode_bytes(model) -> int:
    """Weight bytes one decode step reads: every weight but the rows of an untied embedding
    table other than the token's own."""
    c = model.config
    unread = 0 if c.tie_embeddings else (c.vocab_size - 1) * c.dim * DTYPE_SIZES[model.dtype]
    return model.weight_bytes - unread


@dataclass
class BenchResult:
    shape: str
    device: str
    device_name: str
    dtype: str
    prompt_len: int
    gen: int
    prefill_tok_s: float
    prefill_tflop_s: float
    decode_tok_s: float                       # median of the repeats
    decode_runs: list = field(default_factory=list)
    decode_bytes: int = 0                     # weight bytes one decode step reads
    achieved_gb_s: float = 0.0
    bandwidth_gb_s: float | None = None       # measured copy bandwidth (read + write)
    floor_tok_s: float | None = None
    pct_of_floor: float | None = None
    peak_memory: int | None = None
    tokens: list = field(default_factory=list)   # greedy tokens of the first run


def _flops_per_prefill(c: LlamaConfig, T: int) -> float:
    linear = c.dim * (c.q_dim + 2 * c.kv_dim) + c.q_dim * c.dim + 3 * c.dim * c.hidden_dim
    attention = 2 * 2 * c.n_heads * c.hd * T * (T + 1) / 2
    return c.n_layers * (2 * linear * T + attention) + 2 * c.dim * c.vocab_size


def run_bench(shape: str | LlamaConfig, device: str = "auto", dtype: str | None = None,
              prompt_len: int = 512, gen: int = 128, repeats: int = 3, ctx: int | None = None,
              quant: str | None = None, seed: int = 0, log=print) -> BenchResult:
    from .generate import SamplingParams, TokenLoop
    from .model import Model
    from .registry import get_device

    if isinstance(shape, str):
        if shape not in SHAPES:
            raise UsageError(f"unknown model shape {shape!r}; known: {', '.join(SHAPES)}")
        name, config = shape, SHAPES[shape]
    else:
        name, config = "custom", shape
    if prompt_len < 2 or gen < 1 or repeats < 1:
        raise UsageError("bench needs --prompt-len >= 2, --gen >= 1 and --repeats >= 1")
    dev = get_device(device)
    ckpt = random_checkpoint(config, seed)
    log(f"building {name} on {dev.spec} ({dev.name()}) ...")
    gc.collect()              # an earlier shape's model (its decode runners form cycles) goes,
    dev.reset_peak_memory()   # and so does its peak
    model = Model.build(ckpt, dev, canonical_dtype(dtype) if dtype else None,
                        ctx=ctx or prompt_len + gen, quant=quant)
    prompt = random_prompt(config, prompt_len, seed)

    def prefill() -> float:
        dev.synchronize()
        t0 = time.perf_counter()
        model.prefill(prompt, 0)
        dev.synchronize()
        return time.perf_counter() - t0

    def decode() -> tuple[float, list]:
        """gen tokens through the engine's own token loop (greedy), after prefill(): the loop
        reuses its cache and computes only the prompt's last token."""
        loop = TokenLoop(model, SamplingParams(temperature=0))
        toks = list(loop.run(prompt, gen + 1, reuse=prompt_len - 1))
        return loop.stats.decode_s, toks

    prefill()                                  # warm-up: compiles, captures the decode graph
    decode()
    prefill_s, decode_s, tokens = [], [], []
    for _ in range(repeats):
        prefill_s.append(prefill())
        seconds, toks = decode()
        decode_s.append(seconds)
        tokens = tokens or toks
    measure = getattr(dev, "measure_bandwidth", None)
    bandwidth = measure() if measure is not None else None

    step_bytes = decode_bytes(model)
    runs = [gen / s for s in decode_s]
    tok_s = statistics.median(runs)
    pre_s = statistics.median(prefill_s)
    r = BenchResult(name, str(dev.spec), dev.name(), model.dtype, prompt_len, gen,
                    prompt_len / pre_s, _flops_per_prefill(config, prompt_len) / pre_s / 1e12,
                    tok_s, runs, step_bytes, step_bytes * tok_s / 1e9,
                    peak_memory=dev.memory().get("peak"), tokens=tokens)
    if bandwidth:
        r.bandwidth_gb_s = bandwidth / 1e9
        r.floor_tok_s = bandwidth / step_bytes
        r.pct_of_floor = 100 * tok_s / r.floor_tok_s
    return r


def format_result(r: BenchResult) -> str:
    lines = [f"{r.shape}  {r.device} ({r.device_name})  {r.dtype}",
             f"  prefill {r.prompt_len} tokens: {r.prefill_tok_s:,.0f} tok/s "
             f"({r.prefill_tflop_s:.0f} TFLOP/s)",
             f"  decode {r.gen} tokens: {r.decode_tok_s:,.1f} tok/s, median of "
             f"{len(r.decode_runs)} ({min(r.decode_runs):,.1f} .. {max(r.decode_runs):,.1f})",
             f"  weights read per token {r.decode_bytes / 1e9:.3f} GB: "
             f"{r.achieved_gb_s:,.0f} GB/s achieved"]
    if r.bandwidth_gb_s:
        lines.append(f"  copy bandwidth {r.bandwidth_gb_s:,.0f} GB/s: floor {r.floor_tok_s:,.1f}"
                     f" tok/s, {r.pct_of_floor:.1f}% of it")
    if r.peak_memory:
        lines.append(f"  peak device memory {r.peak_memory / 2**30:.2f} GiB")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("shapes", nargs="*", default=["tinyllama-1.1b"], metavar="SHAPE",
                   help=f"model shapes with random weights: {', '.join(SHAPES)}")
    p.add_argument("--device", default="auto", help="device spec, e.g. cuda:triton")
    p.add_argument("--dtype", help="compute dtype: bf16, fp16, fp32 (default: the device's)")
    p.add_argument("--quant", help="quantize weights at load with a scheme, e.g. int8")
    p.add_argument("--prompt-len", type=int, default=512, help="prefill tokens (default 512)")
    p.add_argument("--gen", type=int, default=128, help="decoded tokens per run (default 128)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs; the median is shown")
    p.add_argument("-c", "--ctx-size", type=int, help="context (default prompt + gen)")
    p.add_argument("--json", action="store_true", help="print one JSON object per shape")


def run_cli(args: argparse.Namespace) -> int:
    log = (lambda *_: None) if args.json else print
    for shape in args.shapes:
        r = run_bench(shape, args.device, args.dtype, args.prompt_len, args.gen, args.repeats,
                      args.ctx_size, args.quant, log=log)
        print(json.dumps(asdict(r)) if args.json else format_result(r), flush=True)
    return 0


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("bench", help="prefill/decode speed on random weights of a "
                              "named model shape")
    add_arguments(p)
    p.set_defaults(func=run_cli)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="polyllama bench", description=__doc__.split("\n")[0])
    add_arguments(p)
    return run_cli(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
