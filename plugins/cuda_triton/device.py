"""TritonDevice: buffers are torch CUDA tensors; torch serves memory, streams and graphs only.

Under TRITON_INTERPRET=1 the same device keeps its buffers in host memory (torch CPU
tensors), so every Triton kernel of this backend also runs, slowly, without a GPU.
"""
from __future__ import annotations

import functools
import os
import warnings

import numpy as np
import torch

from polyllama import Allocator, Device, DeviceError

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                "int32": torch.int32, "int64": torch.int64, "int8": torch.int8,
                "uint8": torch.uint8}


SMALL_COPY = 1 << 16        # host->device copies up to this size are queued asynchronously


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def hopper(device: torch.device) -> bool:
    """A CUDA GPU of compute capability 9.0 or later: PDL and TMA."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (9, 0)


@functools.lru_cache(maxsize=None)
def multiprocessors(device: torch.device) -> int:
    """What one-wave grids are sized by (4 for the interpreter on the CPU)."""
    if device.type == "cpu":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


@functools.lru_cache(maxsize=None)
def peak_bandwidth(device: torch.device) -> float | None:
    """The memory's peak bandwidth in bytes/s from its clock and bus width (double data
    rate); None for the interpreter on the CPU."""
    if device.type == "cpu":
        return None
    p = torch.cuda.get_device_properties(device)
    return 2 * p.memory_clock_rate * 1e3 * p.memory_bus_width / 8


@functools.lru_cache(maxsize=None)
def pdl_enabled(device: torch.device) -> bool:
    """Programmatic dependent launch (Hopper on): every kernel lets the next one start while it
    drains, and the next waits (griddepcontrol.wait) before it touches earlier results; a
    GEMV streams its first weight tile meanwhile. POLYLLAMA_NO_PDL=1 turns it off."""
    return hopper(device) and os.environ.get("POLYLLAMA_NO_PDL", "0") == "0"


def _tensor(host: np.ndarray) -> torch.Tensor:
    """A CPU tensor sharing host's memory; read-only (memory-mapped) weights are only ever
    read from, so torch's warning about them is moot."""
    if host.flags.writeable:
        return torch.from_numpy(host)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(host)


class TritonAllocator(Allocator):
    def __init__(self, device: torch.device):
        self.device = device

    def _alloc(self, numel, dtype):
        try:
            return torch.empty(numel, dtype=TORCH_DTYPES[dtype], device=self.device)
        except torch.OutOfMemoryError as e:
            raise MemoryError(str(e).split("\n")[0]) from e

    def _copyin(self, native, host):
        bf16 = host.dtype.name == "bfloat16"        # ml_dtypes bf16: move the raw bits
        src = _tensor(host.view(np.int16) if bf16 else host)
        if bf16:
            src = src.view(torch.bfloat16)
        src = src.reshape(native.shape)
        if native.is_cuda and host.nbytes <= SMALL_COPY:
            # queued behind earlier work instead of waiting for it (a position, a token id);
            # torch's pinned-memory cache keeps the staging block until the copy has run
            native.copy_(src.pin_memory(), non_blocking=True)
        else:
            native.copy_(src)

    def _copyout(self, native, dtype):
        t = native.detach()
        if t.is_floating_point():
            t = t.float()
        return t.cpu().numpy()

    def _view(self, native, offset, shape, strides):
        return torch.as_strided(native, shape, strides, offset)


class TritonDevice(Device):
    default_dtype = "bfloat16"
    supported_dtypes = ("bfloat16", "float16", "float32")

    def __init__(self, spec, index):
        if interpreting():
            self.torch_device = torch.device("cpu")
        else:
            if index >= torch.cuda.device_count():
                raise DeviceError(f"{spec}: there is no CUDA GPU {index} (torch sees "
                                  f"{torch.cuda.device_count()}); pick an index below that")
            self.torch_device = torch.device("cuda", index)
            torch.cuda.set_device(self.torch_device)
        super().__init__(spec, index)
        self.asynchronous = self.torch_device.type == "cuda"
        self._reader = torch.cuda.Stream(self.torch_device) if self.asynchronous else None

    def make_allocator(self):
        return TritonAllocator(self.torch_device)

    def name(self):
        if self.torch_device.type == "cpu":
            return "host CPU (Triton interpreter)"
        return torch.cuda.get_device_name(self.torch_device)

    def synchronize(self):
        if self.torch_device.type == "cuda":
            torch.cuda.synchronize(self.torch_device)

    def memory(self):
        if self.torch_device.type != "cuda":
            return {}
        _, total = torch.cuda.mem_get_info(self.torch_device)
        return {"used": torch.cuda.memory_allocated(self.torch_device), "total": total,
                "peak": torch.cuda.max_memory_allocated(self.torch_device)}

    def reset_peak_memory(self):
        if self.torch_device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.torch_device)

    def read_async(self, tensor):
        if not self.asynchronous:
            return super().read_async(tensor)
        # on a stream of its own, so the next queued step need not wait for the copy
        written = torch.cuda.Event()
        written.record()
        host = torch.empty(tensor.shape, dtype=tensor.native.dtype, pin_memory=True)
        done = torch.cuda.Event()
        with torch.cuda.stream(self._reader):
            self._reader.wait_event(written)
            host.copy_(tensor.native, non_blocking=True)
            done.record()

        def result():
            done.synchronize()
            return host.numpy()
        return result

    def replays(self):
        """POLYLLAMA_NO_GRAPH=1 keeps every step eager (for debugging)."""
        return (self.torch_device.type == "cuda"
                and os.environ.get("POLYLLAMA_NO_GRAPH", "0") == "0")

    def decode_runner(self, step):
        """The first call runs the step eagerly (compiling every kernel and allocating kernel
        workspaces), then records it as one CUDA graph; later calls replay the graph."""
        if not self.replays():
            return step
        graph = None

        def run():
            nonlocal graph
            if graph is not None:
                graph.replay()
                return
            step()
            torch.cuda.synchronize(self.torch_device)
            captured = torch.cuda.CUDAGraph()
            with torch.cuda.graph(captured):      # records the launches, runs nothing
                step()
            graph = captured
        return run

    def measure_bandwidth(self, nbytes: int = 1 << 30, repeats: int = 30) -> float | None:
        """Device-to-device copy rate in bytes/s, counting bytes read plus bytes written
        (the median of `repeats` copies of nbytes, after ten that bring the clocks up)."""
        if self.torch_device.type != "cuda":
            return None
        src = torch.randn(nbytes // 4, device=self.torch_device)
        dst = torch.empty_like(src)
        times = []
        for i in range(repeats + 10):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            if i >= 10:
                times.append(start.elapsed_time(end) / 1e3)
        del src, dst
        return 2 * (nbytes // 4 * 4) / float(np.median(times))
