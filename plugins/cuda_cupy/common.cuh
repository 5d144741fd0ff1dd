// What kernels.cu and gemv.cu share; kernels.py puts it in front of each before NVRTC
// compiles them. T names the storage type of activations and weights: float, __half or
// __nv_bfloat16; math is float32.
#include <cuda_fp16.h>
#include <cuda_bf16.h>

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

// Programmatic dependent launch (compute capability 9.0 on; kernels.py launches a recorded
// decode step so): let the next kernel start launching, then wait until the kernel before
// has finished and its writes are visible. Whatever a kernel does before this may read only
// what no kernel of the step writes (weights). Launched plainly, both instructions do nothing.
__device__ __forceinline__ void pdl_start() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;");
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
