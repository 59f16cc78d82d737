// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
// Experts in place: a gated-MLP bank computed straight from row-major weights where they lie,
// typically the tensors of a mapped checkpoint, with nothing packed (docs/architecture.md §4.2).
#pragma once

#include <algorithm>
#include <cstddef>
#include <memory>
#include <utility>

#include "moe/concepts.hpp"
#include "moe/config.hpp"
#include "moe/core/bf16.hpp"
#include "moe/core/error.hpp"
#include "moe/core/f16.hpp"
#include "moe/experts/source.hpp"
#include "moe/experts/swiglu.hpp"
#include "moe/kernels/activations.hpp"
#include "moe/kernels/rowmajor.hpp"

namespace moe {

/// A bank of gated-MLP experts, `Expert_e(x) = W_down,e · act(W_gate,e x, W_up,e x)` (SwiGLU with
/// the default Activation), computed from the weights where they are: fp32, bf16 or fp16
/// matrices `[out × in]` with contiguous rows (a moe::weight_source with `col_stride == 1`: one
/// tensor per expert or stacked, any row and expert strides, any alignment), read in place by the
/// dot-product kernels of kernels/rowmajor.hpp. Building one copies nothing, so a checkpoint's
/// layer is ready as soon as its file is mapped (moe::io::map_experts); `owner` keeps that memory
/// alive for as long as the bank (or a copy of it) lives.
///
/// Arithmetic: inputs and activations stay fp32 and weights are widened to fp32 exactly, so a
/// bf16 bank here does not round activations to bf16 as moe::swiglu_experts<bf16> does (the two
/// differ in the last bits). Each output follows the canonical order of kernels/rowmajor.hpp:
/// results do not depend on the batch, the chunking or the thread count. Prefill is slower than
/// the packed banks' (no panel layout, one horizontal sum per output); decode reads each selected
/// weight once, as they do.
///
/// @tparam Activation a gated activation policy of kernels/activations.hpp (`glu(g, u)`).
template <class Activation = act::silu>
class mapped_experts {
 public:
  using activation_type = Activation;
  using arch = kernels::gemm_arch;
  /// Intermediate columns per up-panel and output columns per down-panel (the unit of work that
  /// a host device splits between threads).
  static constexpr index up_width = 16, down_width = 16;

  /// @param gate, @param up E matrices `[f × d]`; @param down E matrices `[d × f]`, all of one
  ///        element type with contiguous rows. @param owner shares ownership of their memory.
  mapped_experts(weight_source gate, weight_source up, weight_source down, std::shared_ptr<const void> owner = {})
      : m_gate(std::move(gate)), m_up(std::move(up)), m_down(std::move(down)), m_owner(std::move(owner)) {
    constexpr const char* where = "moe::mapped_experts";
    const index E = m_gate.experts, f = m_gate.rows, d = m_gate.cols;
    if (E < 0) detail::fail_parameter(error_id::shape, where, "gate.experts", ">= 0", E);
    if (d < 1) detail::fail_parameter(error_id::shape, where, "gate.cols", ">= 1", d);
    if (f < 1) detail::fail_parameter(error_id::shape, where, "gate.rows", ">= 1", f);
    detail::check_source(where, "gate", m_gate, E, f, d);
    detail::check_source(where, "up", m_up, E, f, d);
    detail::check_source(where, "down", m_down, E, d, f);
    for (const auto& [s, name] : {std::pair{&m_gate, "gate"}, std::pair{&m_up, "up"}, std::pair{&m_down, "down"}}) {
      if (s->col_stride != 1) {
        detail::fail_parameter(error_id::shape, where, detail::concat(name, ".col_stride"),
                               "1 (contiguous rows; moe::swiglu_experts packs other layouts)", s->col_stride);
      }
      if (s->type != m_gate.type) {
        detail::fail_parameter(error_id::shape, where, detail::concat(name, ".type"), element_name(m_gate.type),
                               element_name(s->type));
      }
    }
    if (m_up.row_stride < d || m_gate.row_stride < d || m_down.row_stride < f) {
      detail::fail_parameter(error_id::shape, where, "row_stride", "at least the row length",
                             std::min({m_gate.row_stride, m_up.row_stride, m_down.row_stride}));
    }
    m_shape = {E, d, f};
  }

  [[nodiscard]] index num_experts() const noexcept { return m_shape.experts; }
  [[nodiscard]] index hidden() const noexcept { return m_shape.hidden; }
  [[nodiscard]] index intermediate() const noexcept { return m_shape.intermediate; }
  [[nodiscard]] const swiglu_shape& shape() const noexcept { return m_shape; }
  /// Element type of the weights.
  [[nodiscard]] element_type weight_type() const noexcept { return m_gate.type; }
  [[nodiscard]] index up_panels() const noexcept { return (m_shape.intermediate + up_width - 1) / up_width; }
  [[nodiscard]] index down_panels() const noexcept { return (m_shape.hidden + down_width - 1) / down_width; }
  /// FLOPs of one token through one expert (three matrices).
  [[nodiscard]] double flops_per_row() const noexcept {
    return 6.0 * static_cast<double>(m_shape.hidden) * static_cast<double>(m_shape.intermediate);
  }
  /// Bytes of weights of one expert.
  [[nodiscard]] double bytes_per_expert() const noexcept {
    return 3.0 * static_cast<double>(m_shape.hidden * m_shape.intermediate) * static_cast<double>(element_bytes(m_gate.type));
  }
  /// The sources the bank reads.
  [[nodiscard]] const weight_source& gate_source() const noexcept { return m_gate; }
  [[nodiscard]] const weight_source& up_source() const noexcept { return m_up; }
  [[nodiscard]] const weight_source& down_source() const noexcept { return m_down; }
  /// Scratch for `rows` rows: none (a token of alignment).
  [[nodiscard]] std::size_t scratch_bytes(index) const noexcept { return 64; }

  /// Stage 1 for expert e: `act[i][c] = Activation::glu(g, u)` for the intermediate columns of
  /// up-panels `[p0, p1)`, from `rows` input rows (`x[i]`, hidden() floats each).
  void up(index e, const float* const* x, index rows, index p0, index p1, float* act, index ld_act, void*) const noexcept {
    switch (m_gate.type) {
      case element_type::bf16: up_impl<bf16>(e, x, rows, p0, p1, act, ld_act); break;
      case element_type::f16: up_impl<f16>(e, x, rows, p0, p1, act, ld_act); break;
      case element_type::f32:
      default: up_impl<float>(e, x, rows, p0, p1, act, ld_act); break;
    }
  }

  /// Stage 2 for expert e: `y[i][c] = fma(w[i], out[i][c], y[i][c])` for the output columns of
  /// down-panels `[p0, p1)`, from `rows` intermediate rows (`act[i]`, intermediate() floats).
  void down(index e, const float* const* act, index rows, index p0, index p1, const float* w, float* const* y,
            void*) const noexcept {
    switch (m_gate.type) {
      case element_type::bf16: down_impl<bf16>(e, act, rows, p0, p1, w, y); break;
      case element_type::f16: down_impl<f16>(e, act, rows, p0, p1, w, y); break;
      case element_type::f32:
      default: down_impl<float>(e, act, rows, p0, p1, w, y); break;
    }
  }

 private:
  [[nodiscard]] static const std::byte* row(const weight_source& s, index e, index r) noexcept {
    return s.base(e) + static_cast<std::size_t>(r * s.row_stride) * element_bytes(s.type);
  }

  template <class W>
  void up_impl(index e, const float* const* x, index rows, index p0, index p1, float* act, index ld_act) const noexcept {
    const index d = m_shape.hidden;
    const index c0 = p0 * up_width, c1 = std::min(m_shape.intermediate, p1 * up_width);
    index c = c0;
    // Two intermediate columns at a time: four weight rows (gate and up of each).
    for (; c + 2 <= c1; c += 2) {
      const std::byte* w[4] = {row(m_gate, e, c), row(m_up, e, c), row(m_gate, e, c + 1), row(m_up, e, c + 1)};
      kernels::for_row_blocks<kernels::dot_rows<arch>>(rows, [&](index r, auto mr) {
        constexpr int MR = decltype(mr)::value;
        float o[MR][4];
        kernels::dot_tile<arch, W, MR, 4>(x + r, w, d, o);
        for (int i = 0; i < MR; ++i) {
          float* dst = act + (r + i) * ld_act + c;
          dst[0] = Activation::glu(o[i][0], o[i][1]);
          dst[1] = Activation::glu(o[i][2], o[i][3]);
        }
      });
    }
    if (c < c1) {
      const std::byte* w[2] = {row(m_gate, e, c), row(m_up, e, c)};
      kernels::for_row_blocks<kernels::dot_rows<arch>>(rows, [&](index r, auto mr) {
        constexpr int MR = decltype(mr)::value;
        float o[MR][2];
        kernels::dot_tile<arch, W, MR, 2>(x + r, w, d, o);
        for (int i = 0; i < MR; ++i) act[(r + i) * ld_act + c] = Activation::glu(o[i][0], o[i][1]);
      });
    }
  }

  template <class W>
  void down_impl(index e, const float* const* act, index rows, index p0, index p1, const float* wt, float* const* y) const noexcept {
    const index f = m_shape.intermediate;
    const index c0 = p0 * down_width, c1 = std::min(m_shape.hidden, p1 * down_width);
    const auto columns = [&]<int NR>(index c) {
      const std::byte* w[NR];
      for (int j = 0; j < NR; ++j) w[j] = row(m_down, e, c + j);
      kernels::for_row_blocks<kernels::dot_rows<arch>>(rows, [&](index r, auto mr) {
        constexpr int MR = decltype(mr)::value;
        float o[MR][NR];
        kernels::dot_tile<arch, W, MR, NR>(act + r, w, f, o);
        for (int i = 0; i < MR; ++i) {
          float* dst = y[r + i] + c;
          for (int j = 0; j < NR; ++j) dst[j] = kernels::fmadd(wt[r + i], o[i][j], dst[j]);
        }
      });
    };
    index c = c0;
    for (; c + 4 <= c1; c += 4) columns.template operator()<4>(c);
    for (; c < c1; ++c) columns.template operator()<1>(c);
  }

  weight_source m_gate, m_up, m_down;
  std::shared_ptr<const void> m_owner;
  swiglu_shape m_shape;
};

/// SwiGLU experts in place.
using mapped_swiglu_experts = mapped_experts<act::silu>;

static_assert(expert_bank<mapped_swiglu_experts>);

}  // namespace moe
