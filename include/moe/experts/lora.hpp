// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// LoRA experts (DynMoLE, LoRA-Mixer, MixLoRA / MoE-PEFT): E rank-r adapters over one frozen
// base projection W_0 that every token goes through,
//
//   y = W_0 x + Σ_slots w · (α/r) · B_e (A_e x)          (rsLoRA: α/√r instead of α/r)
//
// with `A [E·r × d]` and `B [E·d × r]` as PEFT checkpoints store them (`lora_A.weight [r × d_in]`,
// `lora_B.weight [d_out × r]`, experts stacked). A moe layer maps d → d, so d_in = d_out = d: a
// LoRA-MoE over a projection of other widths (an up- or down-projection) is not a moe layer.
//
// How the layer computes it, with no change to the layer, the plan or the devices:
//   - the routed part is a moe::lora_experts bank of the host kernel interface
//     (moe::detail::host_ffn_bank): stage 1 (`up`) computes the r values `s · A_e x` of a row as
//     its "intermediate" (once per (token, expert): the schedule splits the r columns over the
//     threads and every thread's stage 2 reads them), stage 2 (`down`) adds `w · B_e (s A_e x)`
//     into the output columns of the thread's panels;
//   - the base projection is an always-on expert, moe::shared_experts<lora_experts<S>> over
//     `lora_experts<S>::base_projection(W_0)`: the same bank type in its degenerate full-rank
//     form, A = I (not stored: stage 1 copies the row) and B = W_0, scale 1. The host devices run
//     it as one dense pass over every token (both threads on W_0's panels), after the routed
//     experts, so `y_t = Σ_slots w·Expert_e(x_t) + W_0 x_t` in that order of additions.
// With moe::mixed_experts (full experts beside LoRA experts) the shared bank has the mixed type
// too: `mixed_experts<F, lora_experts<S>>(F with 0 experts, lora_experts<S>::base_projection(W_0))`.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <type_traits>
#include <vector>

#include "moe/concepts.hpp"
#include "moe/config.hpp"
#include "moe/core/bf16.hpp"
#include "moe/core/error.hpp"
#include "moe/core/views.hpp"
#include "moe/kernels/gemm.hpp"
#include "moe/kernels/math.hpp"

namespace moe {

/// The rank and scale of LoRA adapters (PEFT's `r`, `lora_alpha`, `use_rslora`).
struct lora_config {
  index rank = 0;       ///< r >= 1
  double alpha = 0.0;   ///< lora_alpha, finite
  bool rslora = false;  ///< scale α/√r (rank-stabilised LoRA) instead of α/r

  /// The adapter's scale: α/r, or α/√r with rslora (computed in double).
  [[nodiscard]] double scaling() const noexcept {
    return rslora ? alpha / std::sqrt(static_cast<double>(rank)) : alpha / static_cast<double>(rank);
  }
};

/// A bank of LoRA experts, `Expert_e(x) = s · B_e (A_e x)` with `s = α/r` (or `α/√r`), or, built
/// by base_projection(), the dense base projection `W_0 x` that every token goes through (used as
/// moe::shared_experts; see the top of this header).
///
/// @tparam Scalar weight storage: `float`, or `moe::bf16` (activations rounded to bf16 at each
///         matrix input, fp32 accumulation, as moe::swiglu_experts<bf16>).
///
/// Weights are given as checkpoints store them: `A [E·r × d]`, `B [E·d × r]`, row-major, experts
/// stacked, fp32 or bf16; they are repacked once into the kernels' panels (owned by the bank).
/// Arithmetic: `act = fl(s · (A_e x))` (each element a fused chain over d in order), then
/// `y = fma(w, B_e act, y)` (a chain over r): bitwise the same for any batch and thread count.
/// Ranks below the panel width (2 SIMD registers: 32 outputs on AVX-512) pad A_e's panels with
/// zeros, so a rank-8 A_e reads 4× its bytes; B_e is read exactly.
template <class Scalar = float>
class lora_experts {
  static_assert(std::is_same_v<Scalar, float> || std::is_same_v<Scalar, bf16>,
                "moe::lora_experts<Scalar>: Scalar must be float or moe::bf16");

 public:
  using scalar_type = Scalar;
  using arch = kernels::gemm_arch;

  /// @param a `[E·r × d]` (lora_A of each expert, stacked), @param b `[E·d × r]` (lora_B),
  /// @param config r (>= 1; `a.rows()` a positive multiple of it) and α (finite).
  lora_experts(const_matrix_map<float> a, const_matrix_map<float> b, lora_config config) {
    constexpr const char* where = "moe::lora_experts";
    check_config(where, config);
    const index d = a.cols(), r = config.rank;
    if (d < 1) detail::fail_parameter(error_id::shape, where, "a.cols()", ">= 1", d);
    if (a.rows() < r || a.rows() % r != 0) {
      detail::fail_parameter(error_id::shape, where, "a.rows()", detail::concat("a positive multiple of the rank r = ", r),
                             a.rows());
    }
    const index E = a.rows() / r;
    detail::check_extent(where, "b.rows()", b.rows(), E * d);
    detail::check_extent(where, "b.cols()", b.cols(), r);
    init(E, d, config, a.data(), a.outerStride(), b.data(), b.outerStride());
  }

  /// Convenience: any row-major Eigen matrices, Maps or Blocks with the shapes above.
  template <class A, class B>
    requires(!std::is_same_v<A, const_matrix_map<float>> || !std::is_same_v<B, const_matrix_map<float>>)
  lora_experts(const Eigen::DenseBase<A>& a, const Eigen::DenseBase<B>& b, lora_config config)
      : lora_experts(view(a), view(b), config) {}

  /// From contiguous stacked arrays (float or bf16): `a` holds `E·r·d` values, `b` holds `E·d·r`.
  /// E may be 0 (a process that holds no expert; the arrays are not read).
  template <class Src>
    requires(std::is_same_v<Src, float> || std::is_same_v<Src, bf16>)
  lora_experts(const Src* a, const Src* b, index experts, index hidden, lora_config config) {
    constexpr const char* where = "moe::lora_experts";
    check_config(where, config);
    if (experts < 0) detail::fail_parameter(error_id::shape, where, "experts", ">= 0", experts);
    if (hidden < 1) detail::fail_parameter(error_id::shape, where, "hidden", ">= 1", hidden);
    init(experts, hidden, config, a, hidden, b, config.rank);
  }

  /// The base projection `W_0 [d × d]` (`[out × in]`, as checkpoints store it) as a bank of one
  /// full-rank expert with A = I and B = W_0, scale 1: `Expert_0(x) = W_0 x`. Give it to the
  /// layer as `moe::shared_experts<lora_experts>(lora_experts::base_projection(W_0))`.
  static lora_experts base_projection(const_matrix_map<float> w0) {
    constexpr const char* where = "moe::lora_experts::base_projection";
    if (w0.cols() < 1) detail::fail_parameter(error_id::shape, where, "w0.cols()", ">= 1", w0.cols());
    detail::check_extent(where, "w0.rows()", w0.rows(), w0.cols());
    lora_experts out;
    const index d = w0.cols();
    out.m_identity = true;
    out.m_experts = 1;
    out.m_hidden = d;
    out.m_rank = d;
    out.m_config = {d, static_cast<double>(d), false};
    out.m_scale = 1.0f;
    out.m_b.push_back(kernels::pack_panels<Scalar>(w0.data(), d, d, w0.outerStride(), width));
    return out;
  }
  template <class W>
    requires(!std::is_same_v<W, const_matrix_map<float>>)
  static lora_experts base_projection(const Eigen::DenseBase<W>& w0) {
    return base_projection(const_matrix_map<float>(view(w0)));
  }

  [[nodiscard]] index num_experts() const noexcept { return m_experts; }
  [[nodiscard]] index hidden() const noexcept { return m_hidden; }
  /// The rank r (d for a base projection).
  [[nodiscard]] index rank() const noexcept { return m_rank; }
  [[nodiscard]] const lora_config& config() const noexcept { return m_config; }
  /// The scale s applied to A_e x, rounded to float (1 for a base projection).
  [[nodiscard]] float scale() const noexcept { return m_scale; }
  /// Whether this bank is a base projection (base_projection()).
  [[nodiscard]] bool is_base_projection() const noexcept { return m_identity; }
  /// The schedule's intermediate width: r.
  [[nodiscard]] index intermediate() const noexcept { return m_rank; }
  /// Panels of A (r outputs; a base projection: column ranges of the copied row).
  [[nodiscard]] index up_panels() const noexcept { return (m_rank + width - 1) / width; }
  /// Panels of B (d outputs).
  [[nodiscard]] index down_panels() const noexcept { return (m_hidden + width - 1) / width; }
  /// FLOPs of one token through one expert (`A x` and `B (A x)`; a base projection: `W_0 x`).
  [[nodiscard]] double flops_per_row() const noexcept {
    return (m_identity ? 2.0 : 4.0) * static_cast<double>(m_hidden) * static_cast<double>(m_rank);
  }
  /// Bytes of packed weights of one expert (what a token's pass through it reads).
  [[nodiscard]] double bytes_per_expert() const noexcept {
    if (m_b.empty()) return 0.0;
    return static_cast<double>((m_a.empty() ? 0 : m_a[0].bytes()) + m_b[0].bytes());
  }
  /// Kernel tuning of this bank's GEMMs (as moe::swiglu_experts::set_tuning).
  void set_tuning(const kernels::gemm_tuning& tuning) noexcept { m_tuning = tuning; }
  [[nodiscard]] const kernels::gemm_tuning& tuning() const noexcept { return m_tuning; }

  /// Bytes of scratch that up() or down() needs for `rows` rows.
  [[nodiscard]] std::size_t scratch_bytes(index rows) const noexcept {
    return kernels::gemm_rows_scratch_bytes<Scalar>(rows, std::max(m_hidden, m_rank));
  }

  /// Stage 1 for expert e: `act[i][c] = s · (A_e x_i)_c` for the rank columns of up-panels
  /// `[p0, p1)` (a base projection copies columns of x_i).
  void up(index e, const float* const* x, index rows, index p0, index p1, float* act, index ld_act,
          void* scratch) const noexcept {
    const index r = m_rank;
    if (m_identity) {
      const index c0 = p0 * width, c1 = std::min(p1 * width, r);
      if (c0 >= c1) return;
      for (index i = 0; i < rows; ++i) {
        std::memcpy(act + i * ld_act + c0, x[i] + c0, static_cast<std::size_t>(c1 - c0) * sizeof(float));
      }
      return;
    }
    using batch = xsimd::batch<float, arch>;
    constexpr index L = static_cast<index>(batch::size);
    const batch s(m_scale);
    kernels::gemm_rows_any<arch>(
        x, rows, m_a[e], p0, p1, scratch,
        [&](index r0, index mr, index p, const kernels::accumulators<arch>& acc) {
          const index c0 = p * 2 * L;
          for (index i = 0; i < mr; ++i) {
            float* dst = act + (r0 + i) * ld_act + c0;
            const batch lo = acc[i][0] * s, hi = acc[i][1] * s;
            if (c0 + 2 * L <= r) {
              lo.store_unaligned(dst);
              hi.store_unaligned(dst + L);
            } else {
              alignas(64) float tmp[2 * L];
              lo.store_aligned(tmp);
              hi.store_aligned(tmp + L);
              for (index j = 0; c0 + j < r; ++j) dst[j] = tmp[j];
            }
          }
        },
        m_tuning);
  }

  /// Stage 2 for expert e: `y[i][c] = fma(w[i], (B_e act_i)_c, y[i][c])` for the output columns of
  /// down-panels `[p0, p1)`, from `rows` intermediate rows (`act[i]`, r floats).
  void down(index e, const float* const* act, index rows, index p0, index p1, const float* w, float* const* y,
            void* scratch) const noexcept {
    using batch = xsimd::batch<float, arch>;
    constexpr index L = static_cast<index>(batch::size);
    const index d = m_hidden;
    kernels::gemm_rows_any<arch>(
        act, rows, m_b[e], p0, p1, scratch,
        [&](index r0, index mr, index p, const kernels::accumulators<arch>& acc) {
          const index c0 = p * 2 * L;
          for (index i = 0; i < mr; ++i) {
            const batch wi(w[r0 + i]);
            float* dst = y[r0 + i] + c0;
            if (c0 + 2 * L <= d) {
              kernels::fmadd(wi, acc[i][0], batch::load_unaligned(dst)).store_unaligned(dst);
              kernels::fmadd(wi, acc[i][1], batch::load_unaligned(dst + L)).store_unaligned(dst + L);
            } else {
              alignas(64) float tmp[2 * L];
              alignas(64) float cur[2 * L] = {};
              for (index j = 0; c0 + j < d; ++j) cur[j] = dst[j];
              kernels::fmadd(wi, acc[i][0], batch::load_aligned(cur)).store_aligned(tmp);
              kernels::fmadd(wi, acc[i][1], batch::load_aligned(cur + L)).store_aligned(tmp + L);
              for (index j = 0; c0 + j < d; ++j) dst[j] = tmp[j];
            }
          }
        },
        m_tuning);
  }

 private:
  static constexpr index width = kernels::panel_width<arch>;

  lora_experts() = default;

  static void check_config(const char* where, const lora_config& c) {
    if (c.rank < 1) detail::fail_parameter(error_id::config, where, "config.rank", ">= 1", c.rank);
    if (!std::isfinite(c.alpha)) detail::fail_parameter(error_id::config, where, "config.alpha", "finite", c.alpha);
    const double s = c.scaling();
    if (!std::isfinite(static_cast<float>(s))) {
      detail::fail_parameter(error_id::config, where, "config.scaling()", "finite in float", s);
    }
  }

  template <class Src>
  void init(index E, index d, lora_config config, const Src* a, index lda, const Src* b, index ldb) {
    constexpr index limit = index{1} << 40;  // rows of one stacked tensor: E·r and E·d stay far from overflow
    if (E > 0 && (E > limit / config.rank || E > limit / d)) {
      detail::fail_parameter(error_id::shape, "moe::lora_experts", "shape", "E·r and E·d at most 2^40 rows",
                             detail::concat(E, " experts of rank ", config.rank, " over d = ", d));
    }
    m_experts = E;
    m_hidden = d;
    m_rank = config.rank;
    m_config = config;
    m_scale = static_cast<float>(config.scaling());
    const index r = config.rank;
    m_a.reserve(static_cast<std::size_t>(E));
    m_b.reserve(static_cast<std::size_t>(E));
    for (index e = 0; e < E; ++e) {
      m_a.push_back(kernels::pack_panels<Scalar>(a + e * r * lda, r, d, lda, width));
      m_b.push_back(kernels::pack_panels<Scalar>(b + e * d * ldb, d, r, ldb, width));
    }
  }

  index m_experts = 0, m_hidden = 0, m_rank = 0;
  lora_config m_config;
  float m_scale = 1.0f;
  bool m_identity = false;
  kernels::gemm_tuning m_tuning = kernels::default_gemm_tuning;
  std::vector<kernels::packed_matrix<Scalar>> m_a;  // per expert: A_e [r × d], k = d (empty for a base projection)
  std::vector<kernels::packed_matrix<Scalar>> m_b;  // per expert: B_e [d × r], k = r (W_0, k = d)
};

static_assert(expert_bank<lora_experts<float>>);
static_assert(expert_bank<lora_experts<bf16>>);

}  // namespace moe
