// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// Canonical elementwise math: exp, log, sigmoid, silu, softplus, written once as templates over
// a value type V that is either `float` (the scalar reference) or `xsimd::batch<float, Arch>`.
// The same sequence of IEEE operations runs on every lane of every ISA, so the scalar reference,
// SSE2, AVX2 and AVX-512 produce the same bits. Rules that keep this true:
//   - every product that feeds an addition is an explicit fmadd() (the build must not contract
//     a*b+c on its own: moe's CMake target adds -ffp-contract=off);
//   - fmadd() is a true fused multiply-add on every ISA (emulated lane by lane where the ISA has
//     none, e.g. SSE2);
//   - no approximate instructions (rcp, rsqrt) and no library calls whose result varies by ISA.
// Accuracy: exp and log are within 1 ulp of the correctly rounded result on normal inputs (tested
// against double precision). NaN inputs are not supported (routers reject or sanitise NaN first).

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include <xsimd/xsimd.hpp>

#include "moe/config.hpp"

namespace moe::kernels {

namespace detail {
template <class A>
inline constexpr bool has_hardware_fma =
#if XSIMD_WITH_AVX512F
    std::is_base_of_v<xsimd::avx512f, A> ||
#endif
#if XSIMD_WITH_FMA3_AVX2
    std::is_base_of_v<xsimd::fma3<xsimd::avx2>, A> ||
#endif
#if XSIMD_WITH_FMA3_AVX
    std::is_base_of_v<xsimd::fma3<xsimd::avx>, A> ||
#endif
#if XSIMD_WITH_FMA3_SSE
    std::is_base_of_v<xsimd::fma3<xsimd::sse4_2>, A> ||
#endif
    false;
}  // namespace detail

/// Fused multiply-add `a * b + c` with one rounding, on every ISA.
MOE_FORCEINLINE float fmadd(float a, float b, float c) noexcept { return std::fma(a, b, c); }

template <class A>
MOE_FORCEINLINE xsimd::batch<float, A> fmadd(const xsimd::batch<float, A>& a,
                                             const xsimd::batch<float, A>& b,
                                             const xsimd::batch<float, A>& c) noexcept {
#if XSIMD_WITH_AVX512F
  if constexpr (std::is_base_of_v<xsimd::avx512f, A>) {
    return _mm512_fmadd_ps(a, b, c);
  } else
#endif
  if constexpr (detail::has_hardware_fma<A>) {
    return xsimd::fma(a, b, c);
  } else {
    alignas(64) float av[xsimd::batch<float, A>::size], bv[xsimd::batch<float, A>::size],
        cv[xsimd::batch<float, A>::size];
    a.store_aligned(av);
    b.store_aligned(bv);
    c.store_aligned(cv);
    for (std::size_t i = 0; i < xsimd::batch<float, A>::size; ++i) av[i] = std::fma(av[i], bv[i], cv[i]);
    return xsimd::batch<float, A>::load_aligned(av);
  }
}

namespace detail {
// Small overload set so the canonical functions read the same for float and batches.
MOE_FORCEINLINE float vselect(bool m, float a, float b) noexcept { return m ? a : b; }
template <class A>
MOE_FORCEINLINE xsimd::batch<float, A> vselect(const xsimd::batch_bool<float, A>& m,
                                               const xsimd::batch<float, A>& a,
                                               const xsimd::batch<float, A>& b) noexcept {
  return xsimd::select(m, a, b);
}
MOE_FORCEINLINE float vfloor(float x) noexcept { return std::floor(x); }
template <class A>
MOE_FORCEINLINE xsimd::batch<float, A> vfloor(const xsimd::batch<float, A>& x) noexcept {
  return xsimd::floor(x);
}
MOE_FORCEINLINE float vabs(float x) noexcept { return std::fabs(x); }
template <class A>
MOE_FORCEINLINE xsimd::batch<float, A> vabs(const xsimd::batch<float, A>& x) noexcept {
  return xsimd::abs(x);
}
MOE_FORCEINLINE float vmin(float a, float b) noexcept { return a < b ? a : b; }
MOE_FORCEINLINE float vmax(float a, float b) noexcept { return a > b ? a : b; }
template <class A>
MOE_FORCEINLINE xsimd::batch<float, A> vmin(const xsimd::batch<float, A>& a,
                                            const xsimd::batch<float, A>& b) noexcept {
  return xsimd::select(a < b, a, b);
}
template <class A>
MOE_FORCEINLINE xsimd::batch<float, A> vmax(const xsimd::batch<float, A>& a,
                                            const xsimd::batch<float, A>& b) noexcept {
  return xsimd::select(a > b, a, b);
}
MOE_FORCEINLINE float vsqrt(float x) noexcept { return std::sqrt(x); }
template <class A>
MOE_FORCEINLINE xsimd::batch<float, A> vsqrt(const xsimd::batch<float, A>& x) noexcept {
  return xsimd::sqrt(x);
}

// 2^n for integral-valued n in [-126, 127], built from the exponent bits.
MOE_FORCEINLINE float pow2i(float n) noexcept {
  return std::bit_cast<float>(static_cast<std::int32_t>((static_cast<std::int32_t>(n) + 127) << 23));
}
template <class A>
MOE_FORCEINLINE xsimd::batch<float, A> pow2i(const xsimd::batch<float, A>& n) noexcept {
  using ib = xsimd::batch<std::int32_t, A>;
  const ib e = (xsimd::to_int(n) + ib(127)) << 23;
  return xsimd::bitwise_cast<xsimd::batch<float, A>>(e);
}

// Splits positive normal x into mantissa m in [1, 2) and exponent e (as float).
MOE_FORCEINLINE void split_exponent(float x, float& m, float& e) noexcept {
  const auto bits = std::bit_cast<std::int32_t>(x);
  e = static_cast<float>((bits >> 23) - 127);
  m = std::bit_cast<float>((bits & 0x007fffff) | 0x3f800000);
}
template <class A>
MOE_FORCEINLINE void split_exponent(const xsimd::batch<float, A>& x, xsimd::batch<float, A>& m,
                                    xsimd::batch<float, A>& e) noexcept {
  using ib = xsimd::batch<std::int32_t, A>;
  const ib bits = xsimd::bitwise_cast<ib>(x);
  e = xsimd::to_float((bits >> 23) - ib(127));
  m = xsimd::bitwise_cast<xsimd::batch<float, A>>((bits & ib(0x007fffff)) | ib(0x3f800000));
}
}  // namespace detail

/// e^x. exp(-inf) = 0, exp(+inf) = +inf, overflow to +inf above ln(FLT_MAX); results below
/// FLT_MIN (x < ln(FLT_MIN) ≈ -87.34) are 0: subnormal results would only cost time (x86 runs
/// subnormal arithmetic in microcode) and never matter for routing.
template <class V>
MOE_FORCEINLINE V exp(const V& x) noexcept {
  const V hi(88.72283935546875f);    // above it the result overflows to +inf
  const V lo(-87.3365f);             // just above ln(FLT_MIN): below it the result is 0
  const V xc = detail::vmax(detail::vmin(x, hi), lo);
  // n = round(x / ln2); r = x - n ln2 in two steps (Cody-Waite).
  const V n = detail::vfloor(moe::kernels::fmadd(xc, V(1.44269504088896341f), V(0.5f)));
  V r = moe::kernels::fmadd(n, V(-0.693359375f), xc);
  r = moe::kernels::fmadd(n, V(2.12194440e-4f), r);
  // e^r on [-ln2/2, ln2/2] (Cephes expf polynomial), Horner with fused steps.
  V p(1.9875691500e-4f);
  p = moe::kernels::fmadd(p, r, V(1.3981999507e-3f));
  p = moe::kernels::fmadd(p, r, V(8.3334519073e-3f));
  p = moe::kernels::fmadd(p, r, V(4.1665795894e-2f));
  p = moe::kernels::fmadd(p, r, V(1.6666665459e-1f));
  p = moe::kernels::fmadd(p, r, V(5.0000001201e-1f));
  const V r2 = r * r;
  p = moe::kernels::fmadd(p, r2, r);
  p = p + V(1.0f);
  // Scale by 2^n in two factors (n in [-127, 128] exceeds one exponent field).
  const V n1 = detail::vfloor(n * V(0.5f));
  const V n2 = n - n1;
  V y = (p * detail::pow2i(n1)) * detail::pow2i(n2);
  y = detail::vselect(x > hi, V(std::numeric_limits<float>::infinity()), y);
  y = detail::vselect(x < lo, V(0.0f), y);
  return y;
}

/// Natural logarithm for x >= 0: log(0) = -inf, log(+inf) = +inf. Subnormal inputs are treated
/// as 0 (their logarithm is below -87.3 and never matters for routing).
template <class V>
MOE_FORCEINLINE V log(const V& x) noexcept {
  V m, e;
  detail::split_exponent(x, m, e);
  // Move m into [sqrt(1/2), sqrt(2)).
  const auto big = m > V(1.41421356237f);
  m = detail::vselect(big, m * V(0.5f), m);
  e = detail::vselect(big, e + V(1.0f), e);
  const V f = m - V(1.0f);
  // log(1 + f) = f - f^2/2 + f^3 P(f) (Cephes logf polynomial).
  V p(7.0376836292e-2f);
  p = moe::kernels::fmadd(p, f, V(-1.1514610310e-1f));
  p = moe::kernels::fmadd(p, f, V(1.1676998740e-1f));
  p = moe::kernels::fmadd(p, f, V(-1.2420140846e-1f));
  p = moe::kernels::fmadd(p, f, V(1.4249322787e-1f));
  p = moe::kernels::fmadd(p, f, V(-1.6668057665e-1f));
  p = moe::kernels::fmadd(p, f, V(2.0000714765e-1f));
  p = moe::kernels::fmadd(p, f, V(-2.4999993993e-1f));
  p = moe::kernels::fmadd(p, f, V(3.3333331174e-1f));
  const V f2 = f * f;
  V y = (p * f) * f2;                                       // f^3 P(f)
  y = moe::kernels::fmadd(e, V(-2.12194440e-4f), y);        // + e * ln2_lo
  y = moe::kernels::fmadd(f2, V(-0.5f), y);                 // - f^2 / 2
  V r = f + y;
  r = moe::kernels::fmadd(e, V(0.693359375f), r);           // + e * ln2_hi
  const V inf(std::numeric_limits<float>::infinity());
  r = detail::vselect(x < V(std::numeric_limits<float>::min()), -inf, r);
  r = detail::vselect(x == inf, inf, r);
  return r;
}

/// Logistic sigmoid 1 / (1 + e^-x), evaluated as 1/(1+e^-x) for x >= 0 and e^x/(1+e^x) for x < 0.
/// sigmoid(+inf) = 1, sigmoid(-inf) = 0.
template <class V>
MOE_FORCEINLINE V sigmoid(const V& x) noexcept {
  const V e = moe::kernels::exp(V(0.0f) - detail::vabs(x));
  const V s = V(1.0f) / (V(1.0f) + e);
  return detail::vselect(x >= V(0.0f), s, e * s);
}

/// SiLU x * sigmoid(x) (the SwiGLU activation).
template <class V>
MOE_FORCEINLINE V silu(const V& x) noexcept {
  return x * moe::kernels::sigmoid(x);
}

/// log(1 + u) for u >= 0, accurate for small u: log(w) · u / (w - 1) with w = 1 + u (exact
/// correction of the rounding of w), and u itself where w rounds to 1.
template <class V>
MOE_FORCEINLINE V log1p(const V& u) noexcept {
  const V w = V(1.0f) + u;
  const V wm1 = w - V(1.0f);
  const V l = moe::kernels::log(w);
  const V safe = detail::vselect(wm1 == V(0.0f), V(1.0f), wm1);
  return detail::vselect(wm1 == V(0.0f), u, l * (u / safe));
}

/// softplus(x) = log(1 + e^x), stable for large |x|: max(x, 0) + log1p(e^-|x|).
template <class V>
MOE_FORCEINLINE V softplus(const V& x) noexcept {
  const V e = moe::kernels::exp(V(0.0f) - detail::vabs(x));
  const V l = moe::kernels::log1p(e);
  const V y = detail::vmax(x, V(0.0f)) + l;
  return detail::vselect(x == V(std::numeric_limits<float>::infinity()), x, y);
}

}  // namespace moe::kernels
