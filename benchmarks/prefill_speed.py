"""What a cuda:triton prefill costs: launched kernel by kernel, replayed, and with which GEMM.

Per named shape (random weights) and prompt length, one process: the prefill with every
kernel launched from Python (POLYLLAMA_NO_GRAPH=1), replayed from a recording padded to
its length, and replayed with the pointer GEMM instead of the TMA one; the logits of each
are compared with the first. Then the prefill GEMMs of those shapes against cuBLAS
(torch.mm), each replayed as a CUDA graph.

    python benchmarks/prefill_speed.py tinyllama-1.1b llama2-7b [--lengths 512,100,20]
"""
from __future__ import annotations

import os
import statistics
import time

import torch

from polyllama.bench import SHAPES, _flops_per_prefill, random_checkpoint, random_prompt
from polyllama.model import Model
from polyllama.ops import DENSE, Weight
from polyllama.plugins.cuda_triton import linear
from timing import cuda_triton_and_bandwidth, graph_us, shape_parser

VARIANTS = [("launched", "1", True), ("replayed", "0", True),      # (name, NO_GRAPH, TMA GEMM)
            ("replayed, pointer GEMM", "0", False)]


def prefill_ms(model, prompt, repeats=9) -> float:
    for _ in range(3):                    # compiles, records
        model.prefill(prompt, 0)
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.prefill(prompt, 0)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def prefills(dev, shape: str, lengths) -> None:
    c = SHAPES[shape]
    model = Model.build(random_checkpoint(c), dev, ctx=1024)
    tma_ready = linear._tma_ready
    try:
        for n in lengths:
            prompt, first, row = random_prompt(c, n), None, []
            for name, no_graph, tma in VARIANTS:
                os.environ["POLYLLAMA_NO_GRAPH"] = no_graph
                linear._tma_ready = tma_ready if tma else (lambda *tensors: False)
                model._prefill_runners = {}       # record again, under this variant
                ms = prefill_ms(model, prompt)
                logits = torch.tensor(model.read_logits())
                first = logits if first is None else first
                diff = float((logits - first).abs().max() / first.abs().max())
                row.append(f"{name} {ms:6.2f} ms ({_flops_per_prefill(c, n) / ms / 1e9:3.0f} "
                           f"TFLOP/s, logits {diff:.0e})")
            print(f"{shape:15s} {n:4d} tokens: " + " | ".join(row), flush=True)
    finally:
        linear._tma_ready = tma_ready
        os.environ.pop("POLYLLAMA_NO_GRAPH", None)
    del model
    torch.cuda.empty_cache()


def gemms(shape: str, rows: int) -> None:
    c = SHAPES[shape]
    qkv = c.q_dim + 2 * c.kv_dim
    for N, K in ((qkv, c.dim), (c.dim, c.q_dim), (2 * c.hidden_dim, c.dim), (c.dim, c.hidden_dim)):
        x = torch.randn(rows, K, device="cuda", dtype=torch.bfloat16)
        W = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02
        out = torch.empty(rows, N, device="cuda", dtype=torch.bfloat16)
        w = Weight(DENSE, (N, K), {"w": W})
        ours = graph_us(lambda: linear.linear(out, x, w))
        cublas = graph_us(lambda: torch.mm(x, W.t(), out=out))
        flop = 2 * rows * N * K / 1e6
        print(f"{shape:15s} GEMM {rows} x {N:5d} x {K:5d}: ours {flop / ours:4.0f} TFLOP/s, "
              f"cuBLAS {flop / cublas:4.0f} TFLOP/s ({ours / cublas:.2f}x its time)", flush=True)


def main(argv=None) -> None:
    p = shape_parser(__doc__, ["tinyllama-1.1b", "llama2-7b"])
    p.add_argument("--lengths", default="512,100,20", help="prompt lengths, comma-separated")
    args = p.parse_args(argv)
    dev, _ = cuda_triton_and_bandwidth()
    lengths = [int(v) for v in args.lengths.split(",")]
    for shape in args.shapes:
        prefills(dev, shape, lengths)
    for shape in args.shapes:
        gemms(shape, max(lengths))


if __name__ == "__main__":
    main()
