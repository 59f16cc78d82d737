// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// Canonical fp32 GEMM `C = X · Wᵀ` for weights stored as checkpoints store them (`W [n × k]`,
// row-major, one row per output). Every output element is computed the same way, whatever the
// number of rows, the tile it falls in, the thread that computes it or the ISA:
//
//     c = 0;  for kk in 0..k-1:  c = fma(x[kk], w[kk], c)
//
// so results are batch invariant and thread-count invariant, bit for bit, and equal to the scalar
// reference `gemm_reference` below.
//
// Dispatch of the driver:
//   1. weights are packed once into panels of `panel_width<A>` outputs, k-major (`pack_panels`);
//      two matrices can share a panel, half each (`pack_panels_interleaved`, for gate | up);
//   2. rows are packed per chunk into blocks of `mr_max` rows, k-major (`pack_rows`), so the
//      micro-kernel broadcasts them from one pointer;
//   3. for each panel of the caller's range and each row block, `micro_kernel<A, MR>` keeps
//      MR × 2 SIMD accumulators in registers and calls the epilogue with them.

#include <algorithm>
#include <cstdint>
#include <utility>

#include <xsimd/xsimd.hpp>

#include "moe/config.hpp"
#include "moe/core/error.hpp"
#include "moe/core/workspace.hpp"
#include "moe/kernels/math.hpp"

namespace moe::kernels {

/// Architecture used for expert and router GEMMs: the best one enabled at compile time.
using gemm_arch = xsimd::default_arch;

/// Rows per micro-kernel block.
inline constexpr index mr_max = 12;

/// Outputs per packed panel for architecture A: two SIMD registers.
template <class A>
inline constexpr index panel_width = 2 * static_cast<index>(xsimd::batch<float, A>::size);

/// Weights packed into panels: `panels × k × width` floats, panel `p` holding outputs
/// `p*width .. p*width+width-1` (zero past `n`).
struct packed_weights {
  aligned_buffer<float> data;
  index n = 0;        ///< outputs (rows of the original matrix)
  index k = 0;        ///< inputs (columns of the original matrix)
  index width = 0;    ///< outputs per panel
  index panels = 0;   ///< number of panels

  [[nodiscard]] const float* panel(index p) const noexcept { return data.data() + p * k * width; }
  [[nodiscard]] std::size_t bytes() const noexcept { return data.size() * sizeof(float); }
};

/// Packs `w [n × k]` (row stride `ldw`) into panels of `width` outputs.
inline packed_weights pack_panels(const float* w, index n, index k, index ldw, index width) {
  packed_weights out;
  out.n = n;
  out.k = k;
  out.width = width;
  out.panels = (n + width - 1) / width;
  out.data = aligned_buffer<float>(static_cast<std::size_t>(out.panels * k * width));
  for (index p = 0; p < out.panels; ++p) {
    float* dst = out.data.data() + p * k * width;
    for (index j = 0; j < width && p * width + j < n; ++j) {
      const float* src = w + (p * width + j) * ldw;
      for (index kk = 0; kk < k; ++kk) dst[kk * width + j] = src[kk];
    }
  }
  return out;
}

/// Packs two matrices `a, b [n × k]` (row strides lda, ldb) into shared panels: the first half
/// of panel `p` holds outputs `p*h .. p*h+h-1` of `a`, the second half the same outputs of `b`
/// (`h = width / 2`). `n` counts outputs of each matrix; `out.n` is `2 * n` panel columns.
inline packed_weights pack_panels_interleaved(const float* a, index lda, const float* b, index ldb,
                                              index n, index k, index width) {
  const index h = width / 2;
  packed_weights out;
  out.n = 2 * n;
  out.k = k;
  out.width = width;
  out.panels = (n + h - 1) / h;
  out.data = aligned_buffer<float>(static_cast<std::size_t>(out.panels * k * width));
  for (index p = 0; p < out.panels; ++p) {
    float* dst = out.data.data() + p * k * width;
    for (index j = 0; j < h && p * h + j < n; ++j) {
      const float* sa = a + (p * h + j) * lda;
      const float* sb = b + (p * h + j) * ldb;
      for (index kk = 0; kk < k; ++kk) {
        dst[kk * width + j] = sa[kk];
        dst[kk * width + h + j] = sb[kk];
      }
    }
  }
  return out;
}

/// Packs `rows` rows (pointers `x[i]`, `k` floats each) into blocks of `mr_max` rows, k-major:
/// block `b` element `(kk, i)` at `out[b*mr_max*k + kk*mr_max + i]`; missing rows are zero.
inline void pack_rows(const float* const* x, index rows, index k, float* MOE_RESTRICT out) noexcept {
  for (index b = 0; b * mr_max < rows; ++b) {
    float* MOE_RESTRICT dst = out + b * mr_max * k;
    const index r = std::min(mr_max, rows - b * mr_max);
    const float* src[mr_max];
    for (index i = 0; i < r; ++i) src[i] = x[b * mr_max + i];
    // k outer: contiguous writes, one sequential read stream per row.
    if (r == mr_max) {
      for (index kk = 0; kk < k; ++kk) {
#pragma GCC unroll 12
        for (index i = 0; i < mr_max; ++i) dst[kk * mr_max + i] = src[i][kk];
      }
    } else {
      for (index kk = 0; kk < k; ++kk) {
        for (index i = 0; i < r; ++i) dst[kk * mr_max + i] = src[i][kk];
        for (index i = r; i < mr_max; ++i) dst[kk * mr_max + i] = 0.0f;
      }
    }
  }
}

/// Floats needed by pack_rows for `rows` rows of `k`.
constexpr std::size_t packed_rows_size(index rows, index k) noexcept {
  return static_cast<std::size_t>((rows + mr_max - 1) / mr_max * mr_max * k);
}

/// Accumulators of one micro-kernel call: `acc[i][0..1]` are outputs of row `i`.
template <class A>
using accumulators = xsimd::batch<float, A>[mr_max][2];

/// `acc[i][h] (+)= Σ_kk rows(kk, i) · panel(kk, h)` over `k` steps for the first MR rows of a
/// packed row block: starts from zero, or from `acc` when `accumulate` (k-blocking continues
/// the same fused chain, so the result does not depend on the block size).
template <class A, int MR>
MOE_FORCEINLINE void micro_kernel(const float* MOE_RESTRICT rows, index k, const float* MOE_RESTRICT panel,
                                  accumulators<A>& acc, bool accumulate) noexcept {
  using batch = xsimd::batch<float, A>;
  constexpr index L = static_cast<index>(batch::size);
  batch c[MR][2];
  for (int i = 0; i < MR; ++i) {
    c[i][0] = accumulate ? acc[i][0] : batch(0.0f);
    c[i][1] = accumulate ? acc[i][1] : batch(0.0f);
  }
  for (index kk = 0; kk < k; ++kk) {
    const batch b0 = batch::load_aligned(panel + kk * 2 * L);
    const batch b1 = batch::load_aligned(panel + kk * 2 * L + L);
    const float* a = rows + kk * mr_max;
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
      const batch ai(a[i]);
      c[i][0] = fmadd(ai, b0, c[i][0]);
      c[i][1] = fmadd(ai, b1, c[i][1]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    acc[i][0] = c[i][0];
    acc[i][1] = c[i][1];
  }
}

namespace detail {
template <class A, int... MR>
MOE_FORCEINLINE void micro_kernel_dispatch(std::integer_sequence<int, MR...>, index mr, const float* rows,
                                           index k, const float* panel, accumulators<A>& acc,
                                           bool accumulate) noexcept {
  // One instantiation per row count 1..mr_max, chosen through the compile-time list.
  (void)((mr == MR + 1 ? (micro_kernel<A, MR + 1>(rows, k, panel, acc, accumulate), true) : false) || ...);
}
}  // namespace detail

/// Tuning of the GEMM driver.
struct gemm_tuning {
  index k_block = 256;      ///< inputs per pass: a panel's k-block (k_block × width floats) stays in L1
  index block_group = 16;   ///< row blocks whose accumulators are kept between k-blocks
};

/// The driver's tuning (one value for every ISA today).
inline constexpr gemm_tuning default_gemm_tuning{};

/// Runs the micro-kernel over panels `[p_begin, p_end)` of `w` and every block of the packed
/// rows, calling `epilogue(row0, mr, panel, acc)` once per finished tile.
///
/// Loop order: groups of row blocks → panels → k-blocks → row blocks. One k-block of a panel
/// stays in L1 while every row block of the group streams past it; the group's accumulators
/// wait in a stack buffer between k-blocks.
template <class A, class Epilogue>
MOE_FORCEINLINE void gemm_packed(const float* packed_rows, index rows, const packed_weights& w,
                                 index p_begin, index p_end, Epilogue&& epilogue,
                                 const gemm_tuning& tuning = default_gemm_tuning) noexcept {
  MOE_ASSERT(w.width == panel_width<A>);
  constexpr index L = static_cast<index>(xsimd::batch<float, A>::size);
  constexpr index max_group = 16;
  const index group = std::min(max_group, tuning.block_group);
  alignas(64) accumulators<A> tiles[max_group];
  const index blocks = (rows + mr_max - 1) / mr_max;
  const index K = w.k;
  for (index g0 = 0; g0 < blocks; g0 += group) {
    const index g1 = std::min(blocks, g0 + group);
    for (index p = p_begin; p < p_end; ++p) {
      const float* panel = w.panel(p);
      for (index k0 = 0; k0 < K; k0 += tuning.k_block) {
        const index kc = std::min(tuning.k_block, K - k0);
        const bool last = k0 + kc == K;
        for (index b = g0; b < g1; ++b) {
          const index mr = std::min(mr_max, rows - b * mr_max);
          detail::micro_kernel_dispatch<A>(std::make_integer_sequence<int, mr_max>{}, mr,
                                           packed_rows + b * mr_max * K + k0 * mr_max, kc,
                                           panel + k0 * 2 * L, tiles[b - g0], k0 > 0);
          if (last) epilogue(b * mr_max, mr, p, tiles[b - g0]);
        }
      }
    }
  }
}

/// Rows per packing chunk for inputs of length k: about 1 MiB of packed rows (half an L2).
constexpr index rows_per_chunk(index k) noexcept {
  const index r = (index{1} << 20) / (4 * std::max<index>(k, 1));
  return std::max(mr_max, r / mr_max * mr_max);
}

/// Scalar reference for the canonical GEMM: `c[i][j] = Σ_kk x[i][kk] w[j][kk]`, sequential fma.
inline void gemm_reference(const float* x, index rows, index k, index ldx, const float* w, index n,
                           index ldw, float* c, index ldc) noexcept {
  for (index i = 0; i < rows; ++i) {
    for (index j = 0; j < n; ++j) {
      float acc = 0.0f;
      for (index kk = 0; kk < k; ++kk) acc = std::fma(x[i * ldx + kk], w[j * ldw + kk], acc);
      c[i * ldc + j] = acc;
    }
  }
}

/// Stores the first `cols` outputs of a tile's rows into `c` (row `r0 + i` at `c + (r0+i)*ldc`,
/// panel columns starting at `col0`). Columns at or beyond `n` are not written.
template <class A>
MOE_FORCEINLINE void store_tile(const accumulators<A>& acc, index mr, float* c, index ldc,
                                index col0, index n) noexcept {
  using batch = xsimd::batch<float, A>;
  constexpr index L = static_cast<index>(batch::size);
  if (col0 + 2 * L <= n) {
    for (index i = 0; i < mr; ++i) {
      acc[i][0].store_unaligned(c + i * ldc + col0);
      acc[i][1].store_unaligned(c + i * ldc + col0 + L);
    }
    return;
  }
  alignas(64) float tmp[2 * L];
  for (index i = 0; i < mr; ++i) {
    acc[i][0].store_aligned(tmp);
    acc[i][1].store_aligned(tmp + L);
    for (index j = 0; j < 2 * L && col0 + j < n; ++j) c[i * ldc + col0 + j] = tmp[j];
  }
}

/// Scratch of gemm_rows(): a packed-rows buffer and a row-pointer buffer.
struct gemm_scratch {
  float* packed = nullptr;          ///< packed_rows_size(chunk, k) floats
  const float** rows = nullptr;     ///< chunk pointers
  index chunk = 0;                  ///< rows packed at a time
};

/// Scratch needed by gemm_rows for up to `rows` rows of length k.
inline gemm_scratch make_gemm_scratch(index rows, index k, workspace& ws) {
  gemm_scratch s;
  s.chunk = std::min(std::max<index>(rows, 1), rows_per_chunk(k));
  s.packed = ws.take<float>(packed_rows_size(s.chunk, k));
  s.rows = ws.take<const float*>(static_cast<std::size_t>(s.chunk));
  return s;
}

/// `c [rows × cols of panels p0..p1) = x · Wᵀ` on the calling thread, for contiguous rows
/// (`ldx`, `ldc` strides; column j of c is output j of w). Results do not depend on how rows or
/// panels are split between calls.
template <class A = gemm_arch>
void gemm_rows(const float* x, index rows, index ldx, const packed_weights& w, index p0, index p1,
               float* c, index ldc, const gemm_scratch& s) noexcept {
  if (rows == 0 || p0 >= p1) return;
  for (index r0 = 0; r0 < rows; r0 += s.chunk) {
    const index n = std::min(s.chunk, rows - r0);
    for (index i = 0; i < n; ++i) s.rows[i] = x + (r0 + i) * ldx;
    pack_rows(s.rows, n, w.k, s.packed);
    gemm_packed<A>(s.packed, n, w, p0, p1,
                   [&](index t0, index mr, index p, const accumulators<A>& acc) {
                     store_tile<A>(acc, mr, c + (r0 + t0) * ldc, ldc, p * w.width, w.n);
                   });
  }
}

/// `c [rows × w.n] = x · Wᵀ` on one thread, with scratch from the workspace.
template <class A = gemm_arch>
void gemm(const float* x, index rows, index ldx, const packed_weights& w, float* c, index ldc,
          workspace& ws) {
  if (rows == 0 || w.n == 0) return;
  gemm_rows<A>(x, rows, ldx, w, 0, w.panels, c, ldc, make_gemm_scratch(rows, w.k, ws));
}

}  // namespace moe::kernels
