// 2-D convolution forward on NVIDIA GPUs, NCHW or NHWC activations, KCRS filters
// (kernels/conv/geometry.py).
//
// Launched by kernels/conv/gpu.py (CuPy RawModule, NVRTC); kernels/conv/gpu.py also emulates the
// index math of the direct, implicit-GEMM and Winograd kernels in NumPy, in both layouts, and
// tests/test_conv_gpu.py checks those emulations, and this file built for the CPU with g++ (one
// std::thread per CUDA thread), against the float64 reference on awkward shapes (the only checks
// of this index math on a machine without a GPU).
//
// Geometry arguments, in this order in every entry that takes them (all int32):
//   N C H W K R S P Q  stride_h stride_w  pad_h pad_w  dil_h dil_w  groups
// Cross-correlation: y[n,k,p,q] = b[k] + sum_{c,r,s} x[n, g*Cg + c, p*sh - ph + r*dh,
//   q*sw - pw + s*dw] * w[k, c, r, s], g = k / Kg, Cg = C/groups, Kg = K/groups; input coordinates
// outside [0,H) x [0,W) are padding zeros.  fp32 accumulation for every storage type.
// Activations (input and output alike):
//   NCHW  x[((n*C + c)*H + h)*W + w]      NHWC  x[((n*H + h)*W + w)*C + c]
// The filter is KCRS in both layouts (one set of weights serves both).
//
// Entries (extern "C"); {L} is empty for NCHW and _nhwc for NHWC, one template instance each, so
// neither layout pays a run-time branch:
//   conv2d_direct{L}_{f32,f16}            one thread per output element, the seven loops
//   conv2d_implicit_gemm{,128}{L}_{f32,f16}  tiled GEMM, column matrix gathered into shared memory
//   conv2d_winograd_f2_input{L}_f32          F(2x2,3x3) input transform   V[16][..]
//   conv2d_winograd_f2_output{L}_f32         F(2x2,3x3) output transform of M[16][..], + bias, crop
//   conv2d_winograd_input{L}_f32       F(4x4,3x3) input transform   V[36][..]
//   conv2d_winograd_output{L}_f32      F(4x4,3x3) output transform of M[36][..], + bias, crop
// The Winograd filter transforms and the batched GEMMs run in CuPy (cuBLAS).
#include "mb_device.cuh"   // mb::load, mb::store

#define MB_CONV_THREADS 256
#define MB_CONV_WARP 32
// implicit GEMM tile: BM output pixels x BN output channels per block, BK reduction slice
#define MB_CONV_BM 64
#define MB_CONV_BN 64
#define MB_CONV_BK 16
#define MB_CONV_BN_PAD 4
// the large tile (conv2d_implicit_gemm128_*): 128 x 128 x 8, 8x8 per thread, for layers with
// enough 128x128 output tiles to fill the GPU (the launcher picks; kernels/conv/gpu.py)
#define MB_CONV_BM2 128
#define MB_CONV_BN2 128
#define MB_CONV_BK2 8
// at least 2 resident blocks per SM (<= 128 registers): without it ptxas for sm_80 capped the
// f32 kernel at 80 registers and spilled
#define MB_CONV_IGEMM_MIN_BLOCKS 2
// F(2x2,3x3): 4x4 input tiles, 2x2 output tiles
#define MB_WINO_ALPHA 4
#define MB_WINO_M 2
// F(4x4,3x3): 6x6 input tiles, 4x4 output tiles
#define MB_WINO4_ALPHA 6
#define MB_WINO4_M 4

#define MB_GEOM_PARAMS                                                                          \
    int N, int C, int H, int W, int K, int R, int S, int P, int Q, int sh, int sw, int ph, int pw, \
        int dh, int dw, int G
#define MB_GEOM_ARGS N, C, H, W, K, R, S, P, Q, sh, sw, ph, pw, dh, dw, G

// -- direct -------------------------------------------------------------------------------------
// One thread per output element, in the output's own order (idx is the output offset), so a warp
// writes consecutive words: NCHW q fastest (neighbouring input pixels), NHWC k fastest (the warp
// reads one input pixel, broadcast).  A grid-stride loop covers any size.  NHWC runs the channel
// loop innermost, over the pixel's contiguous channels.
template <typename T, bool NHWC>
__device__ __forceinline__ void direct_body(const T* __restrict__ x, const T* __restrict__ w,
                                            const T* __restrict__ b, T* __restrict__ y,
                                            MB_GEOM_PARAMS) {
    const int Cg = C / G, Kg = K / G, RS = R * S;
    const long long total = (long long)N * K * P * Q;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        int n, k, p, q;
        if constexpr (NHWC) {
            k = (int)(idx % K);
            long long t = idx / K;
            q = (int)(t % Q);
            t /= Q;
            p = (int)(t % P);
            n = (int)(t / P);
        } else {
            q = (int)(idx % Q);
            long long t = idx / Q;
            p = (int)(t % P);
            t /= P;
            k = (int)(t % K);
            n = (int)(t / K);
        }
        const int g = k / Kg;
        const int h0 = p * sh - ph, w0 = q * sw - pw;
        float acc = b ? mb::load(b + k) : 0.0f;
        const T* wk = w + (long long)k * Cg * RS;
        if constexpr (NHWC) {
            const T* xn = x + (long long)n * H * W * C + (long long)g * Cg;
            for (int r = 0; r < R; ++r) {
                const int hi = h0 + r * dh;
                if (hi < 0 || hi >= H) continue;
                for (int s = 0; s < S; ++s) {
                    const int wi = w0 + s * dw;
                    if (wi < 0 || wi >= W) continue;
                    const T* xp = xn + ((long long)hi * W + wi) * C;
                    const T* wp = wk + r * S + s;
                    // unroll 4: with the default unrolling ptxas (CUDA 13, sm_90) spilled the
                    // f16 instance
#pragma unroll 4
                    for (int c = 0; c < Cg; ++c)
                        acc = fmaf(mb::load(xp + c), mb::load(wp + c * RS), acc);
                }
            }
        } else {
            for (int c = 0; c < Cg; ++c) {
                const T* xc = x + ((long long)n * C + (long long)g * Cg + c) * H * W;
                const T* wc = wk + (long long)c * RS;
                for (int r = 0; r < R; ++r) {
                    const int hi = h0 + r * dh;
                    if (hi < 0 || hi >= H) continue;
                    for (int s = 0; s < S; ++s) {
                        const int wi = w0 + s * dw;
                        if (wi < 0 || wi >= W) continue;
                        acc = fmaf(mb::load(xc + (long long)hi * W + wi), mb::load(wc + r * S + s), acc);
                    }
                }
            }
        }
        mb::store(y + idx, acc);
    }
}

extern "C" __global__ void __launch_bounds__(MB_CONV_THREADS)
conv2d_direct_f32(const float* __restrict__ x, const float* __restrict__ w,
                  const float* __restrict__ b, float* __restrict__ y, MB_GEOM_PARAMS) {
    direct_body<float, false>(x, w, b, y, MB_GEOM_ARGS);
}

extern "C" __global__ void __launch_bounds__(MB_CONV_THREADS)
conv2d_direct_f16(const __half* __restrict__ x, const __half* __restrict__ w,
                  const __half* __restrict__ b, __half* __restrict__ y, MB_GEOM_PARAMS) {
    direct_body<__half, false>(x, w, b, y, MB_GEOM_ARGS);
}

extern "C" __global__ void __launch_bounds__(MB_CONV_THREADS)
conv2d_direct_nhwc_f32(const float* __restrict__ x, const float* __restrict__ w,
                       const float* __restrict__ b, float* __restrict__ y, MB_GEOM_PARAMS) {
    direct_body<float, true>(x, w, b, y, MB_GEOM_ARGS);
}

extern "C" __global__ void __launch_bounds__(MB_CONV_THREADS)
conv2d_direct_nhwc_f16(const __half* __restrict__ x, const __half* __restrict__ w,
                       const __half* __restrict__ b, __half* __restrict__ y, MB_GEOM_PARAMS) {
    direct_body<__half, true>(x, w, b, y, MB_GEOM_ARGS);
}

// -- implicit GEMM --------------------------------------------------------------------------
// Per group g (blockIdx.z) the layer is the GEMM
//   Y_g (M x Kg) = A (M x Kgemm) @ B_g (Kgemm x Kg),  M = N*P*Q, Kgemm = Cg*R*S
// with row m = (n*P + p)*Q + q (an output pixel) and the reduction column kk ordered, per layout,
// so that consecutive kk are neighbours in x:
//   NCHW  kk = (c*R + r)*S + s    (the taps of one channel plane)
//   NHWC  kk = (r*S + s)*Cg + c   (the channels of one pixel)
//   A[m, kk] = x[n, g*Cg + c, p*sh - ph + r*dh, q*sw - pw + s*dw]  (0 outside the input)
//   B_g[kk, j] = w[g*Kg + j, c, r, s] = w_flat[(g*Kg + j)*Kgemm + (c*R + r)*S + s]   (KCRS)
//   y[n, g*Kg + j, p, q] = Y_g[m, j] + b[g*Kg + j]
// A is never stored: each BK-slice of a BM-row tile is gathered from x into shared memory.
// Block: BM x BN outputs, 256 threads, (BM/16) x (BN/16) per thread (4x4 for the 64x64 tile,
// 8x8 for 128x128).  Loads (idx = tid + i*256, i < BM*BK/256):
//   A slot, NCHW  ml = idx % BM (= tid % BM), kl = idx / BM: consecutive threads, consecutive
//           pixels; the slot's (c, r, s) is carried from slice to slice (no division in the loop)
//   A slot, NHWC  kl = idx % BK (= tid % BK), ml = idx / BK: consecutive threads, consecutive
//           channels of one pixel; the thread's one (c, s, r) is carried likewise.  The tile is
//           then written down its columns, so its rows are padded by 32/BK words: a warp's 32
//           stores land in 32 banks
//   B slot  kl = idx % BK, jl = idx / BK: consecutive threads, consecutive reduction columns
//           (NCHW: consecutive filter taps; NHWC: taps R*S apart, at the A slots' (c, s, r))
// Compute: thread (tm = tid % 16, tn = tid / 16) owns rows tm + 16*i, columns 64*jg + tn*4 + j, so a
// warp's 16 tm read 16 consecutive A words (no bank conflict), its 2 tn read broadcast float4s of
// B, and each NCHW output store covers 16 consecutive pixels (NHWC: a thread's 4 columns are 4
// neighbouring channels of one pixel).  Shared memory is double-buffered: the next slice is
// fetched into registers while the current one is multiplied (one barrier a slice).
template <typename T, int BM, int BN, int BK, bool NHWC>
__device__ __forceinline__ void implicit_gemm_body(const T* __restrict__ x, const T* __restrict__ w,
                                                   const T* __restrict__ b, T* __restrict__ y,
                                                   MB_GEOM_PARAMS) {
    constexpr int NT = MB_CONV_THREADS;
    constexpr int A_PER = BM * BK / NT, B_PER = BN * BK / NT;
    constexpr int TM = BM / 16, TN4 = BN / 64;       // rows, float4 column groups per thread
    constexpr int APAD = NHWC ? MB_CONV_WARP / BK : 0;
    static_assert(NT == 256, "compute mapping: 16 x 16 threads");
    static_assert(NHWC || NT % BM == 0, "NCHW: an A slot's row must not depend on i");
    static_assert(NT % BK == 0, "an A (NHWC) or B slot's reduction column must not depend on i");
    static_assert(!NHWC || (MB_CONV_WARP % BK == 0 && BM % MB_CONV_WARP == 0),
                  "NHWC: the row pad spreads a warp's stores over the banks");
    static_assert(BM * BK % NT == 0 && BN * BK % NT == 0, "whole tiles per thread");
    static_assert(BM % 16 == 0 && BN % 64 == 0, "16 row groups, 64-column groups");
    __shared__ float As[2][BK][BM + APAD];
    __shared__ __align__(16) float Bs[2][BK][BN + MB_CONV_BN_PAD];

    const int tid = threadIdx.x;
    const int g = blockIdx.z;
    const int Cg = C / G, Kg = K / G, RS = R * S, Kgemm = Cg * RS;
    const int M = N * P * Q;
    const int m0 = blockIdx.x * BM, j0 = blockIdx.y * BN;
    const T* wg = w + (long long)g * Kg * Kgemm;

    // NCHW state: this thread's A row (fixed over the whole reduction), pixel (n, p, q), and the
    // reduction coordinates (c, r, s) of its A slots, kk = tid/BM + i*(NT/BM) + k0: divided out
    // once here, then advanced by BK per slice with one carry per digit
    // (BK = dC*RS + dR*S + dS with dS < S, dR < R), so the gather has no division.
    bool a_row_ok = false;
    int a_h0 = 0, a_w0 = 0;
    const T* xg = x;
    int a_c[A_PER], a_r[A_PER], a_s[A_PER];
    int dC = 0, dR = 0, dS = 0;
    // NHWC state: this thread's A rows m0 + tid/BK + i*(NT/BK) and its one reduction column
    // kk = tid % BK + k0 as (c, s, r), advanced per slice as above (BK = dr*S*Cg + ds*Cg + dc).
    bool n_ok[A_PER];
    int n_h0[A_PER], n_w0[A_PER];
    const T* n_x[A_PER];
    int kc = 0, ks = 0, kr = 0, dc = 0, ds = 0, dr = 0;
    if constexpr (NHWC) {
#pragma unroll
        for (int i = 0; i < A_PER; ++i) {
            const int m = m0 + tid / BK + i * (NT / BK);
            n_ok[i] = m < M;
            const int mm = n_ok[i] ? m : 0;
            const int q = mm % Q, t = mm / Q;
            const int p = t % P, n = t / P;
            n_h0[i] = p * sh - ph;
            n_w0[i] = q * sw - pw;
            n_x[i] = x + (long long)n * H * W * C + (long long)g * Cg;
        }
        const int kk = tid % BK, t = kk / Cg;
        kc = kk - t * Cg;
        kr = t / S;
        ks = t - kr * S;
        dc = BK % Cg;
        ds = (BK / Cg) % S;
        dr = BK / (Cg * S);
    } else {
        const int am = m0 + tid % BM;
        a_row_ok = am < M;
        if (a_row_ok) {
            const int q = am % Q, t = am / Q;
            const int p = t % P, n = t / P;
            a_h0 = p * sh - ph;
            a_w0 = q * sw - pw;
            xg = x + ((long long)n * C + (long long)g * Cg) * H * W;
        }
#pragma unroll
        for (int i = 0; i < A_PER; ++i) {
            const int kk = tid / BM + i * (NT / BM);
            a_c[i] = kk / RS;
            const int rs = kk - a_c[i] * RS;
            a_r[i] = rs / S;
            a_s[i] = rs - a_r[i] * S;
        }
        dC = BK / RS;
        dR = (BK % RS) / S;
        dS = BK % S;
    }

    float ra[A_PER], rb[B_PER];
    auto fetch = [&](int k0) {
        if constexpr (NHWC) {
            const bool k_ok = kr < R;        // kk < Kgemm: the tail of the last slice loads zeros
            const int hr = kr * dh, wsd = ks * dw;
#pragma unroll
            for (int i = 0; i < A_PER; ++i) {
                float v = 0.0f;
                const int hi = n_h0[i] + hr, wi = n_w0[i] + wsd;
                if (k_ok && n_ok[i] && hi >= 0 && hi < H && wi >= 0 && wi < W)
                    v = mb::load(n_x[i] + ((long long)hi * W + wi) * C + kc);
                ra[i] = v;
            }
            const int wtap = (kc * R + kr) * S + ks;
#pragma unroll
            for (int i = 0; i < B_PER; ++i) {
                const int j = j0 + tid / BK + i * (NT / BK);
                rb[i] = (k_ok && j < Kg) ? mb::load(wg + (long long)j * Kgemm + wtap) : 0.0f;
            }
            kc += dc;
            if (kc >= Cg) { kc -= Cg; ++ks; }
            ks += ds;
            if (ks >= S) { ks -= S; ++kr; }
            kr += dr;
        } else {
#pragma unroll
            for (int i = 0; i < A_PER; ++i) {
                float v = 0.0f;
                if (a_row_ok && a_c[i] < Cg) {
                    const int hi = a_h0 + a_r[i] * dh, wi = a_w0 + a_s[i] * dw;
                    if (hi >= 0 && hi < H && wi >= 0 && wi < W)
                        v = mb::load(xg + ((long long)a_c[i] * H + hi) * W + wi);
                }
                ra[i] = v;
                a_s[i] += dS;
                if (a_s[i] >= S) { a_s[i] -= S; ++a_r[i]; }
                a_r[i] += dR;
                if (a_r[i] >= R) { a_r[i] -= R; ++a_c[i]; }
                a_c[i] += dC;
            }
#pragma unroll
            for (int i = 0; i < B_PER; ++i) {
                const int idx = tid + i * NT;
                const int kk = k0 + idx % BK, j = j0 + idx / BK;
                rb[i] = (kk < Kgemm && j < Kg) ? mb::load(wg + (long long)j * Kgemm + kk) : 0.0f;
            }
        }
    };
    auto stash = [&](int buf) {
#pragma unroll
        for (int i = 0; i < A_PER; ++i) {
            const int idx = tid + i * NT;
            if constexpr (NHWC)
                As[buf][idx % BK][idx / BK] = ra[i];
            else
                As[buf][idx / BM][idx % BM] = ra[i];
        }
#pragma unroll
        for (int i = 0; i < B_PER; ++i) {
            const int idx = tid + i * NT;
            Bs[buf][idx % BK][idx / BK] = rb[i];
        }
    };

    const int tm = tid % 16, tn = tid / 16;
    float acc[TM][4 * TN4];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < 4 * TN4; ++j) acc[i][j] = 0.0f;

    fetch(0);
    stash(0);
    __syncthreads();
    int buf = 0;
    for (int k0 = 0; k0 < Kgemm; k0 += BK) {
        const bool more = k0 + BK < Kgemm;
        if (more) fetch(k0 + BK);
#pragma unroll
        for (int kl = 0; kl < BK; ++kl) {
            float a[TM];
#pragma unroll
            for (int i = 0; i < TM; ++i) a[i] = As[buf][kl][tm + 16 * i];
#pragma unroll
            for (int jg = 0; jg < TN4; ++jg) {
                const float4 bv = *reinterpret_cast<const float4*>(&Bs[buf][kl][jg * 64 + tn * 4]);
#pragma unroll
                for (int i = 0; i < TM; ++i) {
                    acc[i][4 * jg + 0] = fmaf(a[i], bv.x, acc[i][4 * jg + 0]);
                    acc[i][4 * jg + 1] = fmaf(a[i], bv.y, acc[i][4 * jg + 1]);
                    acc[i][4 * jg + 2] = fmaf(a[i], bv.z, acc[i][4 * jg + 2]);
                    acc[i][4 * jg + 3] = fmaf(a[i], bv.w, acc[i][4 * jg + 3]);
                }
            }
        }
        if (more) stash(buf ^ 1);
        __syncthreads();
        buf ^= 1;
    }

    const long long PQ = (long long)P * Q;
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int m = m0 + tm + 16 * i;
        if (m >= M) continue;
        const int n = m / (P * Q), pq = m - n * (P * Q);
#pragma unroll
        for (int j = 0; j < 4 * TN4; ++j) {
            const int jj = j0 + (j / 4) * 64 + tn * 4 + j % 4;
            if (jj >= Kg) continue;
            const int k = g * Kg + jj;
            const float bias = b ? mb::load(b + k) : 0.0f;
            if constexpr (NHWC)
                mb::store(y + (long long)m * K + k, acc[i][j] + bias);
            else
                mb::store(y + ((long long)n * K + k) * PQ + pq, acc[i][j] + bias);
        }
    }
}

extern "C" __global__ void __launch_bounds__(MB_CONV_THREADS, MB_CONV_IGEMM_MIN_BLOCKS)
conv2d_implicit_gemm_f32(const float* __restrict__ x, const float* __restrict__ w,
                         const float* __restrict__ b, float* __restrict__ y, MB_GEOM_PARAMS) {
    implicit_gemm_body<float, MB_CONV_BM, MB_CONV_BN, MB_CONV_BK, false>(x, w, b, y, MB_GEOM_ARGS);
}

extern "C" __global__ void __launch_bounds__(MB_CONV_THREADS, MB_CONV_IGEMM_MIN_BLOCKS)
conv2d_implicit_gemm_f16(const __half* __restrict__ x, const __half* __restrict__ w,
                         const __half* __restrict__ b, __half* __restrict__ y, MB_GEOM_PARAMS) {
    implicit_gemm_body<__half, MB_CONV_BM, MB_CONV_BN, MB_CONV_BK, false>(x, w, b, y, MB_GEOM_ARGS);
}

extern "C" __global__ void __launch_bounds__(MB_CONV_THREADS, 1)
conv2d_implicit_gemm128_f32(const float* __restrict__ x, const float* __restrict__ w,
                            const float* __restrict__ b, float* __restrict__ y, MB_GEOM_PARAMS) {
    implicit_gemm_body<float, MB_CONV_BM2, MB_CONV_BN2, MB_CONV_BK2, false>(x, w, b, y, MB_GEOM_ARGS);
}

extern "C" __global__ void __launch_bounds__(MB_CONV_THREADS, 1)
conv2d_implicit_gemm128_f16(const __half* __restrict__ x, const __half* __restrict__ w,
                            const __half* __restrict__ b, __half* __restrict__ y, MB_GEOM_PARAMS) {
    implicit_gemm_body<__half, MB_CONV_BM2, MB_CONV_BN2, MB_CONV_BK2, false>(x, w, b, y, MB_GEOM_ARGS);
}

extern "C" __global__ void __launch_bounds__(MB_CONV_THREADS, MB_CONV_IGEMM_MIN_BLOCKS)
conv2d_implicit_gemm_nhwc_f32(const float* __restrict__ x, const float* __restrict__ w,
                              const float* __restrict__ b, float* __restrict__ y, MB_GEOM_PARAMS) {
    implicit_gemm_body<float, MB_CONV_BM, MB_CONV_BN, MB_CONV_BK, true>(x, w, b, y, MB_GEOM_ARGS);
}

extern "C" __global__ void __launch_bounds__(MB_CONV_THREADS, MB_CONV_IGEMM_MIN_BLOCKS)
conv2d_implicit_gemm_nhwc_f16(const __half* __restrict__ x, const __half* __restrict__ w,
                              const __half* __restrict__ b, __half* __restrict__ y, MB_GEOM_PARAMS) {
    implicit_gemm_body<__half, MB_CONV_BM, MB_CONV_BN, MB_CONV_BK, true>(x, w, b, y, MB_GEOM_ARGS);
}

extern "C" __global__ void __launch_bounds__(MB_CONV_THREADS, 1)
conv2d_implicit_gemm128_nhwc_f32(const float* __restrict__ x, const float* __restrict__ w,
                                 const float* __restrict__ b, float* __restrict__ y, MB_GEOM_PARAMS) {
    implicit_gemm_body<float, MB_CONV_BM2, MB_CONV_BN2, MB_CONV_BK2, true>(x, w, b, y, MB_GEOM_ARGS);
}

extern "C" __global__ void __launch_bounds__(MB_CONV_THREADS, 1)
conv2d_implicit_gemm128_nhwc_f16(const __half* __restrict__ x, const __half* __restrict__ w,
                                 const __half* __restrict__ b, __half* __restrict__ y, MB_GEOM_PARAMS) {
    implicit_gemm_body<__half, MB_CONV_BM2, MB_CONV_BN2, MB_CONV_BK2, true>(x, w, b, y, MB_GEOM_ARGS);
}

// -- Winograd F(2x2,3x3) and F(4x4,3x3) ------------------------------------------------------
// Lavin & Gray's minimal filtering, correlation form, on alpha x alpha input tiles d and m x m
// output tiles, alpha = m + 2:  Y = A^T [ (G g G^T) (.) (B^T d B) ] A.
//   F(2x2,3x3)  B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]   A^T = [1 1 1 0; 0 1 -1 -1]
//               G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1]
//   F(4x4,3x3)  points 0, 1, -1, 2, -2 and infinity (kernels/conv/winograd.py derives the
//               matrices; the launcher's filter transform and the tests take them from there)
//     B^T = [4  0 -5  0  1 0;  0  4  4 -1 -1 0;  0 -4  4  1 -1 0;
//            0 -2 -1  2  1 0;  0  2 -1 -2  1 0;  0  4  0 -5  0 1]
//     A^T = [1 1 1 1 1 0;  0 1 -1 2 -2 0;  0 1 1 4 4 0;  0 1 -1 8 -8 1]
//     G   = [1/4 0 0; 1/6 1/6 1/6; 1/6 -1/6 1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1]
// The transforms below are those matrices written out with shared sums (F(4x4) B^T: 12 adds or
// fused multiply-adds by small integers per 6-vector instead of 36 multiply-adds); products by 2,
// 4 and 8 are exact in fp32, so only the 5s round differently from the matrix product.
// Tiles: tile t = (n*tP + tp)*tQ + tq, tP = ceil(P/m), tQ = ceil(Q/m), T = N*tP*tQ; its input
// patch is rows tp*m - ph + 0..alpha-1, columns tq*m - pw + 0..alpha-1 (zero outside the input).
// GEMM operands, uv = u*alpha + v the position in the transformed tile, one thread per element:
//   NCHW  V[uv][c][t], M[uv][k][t] (t fastest: a warp reads neighbouring tiles of one plane)
//          M = U[uv] (K x C) @ V[uv] (C x T)
//   NHWC  V[uv][t][c], M[uv][t][k] (c, k fastest: a warp reads one pixel's channels, and writes
//          one output pixel's channels)   M = V[uv] (T x C) @ U[uv] (C x K)
// In both, the element of thread idx is V[uv*total + idx] (M likewise).
struct WinoF2 {
    static constexpr int m = MB_WINO_M, alpha = MB_WINO_ALPHA;
    static __device__ __forceinline__ void bt(const float* d, float* o) {
        o[0] = d[0] - d[2];
        o[1] = d[1] + d[2];
        o[2] = d[2] - d[1];
        o[3] = d[1] - d[3];
    }
    static __device__ __forceinline__ void at(const float* v, float* o) {
        o[0] = v[0] + v[1] + v[2];
        o[1] = v[1] - v[2] - v[3];
    }
};

struct WinoF4 {
    static constexpr int m = MB_WINO4_M, alpha = MB_WINO4_ALPHA;
    static __device__ __forceinline__ void bt(const float* d, float* o) {
        const float a = fmaf(4.0f, d[2], -d[4]), b = fmaf(4.0f, d[1], -d[3]);
        const float c = d[4] - d[2], e = d[3] - d[1];
        o[0] = fmaf(4.0f, d[0], fmaf(-5.0f, d[2], d[4]));
        o[1] = a + b;
        o[2] = a - b;
        o[3] = fmaf(2.0f, e, c);
        o[4] = fmaf(-2.0f, e, c);
        o[5] = fmaf(4.0f, d[1], fmaf(-5.0f, d[3], d[5]));
    }
    static __device__ __forceinline__ void at(const float* v, float* o) {
        const float a = v[1] + v[2], b = v[1] - v[2], c = v[3] + v[4], e = v[3] - v[4];
        o[0] = v[0] + a + c;
        o[1] = fmaf(2.0f, e, b);
        o[2] = fmaf(4.0f, c, a);
        o[3] = fmaf(8.0f, e, b) + v[5];
    }
};

// One thread per (c, t): gather the input patch, V = B^T d B (columns, then rows).
template <class F, bool NHWC>
__device__ __forceinline__ void winograd_input_body(const float* __restrict__ x,
                                                    float* __restrict__ V, int N, int C, int H,
                                                    int W, int ph, int pw, int tP, int tQ) {
    constexpr int A = F::alpha;
    const long long T = (long long)N * tP * tQ;
    const long long total = (long long)C * T;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        long long t;
        int c;
        if constexpr (NHWC) {
            c = (int)(idx % C);
            t = idx / C;
        } else {
            t = idx % T;
            c = (int)(idx / T);
        }
        const int tq = (int)(t % tQ);
        const int tp = (int)((t / tQ) % tP);
        const int n = (int)(t / ((long long)tQ * tP));
        const int h0 = tp * F::m - ph, w0 = tq * F::m - pw;
        float d[A][A];
#pragma unroll
        for (int i = 0; i < A; ++i)
#pragma unroll
            for (int j = 0; j < A; ++j) {
                const int hi = h0 + i, wi = w0 + j;
                const long long off = NHWC ? (((long long)n * H + hi) * W + wi) * C + c
                                           : (((long long)n * C + c) * H + hi) * W + wi;
                d[i][j] = (hi >= 0 && hi < H && wi >= 0 && wi < W) ? x[off] : 0.0f;
            }
        float tmp[A][A], col[A], o[A];
#pragma unroll
        for (int j = 0; j < A; ++j) {           // columns: B^T d
#pragma unroll
            for (int i = 0; i < A; ++i) col[i] = d[i][j];
            F::bt(col, o);
#pragma unroll
            for (int u = 0; u < A; ++u) tmp[u][j] = o[u];
        }
#pragma unroll
        for (int u = 0; u < A; ++u) {           // rows: (B^T d) B
            F::bt(tmp[u], o);
#pragma unroll
            for (int v = 0; v < A; ++v) V[(u * A + v) * total + idx] = o[v];
        }
    }
}

// One thread per (k, t): Y = A^T M A on the alpha^2 values of M, + bias, written where the m x m
// tile lies inside P x Q (the last tiles of a row or column may be partial).
template <class F, bool NHWC>
__device__ __forceinline__ void winograd_output_body(const float* __restrict__ Mt,
                                                     const float* __restrict__ b,
                                                     float* __restrict__ y, int N, int K, int P,
                                                     int Q, int tP, int tQ) {
    constexpr int A = F::alpha, MO = F::m;
    const long long T = (long long)N * tP * tQ;
    const long long total = (long long)K * T;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        long long t;
        int k;
        if constexpr (NHWC) {
            k = (int)(idx % K);
            t = idx / K;
        } else {
            t = idx % T;
            k = (int)(idx / T);
        }
        const int tq = (int)(t % tQ);
        const int tp = (int)((t / tQ) % tP);
        const int n = (int)(t / ((long long)tQ * tP));
        float m[A][A];
#pragma unroll
        for (int u = 0; u < A; ++u)
#pragma unroll
            for (int v = 0; v < A; ++v) m[u][v] = Mt[(u * A + v) * total + idx];
        float tmp[MO][A], col[A], o[MO];
#pragma unroll
        for (int v = 0; v < A; ++v) {           // columns: A^T M
#pragma unroll
            for (int u = 0; u < A; ++u) col[u] = m[u][v];
            F::at(col, o);
#pragma unroll
            for (int i = 0; i < MO; ++i) tmp[i][v] = o[i];
        }
        const float bias = b ? b[k] : 0.0f;
#pragma unroll
        for (int i = 0; i < MO; ++i) {          // rows: (A^T M) A
            F::at(tmp[i], o);
            const int p = tp * MO + i;
#pragma unroll
            for (int j = 0; j < MO; ++j) {
                const int q = tq * MO + j;
                if (p < P && q < Q) {
                    const long long off = NHWC ? (((long long)n * P + p) * Q + q) * K + k
                                               : (((long long)n * K + k) * P + p) * Q + q;
                    y[off] = o[j] + bias;
                }
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(MB_CONV_THREADS)
conv2d_winograd_f2_input_f32(const float* __restrict__ x, float* __restrict__ V, int N, int C,
                          int H, int W, int ph, int pw, int tP, int tQ) {
    winograd_input_body<WinoF2, false>(x, V, N, C, H, W, ph, pw, tP, tQ);
}

extern "C" __global__ void __launch_bounds__(MB_CONV_THREADS)
conv2d_winograd_f2_output_f32(const float* __restrict__ Mt, const float* __restrict__ b,
                           float* __restrict__ y, int N, int K, int P, int Q, int tP, int tQ) {
    winograd_output_body<WinoF2, false>(Mt, b, y, N, K, P, Q, tP, tQ);
}

extern "C" __global__ void __launch_bounds__(MB_CONV_THREADS)
conv2d_winograd_f2_input_nhwc_f32(const float* __restrict__ x, float* __restrict__ V, int N, int C,
                               int H, int W, int ph, int pw, int tP, int tQ) {
    winograd_input_body<WinoF2, true>(x, V, N, C, H, W, ph, pw, tP, tQ);
}

extern "C" __global__ void __launch_bounds__(MB_CONV_THREADS)
conv2d_winograd_f2_output_nhwc_f32(const float* __restrict__ Mt, const float* __restrict__ b,
                                float* __restrict__ y, int N, int K, int P, int Q, int tP, int tQ) {
    winograd_output_body<WinoF2, true>(Mt, b, y, N, K, P, Q, tP, tQ);
}

extern "C" __global__ void __launch_bounds__(MB_CONV_THREADS)
conv2d_winograd_input_f32(const float* __restrict__ x, float* __restrict__ V, int N, int C,
                             int H, int W, int ph, int pw, int tP, int tQ) {
    winograd_input_body<WinoF4, false>(x, V, N, C, H, W, ph, pw, tP, tQ);
}

extern "C" __global__ void __launch_bounds__(MB_CONV_THREADS)
conv2d_winograd_output_f32(const float* __restrict__ Mt, const float* __restrict__ b,
                              float* __restrict__ y, int N, int K, int P, int Q, int tP, int tQ) {
    winograd_output_body<WinoF4, false>(Mt, b, y, N, K, P, Q, tP, tQ);
}

extern "C" __global__ void __launch_bounds__(MB_CONV_THREADS)
conv2d_winograd_input_nhwc_f32(const float* __restrict__ x, float* __restrict__ V, int N, int C,
                                  int H, int W, int ph, int pw, int tP, int tQ) {
    winograd_input_body<WinoF4, true>(x, V, N, C, H, W, ph, pw, tP, tQ);
}

extern "C" __global__ void __launch_bounds__(MB_CONV_THREADS)
conv2d_winograd_output_nhwc_f32(const float* __restrict__ Mt, const float* __restrict__ b,
                                   float* __restrict__ y, int N, int K, int P, int Q, int tP, int tQ) {
    winograd_output_body<WinoF4, true>(Mt, b, y, N, K, P, Q, tP, tQ);
}
