// 2-D convolution forward on NVIDIA GPUs, NCHW activations, KCRS filters (kernels/conv/geometry.py).
//
// Launched by kernels/conv/gpu.py (CuPy RawModule, NVRTC); kernels/conv/gpu.py also emulates the
// tiling and index math of the implicit-GEMM and Winograd kernels in NumPy, and
// tests/test_conv_gpu.py checks those emulations against the float64 reference on awkward shapes
// (the only check of this index math on a machine without a GPU).
//
// Geometry arguments, in this order in every entry that takes them (all int32):
//   N C H W K R S P Q  stride_h stride_w  pad_h pad_w  dil_h dil_w  groups
// Cross-correlation: y[n,k,p,q] = b[k] + sum_{c,r,s} x[n, g*Cg + c, p*sh - ph + r*dh,
//   q*sw - pw + s*dw] * w[k, c, r, s], g = k / Kg, Cg = C/groups, Kg = K/groups; input coordinates
// outside [0,H) x [0,W) are padding zeros.  fp32 accumulation for every storage type.
//
// Entries (extern "C"):
//   conv2d_direct_{f32,f16}         one thread per output element, the seven loops
//   conv2d_implicit_gemm_{f32,f16}  tiled GEMM, column matrix gathered into shared memory on the fly
//   conv2d_winograd_input_f32       F(2x2,3x3) input transform  V[16][C][T]
//   conv2d_winograd_output_f32      F(2x2,3x3) output transform of M[16][K][T], + bias, crop
// The Winograd filter transform and the 16 batched GEMMs run in CuPy (cuBLAS).
#include <cuda_fp16.h>

#define MB_CONV_THREADS 256
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

__device__ __forceinline__ float mb_load(const float* p) { return *p; }
__device__ __forceinline__ float mb_load(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ void mb_store(float* p, float v) { *p = v; }
__device__ __forceinline__ void mb_store(__half* p, float v) { *p = __float2half_rn(v); }

#define MB_GEOM_PARAMS                                                                          \
    int N, int C, int H, int W, int K, int R, int S, int P, int Q, int sh, int sw, int ph, int pw, \
        int dh, int dw, int G
#define MB_GEOM_ARGS N, C, H, W, K, R, S, P, Q, sh, sw, ph, pw, dh, dw, G

// -- direct -------------------------------------------------------------------------------------
// One thread per output element (q fastest, so a warp writes consecutive pixels and reads
// neighbouring input pixels); a grid-stride loop covers any size.
template <typename T>
__device__ __forceinline__ void direct_body(const T* __restrict__ x, const T* __restrict__ w,
                                            const T* __restrict__ b, T* __restrict__ y,
                                            MB_GEOM_PARAMS) {
    const int Cg = C / G, Kg = K / G;
    const long long total = (long long)N * K * P * Q;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        const int q = (int)(idx % Q);
        long long t = idx / Q;
        const int p = (int)(t % P);
        t /= P;
        const int k = (int)(t % K);
        const int n = (int)(t / K);
        const int g = k / Kg;
        const int h0 = p * sh - ph, w0 = q * sw - pw;
        float acc = b ? mb_load(b + k) : 0.0f;
        for (int c = 0; c < Cg; ++c) {
            const T* xc = x + ((long long)n * C + (long long)g * Cg + c) * H * W;
            const T* wc = w + ((long long)k * Cg + c) * R * S;
            for (int r = 0; r < R; ++r) {
                const int hi = h0 + r * dh;
                if (hi < 0 || hi >= H) continue;
                for (int s = 0; s < S; ++s) {
                    const int wi = w0 + s * dw;
                    if (wi < 0 || wi >= W) continue;
                    acc = fmaf(mb_load(xc + (long long)hi * W + wi), mb_load(wc + r * S + s), acc);
                }
            }
        }
        mb_store(y + idx, acc);
    }
}

extern "C" __global__ void __launch_bounds__(MB_CONV_THREADS)
conv2d_direct_f32(const float* __restrict__ x, const float* __restrict__ w,
                  const float* __restrict__ b, float* __restrict__ y, MB_GEOM_PARAMS) {
    direct_body<float>(x, w, b, y, MB_GEOM_ARGS);
}

extern "C" __global__ void __launch_bounds__(MB_CONV_THREADS)
conv2d_direct_f16(const __half* __restrict__ x, const __half* __restrict__ w,
                  const __half* __restrict__ b, __half* __restrict__ y, MB_GEOM_PARAMS) {
    direct_body<__half>(x, w, b, y, MB_GEOM_ARGS);
}

// -- implicit GEMM --------------------------------------------------------------------------
// Per group g (blockIdx.z) the layer is the GEMM
//   Y_g (M x Kg) = A (M x Kgemm) @ B_g (Kgemm x Kg),  M = N*P*Q, Kgemm = Cg*R*S
//   A[m, kk] = x[n, g*Cg + c, p*sh - ph + r*dh, q*sw - pw + s*dw]  (0 outside the input)
//     with m = (n*P + p)*Q + q and kk = (c*R + r)*S + s
//   B_g[kk, j] = w[g*Kg + j, c, r, s] = w_flat[(g*Kg + j)*Kgemm + kk]   (KCRS: rows contiguous)
//   y[n, g*Kg + j, p, q] = Y_g[m, j] + b[g*Kg + j]
// A is never stored: each BK-slice of a BM-row tile is gathered from x into shared memory.
// Block: BM x BN outputs, 256 threads, (BM/16) x (BN/16) per thread (4x4 for the 64x64 tile,
// 8x8 for 128x128).  Loads (idx = tid + i*256, i < BM*BK/256):
//   A slot  ml = idx % BM (= tid % BM), kl = idx / BM: consecutive threads, consecutive pixels;
//           the slot's (c, r, s) is carried from slice to slice (no division in the loop)
//   B slot  kl = idx % BK, jl = idx / BK: consecutive threads, consecutive filter taps
// Compute: thread (tm = tid % 16, tn = tid / 16) owns rows tm + 16*i, columns 64*jg + tn*4 + j, so a
// warp's 16 tm read 16 consecutive A words (no bank conflict), its 2 tn read broadcast float4s of
// B, and each output store covers 16 consecutive pixels.  Shared memory is double-buffered: the
// next slice is fetched into registers while the current one is multiplied (one barrier a slice).
template <typename T, int BM, int BN, int BK>
__device__ __forceinline__ void implicit_gemm_body(const T* __restrict__ x, const T* __restrict__ w,
                                                   const T* __restrict__ b, T* __restrict__ y,
                                                   MB_GEOM_PARAMS) {
    constexpr int NT = MB_CONV_THREADS;
    constexpr int A_PER = BM * BK / NT, B_PER = BN * BK / NT;
    constexpr int TM = BM / 16, TN4 = BN / 64;       // rows, float4 column groups per thread
    static_assert(NT == 256, "compute mapping: 16 x 16 threads");
    static_assert(NT % BM == 0, "an A slot's row must not depend on i");
    static_assert(BM * BK % NT == 0 && BN * BK % NT == 0, "whole tiles per thread");
    static_assert(BM % 16 == 0 && BN % 64 == 0, "16 row groups, 64-column groups");
    __shared__ float As[2][BK][BM];
    __shared__ __align__(16) float Bs[2][BK][BN + MB_CONV_BN_PAD];

    const int tid = threadIdx.x;
    const int g = blockIdx.z;
    const int Cg = C / G, Kg = K / G, RS = R * S, Kgemm = Cg * RS;
    const int M = N * P * Q;
    const int m0 = blockIdx.x * BM, j0 = blockIdx.y * BN;

    // This thread's A row (fixed over the whole reduction): pixel (n, p, q).
    const int am = m0 + tid % BM;
    const bool a_row_ok = am < M;
    int a_h0 = 0, a_w0 = 0;
    const T* xg = x;
    if (a_row_ok) {
        const int q = am % Q, t = am / Q;
        const int p = t % P, n = t / P;
        a_h0 = p * sh - ph;
        a_w0 = q * sw - pw;
        xg = x + ((long long)n * C + (long long)g * Cg) * H * W;
    }
    const T* wg = w + (long long)g * Kg * Kgemm;

    // Reduction coordinates (c, r, s) of this thread's A slots, kk = tid/BM + i*(NT/BM) + k0:
    // divided out once here, then advanced by BK per slice with one carry per digit
    // (BK = dC*RS + dR*S + dS with dS < S, dR < R), so the gather has no division.
    int a_c[A_PER], a_r[A_PER], a_s[A_PER];
#pragma unroll
    for (int i = 0; i < A_PER; ++i) {
        const int kk = tid / BM + i * (NT / BM);
        a_c[i] = kk / RS;
        const int rs = kk - a_c[i] * RS;
        a_r[i] = rs / S;
        a_s[i] = rs - a_r[i] * S;
    }
    const int dC = BK / RS, dR = (BK % RS) / S, dS = BK % S;

    float ra[A_PER], rb[B_PER];
    auto fetch = [&](int k0) {
#pragma unroll
        for (int i = 0; i < A_PER; ++i) {
            float v = 0.0f;
            if (a_row_ok && a_c[i] < Cg) {
                const int hi = a_h0 + a_r[i] * dh, wi = a_w0 + a_s[i] * dw;
                if (hi >= 0 && hi < H && wi >= 0 && wi < W)
                    v = mb_load(xg + ((long long)a_c[i] * H + hi) * W + wi);
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
            rb[i] = (kk < Kgemm && j < Kg) ? mb_load(wg + (long long)j * Kgemm + kk) : 0.0f;
        }
    };
    auto stash = [&](int buf) {
#pragma unroll
        for (int i = 0; i < A_PER; ++i) {
            const int idx = tid + i * NT;
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
            const float bias = b ? mb_load(b + k) : 0.0f;
            mb_store(y + ((long long)n * K + k) * PQ + pq, acc[i][j] + bias);
        }
    }
}

extern "C" __global__ void __launch_bounds__(MB_CONV_THREADS, MB_CONV_IGEMM_MIN_BLOCKS)
conv2d_implicit_gemm_f32(const float* __restrict__ x, const float* __restrict__ w,
                         const float* __restrict__ b, float* __restrict__ y, MB_GEOM_PARAMS) {
    implicit_gemm_body<float, MB_CONV_BM, MB_CONV_BN, MB_CONV_BK>(x, w, b, y, MB_GEOM_ARGS);
}

extern "C" __global__ void __launch_bounds__(MB_CONV_THREADS, MB_CONV_IGEMM_MIN_BLOCKS)
conv2d_implicit_gemm_f16(const __half* __restrict__ x, const __half* __restrict__ w,
                         const __half* __restrict__ b, __half* __restrict__ y, MB_GEOM_PARAMS) {
    implicit_gemm_body<__half, MB_CONV_BM, MB_CONV_BN, MB_CONV_BK>(x, w, b, y, MB_GEOM_ARGS);
}

extern "C" __global__ void __launch_bounds__(MB_CONV_THREADS, 1)
conv2d_implicit_gemm128_f32(const float* __restrict__ x, const float* __restrict__ w,
                            const float* __restrict__ b, float* __restrict__ y, MB_GEOM_PARAMS) {
    implicit_gemm_body<float, MB_CONV_BM2, MB_CONV_BN2, MB_CONV_BK2>(x, w, b, y, MB_GEOM_ARGS);
}

extern "C" __global__ void __launch_bounds__(MB_CONV_THREADS, 1)
conv2d_implicit_gemm128_f16(const __half* __restrict__ x, const __half* __restrict__ w,
                            const __half* __restrict__ b, __half* __restrict__ y, MB_GEOM_PARAMS) {
    implicit_gemm_body<__half, MB_CONV_BM2, MB_CONV_BN2, MB_CONV_BK2>(x, w, b, y, MB_GEOM_ARGS);
}

// -- Winograd F(2x2,3x3) -------------------------------------------------------------------
// Lavin & Gray's matrices (correlation form):
//   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]   G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1]
//   A^T = [1 1 1 0; 0 1 -1 -1]
// Tiles: tile t = (n*tP + tp)*tQ + tq, tP = ceil(P/2), tQ = ceil(Q/2), T = N*tP*tQ; its input
// patch is rows tp*2 - ph + 0..3, columns tq*2 - pw + 0..3 (zero outside the input).
// V[uv][c][t] = (B^T d B)[u][v], uv = u*4 + v: the GEMM operand (C x T) of position uv.
__device__ __forceinline__ void wino_bt(float d0, float d1, float d2, float d3, float* o) {
    o[0] = d0 - d2;
    o[1] = d1 + d2;
    o[2] = d2 - d1;
    o[3] = d1 - d3;
}

__device__ __forceinline__ void wino_at(float m0, float m1, float m2, float m3, float* o) {
    o[0] = m0 + m1 + m2;
    o[1] = m1 - m2 - m3;
}

// One thread per (c, t), t fastest: consecutive threads write consecutive V words.
extern "C" __global__ void __launch_bounds__(MB_CONV_THREADS)
conv2d_winograd_input_f32(const float* __restrict__ x, float* __restrict__ V, int N, int C, int H,
                          int W, int ph, int pw, int tP, int tQ) {
    const long long T = (long long)N * tP * tQ;
    const long long total = (long long)C * T;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        const long long t = idx % T;
        const int c = (int)(idx / T);
        const int tq = (int)(t % tQ);
        const int tp = (int)((t / tQ) % tP);
        const int n = (int)(t / ((long long)tQ * tP));
        const int h0 = tp * MB_WINO_M - ph, w0 = tq * MB_WINO_M - pw;
        const float* xc = x + ((long long)n * C + c) * H * W;
        float d[4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int hi = h0 + i, wi = w0 + j;
                d[i][j] = (hi >= 0 && hi < H && wi >= 0 && wi < W) ? xc[(long long)hi * W + wi] : 0.0f;
            }
        float tmp[4][4], v[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {           // columns: B^T d
            wino_bt(d[0][j], d[1][j], d[2][j], d[3][j], v);
#pragma unroll
            for (int u = 0; u < 4; ++u) tmp[u][j] = v[u];
        }
#pragma unroll
        for (int u = 0; u < 4; ++u) {           // rows: (B^T d) B
            wino_bt(tmp[u][0], tmp[u][1], tmp[u][2], tmp[u][3], v);
#pragma unroll
            for (int vv = 0; vv < 4; ++vv) V[(u * 4 + vv) * total + idx] = v[vv];
        }
    }
}

// One thread per (k, t): Y = A^T M A on the 16 values M[uv][k][t], + bias, written where the 2x2
// tile lies inside P x Q (the last tiles of a row or column may be partial).
extern "C" __global__ void __launch_bounds__(MB_CONV_THREADS)
conv2d_winograd_output_f32(const float* __restrict__ Mt, const float* __restrict__ b,
                           float* __restrict__ y, int N, int K, int P, int Q, int tP, int tQ) {
    const long long T = (long long)N * tP * tQ;
    const long long total = (long long)K * T;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        const long long t = idx % T;
        const int k = (int)(idx / T);
        const int tq = (int)(t % tQ);
        const int tp = (int)((t / tQ) % tP);
        const int n = (int)(t / ((long long)tQ * tP));
        float m[4][4];
#pragma unroll
        for (int u = 0; u < 4; ++u)
#pragma unroll
            for (int v = 0; v < 4; ++v) m[u][v] = Mt[(u * 4 + v) * total + idx];
        float tmp[2][4], o[2];
#pragma unroll
        for (int v = 0; v < 4; ++v) {           // columns: A^T M
            wino_at(m[0][v], m[1][v], m[2][v], m[3][v], o);
            tmp[0][v] = o[0];
            tmp[1][v] = o[1];
        }
        const float bias = b ? b[k] : 0.0f;
        float* yk = y + ((long long)n * K + k) * P * Q;
#pragma unroll
        for (int i = 0; i < 2; ++i) {           // rows: (A^T M) A
            wino_at(tmp[i][0], tmp[i][1], tmp[i][2], tmp[i][3], o);
            const int p = tp * MB_WINO_M + i;
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                const int q = tq * MB_WINO_M + j;
                if (p < P && q < Q) yk[(long long)p * Q + q] = o[j] + bias;
            }
        }
    }
}
