// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <cstdint>
#include <type_traits>
#include <vector>

#include "moe/concepts.hpp"
#include "moe/config.hpp"
#include "moe/core/bf16.hpp"
#include "moe/core/error.hpp"
#include "moe/core/parallel.hpp"
#include "moe/core/views.hpp"
#include "moe/experts/source.hpp"
#include "moe/kernels/gemm.hpp"
#include "moe/kernels/math.hpp"

namespace moe {

/// Extents of a SwiGLU expert bank.
struct swiglu_shape {
  index experts = 0;       ///< E
  index hidden = 0;        ///< d, the token width
  index intermediate = 0;  ///< f, the expert width
};

namespace detail {
/// The shape of an FFN bank given as checkpoint matrices: `first [E·f × d]` (the gate, or the up
/// matrix of a non-gated MLP), optional `second` of the same shape, `down [E·d × f]`. Throws
/// moe::error naming the matrix and its extent.
inline swiglu_shape ffn_shape(const char* where, const_matrix_map<float> first, const char* first_name,
                              const const_matrix_map<float>* second, const char* second_name, const_matrix_map<float> down) {
  const index d = first.cols();
  const index f = down.cols();
  if (d < 1) fail_parameter(error_id::shape, where, concat(first_name, ".cols()"), ">= 1", d);
  if (f < 1) fail_parameter(error_id::shape, where, "down.cols()", ">= 1", f);
  if (first.rows() < f || first.rows() % f != 0) {
    fail_parameter(error_id::shape, where, concat(first_name, ".rows()"), concat("a positive multiple of down.cols() = ", f),
                   first.rows());
  }
  const index E = first.rows() / f;
  if (second) {
    check_extent(where, concat(second_name, ".rows()"), second->rows(), E * f);
    check_extent(where, concat(second_name, ".cols()"), second->cols(), d);
  }
  check_extent(where, "down.rows()", down.rows(), E * d);
  return {E, d, f};
}
}  // namespace detail

/// A bank of SwiGLU experts, `Expert_e(x) = W_down,e · (silu(W_gate,e x) ⊙ W_up,e x)`.
///
/// @tparam Scalar weight storage: `float`, or `moe::bf16` (half the bytes; activations are
///         rounded to bf16 at each matrix input, accumulation is fp32; uses vdpbf16ps where the
///         CPU has avx512_bf16 and widens the weights to fp32 in registers where it has not).
///
/// Weights are given as checkpoints store them: `gate, up [E·f × d]` and `down [E·d × f]`,
/// row-major (`[out × in]`), experts stacked, as float or bf16 arrays. The constructor repacks
/// them once into the kernel's panel layout (gate and up interleaved so that one pass computes
/// both), owned by the bank; the caller's buffers are not referenced afterwards. The bank is
/// immutable and can be shared by threads.
template <class Scalar = float>
class swiglu_experts {
  static_assert(std::is_same_v<Scalar, float> || std::is_same_v<Scalar, bf16>,
                "moe::swiglu_experts<Scalar>: Scalar must be float or moe::bf16");

 public:
  using scalar_type = Scalar;
  using arch = kernels::gemm_arch;

  /// @param gate `[E·f × d]`, @param up `[E·f × d]`, @param down `[E·d × f]` (fp32).
  swiglu_experts(const_matrix_map<float> gate, const_matrix_map<float> up, const_matrix_map<float> down) {
    const auto shape = detail::ffn_shape("moe::swiglu_experts", gate, "gate", &up, "up", down);
    init(shape, gate.data(), gate.outerStride(), up.data(), up.outerStride(), down.data(), down.outerStride());
  }

  /// Convenience: any row-major Eigen matrices, Maps or Blocks with the shapes above.
  template <class G, class U, class D>
    requires(!std::is_same_v<G, const_matrix_map<float>> || !std::is_same_v<U, const_matrix_map<float>> ||
             !std::is_same_v<D, const_matrix_map<float>>)
  swiglu_experts(const Eigen::DenseBase<G>& gate, const Eigen::DenseBase<U>& up, const Eigen::DenseBase<D>& down)
      : swiglu_experts(view(gate), view(up), view(down)) {}

  /// From contiguous stacked arrays (float or bf16): `gate, up` hold `E·f·d` values, `down`
  /// holds `E·d·f`. E may be 0 (a process that holds no expert; the arrays are not read).
  template <class Src>
    requires(std::is_same_v<Src, float> || std::is_same_v<Src, bf16>)
  swiglu_experts(const Src* gate, const Src* up, const Src* down, swiglu_shape shape) {
    constexpr const char* where = "moe::swiglu_experts";
    // 0 experts is legal here: the bank of a process that holds no expert (moe::placement).
    if (shape.experts < 0) detail::fail_parameter(error_id::shape, where, "shape.experts", ">= 0", shape.experts);
    if (shape.hidden < 1) detail::fail_parameter(error_id::shape, where, "shape.hidden", ">= 1", shape.hidden);
    if (shape.intermediate < 1) {
      detail::fail_parameter(error_id::shape, where, "shape.intermediate", ">= 1", shape.intermediate);
    }
    init(shape, gate, shape.hidden, up, shape.hidden, down, shape.intermediate);
  }

  /// From weights where a checkpoint keeps them (moe::weight_source: fp32, bf16 or fp16, any
  /// strides, stacked or one tensor per expert, typically a mapped file): `gate, up` hold E
  /// matrices `[f × d]`, `down` E matrices `[d × f]`. The panels are allocated first, then filled
  /// straight from the source on up to `threads` threads (0: all; experts split between them),
  /// so a load needs no memory beyond the packed bank and gives the same bits on any thread count.
  swiglu_experts(const weight_source& gate, const weight_source& up, const weight_source& down, int threads = 0) {
    constexpr const char* where = "moe::swiglu_experts";
    const index E = gate.experts, f = gate.rows, d = gate.cols;
    if (E < 0) detail::fail_parameter(error_id::shape, where, "gate.experts", ">= 0", E);
    if (d < 1) detail::fail_parameter(error_id::shape, where, "gate.cols", ">= 1", d);
    if (f < 1) detail::fail_parameter(error_id::shape, where, "gate.rows", ">= 1", f);
    detail::check_source(where, "gate", gate, E, f, d);
    detail::check_source(where, "up", up, E, f, d);
    detail::check_source(where, "down", down, E, d, f);
    m_shape = {E, d, f};
    constexpr index W = kernels::panel_width<arch>;
    m_up.reserve(static_cast<std::size_t>(E));
    m_down.reserve(static_cast<std::size_t>(E));
    for (index e = 0; e < E; ++e) {
      m_up.push_back(kernels::allocate_panels_interleaved<Scalar>(f, d, W));
      m_down.push_back(kernels::allocate_panels<Scalar>(d, f, W));
    }
    const int nt = static_cast<int>(std::clamp<index>(threads > 0 ? threads : detail::default_threads(), 1, std::max<index>(E, 1)));
    detail::parallel_region(nt, [&](int tid, int team, auto&&) {
      for (index e = E * tid / team; e < E * (tid + 1) / team; ++e) {
        detail::with_source(gate, e, [&](auto g) {
          detail::with_source(up, e, [&](auto u) { kernels::fill_panels_interleaved(m_up[static_cast<std::size_t>(e)], g, u); });
        });
        detail::with_source(down, e, [&](auto dn) { kernels::fill_panels(m_down[static_cast<std::size_t>(e)], dn); });
        detail::release_packed(gate, e);
        detail::release_packed(up, e);
        detail::release_packed(down, e);
      }
    });
  }

  [[nodiscard]] index num_experts() const noexcept { return m_shape.experts; }
  [[nodiscard]] index hidden() const noexcept { return m_shape.hidden; }
  [[nodiscard]] index intermediate() const noexcept { return m_shape.intermediate; }
  [[nodiscard]] const swiglu_shape& shape() const noexcept { return m_shape; }
  /// Panels of the fused gate|up matrix of one expert (each gives width/2 intermediate columns).
  [[nodiscard]] index up_panels() const noexcept { return m_up.empty() ? 0 : m_up[0].panels; }
  /// Panels of the down matrix of one expert (each gives width output columns).
  [[nodiscard]] index down_panels() const noexcept { return m_down.empty() ? 0 : m_down[0].panels; }
  /// FLOPs of one token through one expert (three matrices).
  [[nodiscard]] double flops_per_row() const noexcept {
    return 6.0 * static_cast<double>(m_shape.hidden) * static_cast<double>(m_shape.intermediate);
  }
  /// Bytes of weights of one expert.
  [[nodiscard]] double bytes_per_expert() const noexcept {
    return 3.0 * static_cast<double>(m_shape.hidden * m_shape.intermediate) * sizeof(Scalar);
  }
  /// Kernel tuning of this bank's GEMMs (k-block, prefetch distance, bf16 kernel choice:
  /// `kernels::bf16_kernel::widen` gives bitwise the same bf16 results on every x86 machine, where
  /// the default may use AMX, whose rounding is its own).
  void set_tuning(const kernels::gemm_tuning& tuning) noexcept { m_tuning = tuning; }
  [[nodiscard]] const kernels::gemm_tuning& tuning() const noexcept { return m_tuning; }

  /// Bytes of scratch that up() or down() needs for `rows` rows.
  [[nodiscard]] std::size_t scratch_bytes(index rows) const noexcept {
    return kernels::gemm_rows_scratch_bytes<Scalar>(rows, std::max(m_shape.hidden, m_shape.intermediate));
  }

  /// Stage 1 for expert e: `act[i][c] = silu(g) · u` for the intermediate columns of up-panels
  /// `[p0, p1)`, from `rows` input rows (`x[i]`, hidden() floats each). When `act` and `ld_act`
  /// are aligned to a SIMD register (the schedule's are), whole registers of act are written with
  /// non-temporal stores: the caller runs kernels::stream_fence() before other threads read act.
  void up(index e, const float* const* x, index rows, index p0, index p1, float* act, index ld_act,
          void* scratch) const noexcept {
    using batch = xsimd::batch<float, arch>;
    constexpr index L = static_cast<index>(batch::size);
    const index f = m_shape.intermediate;
    const bool stream = reinterpret_cast<std::uintptr_t>(act) % sizeof(batch) == 0 && ld_act % L == 0;
    kernels::gemm_rows_any<arch>(
        x, rows, m_up[e], p0, p1, scratch,
        [&](index r0, index mr, index p, const kernels::accumulators<arch>& acc) {
          const index c0 = p * L;
          for (index i = 0; i < mr; ++i) {
            const batch h = kernels::silu(acc[i][0]) * acc[i][1];
            float* dst = act + (r0 + i) * ld_act + c0;
            if (c0 + L <= f) {
              // Non-temporal: act is read next by every thread (stage 2), from memory rather
              // than from the writer's cache, and its lines need no read-for-ownership.
              if (stream) {
                kernels::store_stream<arch>(dst, h);
              } else {
                h.store_unaligned(dst);
              }
            } else {
              alignas(64) float tmp[L];
              h.store_aligned(tmp);
              for (index j = 0; c0 + j < f; ++j) dst[j] = tmp[j];
            }
          }
        },
        m_tuning);
  }

  /// Stage 2 for expert e: `y[i][c] = fma(w[i], out[i][c], y[i][c])` for the output columns of
  /// down-panels `[p0, p1)`, from `rows` intermediate rows (`act[i]`, intermediate() floats).
  void down(index e, const float* const* act, index rows, index p0, index p1, const float* w, float* const* y,
            void* scratch) const noexcept {
    using batch = xsimd::batch<float, arch>;
    constexpr index L = static_cast<index>(batch::size);
    const index d = m_shape.hidden;
    kernels::gemm_rows_any<arch>(
        act, rows, m_down[e], p0, p1, scratch,
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
  template <class Src>
  void init(swiglu_shape shape, const Src* gate, index ldg, const Src* up, index ldu, const Src* down, index ldd) {
    m_shape = shape;
    const index d = shape.hidden, f = shape.intermediate;
    constexpr index W = kernels::panel_width<arch>;
    m_up.reserve(static_cast<std::size_t>(shape.experts));
    m_down.reserve(static_cast<std::size_t>(shape.experts));
    for (index e = 0; e < shape.experts; ++e) {
      m_up.push_back(kernels::pack_panels_interleaved<Scalar>(gate + e * f * ldg, ldg, up + e * f * ldu, ldu, f, d, W));
      m_down.push_back(kernels::pack_panels<Scalar>(down + e * d * ldd, d, f, ldd, W));
    }
  }

  swiglu_shape m_shape;
  kernels::gemm_tuning m_tuning = kernels::default_gemm_tuning;
  std::vector<kernels::packed_matrix<Scalar>> m_up;    // per expert: gate|up interleaved, k = d
  std::vector<kernels::packed_matrix<Scalar>> m_down;  // per expert: down, k = f
};

static_assert(expert_bank<swiglu_experts<float>>);
static_assert(expert_bank<swiglu_experts<bf16>>);

}  // namespace moe
