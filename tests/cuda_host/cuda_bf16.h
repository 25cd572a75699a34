// __nv_bfloat16 for the host model (tests/cuda_host/mb_host.h): 16-bit storage, the upper half of
// a float, rounded to nearest even (NaN kept quiet).  Conversions only, as cuda_fp16.h here.
#pragma once
#include "mb_host.h"

namespace mbh {
inline uint16_t float_to_bf16_bits(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t((x >> 16) | 0x40u);
    x += 0x7fffu + ((x >> 16) & 1u);
    return uint16_t(x >> 16);
}
inline float bf16_bits_to_float(uint16_t h) {
    const uint32_t x = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &x, 4);
    return f;
}
}  // namespace mbh

struct __nv_bfloat16 {
    uint16_t x;
    __nv_bfloat16() = default;
    __nv_bfloat16(float f) : x(mbh::float_to_bf16_bits(f)) {}
};
struct alignas(4) __nv_bfloat162 { __nv_bfloat16 x, y; };
static_assert(sizeof(__nv_bfloat16) == 2 && sizeof(__nv_bfloat162) == 4, "16-bit storage");

inline float __bfloat162float(__nv_bfloat16 h) { return mbh::bf16_bits_to_float(h.x); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline float2 __bfloat1622float2(__nv_bfloat162 h) { return {__bfloat162float(h.x), __bfloat162float(h.y)}; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { __nv_bfloat16 h; h.x = u; return h; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.x; }

template <> struct mbh::TypeName<__nv_bfloat16> { static constexpr const char* value = "bfloat16"; };
