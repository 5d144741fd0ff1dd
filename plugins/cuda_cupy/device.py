"""CupyDevice: buffers are CuPy arrays on one GPU; all work goes to the device's own stream,
so a decode step can be captured once as a CUDA graph and replayed."""
from __future__ import annotations

import functools
import os

import cupy
import cupyx
import numpy as np

from polyllama import Allocator, Device
from polyllama.errors import DeviceError

try:                        # CuPy's bfloat16 arrays use ml_dtypes' numpy dtype
    import ml_dtypes
    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:
    BF16 = None
CUPY_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": BF16,
               "int32": np.int32, "int64": np.int64, "int8": np.int8, "uint8": np.uint8}


class CupyAllocator(Allocator):
    def __init__(self, device_id: int):
        self.device_id = device_id

    def _alloc(self, numel, dtype):
        try:
            with cupy.cuda.Device(self.device_id):
                return cupy.empty(numel, dtype=CUPY_DTYPES[dtype])
        except cupy.cuda.memory.OutOfMemoryError as e:
            raise MemoryError(str(e)) from e

    def _copyin(self, native, host):
        with cupy.cuda.Device(self.device_id):       # numpy rounds to the 16-bit dtypes
            native[...] = cupy.asarray(host.astype(native.dtype, copy=False))

    def _copyout(self, native, dtype):
        host = cupy.asnumpy(native)
        return host.astype(np.float32) if dtype in ("bfloat16", "float16") else host

    def _view(self, native, offset, shape, strides):
        size = native.itemsize
        return cupy.ndarray(shape, dtype=native.dtype, memptr=native.data + offset * size,
                            strides=tuple(s * size for s in strides))


class CupyDevice(Device):
    default_dtype = "bfloat16" if BF16 is not None else "float16"
    supported_dtypes = ("bfloat16",) * (BF16 is not None) + ("float16", "float32")
    asynchronous = True

    def __init__(self, spec, index):
        count = cupy.cuda.runtime.getDeviceCount()
        if index >= count:
            raise DeviceError(f"{spec}: there is no CUDA GPU {index} (CuPy sees {count}); "
                              f"pick an index below that")
        self.gpu = cupy.cuda.Device(index)
        self.gpu.use()
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.stream.use()            # graphs cannot be captured on the legacy default stream
        self._reader = cupy.cuda.Stream(non_blocking=True)
        super().__init__(spec, index)

    def make_allocator(self):
        return CupyAllocator(self.index)

    def name(self):
        return cupy.cuda.runtime.getDeviceProperties(self.index)["name"].decode()

    def synchronize(self):
        self.stream.synchronize()

    def memory(self):
        """The pool's bytes in use; 'peak' is what the pool holds, which only grows until
        reset_peak_memory frees its cached blocks."""
        pool = cupy.get_default_memory_pool()
        with self.gpu:
            _, total = cupy.cuda.runtime.memGetInfo()
        return {"used": pool.used_bytes(), "total": total, "peak": pool.total_bytes()}

    def reset_peak_memory(self):
        self.synchronize()
        cupy.get_default_memory_pool().free_all_blocks()

    def read_async(self, tensor):
        # on a stream of its own, so the next queued step need not wait for the copy
        written = cupy.cuda.Event()
        written.record(self.stream)
        host = cupyx.empty_pinned(tensor.shape, dtype=tensor.native.dtype)
        self._reader.wait_event(written)
        tensor.native.get(stream=self._reader, out=host)
        done = cupy.cuda.Event()
        done.record(self._reader)

        def result():
            done.synchronize()
            return host
        return result

    def replays(self):
        """POLYLLAMA_NO_GRAPH=1 keeps every step eager (for debugging)."""
        return os.environ.get("POLYLLAMA_NO_GRAPH", "0") == "0"

    def decode_runner(self, step):
        """The first call runs the step eagerly (compiling every kernel and allocating their
        workspaces), then records it on the device's stream as one CUDA graph; later calls
        launch the graph. CuPy refuses to record cuBLAS calls, so steps of several tokens
        (their GEMMs) stay eager; one token's step has none."""
        if not self.replays():
            return step
        later = None             # what later calls run: the recorded graph, or the step itself

        def run():
            nonlocal later
            if later is not None:
                later()
                return
            step()
            self.stream.synchronize()
            self.stream.begin_capture()
            try:
                step()
            except NotImplementedError:   # CuPy records no cuBLAS call: a prefill stays eager
                self.stream.end_capture()
                later = step
                return
            later = functools.partial(self.stream.end_capture().launch, self.stream)
        return run

    def measure_bandwidth(self, nbytes: int = 1 << 30, repeats: int = 30) -> float | None:
        """Device-to-device copy rate in bytes/s, counting bytes read plus bytes written."""
        src = cupy.ones(nbytes // 4, dtype=np.float32)
        dst = cupy.empty_like(src)
        times = []
        for i in range(repeats + 10):
            start, end = cupy.cuda.Event(), cupy.cuda.Event()
            start.record(self.stream)
            dst[...] = src
            end.record(self.stream)
            end.synchronize()
            if i >= 10:
                times.append(cupy.cuda.get_elapsed_time(start, end) / 1e3)
        del src, dst
        return 2 * (nbytes // 4 * 4) / float(np.median(times))
