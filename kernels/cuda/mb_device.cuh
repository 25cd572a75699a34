// Device helpers shared by every CUDA source of the project: the hand-written kernels in this
// folder (rnn_pointwise.cu, rnn_persistent.cu, conv2d.cu) and the cells fusion/cellexpr/ (cuda_c.py)
// generates.  Each includes it as `#include "mb_device.cuh"`; kernels/cudasrc.py inlines it before
// NVRTC runs (so CuPy's kernel cache hashes the whole program), nvcc finds it beside the .cu.
//
// Storage float / __half / __nv_bfloat16, math in fp32: a value is widened on load and rounded
// once (to nearest even) on store.
#ifndef MB_DEVICE_CUH
#define MB_DEVICE_CUH

#include <cuda_fp16.h>
#include <cuda_bf16.h>

namespace mb {

__device__ __forceinline__ float load(const float* p) { return *p; }
__device__ __forceinline__ float load(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ float load(const __nv_bfloat16* p) { return __bfloat162float(*p); }

__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// 0.5 * tanh(0.5 * a) + 0.5 never overflows (kernels/cells.py's sigmoid).  tanhf, not a fast
// approximation: fp32 runs are checked against float64 at 1e-5 (kernels/dtypes.py).
__device__ __forceinline__ float sigmoid(float a) { return fmaf(0.5f, tanhf(0.5f * a), 0.5f); }

}  // namespace mb

#endif  // MB_DEVICE_CUH
