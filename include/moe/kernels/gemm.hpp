// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// Canonical GEMM `C = X · Wᵀ` for weights stored as checkpoints store them (`W [n × k]`,
// row-major, one row per output), with fp32 or bf16 weights.
//
// fp32: every output element is computed the same way, whatever the number of rows, the tile
// it falls in, the k-block, the thread that computes it or the ISA:
//     c = 0;  for kk in 0..k-1:  c = fma(x[kk], w[kk], c)
// so results are batch invariant and thread-count invariant, bit for bit, and equal to the
// scalar reference `gemm_reference`.
// bf16: rows are rounded to bf16 when packed, and each output element is computed pair by pair
//     c = 0;  for each pair (k0, k1):  c = fma(x[k1], w[k1], c);  c = fma(x[k0], w[k0], c)
// which is what `vdpbf16ps` does (products of bf16 values are exact in fp32). The same sequence
// runs whether the CPU has avx512_bf16 or the weights are widened to fp32 in registers (no
// avx512_bf16): the two agree bit for bit on normal numbers (vdpbf16ps flushes subnormals).
//
// Dispatch of the driver:
//   1. weights are packed once into panels of `panel_width<A>` outputs, k-major (`pack_panels`);
//      two matrices can share a panel, half each (`pack_panels_interleaved`, for gate | up);
//      bf16 panels hold k in pairs (`[k/2][width][2]`);
//   2. rows are packed per chunk into blocks of at most `mr_max` rows, of balanced sizes
//      (`row_blocks`), k-major (`pack_rows`), so the micro-kernel broadcasts them from one
//      pointer (bf16: one 32-bit pair per row);
//   3. `gemm_packed`: groups of row blocks → panels → k-blocks → row blocks; the micro-kernel
//      keeps MR × 2 SIMD accumulators in registers and the epilogue receives finished tiles;
//      the passes over a k-block prefetch the next one between them, at the pace of their
//      arithmetic (`prefetch_stream`).

#include <algorithm>
#include <chrono>
#if defined(__x86_64__) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include <xsimd/xsimd.hpp>

#include "moe/config.hpp"
#include "moe/core/bf16.hpp"
#include "moe/core/error.hpp"
#include "moe/core/workspace.hpp"
#include "moe/kernels/math.hpp"

namespace moe::kernels {

/// Architecture used for expert and router GEMMs: the best one enabled at compile time.
using gemm_arch = xsimd::default_arch;

/// Vector registers of architecture A: 32 on AVX-512, 16 on AVX/AVX2 and SSE (xsimd's x86
/// architectures derive from one another, so testing the widest base is enough), 16 assumed
/// elsewhere.
template <class A>
inline constexpr int vector_registers = std::is_base_of_v<xsimd::avx512f, A> ? 32 : 16;

/// Rows per micro-kernel block on architecture A, a tuning value: the most rows whose MR × 2
/// accumulators, the step's two weight registers and a broadcast fit the register file (12 of
/// 32 registers' worth, 6 of 16). More rows spill accumulators to the stack every step: on an
/// AVX2 CPU 12 rows ran at half the FMA rate of 6 (docs/architecture.md §9). The value changes
/// which rows share a tile, never the order of an output's fused chain, so results do not
/// depend on it.
template <class A>
inline constexpr index tile_rows = vector_registers<A> >= 32 ? 12 : 6;

/// Rows per micro-kernel block for the build's architecture (gemm_arch).
inline constexpr index mr_max = tile_rows<gemm_arch>;

/// Outputs per packed panel for architecture A: two SIMD registers.
template <class A>
inline constexpr index panel_width = 2 * static_cast<index>(xsimd::batch<float, A>::size);

/// Inputs consumed per micro-kernel step for weight type W (bf16 works on pairs).
template <class W>
inline constexpr index k_step = std::is_same_v<W, bf16> ? 2 : 1;

/// `k` as W's packed layouts store it: fp32 as is, bf16 rounded up to a multiple of 32 (whole
/// AMX tiles; the pair kernels run over the zero padding harmlessly).
template <class W>
constexpr index padded_k(index k) noexcept {
  constexpr index q = std::is_same_v<W, bf16> ? 32 : 1;
  return (k + q - 1) / q * q;
}

/// Weights packed into panels: `panels × padded_k × width` values of W, panel `p` holding
/// outputs `p*width .. p*width+width-1` (zero past `n` and past `k`).
template <class W = float>
struct packed_matrix {
  static_assert(std::is_same_v<W, float> || std::is_same_v<W, bf16>,
                "moe::kernels::packed_matrix<W>: W must be float or moe::bf16");
  using value_type = W;

  aligned_buffer<W> data;
  index n = 0;       ///< outputs (rows of the original matrix)
  index k = 0;       ///< inputs (columns of the original matrix)
  index width = 0;   ///< outputs per panel
  index panels = 0;  ///< number of panels

  [[nodiscard]] const W* panel(index p) const noexcept { return data.data() + p * padded_k<W>(k) * width; }
  [[nodiscard]] std::size_t bytes() const noexcept { return data.size() * sizeof(W); }
};

/// Packed fp32 weights (router rows, small MLPs, fp32 experts).
using packed_weights = packed_matrix<float>;

namespace detail {
// The 32-bit pair (two bf16) at p, read without type punning.
MOE_FORCEINLINE std::uint32_t load_pair(const bf16* p) noexcept {
  std::uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <class W>
MOE_FORCEINLINE W convert(float x) noexcept {
  if constexpr (std::is_same_v<W, bf16>) {
    return bf16(x);
  } else {
    return x;
  }
}
template <class W>
MOE_FORCEINLINE W convert(bf16 x) noexcept {
  if constexpr (std::is_same_v<W, bf16>) {
    return x;
  } else {
    return static_cast<float>(x);
  }
}
// Offset of element (kk, j) inside a panel of width `width`.
template <class W>
constexpr index panel_offset(index kk, index j, index width) noexcept {
  return kk / k_step<W> * width * k_step<W> + j * k_step<W> + kk % k_step<W>;
}
}  // namespace detail

/// Panels for an `n × k` matrix (n outputs, k inputs) in panels of `width` outputs of W, left
/// uninitialised for fill_panels(), which writes every value, padding included (the two steps of
/// pack_panels_from(), apart so that the allocation happens on one thread and the filling, which
/// first touches the memory, on many).
template <class W = float>
packed_matrix<W> allocate_panels(index n, index k, index width) {
  packed_matrix<W> out;
  out.n = n;
  out.k = k;
  out.width = width;
  out.panels = (n + width - 1) / width;
  out.data = aligned_buffer<W>(static_cast<std::size_t>(out.panels * padded_k<W>(k) * width), typename aligned_buffer<W>::uninitialized_t{});
  return out;
}

namespace detail {
/// Inputs per block of a panel fill: the block's panel rows (kb × width values) stay in L1 while
/// the `width` source rows are read kb values at a time.
inline constexpr index fill_block = 16;

/// Fills panel p of `out` (outputs `p*width + j` for j < width; zero where `j >= jn` or the input
/// is past k) with `at(j, kk)` (`j` relative to the panel), k blocked so the writes stay in cache.
template <class W, class At>
MOE_FORCEINLINE void fill_panel(packed_matrix<W>& out, index p, index jn, At&& at) noexcept {
  const index k = out.k, kp = padded_k<W>(k), width = out.width;
  W* dst = out.data.data() + p * kp * width;
  // Output-major within a block: each panel row (width values) is written whole, from `width`
  // source rows whose lines stay in L1 for fill_block inputs.
  for (index k0 = 0; k0 < kp; k0 += fill_block) {
    const index k1 = std::min(k0 + fill_block, kp), kv = std::min(k1, k);
    for (index kk = k0; kk < k1; ++kk) {
      if (kk < kv) {
        for (index j = 0; j < jn; ++j) dst[panel_offset<W>(kk, j, width)] = convert<W>(at(j, kk));
        for (index j = jn; j < width; ++j) dst[panel_offset<W>(kk, j, width)] = W{};
      } else {
        for (index j = 0; j < width; ++j) dst[panel_offset<W>(kk, j, width)] = W{};
      }
    }
  }
}
}  // namespace detail

/// Fills panels from allocate_panels(out.n, k, width) with the matrix whose element (j, kk)
/// (output j, input kk) is `at(j, kk)`, a float or a moe::bf16; the padding is zero.
template <class W, class At>
void fill_panels(packed_matrix<W>& out, At&& at) noexcept {
  const index n = out.n, width = out.width;
  for (index p = 0; p < out.panels; ++p) {
    const index j0 = p * width;
    detail::fill_panel(out, p, std::min(width, n - j0), [&](index j, index kk) { return at(j0 + j, kk); });
  }
}

/// Packs the `n × k` matrix whose element (j, kk) is `at(j, kk)` into panels of `width` outputs of W.
template <class W = float, class At>
packed_matrix<W> pack_panels_from(index n, index k, index width, At&& at) {
  auto out = allocate_panels<W>(n, k, width);
  fill_panels(out, at);
  return out;
}

/// Packs `w [n × k]` (row stride `ldw`, float or bf16) into panels of `width` outputs of W.
template <class W = float, class Src>
packed_matrix<W> pack_panels(const Src* w, index n, index k, index ldw, index width) {
  return pack_panels_from<W>(n, k, width, [w, ldw](index j, index kk) { return w[j * ldw + kk]; });
}

/// Shared panels for two `n × k` matrices, uninitialised (see fill_panels_interleaved()); `out.n` is `2 * n`.
template <class W = float>
packed_matrix<W> allocate_panels_interleaved(index n, index k, index width) {
  const index h = width / 2;
  packed_matrix<W> out;
  out.n = 2 * n;
  out.k = k;
  out.width = width;
  out.panels = (n + h - 1) / h;
  out.data = aligned_buffer<W>(static_cast<std::size_t>(out.panels * padded_k<W>(k) * width), typename aligned_buffer<W>::uninitialized_t{});
  return out;
}

/// Fills shared panels from allocate_panels_interleaved() with two `n × k` matrices given by
/// element functions `at_a(j, kk)`, `at_b(j, kk)`: the first half of panel `p` holds outputs
/// `p*h .. p*h+h-1` of `a`, the second half the same outputs of `b` (`h = width / 2`); the
/// padding is zero.
template <class W, class AtA, class AtB>
void fill_panels_interleaved(packed_matrix<W>& out, AtA&& at_a, AtB&& at_b) noexcept {
  const index h = out.width / 2, n = out.n / 2;
  for (index p = 0; p < out.panels; ++p) {
    const index j0 = p * h, jn = std::min(h, n - j0);
    // Panel column j: output j of a for j < h, output j - h of b above; past n on either side: zero.
    detail::fill_panel(out, p, out.width, [&](index j, index kk) -> W {
      if (j < h) return j < jn ? detail::convert<W>(at_a(j0 + j, kk)) : W{};
      return j - h < jn ? detail::convert<W>(at_b(j0 + j - h, kk)) : W{};
    });
  }
}

/// Packs two matrices `a, b [n × k]` (row strides lda, ldb) into shared panels (see
/// fill_panels_interleaved()).
template <class W = float, class Src>
packed_matrix<W> pack_panels_interleaved(const Src* a, index lda, const Src* b, index ldb, index n,
                                          index k, index width) {
  auto out = allocate_panels_interleaved<W>(n, k, width);
  fill_panels_interleaved(
      out, [a, lda](index j, index kk) { return a[j * lda + kk]; }, [b, ldb](index j, index kk) { return b[j * ldb + kk]; });
  return out;
}

/// Row blocks of a batch of `rows` rows: `ceil(rows / mr_max)` blocks whose sizes differ by at
/// most one row (27 rows: 9, 9, 9, not 12, 12, 3), since a block of a few rows runs the
/// micro-kernel at a fraction of the FMA rate (too few independent accumulators).
constexpr index row_blocks(index rows) noexcept { return (rows + mr_max - 1) / mr_max; }

/// First row of block `b` of `rows` rows (`b = row_blocks(rows)` gives `rows`).
constexpr index row_block_begin(index rows, index b) noexcept {
  return rows == 0 ? 0 : b * rows / row_blocks(rows);
}

/// Values of W needed by pack_rows for `rows` rows of length k.
template <class W = float>
constexpr std::size_t packed_rows_size(index rows, index k) noexcept {
  return static_cast<std::size_t>(row_blocks(rows) * mr_max * padded_k<W>(k));
}

/// Packs `rows` rows (pointers `x[i]`, `k` floats each) into the blocks of row_blocks(), each
/// stored as `mr_max` rows, k-major: fp32 element `(kk, i)` of block `b` at
/// `out[b*mr_max*k + kk*mr_max + i]`; bf16 at `out[b*mr_max*kp + (kk/2)*2*mr_max + 2*i + kk%2]`
/// (kp = padded_k<bf16>(k)). The k padding is zero; the slots past a block's own rows repeat
/// its first row (the micro-kernel runs the block's row count and never reads them).
template <class W = float>
void pack_rows(const float* const* x, index rows, index k, W* MOE_RESTRICT out) noexcept {
  constexpr index ks = k_step<W>;
  const index kp = padded_k<W>(k);
  for (index b = 0; b < row_blocks(rows); ++b) {
    W* MOE_RESTRICT dst = out + b * mr_max * kp;
    const index r0 = row_block_begin(rows, b), r = row_block_begin(rows, b + 1) - r0;
    const float* src[mr_max];
    for (index i = 0; i < mr_max; ++i) src[i] = x[r0 + (i < r ? i : 0)];
    // k outer: contiguous writes, one sequential read stream per row; the padding to kp (bf16
    // k rounds up to 32) is written as zeros, so the kernels never read stale scratch.
    for (index kk = 0; kk < kp; kk += ks) {
      W* d = dst + kk * mr_max;
#pragma GCC unroll 12
      for (index i = 0; i < mr_max; ++i) {
        for (index q = 0; q < ks; ++q) d[i * ks + q] = detail::convert<W>(kk + q < k ? src[i][kk + q] : 0.0f);
      }
    }
  }
}

/// Accumulators of one micro-kernel call: `acc[i][0..1]` are outputs of row `i`.
template <class A>
using accumulators = xsimd::batch<float, A>[mr_max][2];

/// Where a micro-kernel call prefetches weights into L2: `offset` bytes past its first step's
/// weights, then `stride` bytes further each step (at most two lines a step; 0: no prefetch).
struct prefetch_stream {
  index offset = 0;
  index stride = 0;
};

namespace detail {
// Prefetches the lines of [at, at + stride) into L2 (stride <= 128 bytes) and returns the next
// address. Addresses are integers: the stream may run past the weights (prefetch never faults).
MOE_FORCEINLINE std::uintptr_t prefetch_step(std::uintptr_t at, index stride) noexcept {
  __builtin_prefetch(reinterpret_cast<const void*>(at), 0, 2);
  __builtin_prefetch(reinterpret_cast<const void*>(at + static_cast<std::uintptr_t>(stride / 2)), 0, 2);
  return at + static_cast<std::uintptr_t>(stride);
}
MOE_FORCEINLINE std::uintptr_t prefetch_start(const void* panel, const prefetch_stream& pf) noexcept {
  return reinterpret_cast<std::uintptr_t>(panel) + static_cast<std::uintptr_t>(pf.offset);
}
}  // namespace detail

/// `acc[i][h] (+)= Σ_kk rows(kk, i) · panel(kk, h)` over `k` steps for the first MR rows of a
/// packed fp32 row block (element (kk, i) at `rows[kk * k_stride + i * row_stride]`; packed rows
/// by default, any row-major matrix with `k_stride = 1`): starts from zero, or from `acc` when
/// `accumulate` (k-blocking continues the same fused chain, so the result does not depend on the
/// block size). Each step prefetches the next part of the stream `pf` (gemm_packed spreads the
/// weights still to come evenly over the work before they are needed).
template <class A, int MR>
MOE_FORCEINLINE void micro_kernel(const float* MOE_RESTRICT rows, index k, const float* MOE_RESTRICT panel,
                                  accumulators<A>& acc, bool accumulate, const prefetch_stream& pf = {},
                                  index row_stride = 1, index k_stride = mr_max) noexcept {
  using batch = xsimd::batch<float, A>;
  constexpr index L = static_cast<index>(batch::size);
  batch c[MR][2];
  for (int i = 0; i < MR; ++i) {
    c[i][0] = accumulate ? acc[i][0] : batch(0.0f);
    c[i][1] = accumulate ? acc[i][1] : batch(0.0f);
  }
  std::uintptr_t ahead = detail::prefetch_start(panel, pf);
#pragma GCC unroll 4
  for (index kk = 0; kk < k; ++kk) {
    if (pf.stride > 0) ahead = detail::prefetch_step(ahead, pf.stride);
    const batch b0 = batch::load_aligned(panel + kk * 2 * L);
    const batch b1 = batch::load_aligned(panel + kk * 2 * L + L);
    const float* a = rows + kk * k_stride;
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
      const batch ai(a[i * row_stride]);
      c[i][0] = fmadd(ai, b0, c[i][0]);
      c[i][1] = fmadd(ai, b1, c[i][1]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    acc[i][0] = c[i][0];
    acc[i][1] = c[i][1];
  }
}

/// bf16 micro-kernel, portable: widens each weight pair to two fp32 registers and runs the
/// pair's two fused steps (odd element first, as vdpbf16ps does).
template <class A, int MR>
MOE_FORCEINLINE void micro_kernel(const bf16* MOE_RESTRICT rows, index k, const bf16* MOE_RESTRICT panel,
                                  accumulators<A>& acc, bool accumulate, const prefetch_stream& pf) noexcept {
  using batch = xsimd::batch<float, A>;
  using ubatch = xsimd::batch<std::uint32_t, A>;
  constexpr index L = static_cast<index>(batch::size);
  batch c[MR][2];
  for (int i = 0; i < MR; ++i) {
    c[i][0] = accumulate ? acc[i][0] : batch(0.0f);
    c[i][1] = accumulate ? acc[i][1] : batch(0.0f);
  }
  const ubatch high(0xffff0000u);
  std::uintptr_t ahead = detail::prefetch_start(panel, pf);
  for (index kk = 0; kk < k; kk += 2) {
    if (pf.stride > 0) ahead = detail::prefetch_step(ahead, pf.stride);
    const auto* pw = reinterpret_cast<const std::uint32_t*>(panel + kk * 2 * L);
    const ubatch w0 = ubatch::load_aligned(pw), w1 = ubatch::load_aligned(pw + L);
    const batch even0 = xsimd::bitwise_cast<batch>(w0 << 16), odd0 = xsimd::bitwise_cast<batch>(w0 & high);
    const batch even1 = xsimd::bitwise_cast<batch>(w1 << 16), odd1 = xsimd::bitwise_cast<batch>(w1 & high);
    const bf16* pa = rows + kk * mr_max;
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
      const std::uint32_t pair = detail::load_pair(pa + 2 * i);
      const batch a0(std::bit_cast<float>(pair << 16)), a1(std::bit_cast<float>(pair & 0xffff0000u));
      c[i][0] = fmadd(a1, odd0, c[i][0]);
      c[i][0] = fmadd(a0, even0, c[i][0]);
      c[i][1] = fmadd(a1, odd1, c[i][1]);
      c[i][1] = fmadd(a0, even1, c[i][1]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    acc[i][0] = c[i][0];
    acc[i][1] = c[i][1];
  }
}

#if XSIMD_WITH_AVX512F && (defined(__GNUC__) || defined(__clang__))
#define MOE_HAS_BF16_DOT_KERNEL 1
/// bf16 micro-kernel on avx512_bf16 (vdpbf16ps: a pair of products per lane and step). Compiled
/// for that ISA through a target attribute and called only when the CPU reports it.
template <int MR>
__attribute__((target("avx512f,avx512bf16"), noinline)) void micro_kernel_bf16_dot(
    const bf16* MOE_RESTRICT rows, index k, const bf16* MOE_RESTRICT panel, float* MOE_RESTRICT acc,
    bool accumulate, const prefetch_stream& pf) noexcept {
  __m512 c[MR][2];
  for (int i = 0; i < MR; ++i) {
    c[i][0] = accumulate ? _mm512_load_ps(acc + (2 * i) * 16) : _mm512_setzero_ps();
    c[i][1] = accumulate ? _mm512_load_ps(acc + (2 * i + 1) * 16) : _mm512_setzero_ps();
  }
  std::uintptr_t ahead = detail::prefetch_start(panel, pf);
  for (index kk = 0; kk < k; kk += 2) {
    if (pf.stride > 0) ahead = detail::prefetch_step(ahead, pf.stride);
    const __m512bh w0 = (__m512bh)_mm512_load_si512(panel + kk * 32);
    const __m512bh w1 = (__m512bh)_mm512_load_si512(panel + kk * 32 + 32);
    const bf16* pa = rows + kk * mr_max;
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32(static_cast<int>(detail::load_pair(pa + 2 * i)));
      c[i][0] = _mm512_dpbf16_ps(c[i][0], a, w0);
      c[i][1] = _mm512_dpbf16_ps(c[i][1], a, w1);
    }
  }
  for (int i = 0; i < MR; ++i) {
    _mm512_store_ps(acc + (2 * i) * 16, c[i][0]);
    _mm512_store_ps(acc + (2 * i + 1) * 16, c[i][1]);
  }
}
#endif

/// Whether the CPU has vdpbf16ps for architecture A (CPUID, checked once).
template <class A>
inline bool bf16_dot_available() noexcept {
#if defined(MOE_HAS_BF16_DOT_KERNEL)
  if constexpr (std::is_base_of_v<xsimd::avx512f, A>) {
    static const bool has = __builtin_cpu_supports("avx512bf16");
    return has;
  }
#endif
  return false;
}

/// Whether vdpbf16ps is faster than widening bf16 to fp32 here. Both kernels give the same bits
/// on normal numbers, so this choice changes speed only. Some CPUs that have vdpbf16ps issue it
/// at half the rate of fp32 FMA, so the answer comes from timing both micro-kernels once on an
/// L1-resident tile (about a millisecond, at first use).
template <class A>
bool bf16_dot_preferred() noexcept;

namespace detail {
template <class A, class W, int... MR>
MOE_FORCEINLINE void micro_kernel_dispatch(std::integer_sequence<int, MR...>, index mr, const W* rows,
                                           index k, const W* panel, accumulators<A>& acc, bool accumulate,
                                           [[maybe_unused]] bool dot, const prefetch_stream& pf) noexcept {
  // One instantiation per row count 1..mr_max, chosen through the compile-time list.
#if defined(MOE_HAS_BF16_DOT_KERNEL)
  if constexpr (std::is_same_v<W, bf16> && std::is_base_of_v<xsimd::avx512f, A>) {
    if (dot) {
      (void)((mr == MR + 1 ? (micro_kernel_bf16_dot<MR + 1>(rows, k, panel, reinterpret_cast<float*>(&acc), accumulate,
                                                            pf),
                              true)
                           : false) ||
             ...);
      return;
    }
  }
#endif
  (void)((mr == MR + 1 ? (micro_kernel<A, MR + 1>(rows, k, panel, acc, accumulate, pf), true) : false) || ...);
}
}  // namespace detail

/// Which kernel runs bf16 weights.
enum class bf16_kernel {
  automatic,  ///< AMX if usable, else vdpbf16ps if present and faster here, else widen
  amx,        ///< AMX tiles (tdpbf16ps) when usable, else as automatic
  dot,        ///< vdpbf16ps when the CPU has it, else widen
  widen       ///< widen to fp32 in registers and use fp32 FMA
};

/// Tuning of the GEMM driver.
struct gemm_tuning {
  index k_block = 256;                    ///< inputs per pass: a panel's k-block stays in L1
  index block_group = 16;                 ///< row blocks whose accumulators wait between k-blocks (<= 16)
  bf16_kernel bf16 = bf16_kernel::automatic;  ///< micro-kernel for bf16 weights
  index prefetch_bytes = 4096;                ///< with one row block, weights prefetched this far ahead of
                                              ///< each step (several: the next k-block); 0: no prefetch
};

/// The driver's tuning (one value for every ISA today).
inline constexpr gemm_tuning default_gemm_tuning{};

#if XSIMD_WITH_AVX512F && defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
#define MOE_HAS_AMX_KERNEL 1
#endif

/// Whether AMX bf16 tiles can run here: the CPU reports amx-tile and amx-bf16 and the OS grants
/// the process the tile state (Linux arch_prctl, asked once).
inline bool amx_available() noexcept {
#if defined(MOE_HAS_AMX_KERNEL)
  static const bool ok = [] {
    if (!__builtin_cpu_supports("amx-tile") || !__builtin_cpu_supports("amx-bf16")) return false;
    constexpr long arch_req_xcomp_perm = 0x1023, xfeature_xtiledata = 18;
    return syscall(SYS_arch_prctl, arch_req_xcomp_perm, xfeature_xtiledata) == 0;
  }();
  return ok;
#else
  return false;
#endif
}

/// The bf16 kernel a request resolves to on this CPU (the same for every call of a process, so
/// that results stay batch invariant).
template <class A>
bf16_kernel resolve_bf16_kernel(bf16_kernel requested) noexcept;


/// Row stride of rows packed for AMX: k rounded up to 32, plus one cache line. A tile load reads
/// one line from each of 16 rows; with a stride of a multiple of 4 KiB (k = 2048) those lines
/// would all fall in one L1 set and evict each other, the extra line gives each row its own set.
constexpr index amx_row_stride(index k) noexcept { return padded_k<bf16>(k) + 32; }

/// Values of bf16 needed by pack_rows_amx for `rows` rows of length k.
constexpr std::size_t packed_rows_amx_size(index rows, index k) noexcept {
  return static_cast<std::size_t>(rows * amx_row_stride(k));
}

/// Packs rows for AMX: row-major bf16, row i at `out + i * amx_row_stride(k)`, k rounded up to
/// 32 with zeros (the stride's last line is never read). The tiles are configured with the
/// block's own row count, so no padding rows are needed.
inline void pack_rows_amx(const float* const* x, index rows, index k, bf16* MOE_RESTRICT out) noexcept {
  const index kp = padded_k<bf16>(k);
  for (index i = 0; i < rows; ++i) {
    bf16* dst = out + i * amx_row_stride(k);
    index kk = 0;
    for (; kk < k; ++kk) dst[kk] = bf16(x[i][kk]);
    for (; kk < kp; ++kk) dst[kk] = bf16();
  }
}

#if defined(MOE_HAS_AMX_KERNEL)
namespace detail {
struct amx_config {
  std::uint8_t palette = 1, start_row = 0;
  std::uint8_t reserved[14] = {};
  std::uint16_t colsb[16] = {};
  std::uint8_t rows[16] = {};
};

// For a block of n rows (1 to 32): tiles 0-1 C and 4 A hold rows [0, min(n, 16)), tiles 2-3 C
// and 5 A rows [16, n) (16 when unused); tiles 6-7 B are 16 k-pairs × 16 outputs. Each C row
// depends only on its A row, so the row count changes no value, only what is loaded.
constexpr amx_config make_amx_config(int n) noexcept {
  amx_config cfg;
  const auto first = static_cast<std::uint8_t>(n < 16 ? n : 16);
  const auto second = static_cast<std::uint8_t>(n > 16 ? n - 16 : 16);
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = t == 0 || t == 1 || t == 4 ? first : t == 2 || t == 3 || t == 5 ? second : 16;
    cfg.colsb[t] = 64;
  }
  return cfg;
}

struct amx_configs {
  amx_config by_rows[33];
  constexpr amx_configs() noexcept : by_rows{} {
    for (int n = 1; n <= 32; ++n) by_rows[n] = make_amx_config(n);
  }
};

// The configurations live in static storage: g++ 12 does not treat ldtilecfg as reading its
// operand, so a configuration built on the stack just before it is optimised away.
__attribute__((target("amx-tile"), noinline)) inline void amx_configure(index n) noexcept {
  alignas(64) static constexpr amx_configs table{};
  _tile_loadconfig(&table.by_rows[n]);
}
__attribute__((target("amx-tile"), noinline)) inline void amx_end() noexcept { _tile_release(); }

// One panel (32 outputs) for the rows the tiles are configured with (up to 16, or up to 32 when
// `two`) of a row-major bf16 block (ld elements per row) over k (a multiple of 32): c [rows × 32
// outputs] row-major. Each step (32 k) prefetches the next `pf.stride` bytes (whole lines) of
// the stream that starts `pf.offset` bytes past the panel.
__attribute__((target("amx-tile,amx-bf16"), noinline)) inline void amx_panel(const bf16* a, index ld,
                                                                             const bf16* panel, index k,
                                                                             bool two, float* c,
                                                                             const prefetch_stream& pf) noexcept {
  const long stride_a = static_cast<long>(ld * 2);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  std::uintptr_t ahead = prefetch_start(panel, pf);
  for (index kt = 0; kt < k; kt += 32) {
    const bf16* b = panel + kt * 32;  // 16 k-pairs × 32 outputs × 2
    for (index line = 0; line < pf.stride; line += 64) __builtin_prefetch(reinterpret_cast<const void*>(ahead + line), 0, 2);
    ahead += static_cast<std::uintptr_t>(pf.stride);
    _tile_loadd(4, a + kt, stride_a);
    _tile_loadd(6, b, 128);
    _tile_loadd(7, b + 32, 128);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    if (two) {
      _tile_loadd(5, a + 16 * ld + kt, stride_a);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, c, 128);
  _tile_stored(1, c + 16, 128);
  if (two) {
    _tile_stored(2, c + 16 * 32, 128);
    _tile_stored(3, c + 16 * 32 + 16, 128);
  }
}
}  // namespace detail

/// bf16 GEMM on AMX tiles: rows packed by pack_rows_amx; the epilogue receives the same tiles
/// as gemm_packed's (up to mr_max rows of accumulators). Every output row depends only on its
/// own input row, so results are batch invariant; they differ from the FMA kernels' in the last
/// bits (AMX accumulates in its own order) and flush subnormals.
template <class A, class Epilogue>
void gemm_packed_amx(const bf16* rows_rm, index rows, const packed_matrix<bf16>& w, index p_begin, index p_end,
                     Epilogue&& epilogue, const gemm_tuning& tuning = default_gemm_tuning) noexcept {
  using batch = xsimd::batch<float, A>;
  static_assert(batch::size == 16, "AMX tiles pair with 16-lane registers (32-output panels)");
  const index K = padded_k<bf16>(w.k), ld = amx_row_stride(w.k);
  alignas(64) float c[32 * 32];
  alignas(64) accumulators<A> acc;
  // Panels outer, blocks of 32 rows inner: each panel streams from memory once, and the blocks
  // after the first find it in cache (with blocks outer, a batch of 64 rows read the weights
  // twice). The blocks run in serpentine order, so the tile configuration changes at most once
  // a panel (when the last block is partial).
  //
  // Prefetch: one block streams the weights `prefetch_bytes` ahead of each step. With several,
  // the passes over a panel fetch the next panel (panels are contiguous) between them, an equal
  // share each spread over its steps, so that memory streams during every pass, not only the
  // first.
  const index blocks = (rows + 31) / 32;
  constexpr index step_bytes = 32 * 32 * static_cast<index>(sizeof(bf16));  // weights of one step
  const index steps = K / 32, panel_bytes = steps * step_bytes;
  const index share = (panel_bytes + blocks - 1) / blocks;
  const index share_stride = ((share + steps - 1) / steps + 63) / 64 * 64;
  index configured = 0;
  for (index p = p_begin; p < p_end; ++p) {
    for (index j = 0; j < blocks; ++j) {
      const index b = (p - p_begin) % 2 == 0 ? j : blocks - 1 - j;
      const index r0 = b * 32, n = std::min<index>(32, rows - r0);
      if (n != configured) {
        detail::amx_configure(n);
        configured = n;
      }
      prefetch_stream pf;
      if (tuning.prefetch_bytes > 0) {
        pf = blocks == 1 ? prefetch_stream{tuning.prefetch_bytes, step_bytes}
                         : prefetch_stream{panel_bytes + j * share, share_stride};
      }
      detail::amx_panel(rows_rm + r0 * ld, ld, w.panel(p), K, n > 16, c, pf);
      for (index i0 = 0; i0 < n; i0 += mr_max) {
        const index mr = std::min(mr_max, n - i0);
        for (index i = 0; i < mr; ++i) {
          acc[i][0] = batch::load_aligned(c + (i0 + i) * 32);
          acc[i][1] = batch::load_aligned(c + (i0 + i) * 32 + 16);
        }
        epilogue(r0 + i0, mr, p, acc);
      }
    }
  }
  detail::amx_end();
}
#endif

/// Runs the micro-kernel over panels `[p_begin, p_end)` of `w` and every block of the packed
/// rows (packed with pack_rows<W>), calling `epilogue(row0, mr, panel, acc)` once per finished
/// tile.
///
/// Loop order: groups of row blocks → panels → k-blocks → row blocks. One k-block of a panel
/// stays in L1 while every row block of the group streams past it; the group's accumulators
/// wait in a stack buffer between k-blocks.
template <class A, class W, class Epilogue>
MOE_FORCEINLINE void gemm_packed(const W* packed_rows, index rows, const packed_matrix<W>& w, index p_begin,
                                 index p_end, Epilogue&& epilogue,
                                 const gemm_tuning& tuning = default_gemm_tuning) noexcept {
  MOE_ASSERT(w.width == panel_width<A>);
  constexpr index L = static_cast<index>(xsimd::batch<float, A>::size);
  constexpr index max_group = 16;
  const index group = std::max<index>(1, std::min(max_group, tuning.block_group));
  const index k_block = std::max(k_step<W>, tuning.k_block / k_step<W> * k_step<W>);
  alignas(64) accumulators<A> tiles[max_group];
  const index blocks = row_blocks(rows);
  const index K = padded_k<W>(w.k);
  // Bytes of weights one micro-kernel step reads (fp32: one k; bf16: one pair), for 2L outputs.
  constexpr index step_bytes = 2 * L * static_cast<index>(sizeof(float));
  bool dot = false;
  if constexpr (std::is_same_v<W, bf16>) {
    // Pair layouts run vdpbf16ps or the widening kernel; AMX takes its own layout (gemm_rows_any).
    const bf16_kernel pair = tuning.bf16 == bf16_kernel::amx ? bf16_kernel::automatic : tuning.bf16;
    dot = resolve_bf16_kernel<A>(pair) == bf16_kernel::dot ||
          (pair == bf16_kernel::automatic && bf16_dot_preferred<A>());
  }
  for (index g0 = 0; g0 < blocks; g0 += group) {
    const index g1 = std::min(blocks, g0 + group);
    for (index p = p_begin; p < p_end; ++p) {
      const W* panel = w.panel(p);
      for (index k0 = 0; k0 < K; k0 += k_block) {
        const index kc = std::min(k_block, K - k0);
        const bool last = k0 + kc == K;
        // Prefetch. A single row block streams the weights `prefetch_bytes` ahead of each step.
        // With several, the passes over this k-block fetch the next k-block (the next panel's
        // first after the last one; panels are contiguous) between them, each pass a share
        // proportional to its rows and spread evenly over its steps: the memory traffic then
        // runs at the pace of the arithmetic instead of in bursts that stall it.
        const index span = kc / k_step<W> * step_bytes;
        const index group_rows = row_block_begin(rows, g1) - row_block_begin(rows, g0);
        index rows_before = 0;
        for (index b = g0; b < g1; ++b) {
          const index r0 = row_block_begin(rows, b), mr = row_block_begin(rows, b + 1) - r0;
          prefetch_stream pf;
          if (tuning.prefetch_bytes > 0) {
            pf = g1 - g0 == 1 ? prefetch_stream{tuning.prefetch_bytes, step_bytes}
                              : prefetch_stream{span + span * rows_before / group_rows,
                                                (step_bytes * mr + group_rows - 1) / group_rows};
          }
          rows_before += mr;
          detail::micro_kernel_dispatch<A>(std::make_integer_sequence<int, mr_max>{}, mr,
                                           packed_rows + b * mr_max * K + k0 * mr_max, kc, panel + k0 * 2 * L,
                                           tiles[b - g0], k0 > 0, dot, pf);
          if (last) epilogue(r0, mr, p, tiles[b - g0]);
        }
      }
    }
  }
}

template <class A>
bool bf16_dot_preferred() noexcept {
  static const bool preferred = [] {
    if (!bf16_dot_available<A>()) return false;
    constexpr index k = 512, width = panel_width<A>;
    aligned_buffer<bf16> rows(static_cast<std::size_t>(mr_max * k)), panel(static_cast<std::size_t>(width * k));
    for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = bf16(0.5f + 0.001f * static_cast<float>(i % 97));
    for (std::size_t i = 0; i < panel.size(); ++i) panel[i] = bf16(0.25f - 0.001f * static_cast<float>(i % 89));
    alignas(64) accumulators<A> acc;
    auto time = [&](bool dot) {
      double best = 1e30;
      for (int rep = 0; rep < 3; ++rep) {
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < 64; ++i) {
          detail::micro_kernel_dispatch<A>(std::make_integer_sequence<int, mr_max>{}, mr_max, rows.data(), k,
                                           panel.data(), acc, i > 0, dot, prefetch_stream{});
        }
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
      return best;
    };
    time(true);  // warm up both paths and the clock
    time(false);
    return time(true) < time(false);
  }();
  return preferred;
}

template <class A>
bf16_kernel resolve_bf16_kernel(bf16_kernel requested) noexcept {
  const bool avx512 = std::is_base_of_v<xsimd::avx512f, A>;
  if ((requested == bf16_kernel::automatic || requested == bf16_kernel::amx) && avx512 && amx_available()) {
    return bf16_kernel::amx;
  }
  if (requested == bf16_kernel::dot) return bf16_dot_available<A>() ? bf16_kernel::dot : bf16_kernel::widen;
  if (requested != bf16_kernel::widen && bf16_dot_preferred<A>()) return bf16_kernel::dot;
  return bf16_kernel::widen;
}

/// Bytes of scratch that gemm_rows_any needs for `rows` rows of length k with weights W.
template <class W>
constexpr std::size_t gemm_rows_scratch_bytes(index rows, index k) noexcept {
  std::size_t bytes = packed_rows_size<W>(rows, k) * sizeof(W);
  if constexpr (std::is_same_v<W, bf16>) bytes = std::max(bytes, packed_rows_amx_size(rows, k) * sizeof(bf16));
  return bytes;
}

/// Packs `rows` input rows (pointers) for the kernel this CPU runs and multiplies them by panels
/// `[p0, p1)` of w, calling `epilogue(row0, mr, panel, acc)` per finished tile. The entry point
/// of the expert banks: fp32 runs the canonical FMA kernel; bf16 runs AMX where usable, else
/// vdpbf16ps or the widening kernel (resolve_bf16_kernel).
template <class A, class W, class Epilogue>
void gemm_rows_any(const float* const* x, index rows, const packed_matrix<W>& w, index p0, index p1, void* scratch,
                   Epilogue&& epilogue, const gemm_tuning& tuning = default_gemm_tuning) noexcept {
  if constexpr (std::is_same_v<W, bf16>) {
#if defined(MOE_HAS_AMX_KERNEL)
    if constexpr (std::is_base_of_v<xsimd::avx512f, A>) {
      if (resolve_bf16_kernel<A>(tuning.bf16) == bf16_kernel::amx) {
        auto* packed = static_cast<bf16*>(scratch);
        pack_rows_amx(x, rows, w.k, packed);
        gemm_packed_amx<A>(packed, rows, w, p0, p1, epilogue, tuning);
        return;
      }
    }
#endif
  }
  auto* packed = static_cast<W*>(scratch);
  pack_rows<W>(x, rows, w.k, packed);
  gemm_packed<A>(static_cast<const W*>(packed), rows, w, p0, p1, epilogue, tuning);
}

/// Rows per packing chunk for inputs of length k: about 1 MiB of packed fp32 rows (half an L2).
constexpr index rows_per_chunk(index k) noexcept {
  const index r = (index{1} << 20) / (4 * std::max<index>(k, 1));
  return std::max(mr_max, r / mr_max * mr_max);
}

/// Stores `v` at `p` (aligned to the register's size) with a non-temporal store where the ISA
/// has one: the line is not read first and not kept in this core's caches, which suits data that
/// another core reads next. Call stream_fence() before that core may read it.
template <class A>
MOE_FORCEINLINE void store_stream(float* p, const xsimd::batch<float, A>& v) noexcept {
#if XSIMD_WITH_AVX512F
  if constexpr (std::is_base_of_v<xsimd::avx512f, A>) {
    _mm512_stream_ps(p, v);
    return;
  }
#endif
#if XSIMD_WITH_AVX
  if constexpr (std::is_base_of_v<xsimd::avx, A> && xsimd::batch<float, A>::size == 8) {
    _mm256_stream_ps(p, v);
    return;
  }
#endif
#if XSIMD_WITH_SSE2
  if constexpr (std::is_base_of_v<xsimd::sse2, A> && xsimd::batch<float, A>::size == 4) {
    _mm_stream_ps(p, v);
    return;
  }
#endif
  v.store_aligned(p);
}

/// Orders this thread's non-temporal stores before its later stores (a barrier's flag).
inline void stream_fence() noexcept {
#if XSIMD_WITH_SSE2
  _mm_sfence();
#endif
}

/// Scalar reference for the canonical fp32 GEMM: `c[i][j] = Σ_kk x[i][kk] w[j][kk]`, sequential fma.
inline void gemm_reference(const float* x, index rows, index k, index ldx, const float* w, index n, index ldw,
                           float* c, index ldc) noexcept {
  for (index i = 0; i < rows; ++i) {
    for (index j = 0; j < n; ++j) {
      float acc = 0.0f;
      for (index kk = 0; kk < k; ++kk) acc = std::fma(x[i * ldx + kk], w[j * ldw + kk], acc);
      c[i * ldc + j] = acc;
    }
  }
}

/// Scalar reference for the bf16 GEMM: rows rounded to bf16, pairs as vdpbf16ps takes them.
inline void gemm_reference_bf16(const float* x, index rows, index k, index ldx, const bf16* w, index n, index ldw,
                                float* c, index ldc) noexcept {
  for (index i = 0; i < rows; ++i) {
    for (index j = 0; j < n; ++j) {
      float acc = 0.0f;
      for (index kk = 0; kk < k; kk += 2) {
        const float x0 = static_cast<float>(bf16(x[i * ldx + kk])), w0 = static_cast<float>(w[j * ldw + kk]);
        const float x1 = kk + 1 < k ? static_cast<float>(bf16(x[i * ldx + kk + 1])) : 0.0f;
        const float w1 = kk + 1 < k ? static_cast<float>(w[j * ldw + kk + 1]) : 0.0f;
        acc = std::fma(x1, w1, acc);
        acc = std::fma(x0, w0, acc);
      }
      c[i * ldc + j] = acc;
    }
  }
}

/// Stores the first `cols` outputs of a tile's rows into `c` (row `r0 + i` at `c + (r0+i)*ldc`,
/// panel columns starting at `col0`). Columns at or beyond `n` are not written.
template <class A>
MOE_FORCEINLINE void store_tile(const accumulators<A>& acc, index mr, float* c, index ldc, index col0,
                                index n) noexcept {
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
  float* packed = nullptr;       ///< packed_rows_size(chunk, k) floats
  const float** rows = nullptr;  ///< chunk pointers
  index chunk = 0;               ///< rows packed at a time
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
void gemm_rows(const float* x, index rows, index ldx, const packed_weights& w, index p0, index p1, float* c,
               index ldc, const gemm_scratch& s) noexcept {
  if (rows == 0 || p0 >= p1) return;
  for (index r0 = 0; r0 < rows; r0 += s.chunk) {
    const index n = std::min(s.chunk, rows - r0);
    for (index i = 0; i < n; ++i) s.rows[i] = x + (r0 + i) * ldx;
    pack_rows(s.rows, n, w.k, s.packed);
    gemm_packed<A>(s.packed, n, w, p0, p1, [&](index t0, index mr, index p, const accumulators<A>& acc) {
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
