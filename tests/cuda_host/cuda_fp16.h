// __half for the host model (tests/cuda_host/mb_host.h): 16-bit storage, float <-> half with
// round-to-nearest-even, overflow to infinity, subnormals and NaN as the GPU converts them.
// Only conversions are provided: half arithmetic in a kernel would not compile here.
#pragma once
#include "mb_host.h"

namespace mbh {
inline uint16_t float_to_half_bits(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint16_t sign = uint16_t((x >> 16) & 0x8000u);
    const uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return uint16_t(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));   // NaN stays NaN
    if (ax >= 0x477ff000u) return uint16_t(sign | 0x7c00u);   // >= 65520 rounds to infinity
    if (ax < 0x38800000u) {                                   // below 2^-14: a subnormal half or 0
        const uint32_t e = ax >> 23;
        if (e < 102) return sign;                             // below 2^-25: rounds to 0
        const uint32_t m = (ax & 0x7fffffu) | 0x800000u;
        const uint32_t shift = 126 - e;                       // units of 2^-24
        uint32_t r = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1u))) ++r;
        return uint16_t(sign | r);
    }
    uint32_t r = (ax >> 13) - (112u << 10);                   // rebias the exponent (127 - 15)
    const uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;   // a carry moves into the exponent
    return uint16_t(sign | r);
}

inline float half_bits_to_float(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16;
    const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    uint32_t x;
    if (e == 0x1f) {
        x = sign | 0x7f800000u | (m << 13);
    } else if (e != 0) {
        x = sign | ((e + 112u) << 23) | (m << 13);
    } else {
        const float v = std::ldexp(float(m), -24);
        std::memcpy(&x, &v, 4);
        x |= sign;
    }
    float f;
    std::memcpy(&f, &x, 4);
    return f;
}
}  // namespace mbh

struct __half {
    uint16_t x;
    __half() = default;
    __half(float f) : x(mbh::float_to_half_bits(f)) {}
};
struct alignas(4) __half2 { __half x, y; };
static_assert(sizeof(__half) == 2 && sizeof(__half2) == 4, "16-bit storage");

inline float __half2float(__half h) { return mbh::half_bits_to_float(h.x); }
inline __half __float2half_rn(float f) { return __half(f); }
inline __half __float2half(float f) { return __half(f); }
inline float2 __half22float2(__half2 h) { return {__half2float(h.x), __half2float(h.y)}; }
inline __half __ushort_as_half(unsigned short u) { __half h; h.x = u; return h; }
inline unsigned short __half_as_ushort(__half h) { return h.x; }

template <> struct mbh::TypeName<__half> { static constexpr const char* value = "float16"; };
template <> struct mbh::TypeName<unsigned short> { static constexpr const char* value = "uint16"; };
