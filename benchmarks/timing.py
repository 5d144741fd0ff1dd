"""CUDA-event timing shared by the benchmark scripts."""
from __future__ import annotations

import statistics

import torch

from polyllama import get_device


def cuda_triton_and_bandwidth():
    """The cuda:triton device and its copy bandwidth in bytes/s (printed: every floor in
    these scripts divides by it)."""
    dev = get_device("cuda:triton")
    bandwidth = dev.measure_bandwidth()
    print(f"{dev.name()}: copy bandwidth {bandwidth / 1e12:.3f} TB/s")
    return dev, bandwidth


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
