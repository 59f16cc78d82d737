// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// Canonical pairwise dot products `S = A · Bᵀ` between the rows of two row-major float matrices
// (token-similarity matrices of routers). Element (i, j) is computed as the canonical GEMM
// computes it (kernels/gemm.hpp):
//
//     s = 0;  for kk in 0..k-1:  s = fma(a[i][kk], b[j][kk], s)
//
// so the result equals kernels::gemm_reference bit for bit, whatever the ISA, the tile or the
// other rows. Dispatch:
//   1. the rows of B are packed, one panel of 2·SIMD-width rows at a time, k-major, into
//      workspace memory (B changes with every call, so it is never packed ahead);
//   2. for each panel, blocks of up to `pairwise_rows` rows of A are broadcast element by
//      element from A itself and multiplied into rows × 2 SIMD accumulators (`pairwise_tile`);
//   3. with `lower`, panels are skipped for the row blocks that lie entirely above the
//      diagonal (only `j <= i` is needed); tiles that cross it are computed whole.

#include <algorithm>
#include <utility>

#include <xsimd/xsimd.hpp>

#include "moe/config.hpp"
#include "moe/core/workspace.hpp"
#include "moe/kernels/gemm.hpp"
#include "moe/kernels/math.hpp"

namespace moe::kernels {

/// Rows of A per pairwise tile: 8, or the GEMM's tile where that is smaller (6 with 16 vector
/// registers), so the accumulators stay in registers and within `accumulators<A>`.
inline constexpr index pairwise_rows = std::min<index>(8, mr_max);

namespace detail {

/// `s[i][j] = Σ_kk a[i][kk] · panel[kk][j]` for MR rows of A and the `cols` valid columns of a
/// panel of 2·L columns (k-major, aligned): the GEMM micro-kernel reading A in place.
template <class A, int MR>
MOE_FORCEINLINE void pairwise_tile(const float* MOE_RESTRICT a, index lda, index k,
                                   const float* MOE_RESTRICT panel, float* s, index lds,
                                   index cols) noexcept {
  alignas(64) accumulators<A> acc;
  micro_kernel<A, MR>(a, k, panel, acc, false, {}, lda, 1);
  store_tile<A>(acc, MR, s, lds, 0, cols);
}

template <class A, int... MR>
MOE_FORCEINLINE void pairwise_tile_dispatch(std::integer_sequence<int, MR...>, index mr, const float* a,
                                            index lda, index k, const float* panel, float* s, index lds,
                                            index cols) noexcept {
  // One instantiation per row count 1..pairwise_rows, chosen through the compile-time list.
  (void)((mr == MR + 1 ? (pairwise_tile<A, MR + 1>(a, lda, k, panel, s, lds, cols), true) : false) || ...);
}

}  // namespace detail

/// `s [n × m] = A · Bᵀ` for `A [n × k]` (row stride lda) and `B [m × k]` (row stride ldb), into
/// `s` (row stride lds), each element the canonical sequential-fma dot product. With `lower`,
/// only `s[i][j]` for `j <= i` is guaranteed (the rest of the crossing tiles is written too).
/// Takes `k · 2·SIMD-width` floats of workspace.
template <class A = gemm_arch>
void pairwise_dots(const float* a, index n, index lda, const float* b, index m, index ldb, index k,
                   float* s, index lds, bool lower, workspace& ws) {
  if (n == 0 || m == 0) return;
  constexpr index W = 2 * static_cast<index>(xsimd::batch<float, A>::size);
  float* panel = ws.take<float>(static_cast<std::size_t>(std::max<index>(k, 1) * W));  // [k × W]
  for (index j0 = 0; j0 < m; j0 += W) {
    const index cols = std::min(W, m - j0);
    for (index kk = 0; kk < k; ++kk) {
      float* dst = panel + kk * W;
      for (index j = 0; j < cols; ++j) dst[j] = b[(j0 + j) * ldb + kk];
      for (index j = cols; j < W; ++j) dst[j] = 0.0f;
    }
    const index i_begin = lower ? std::min(j0, n) : 0;
    for (index i0 = i_begin; i0 < n; i0 += pairwise_rows) {
      const index mr = std::min(pairwise_rows, n - i0);
      detail::pairwise_tile_dispatch<A>(std::make_integer_sequence<int, pairwise_rows>{}, mr, a + i0 * lda, lda,
                                        k, panel, s + i0 * lds + j0, lds, cols);
    }
  }
}

}  // namespace moe::kernels
