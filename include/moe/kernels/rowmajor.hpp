// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
// Dot-product kernels over row-major weights where they lie (a mapped checkpoint): `W [out × in]`,
// one contiguous row per output, fp32, bf16 or fp16, any alignment. They compute
// `c[i][j] = Σ_k x_i[k] · W_j[k]` for a tile of MR input rows and NR weight rows without packing
// (docs/architecture.md §4.2, "Experts in place").
//
// Canonical order: each output accumulates its own SIMD register over k in steps of one register
// (k = 0, L, 2L, ...; lane l sees k ≡ l mod L, one fmadd per step), reduces the lanes with
// xsimd::hadd, then adds the products of the k tail one by one with fmadd. Neither the tile a
// value is computed in nor the rows beside it change its bits, so results do not depend on the
// batch, the chunking or the thread count. bf16 and fp16 weights are widened to fp32 exactly;
// inputs stay fp32.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <xsimd/xsimd.hpp>

#include "moe/config.hpp"
#include "moe/core/bf16.hpp"
#include "moe/core/f16.hpp"
#include "moe/kernels/gemm.hpp"
#include "moe/kernels/math.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace moe::kernels {

namespace detail {
/// One weight element at `p` (any alignment) as fp32.
template <class W>
MOE_FORCEINLINE float load_weight(const std::byte* p) noexcept {
  if constexpr (std::is_same_v<W, float>) {
    float v;
    std::memcpy(&v, p, sizeof v);
    return v;
  } else {
    std::uint16_t bits;
    std::memcpy(&bits, p, sizeof bits);
    if constexpr (std::is_same_v<W, bf16>) {
      return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
    } else {
      return static_cast<float>(std::bit_cast<f16>(bits));
    }
  }
}

/// One register of weights starting at `p` (any alignment), widened to fp32 exactly.
template <class A, class W>
MOE_FORCEINLINE xsimd::batch<float, A> load_weights(const std::byte* p) noexcept {
  using batch = xsimd::batch<float, A>;
  if constexpr (std::is_same_v<W, float>) {
    return batch::load_unaligned(reinterpret_cast<const float*>(p));
  } else {
#if XSIMD_WITH_AVX512F
    if constexpr (std::is_base_of_v<xsimd::avx512f, A>) {
      const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
      if constexpr (std::is_same_v<W, bf16>) {
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
      } else {
        return _mm512_cvtph_ps(h);
      }
    }
#endif
#if XSIMD_WITH_AVX2
    if constexpr (std::is_base_of_v<xsimd::avx2, A> && !std::is_base_of_v<xsimd::avx512f, A> && std::is_same_v<W, bf16>) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
#if defined(__F16C__)
    if constexpr (std::is_base_of_v<xsimd::avx2, A> && !std::is_base_of_v<xsimd::avx512f, A> && std::is_same_v<W, f16>) {
      return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    }
#endif
#endif
    {
      constexpr std::size_t L = batch::size;
      alignas(64) float tmp[L];
      for (std::size_t l = 0; l < L; ++l) tmp[l] = load_weight<W>(p + l * sizeof(W));
      return batch::load_aligned(tmp);
    }
  }
}
}  // namespace detail

/// `out[i][j] = Σ_k x[i][k] · w_j[k]` for i < MR, j < NR in the canonical order above; `x[i]` are
/// fp32 rows of `k` values, `w[j]` weight rows of `k` elements of type W (fp32, moe::bf16 or
/// moe::f16) at any alignment.
template <class A, class W, int MR, int NR>
MOE_FORCEINLINE void dot_tile(const float* const* MOE_RESTRICT x, const std::byte* const* MOE_RESTRICT w, index k,
                              float (&out)[MR][NR]) noexcept {
  using batch = xsimd::batch<float, A>;
  constexpr index L = static_cast<index>(batch::size);
  batch c[MR][NR];
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) c[i][j] = batch(0.0f);
  }
  const index kv = k / L * L;
  for (index kk = 0; kk < kv; kk += L) {
    batch b[NR];
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) b[j] = detail::load_weights<A, W>(w[j] + kk * static_cast<index>(sizeof(W)));
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const batch a = batch::load_unaligned(x[i] + kk);
#pragma GCC unroll 8
      for (int j = 0; j < NR; ++j) c[i][j] = fmadd(a, b[j], c[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) {
      float s = xsimd::hadd(c[i][j]);
      for (index kk = kv; kk < k; ++kk) {
        s = fmadd(x[i][kk], detail::load_weight<W>(w[j] + kk * static_cast<index>(sizeof(W))), s);
      }
      out[i][j] = s;
    }
  }
}

/// Input rows per dot-product tile on architecture A: 4 where it has 32 vector registers
/// (AVX-512: 16 accumulators of a 4 × 4 tile, 4 weights and an input fit), 2 elsewhere (16
/// registers: a 2 × 4 tile).
template <class A>
inline constexpr int dot_rows = [] {
#if XSIMD_WITH_AVX512F
  if constexpr (std::is_base_of_v<xsimd::avx512f, A>) return 4;
#endif
  return 2;
}();

/// Calls `tile(r, integral_constant<MR>)` for consecutive row blocks of `rows`: blocks of
/// `MaxRows`, then the rest as one smaller block, with the block's first row.
template <int MaxRows, class F>
MOE_FORCEINLINE void for_row_blocks(index rows, F&& tile) {
  static_assert(MaxRows >= 1 && MaxRows <= 4);
  index r = 0;
  for (; r + MaxRows <= rows; r += MaxRows) tile(r, std::integral_constant<int, MaxRows>{});
  const index rest = rows - r;
  if constexpr (MaxRows > 3) {
    if (rest == 3) tile(r, std::integral_constant<int, 3>{});
  }
  if constexpr (MaxRows > 2) {
    if (rest == 2) tile(r, std::integral_constant<int, 2>{});
  }
  if constexpr (MaxRows > 1) {
    if (rest == 1) tile(r, std::integral_constant<int, 1>{});
  }
}

}  // namespace moe::kernels
