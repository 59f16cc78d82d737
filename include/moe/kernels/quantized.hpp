// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// Kernels of quantized expert weights (docs/numerics.md §10): `y = W · x` for W in a block format
// (moe::formats::q8_0, q4_0, mxfp4, q4_k, q6_k) and fp32 x.
//
// Activations are quantized per token row in blocks of 32 (`quantize_activation`):
//     dx_b = max|x| / 127,  qx_i = round(x_i / dx_b) (ties away from zero, int8), and the sums
//     of qx over each 16 values.
// Weights are repacked once into panels of 16 output rows (`quant_panels`), each row's values in
// kernel groups of G values (G = 32, or 16 for Q6_K) with unsigned codes c and exact group
// coefficients: the value of a weight is `a_g · (c - o) + b_g` with the format's offset o
// (Q8_0 128, Q4_0 8, MXFP4 12 on doubled codes, Q4_K 0, Q6_K 32), `a_g` its scale
// (Q8_0/Q4_0: d; MXFP4: 2^(e - 128); Q4_K: d·sc; Q6_K: d·sc) and `b_g` Q4_K's `-dmin·m` (0 else).
// Every output element is computed the same way, whatever the batch, the thread or the ISA:
//     acc = 0
//     for each group g, in order:
//         s   = Σ_i c_i · qx_i  - o · Σ_i qx_i          (exact, int32)
//         acc = fma(a_g · dx_g, float(s), acc)
//         acc = fma(b_g · dx_g, float(Σ_i qx_i), acc)   (formats with b only)
// The integer sums are exact and the float steps are the same sequence on every lane, so the
// AVX-512 VNNI kernel (16 rows per register, `vpdpbusd`) and the AVX2 kernel (8 rows per
// register, `vpmaddubsw` + `vpmaddwd`, products that cannot saturate int16) equal the scalar
// kernel bit for bit, and a token's output does not depend on the other tokens or the thread
// count.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>
#define MOE_QUANT_VNNI 1
#else
#define MOE_QUANT_VNNI 0
#endif
#if !MOE_QUANT_VNNI && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define MOE_QUANT_AVX2 1
#else
#define MOE_QUANT_AVX2 0
#endif

#include <xsimd/xsimd.hpp>

#include "moe/config.hpp"
#include "moe/core/f16.hpp"
#include "moe/core/workspace.hpp"
#include "moe/formats/format.hpp"
#include "moe/formats/mxfp4.hpp"
#include "moe/formats/q4_0.hpp"
#include "moe/formats/q4_k.hpp"
#include "moe/formats/q6_k.hpp"
#include "moe/formats/q8_0.hpp"

namespace moe::kernels::quant {

/// Output rows per panel (one AVX-512 register of lanes).
inline constexpr index panel_rows = 16;

/// How a format's groups are coded in panels.
enum class param_kind {
  f16_scale,    ///< per group and row: the fp16 scale (a = d)
  e8m0_scale,   ///< per group and row: the E8M0 exponent (a = 2^(e - 128), codes doubled)
  u8_scale_min, ///< per group and row: 6-bit sc and m; per super-block and row: fp16 d, dmin
  i8_scale,     ///< per group and row: int8 sc; per super-block and row: fp16 d
};

template <block_format F>
struct traits;

template <>
struct traits<formats::q8_0> {
  static constexpr index group = 32;
  static constexpr int bits = 8;
  static constexpr int offset = 128;
  static constexpr param_kind params = param_kind::f16_scale;
  static constexpr bool lut = false;
};
template <>
struct traits<formats::q4_0> {
  static constexpr index group = 32;
  static constexpr int bits = 4;
  static constexpr int offset = 8;
  static constexpr param_kind params = param_kind::f16_scale;
  static constexpr bool lut = false;
};
template <>
struct traits<formats::mxfp4> {
  static constexpr index group = 32;
  static constexpr int bits = 4;
  static constexpr int offset = 12;
  static constexpr param_kind params = param_kind::e8m0_scale;
  static constexpr bool lut = true;  // code -> doubled E2M1 value + 12, in [0, 24]
};
template <>
struct traits<formats::q4_k> {
  static constexpr index group = 32;
  static constexpr int bits = 4;
  static constexpr int offset = 0;
  static constexpr param_kind params = param_kind::u8_scale_min;
  static constexpr bool lut = false;
};
template <>
struct traits<formats::q6_k> {
  static constexpr index group = 16;
  static constexpr int bits = 8;
  static constexpr int offset = 32;
  static constexpr param_kind params = param_kind::i8_scale;
  static constexpr bool lut = false;
};

/// The MXFP4 code -> doubled E2M1 value + 12 table (unsigned, for vpdpbusd).
inline constexpr std::uint8_t mxfp4_lut[16] = {12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0};

template <block_format F>
constexpr bool has_super = traits<F>::params == param_kind::u8_scale_min || traits<F>::params == param_kind::i8_scale;
template <block_format F>
constexpr index groups_per_super = F::block_values / traits<F>::group;

/// Bytes of codes of one group of one panel.
template <block_format F>
constexpr std::size_t code_bytes = static_cast<std::size_t>(panel_rows * traits<F>::group * traits<F>::bits / 8);
/// Bytes of per-group parameters of one panel.
template <block_format F>
constexpr std::size_t param_bytes = traits<F>::params == param_kind::f16_scale  ? panel_rows * 2
                                    : traits<F>::params == param_kind::e8m0_scale ? panel_rows
                                    : traits<F>::params == param_kind::u8_scale_min ? panel_rows * 2
                                                                                   : panel_rows;
template <block_format F>
constexpr std::size_t group_bytes = code_bytes<F> + param_bytes<F>;
/// Bytes of per-super-block parameters of one panel (fp16 d, and dmin for Q4_K).
template <block_format F>
constexpr std::size_t super_bytes = traits<F>::params == param_kind::u8_scale_min ? panel_rows * 4
                                    : traits<F>::params == param_kind::i8_scale    ? panel_rows * 2
                                                                                   : 0;

/// Weights `[n × k]` of format F repacked into panels of 16 rows (see the header comment).
template <block_format F>
struct quant_panels {
  index n = 0;       ///< output rows
  index k = 0;       ///< inputs (a multiple of the format's block after padding)
  index panels = 0;  ///< ceil(n / 16)
  index groups = 0;  ///< kernel groups per row
  index supers = 0;  ///< super-blocks per row (K-quants), else 0
  aligned_buffer<std::byte> data;   ///< [panels][groups] × group_bytes
  aligned_buffer<std::byte> super;  ///< [panels][supers] × super_bytes

  [[nodiscard]] const std::byte* group_ptr(index p, index g) const noexcept {
    return data.data() + (static_cast<std::size_t>(p * groups + g)) * group_bytes<F>;
  }
  [[nodiscard]] const std::byte* super_ptr(index p, index s) const noexcept {
    return super.data() + (static_cast<std::size_t>(p * supers + s)) * super_bytes<F>;
  }
  /// Bytes read by one pass over the matrix.
  [[nodiscard]] std::size_t bytes() const noexcept { return data.size() + super.size(); }
};

namespace detail {

// Position of code (row r, element i of the group) inside a group's code bytes, and for 4-bit
// codes whether it is the high nibble.
template <block_format F>
constexpr std::size_t code_pos(index r, index i, bool& high) noexcept {
  if constexpr (traits<F>::bits == 8) {
    high = false;
    return static_cast<std::size_t>((i / 4) * 64 + 4 * r + i % 4);
  } else {
    high = (i % 8) >= 4;
    return static_cast<std::size_t>((i / 8) * 64 + 4 * r + i % 4);
  }
}

// Decodes one block of row r into the panel: codes, group params and super params.
template <block_format F>
void pack_block(const typename F::block& b, index r, std::byte* group0, std::byte* super_p) noexcept {
  using T = traits<F>;
  constexpr index G = T::group;
  constexpr index ng = F::block_values / G;
  std::uint8_t codes[F::block_values];
  if constexpr (std::is_same_v<F, formats::q8_0>) {
    for (index i = 0; i < 32; ++i) codes[i] = static_cast<std::uint8_t>(b.qs[i] + 128);
    std::memcpy(group0 + code_bytes<F> + 2 * r, &b.d, 2);
  } else if constexpr (std::is_same_v<F, formats::q4_0> || std::is_same_v<F, formats::mxfp4>) {
    for (index j = 0; j < 16; ++j) {
      codes[j] = b.qs[j] & 0x0f;
      codes[j + 16] = b.qs[j] >> 4;
    }
    if constexpr (std::is_same_v<F, formats::q4_0>) {
      std::memcpy(group0 + code_bytes<F> + 2 * r, &b.d, 2);
    } else {
      std::memcpy(group0 + code_bytes<F> + r, &b.e, 1);
    }
  } else if constexpr (std::is_same_v<F, formats::q4_k>) {
    for (index k = 0; k < 4; ++k) {
      for (index l = 0; l < 32; ++l) {
        codes[64 * k + l] = b.qs[32 * k + l] & 0x0f;
        codes[64 * k + 32 + l] = b.qs[32 * k + l] >> 4;
      }
    }
    for (index j = 0; j < 8; ++j) {
      std::uint8_t sc, m;
      formats::q4_k::scale_min(b.scales, j, sc, m);
      std::byte* g = group0 + static_cast<std::size_t>(j) * group_bytes<F> + code_bytes<F>;
      std::memcpy(g + r, &sc, 1);
      std::memcpy(g + panel_rows + r, &m, 1);
    }
    std::memcpy(super_p + 2 * r, &b.d, 2);
    std::memcpy(super_p + 2 * panel_rows + 2 * r, &b.dmin, 2);
  } else {  // q6_k
    for (index h = 0; h < 2; ++h) {
      const std::uint8_t* ql = b.ql + 64 * h;
      const std::uint8_t* qh = b.qh + 32 * h;
      std::uint8_t* c = codes + 128 * h;
      for (index l = 0; l < 32; ++l) {
        c[l] = static_cast<std::uint8_t>((ql[l] & 0x0f) | (((qh[l] >> 0) & 3) << 4));
        c[l + 32] = static_cast<std::uint8_t>((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4));
        c[l + 64] = static_cast<std::uint8_t>((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4));
        c[l + 96] = static_cast<std::uint8_t>((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4));
      }
    }
    for (index j = 0; j < 16; ++j) {
      std::byte* g = group0 + static_cast<std::size_t>(j) * group_bytes<F> + code_bytes<F>;
      std::memcpy(g + r, &b.scales[j], 1);
    }
    std::memcpy(super_p + 2 * r, &b.d, 2);
  }
  for (index g = 0; g < ng; ++g) {
    auto* dst = reinterpret_cast<std::uint8_t*>(group0 + static_cast<std::size_t>(g) * group_bytes<F>);
    for (index i = 0; i < G; ++i) {
      bool high = false;
      const std::size_t pos = code_pos<F>(r, i, high);
      const std::uint8_t c = codes[g * G + i];
      if constexpr (traits<F>::bits == 8) {
        dst[pos] = c;
      } else {
        dst[pos] = static_cast<std::uint8_t>(high ? (dst[pos] & 0x0f) | (c << 4) : (dst[pos] & 0xf0) | c);
      }
    }
  }
}

}  // namespace detail

/// Repacks `n` rows of `k` values given as F's bytes (`n · row_bytes(k)` bytes, k a multiple of
/// the block) into panels. Rows past n are zero (their coefficients 0).
template <block_format F>
quant_panels<F> pack(const std::byte* rows, index n, index k) {
  quant_panels<F> q;
  q.n = n;
  q.k = k;
  q.panels = (n + panel_rows - 1) / panel_rows;
  q.groups = k / traits<F>::group;
  q.supers = has_super<F> ? k / F::block_values : 0;
  q.data = aligned_buffer<std::byte>(std::max<std::size_t>(static_cast<std::size_t>(q.panels * q.groups) * group_bytes<F>, 1));
  std::memset(q.data.data(), 0, q.data.size());
  if constexpr (has_super<F>) {
    q.super = aligned_buffer<std::byte>(std::max<std::size_t>(static_cast<std::size_t>(q.panels * q.supers) * super_bytes<F>, 1));
    std::memset(q.super.data(), 0, q.super.size());
  }
  // Rows past n keep zero bytes: their codes and coefficients give outputs nobody reads.
  const index nb = k / F::block_values;
  for (index row = 0; row < n; ++row) {
    const index p = row / panel_rows, r = row % panel_rows;
    for (index b = 0; b < nb; ++b) {
      const auto blk = formats::load_block<F>(rows, row * nb + b);
      std::byte* group0 = q.data.data() + static_cast<std::size_t>(p * q.groups + b * groups_per_super<F>) * group_bytes<F>;
      std::byte* sp = has_super<F> ? q.super.data() + static_cast<std::size_t>(p * q.supers + b) * super_bytes<F> : nullptr;
      detail::pack_block<F>(blk, r, group0, sp);
    }
  }
  return q;
}

/// Activation rows quantized for the kernels: per row `kp` int8 values (kp = k rounded up to 32),
/// `kp / 32` scales and `kp / 16` sums.
struct quantized_rows {
  const std::int8_t* q = nullptr;
  const float* dx = nullptr;
  const std::int32_t* sums16 = nullptr;
  index kp = 0;
};

/// Bytes of scratch that quantize_activation() needs for `rows` rows padded to `kp` values.
constexpr std::size_t activation_bytes(index rows, index kp_in) noexcept {
  const auto kp = static_cast<std::size_t>((kp_in + 31) / 32 * 32);
  return static_cast<std::size_t>(rows) * (kp + kp / 32 * sizeof(float) + kp / 16 * sizeof(std::int32_t)) + 3 * 64;
}

/// Quantizes `rows` rows (pointers x[i], k floats each) into `scratch` (activation_bytes(rows,
/// kp) bytes), zero-padded to `kp` values (the weights' padded row length, a multiple of 32).
/// Activations must be finite (moe::layer refuses others by default): a NaN or inf gives an
/// unspecified output row, never undefined behaviour.
inline quantized_rows quantize_activation(const float* const* x, index rows, index k, index kp, void* scratch) noexcept {
  const index nb = kp / 32;
  auto* base = static_cast<std::byte*>(scratch);
  auto align = [](std::byte* p) {
    return reinterpret_cast<std::byte*>((reinterpret_cast<std::uintptr_t>(p) + 63) / 64 * 64);
  };
  auto* q = reinterpret_cast<std::int8_t*>(align(base));
  auto* dx = reinterpret_cast<float*>(align(reinterpret_cast<std::byte*>(q + rows * kp)));
  auto* s16 = reinterpret_cast<std::int32_t*>(align(reinterpret_cast<std::byte*>(dx + rows * nb)));
  using batch = xsimd::batch<float>;
  constexpr index L = static_cast<index>(batch::size);
  for (index i = 0; i < rows; ++i) {
    const float* xi = x[i];
    for (index b = 0; b < nb; ++b) {
      const index c0 = b * 32, n = std::clamp<index>(k - c0, 0, 32);
      if constexpr (L <= 32 && 32 % L == 0) {
        if (n == 32) {  // whole block: the same operations, L lanes at a time (bitwise the same)
          batch amax_v(0.0f);
          for (index j = 0; j < 32; j += L) amax_v = xsimd::max(amax_v, xsimd::abs(batch::load_unaligned(xi + c0 + j)));
          alignas(64) float lanes[L];
          amax_v.store_aligned(lanes);
          float amax = 0.0f;
          for (index j = 0; j < L; ++j) amax = std::max(amax, lanes[j]);
          const float d = amax / 127.0f;
          dx[i * nb + b] = d;
          std::int8_t* qb = q + i * kp + c0;
          alignas(64) float tmp[32];
          for (index j = 0; j < 32; j += L) {
            const batch v = d > 0.0f ? xsimd::round(batch::load_unaligned(xi + c0 + j) / batch(d)) : batch(0.0f);
            xsimd::clip(v, batch(-127.0f), batch(127.0f)).store_aligned(tmp + j);
          }
          std::int32_t s0 = 0, s1 = 0;
          for (index j = 0; j < 32; ++j) {
            qb[j] = tmp[j] == tmp[j] ? static_cast<std::int8_t>(tmp[j]) : std::int8_t{0};  // (NaN: 0, no UB)
            (j < 16 ? s0 : s1) += qb[j];
          }
          s16[i * 2 * nb + 2 * b] = s0;
          s16[i * 2 * nb + 2 * b + 1] = s1;
          continue;
        }
      }
      float amax = 0.0f;
      for (index j = 0; j < n; ++j) amax = std::max(amax, std::abs(xi[c0 + j]));
      const float d = amax / 127.0f;
      dx[i * nb + b] = d;
      std::int8_t* qb = q + i * kp + c0;
      std::int32_t s0 = 0, s1 = 0;
      for (index j = 0; j < 32; ++j) {
        const float v = j < n && d > 0.0f ? std::round(xi[c0 + j] / d) : 0.0f;
        qb[j] = v == v ? static_cast<std::int8_t>(std::clamp(v, -127.0f, 127.0f)) : std::int8_t{0};  // (NaN: 0, no UB)
        (j < 16 ? s0 : s1) += qb[j];
      }
      s16[i * 2 * nb + 2 * b] = s0;
      s16[i * 2 * nb + 2 * b + 1] = s1;
    }
  }
  return {q, dx, s16, kp};
}

namespace detail {

// Group coefficients of row r (scalar): a (scale) and b (min term).
template <block_format F>
void group_coeffs(const quant_panels<F>& w, index p, index g, index r, float& a, float& b) noexcept {
  const std::byte* prm = w.group_ptr(p, g) + code_bytes<F>;
  b = 0.0f;
  if constexpr (traits<F>::params == param_kind::f16_scale) {
    std::uint16_t h;
    std::memcpy(&h, prm + 2 * r, 2);
    a = f16::to_float(h);
  } else if constexpr (traits<F>::params == param_kind::e8m0_scale) {
    const auto e = static_cast<int>(std::to_integer<std::uint8_t>(prm[r]));
    a = std::ldexp(1.0f, e - 128);
  } else {
    const std::byte* sp = w.super_ptr(p, g / groups_per_super<F>);
    std::uint16_t h;
    std::memcpy(&h, sp + 2 * r, 2);
    const float d = f16::to_float(h);
    if constexpr (traits<F>::params == param_kind::u8_scale_min) {
      std::uint16_t hm;
      std::memcpy(&hm, sp + 2 * panel_rows + 2 * r, 2);
      const float dmin = f16::to_float(hm);
      a = d * static_cast<float>(std::to_integer<std::uint8_t>(prm[r]));
      b = 0.0f - dmin * static_cast<float>(std::to_integer<std::uint8_t>(prm[panel_rows + r]));
    } else {
      a = d * static_cast<float>(static_cast<std::int8_t>(std::to_integer<std::uint8_t>(prm[r])));
    }
  }
}

template <block_format F>
std::uint8_t code_at(const quant_panels<F>& w, index p, index g, index r, index i) noexcept {
  bool high = false;
  const std::size_t pos = code_pos<F>(r, i, high);
  const auto byte = std::to_integer<std::uint8_t>(w.group_ptr(p, g)[pos]);
  std::uint8_t c = traits<F>::bits == 8 ? byte : static_cast<std::uint8_t>(high ? byte >> 4 : byte & 0x0f);
  if constexpr (traits<F>::lut) c = mxfp4_lut[c];
  return c;
}

}  // namespace detail

/// Scalar kernel: `out[i][j] = Σ W[p·16 + j] · x_i` for the rows of panel p (16 outputs per
/// row, rows past n included with value 0), activation row i of `xq`.
template <block_format F>
void panel_scalar(const quant_panels<F>& w, index p, const quantized_rows& xq, index rows, float* out, index ld_out) noexcept {
  using T = traits<F>;
  constexpr index G = T::group;
  const index nb = xq.kp / 32;
  for (index i = 0; i < rows; ++i) {
    const std::int8_t* qx = xq.q + i * xq.kp;
    for (index r = 0; r < panel_rows; ++r) {
      float acc = 0.0f;
      for (index g = 0; g < w.groups; ++g) {
        std::int32_t dot = 0, xs = 0;
        for (index e = 0; e < G; ++e) {
          const std::int32_t q = qx[g * G + e];
          dot += static_cast<std::int32_t>(detail::code_at(w, p, g, r, e)) * q;
          xs += q;
        }
        const std::int32_t s = dot - T::offset * xs;
        float a, b;
        detail::group_coeffs(w, p, g, r, a, b);
        const float dx = xq.dx[i * nb + (g * G) / 32];
        acc = std::fma(a * dx, static_cast<float>(s), acc);
        if constexpr (T::params == param_kind::u8_scale_min) acc = std::fma(b * dx, static_cast<float>(xs), acc);
      }
      out[i * ld_out + r] = acc;
    }
  }
}

#if MOE_QUANT_VNNI
namespace detail {
// The 16 rows' coefficients a (and b) of group g of panel p.
template <block_format F>
MOE_FORCEINLINE void group_coeffs16(const quant_panels<F>& w, index p, index g, const std::byte* prm, __m512& a,
                                    __m512& b) noexcept {
  if constexpr (traits<F>::params == param_kind::f16_scale) {
    a = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(prm)));
  } else if constexpr (traits<F>::params == param_kind::e8m0_scale) {
    const __m512i e = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(prm)));
    // 2^(e - 127) as float bits (e >= 1), 2^-127 (a subnormal) for e = 0; then halved (exact).
    const __m512i bits = _mm512_slli_epi32(e, 23);
    const __mmask16 zero = _mm512_cmpeq_epi32_mask(e, _mm512_setzero_si512());
    const __m512 s = _mm512_mask_blend_ps(zero, _mm512_castsi512_ps(bits), _mm512_castsi512_ps(_mm512_set1_epi32(0x00400000)));
    a = _mm512_mul_ps(s, _mm512_set1_ps(0.5f));
  } else {
    const std::byte* sp = w.super_ptr(p, g / groups_per_super<F>);
    const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sp)));
    if constexpr (traits<F>::params == param_kind::u8_scale_min) {
      const __m512 dmin = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sp + 2 * panel_rows)));
      const __m512 sc = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(prm))));
      const __m512 m = _mm512_cvtepi32_ps(
          _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(prm + panel_rows))));
      a = _mm512_mul_ps(d, sc);
      b = _mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(dmin, m));
    } else {
      const __m512 sc = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(prm))));
      a = _mm512_mul_ps(d, sc);
    }
  }
}
}  // namespace detail

/// AVX-512 VNNI kernel on M (1..4) activation rows: the scalar kernel's arithmetic, 16 output rows
/// per register; the integer sums of a group are split over two accumulators (exact), and M is a
/// compile-time count so that every accumulator stays in a register.
template <block_format F, int M>
MOE_FORCEINLINE void panel_vnni_rows(const quant_panels<F>& w, index p, const quantized_rows& xq, index i0, float* out,
                                     index ld_out) noexcept {
  using T = traits<F>;
  constexpr index G = T::group;
  const index nb = xq.kp / 32;
  const __m512i nib = _mm512_set1_epi8(0x0f);
  const __m512i lut = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(mxfp4_lut)));
  const std::int8_t* qx[M];
  for (int i = 0; i < M; ++i) qx[i] = xq.q + (i0 + i) * xq.kp;
  __m512 acc[M];
  for (int i = 0; i < M; ++i) acc[i] = _mm512_setzero_ps();
  for (index g = 0; g < w.groups; ++g) {
    const std::byte* grp = w.group_ptr(p, g);
    __m512i da[M], db[M];
    for (int i = 0; i < M; ++i) {
      da[i] = _mm512_setzero_si512();
      db[i] = _mm512_setzero_si512();
    }
    const index x0 = g * G;
    if constexpr (T::bits == 8) {
      for (index k = 0; k < G / 4; k += 2) {
        const __m512i c0 = _mm512_loadu_si512(grp + 64 * k);
        const __m512i c1 = _mm512_loadu_si512(grp + 64 * (k + 1));
        for (int i = 0; i < M; ++i) {
          std::int32_t a4, b4;
          std::memcpy(&a4, qx[i] + x0 + 4 * k, 4);
          std::memcpy(&b4, qx[i] + x0 + 4 * k + 4, 4);
          da[i] = _mm512_dpbusd_epi32(da[i], c0, _mm512_set1_epi32(a4));
          db[i] = _mm512_dpbusd_epi32(db[i], c1, _mm512_set1_epi32(b4));
        }
      }
    } else {
      for (index k = 0; k < G / 8; ++k) {
        const __m512i v = _mm512_loadu_si512(grp + 64 * k);
        __m512i lo = _mm512_and_si512(v, nib);
        __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nib);
        if constexpr (T::lut) {
          lo = _mm512_shuffle_epi8(lut, lo);
          hi = _mm512_shuffle_epi8(lut, hi);
        }
        for (int i = 0; i < M; ++i) {
          std::int32_t a4, b4;
          std::memcpy(&a4, qx[i] + x0 + 8 * k, 4);
          std::memcpy(&b4, qx[i] + x0 + 8 * k + 4, 4);
          da[i] = _mm512_dpbusd_epi32(da[i], lo, _mm512_set1_epi32(a4));
          db[i] = _mm512_dpbusd_epi32(db[i], hi, _mm512_set1_epi32(b4));
        }
      }
    }
    __m512 a, b = _mm512_setzero_ps();
    detail::group_coeffs16(w, p, g, grp + code_bytes<F>, a, b);
    for (int i = 0; i < M; ++i) {
      const index row = i0 + i;
      const std::int32_t* s16 = xq.sums16 + row * 2 * nb;
      const std::int32_t xs = G == 32 ? s16[2 * g] + s16[2 * g + 1] : s16[g];
      const __m512i s = _mm512_sub_epi32(_mm512_add_epi32(da[i], db[i]), _mm512_set1_epi32(T::offset * xs));
      const __m512 dx = _mm512_set1_ps(xq.dx[row * nb + (g * G) / 32]);
      acc[i] = _mm512_fmadd_ps(_mm512_mul_ps(a, dx), _mm512_cvtepi32_ps(s), acc[i]);
      if constexpr (T::params == param_kind::u8_scale_min) {
        acc[i] = _mm512_fmadd_ps(_mm512_mul_ps(b, dx), _mm512_set1_ps(static_cast<float>(xs)), acc[i]);
      }
    }
  }
  for (int i = 0; i < M; ++i) _mm512_storeu_ps(out + (i0 + i) * ld_out, acc[i]);
}

/// AVX-512 VNNI kernel: rows in blocks of 4 (the last block of 1-3 rows its own instance).
template <block_format F>
void panel_vnni(const quant_panels<F>& w, index p, const quantized_rows& xq, index rows, float* out, index ld_out) noexcept {
  index i0 = 0;
  for (; i0 + 4 <= rows; i0 += 4) panel_vnni_rows<F, 4>(w, p, xq, i0, out, ld_out);
  switch (rows - i0) {
    case 3: panel_vnni_rows<F, 3>(w, p, xq, i0, out, ld_out); break;
    case 2: panel_vnni_rows<F, 2>(w, p, xq, i0, out, ld_out); break;
    case 1: panel_vnni_rows<F, 1>(w, p, xq, i0, out, ld_out); break;
    default: break;
  }
}
#endif

#if MOE_QUANT_AVX2
namespace detail {
// The coefficients a (and b) of group g for rows 8h..8h+7 of panel p.
template <block_format F>
MOE_FORCEINLINE void group_coeffs8(const quant_panels<F>& w, index p, index g, const std::byte* prm, int h, __m256& a,
                                   __m256& b) noexcept {
  const auto u8x8 = [](const std::byte* at) { return _mm_loadl_epi64(reinterpret_cast<const __m128i*>(at)); };
  const auto f16x8 = [](const std::byte* at) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(at)));
  };
  if constexpr (traits<F>::params == param_kind::f16_scale) {
    a = f16x8(prm + 16 * h);
  } else if constexpr (traits<F>::params == param_kind::e8m0_scale) {
    // 2^(e - 127) as float bits (e >= 1), 2^-127 (a subnormal) for e = 0; then halved (exact).
    const __m256i e = _mm256_cvtepu8_epi32(u8x8(prm + 8 * h));
    const __m256i zero = _mm256_cmpeq_epi32(e, _mm256_setzero_si256());
    const __m256i bits = _mm256_blendv_epi8(_mm256_slli_epi32(e, 23), _mm256_set1_epi32(0x00400000), zero);
    a = _mm256_mul_ps(_mm256_castsi256_ps(bits), _mm256_set1_ps(0.5f));
  } else {
    const std::byte* sp = w.super_ptr(p, g / groups_per_super<F>);
    const __m256 d = f16x8(sp + 16 * h);
    if constexpr (traits<F>::params == param_kind::u8_scale_min) {
      const __m256 dmin = f16x8(sp + 2 * panel_rows + 16 * h);
      const __m256 sc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(u8x8(prm + 8 * h)));
      const __m256 m = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(u8x8(prm + panel_rows + 8 * h)));
      a = _mm256_mul_ps(d, sc);
      b = _mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(dmin, m));
    } else {
      a = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(u8x8(prm + 8 * h))));
    }
  }
}

// Σ over 4 consecutive values of (u8 · s8) per int32 lane, for operands whose vpmaddubsw pairs
// stay within int16 (Q8_0's |w| · sign(q, w): at most 2 · 128 · 127); vpmaddwd adds the pairs.
MOE_FORCEINLINE __m256i dot4(__m256i codes, __m256i q, __m256i ones16) noexcept {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(codes, q), ones16);
}
}  // namespace detail

/// AVX2 kernel on M (1 or 2) activation rows: the scalar kernel's arithmetic, the 16 rows of a
/// panel in two registers of 8. Q8_0's codes (0..255) would saturate vpmaddubsw's pairs, so its
/// sums are taken on the signed values (|w| · sign(q, w), at most 128 · 127 per product), which
/// is the same integer as Σ c·q - 128·Σ q.
template <block_format F, int M>
MOE_FORCEINLINE void panel_avx2_rows(const quant_panels<F>& w, index p, const quantized_rows& xq, index i0, float* out,
                                     index ld_out) noexcept {
  using T = traits<F>;
  constexpr index G = T::group;
  constexpr bool signed_codes = std::is_same_v<F, formats::q8_0>;
  const index nb = xq.kp / 32;
  const __m256i ones16 = _mm256_set1_epi16(1);
  const __m256i nib = _mm256_set1_epi8(0x0f);
  const __m256i lut = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(mxfp4_lut)));
  const std::int8_t* qx[M];
  for (int i = 0; i < M; ++i) qx[i] = xq.q + (i0 + i) * xq.kp;
  __m256 acc[M][2];
  for (int i = 0; i < M; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  const auto bcast4 = [](const std::int8_t* at) {
    std::int32_t v;
    std::memcpy(&v, at, 4);
    return _mm256_set1_epi32(v);
  };
  for (index g = 0; g < w.groups; ++g) {
    const std::byte* grp = w.group_ptr(p, g);
    __m256i s[M][2];
    for (int i = 0; i < M; ++i) s[i][0] = s[i][1] = _mm256_setzero_si256();
    const index x0 = g * G;
    // Byte products summed in int16 before vpmaddwd where they cannot overflow it: four
    // vpmaddubsw results of 4-bit codes (4 · 2 · 24 · 127 = 24384), two of Q6_K's 6-bit codes
    // (2 · 2 · 63 · 127 = 32004); Q8_0's signed pairs (up to 32512) go one at a time.
    if constexpr (signed_codes) {
      for (index k = 0; k < G / 4; ++k) {
        for (int h = 0; h < 2; ++h) {
          const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(grp + 64 * k + 32 * h));
          const __m256i v = _mm256_xor_si256(c, _mm256_set1_epi8(static_cast<char>(0x80)));
          const __m256i av = _mm256_abs_epi8(v);
          for (int i = 0; i < M; ++i) {
            const __m256i q = bcast4(qx[i] + x0 + 4 * k);
            s[i][h] = _mm256_add_epi32(s[i][h], detail::dot4(av, _mm256_sign_epi8(q, v), ones16));
          }
        }
      }
    } else if constexpr (T::bits == 8) {
      static_assert(G / 4 % 2 == 0);
      for (index k = 0; k < G / 4; k += 2) {
        for (int h = 0; h < 2; ++h) {
          const __m256i c0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(grp + 64 * k + 32 * h));
          const __m256i c1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(grp + 64 * (k + 1) + 32 * h));
          for (int i = 0; i < M; ++i) {
            const __m256i t = _mm256_add_epi16(_mm256_maddubs_epi16(c0, bcast4(qx[i] + x0 + 4 * k)),
                                               _mm256_maddubs_epi16(c1, bcast4(qx[i] + x0 + 4 * k + 4)));
            s[i][h] = _mm256_add_epi32(s[i][h], _mm256_madd_epi16(t, ones16));
          }
        }
      }
    } else {
      static_assert(G / 8 % 2 == 0);
      for (index k = 0; k < G / 8; k += 2) {
        for (int h = 0; h < 2; ++h) {
          __m256i lo[2], hi[2];
          for (int j = 0; j < 2; ++j) {
            const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(grp + 64 * (k + j) + 32 * h));
            lo[j] = _mm256_and_si256(v, nib);
            hi[j] = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);
            if constexpr (T::lut) {
              lo[j] = _mm256_shuffle_epi8(lut, lo[j]);
              hi[j] = _mm256_shuffle_epi8(lut, hi[j]);
            }
          }
          for (int i = 0; i < M; ++i) {
            const std::int8_t* q = qx[i] + x0 + 8 * k;
            const __m256i t0 = _mm256_add_epi16(_mm256_maddubs_epi16(lo[0], bcast4(q)), _mm256_maddubs_epi16(hi[0], bcast4(q + 4)));
            const __m256i t1 = _mm256_add_epi16(_mm256_maddubs_epi16(lo[1], bcast4(q + 8)), _mm256_maddubs_epi16(hi[1], bcast4(q + 12)));
            s[i][h] = _mm256_add_epi32(s[i][h], _mm256_madd_epi16(_mm256_add_epi16(t0, t1), ones16));
          }
        }
      }
    }
    for (int h = 0; h < 2; ++h) {
      __m256 a, b = _mm256_setzero_ps();
      detail::group_coeffs8(w, p, g, grp + code_bytes<F>, h, a, b);
      for (int i = 0; i < M; ++i) {
        const index row = i0 + i;
        const std::int32_t* s16 = xq.sums16 + row * 2 * nb;
        const std::int32_t xs = G == 32 ? s16[2 * g] + s16[2 * g + 1] : s16[g];
        const __m256i si = signed_codes ? s[i][h] : _mm256_sub_epi32(s[i][h], _mm256_set1_epi32(T::offset * xs));
        const __m256 dx = _mm256_set1_ps(xq.dx[row * nb + (g * G) / 32]);
        acc[i][h] = _mm256_fmadd_ps(_mm256_mul_ps(a, dx), _mm256_cvtepi32_ps(si), acc[i][h]);
        if constexpr (T::params == param_kind::u8_scale_min) {
          acc[i][h] = _mm256_fmadd_ps(_mm256_mul_ps(b, dx), _mm256_set1_ps(static_cast<float>(xs)), acc[i][h]);
        }
      }
    }
  }
  for (int i = 0; i < M; ++i) {
    for (int h = 0; h < 2; ++h) _mm256_storeu_ps(out + (i0 + i) * ld_out + 8 * h, acc[i][h]);
  }
}

/// AVX2 kernel: rows in pairs (an odd last row its own instance).
template <block_format F>
void panel_avx2(const quant_panels<F>& w, index p, const quantized_rows& xq, index rows, float* out, index ld_out) noexcept {
  index i0 = 0;
  for (; i0 + 2 <= rows; i0 += 2) panel_avx2_rows<F, 2>(w, p, xq, i0, out, ld_out);
  if (i0 < rows) panel_avx2_rows<F, 1>(w, p, xq, i0, out, ld_out);
}
#endif

/// Whether the VNNI kernel is compiled in (`-march` with avx512_vnni).
inline constexpr bool has_vnni = MOE_QUANT_VNNI != 0;
/// Whether the AVX2 kernel is compiled in (`-march` with avx2, fma and f16c, without avx512_vnni).
inline constexpr bool has_avx2 = MOE_QUANT_AVX2 != 0;

/// The best kernel compiled in (`force_scalar`: the scalar one).
template <block_format F>
void panel(const quant_panels<F>& w, index p, const quantized_rows& xq, index rows, float* out, index ld_out,
           bool force_scalar = false) noexcept {
#if MOE_QUANT_VNNI
  if (!force_scalar) {
    panel_vnni(w, p, xq, rows, out, ld_out);
    return;
  }
#elif MOE_QUANT_AVX2
  if (!force_scalar) {
    panel_avx2(w, p, xq, rows, out, ld_out);
    return;
  }
#endif
  (void)force_scalar;
  panel_scalar(w, p, xq, rows, out, ld_out);
}

}  // namespace moe::kernels::quant
