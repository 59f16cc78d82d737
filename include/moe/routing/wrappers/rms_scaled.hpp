// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

#include "moe/concepts.hpp"
#include "moe/config.hpp"
#include "moe/core/context.hpp"
#include "moe/core/error.hpp"
#include "moe/core/views.hpp"
#include "moe/core/workspace.hpp"
#include "moe/kernels/gemm.hpp"
#include "moe/plan.hpp"
#include "moe/routing/routers/token_choice.hpp"

namespace moe {

/// Options of moe::rms_scaled_router (docs/routing-spec.md §17.2).
struct rms_scaled_options {
  /// Per-feature scale `[d]` of the normalised input, or empty (ones): Gemma 4's `router.scale`.
  std::vector<float> input_scale = {};
  /// Epsilon inside the RMS norm (finite, > 0): Gemma 4's `rms_norm_eps`, 1e-6.
  float eps = 1e-6f;
  /// Factor `[E]` on the combine weight of each chosen expert, or empty (ones): Gemma 4's
  /// `router.per_expert_scale`.
  std::vector<float> per_expert_scale = {};
};

/// A router that sees the RMS-normalised, scaled token state and scales each chosen expert's
/// weight (Gemma 4: Gemma4TextRouter in Hugging Face transformers' `modeling_gemma4.py`;
/// docs/routing-spec.md §17.2).
///
/// The base routes `x̂ = rms_norm(x) · input_scale · d^-1/2` instead of x, where
/// `rms_norm(x)_i = x_i · (mean_i(x_i²) + eps)^-1/2` has no weight of its own (the reference's
/// `with_scale=False`), and every combine weight of an expert e that the base gives is then
/// multiplied by `per_expert_scale[e]`. Gemma 4 is `rms_scaled_router<top_k<softmax_gate>>` with
/// `{.k = 8, .renormalize = true}`: softmax over all experts, top k, renormalised, then scaled.
/// route_logits(z) takes the logits of the router input, `z = W x̂`. Errors and rules are the
/// base's: ties to the lower expert, NaN logits by the base's NaN policy; a token state with a
/// ±inf or NaN feature normalises to NaN router inputs (so NaN logits), a zero token state to 0
/// (every logit 0). The mean square is summed in double, the rest in fp32.
///
/// @tparam Base a moe::token_choice_policy that reads the token state as it is, e.g. moe::top_k<>.
template <token_choice_policy Base = top_k<softmax_gate>>
class rms_scaled_router {
  static_assert(!detail::token_choice::transformed_input<Base>,
                "moe::rms_scaled_router<Base>: Base already transforms its input (input_rows); wrap a base that "
                "reads the token state as it is, e.g. moe::top_k<>");

 public:
  using router_type = rms_scaled_router;
  using base_type = Base;
  /// Routes each token independently of the others.
  static constexpr bool needs_whole_batch = false;

  /// Wraps a configured base.
  rms_scaled_router(Base base, rms_scaled_options options) : m_base(std::move(base)), m_options(std::move(options)) {
    constexpr const char* where = "moe::rms_scaled_router";
    const index d = m_base.hidden(), E = m_base.num_experts();
    if (!(m_options.eps > 0.0f) || !std::isfinite(m_options.eps)) {
      detail::fail_parameter(error_id::config, where, "eps", "finite and > 0", m_options.eps);
    }
    if (!m_options.input_scale.empty()) {
      detail::check_extent(where, "input_scale.size()", static_cast<index>(m_options.input_scale.size()), d);
      for (float v : m_options.input_scale) {
        if (!std::isfinite(v)) detail::fail_parameter(error_id::config, where, "input_scale[i]", "finite", v);
      }
    }
    if (!m_options.per_expert_scale.empty()) {
      detail::check_extent(where, "per_expert_scale.size()", static_cast<index>(m_options.per_expert_scale.size()), E);
      for (float v : m_options.per_expert_scale) {
        if (!std::isfinite(v)) detail::fail_parameter(error_id::config, where, "per_expert_scale[e]", "finite", v);
      }
    }
    m_root = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  }

  [[nodiscard]] index num_experts() const noexcept { return m_base.num_experts(); }
  [[nodiscard]] index hidden() const noexcept { return m_base.hidden(); }
  [[nodiscard]] index max_slots() const noexcept { return m_base.max_slots(); }
  [[nodiscard]] const Base& base() const noexcept { return m_base; }
  [[nodiscard]] const rms_scaled_options& options() const noexcept { return m_options; }

  /// Routes `x [T × d]` into `plan`, on up to `ctx.threads` threads.
  void route(const_matrix_map<float> x, const route_context& ctx, routing_plan& plan, workspace& ws) const {
    route_by_stages(*this, x, ctx, plan, ws, "moe::rms_scaled_router::route");
  }
  /// Routes the logits of the router input, `z = W x̂ [T × columns()]` (copied; the base's
  /// scale_logits() is applied once), bit for bit as route(x).
  void route_logits(const_matrix_map<float> z, routing_plan& plan, workspace& ws, const route_context& ctx = {}) const {
    route_logits_by_stages(*this, z, plan, ws, "moe::rms_scaled_router::route_logits", ctx);
  }

  /// The router input `x̂ [T × d]` of x (allocates; for inspection and tests).
  [[nodiscard]] row_matrix<float> router_input(const_matrix_map<float> x) const {
    detail::check_extent("moe::rms_scaled_router::router_input", "x.cols()", x.cols(), hidden());
    row_matrix<float> out(x.rows(), x.cols());
    input_rows(x, 0, x.rows(), out.data());
    return out;
  }

  // ---- Stages (moe::token_choice_policy): the base's on x̂, weigh scaled per expert.

  [[nodiscard]] index columns() const noexcept { return m_base.columns(); }
  [[nodiscard]] std::int32_t column_expert(index c) const noexcept { return m_base.column_expert(c); }
  /// Writes `x̂` of the rows `[begin, end)` of x into `out` (row stride d).
  void input_rows(const_matrix_map<float> x, index begin, index end, float* out) const noexcept {
    const index d = hidden();
    const float* scale = m_options.input_scale.empty() ? nullptr : m_options.input_scale.data();
    for (index t = begin; t < end; ++t) {
      const float* xt = x.data() + t * x.outerStride();
      float* ot = out + (t - begin) * d;
      double squares = 0.0;
      for (index i = 0; i < d; ++i) squares += static_cast<double>(xt[i]) * static_cast<double>(xt[i]);
      const float mean = static_cast<float>(squares / static_cast<double>(d));
      const float r = std::pow(mean + m_options.eps, -0.5f);
      for (index i = 0; i < d; ++i) {
        const float n = xt[i] * r;
        ot[i] = (scale ? n * scale[i] : n) * m_root;
      }
    }
  }
  /// The base's logits of `x̂` (one thread; `[T × d]` of workspace).
  void logits(const_matrix_map<float> x, float* z, index ldz, workspace& ws) const {
    float* in = ws.take<float>(static_cast<std::size_t>(std::max<index>(x.rows() * hidden(), 1)));  // [T × d]
    input_rows(x, 0, x.rows(), in);
    m_base.logits(const_matrix_map<float>(in, x.rows(), hidden(), Eigen::OuterStride<>(hidden())), z, ldz, ws);
  }
  /// The base's packed weight, when its logits are linear (threaded stage 1).
  [[nodiscard]] const kernels::packed_weights& logits_weight() const noexcept
    requires detail::token_choice::linear_logits<Base>
  {
    return m_base.logits_weight();
  }
  /// The base's scale_logits() (temperature, soft cap), if it has one.
  void scale_logits(float* z, index rows, index ldz) const { detail::token_choice::scale(m_base, z, rows, ldz); }
  void prepare_row(float* z, index n, index t) const { m_base.prepare_row(z, n, t); }
  void prepare_row(float* z, index n, index t, std::string_view where, std::string_view param) const {
    detail::token_choice::prepare(m_base, z, n, t, where, param);
  }
  bool gate_row(const float* z, float* s) const { return m_base.gate_row(z, s); }
  [[nodiscard]] float row_entropy(const float* s, float* scratch) const { return m_base.row_entropy(s, scratch); }
  index select_row(const float* z, const float* s, std::int32_t* idx, float* scratch) const {
    return m_base.select_row(z, s, idx, scratch);
  }
  /// The base's weights, each multiplied by its expert's per_expert_scale.
  void weigh_row(float* s, const std::int32_t* idx, index count, float* w) const {
    m_base.weigh_row(s, idx, count, w);
    if (m_options.per_expert_scale.empty()) return;
    for (index slot = 0; slot < count; ++slot) {
      const std::int32_t e = m_base.column_expert(idx[slot]);
      if (e != no_expert) w[slot] *= m_options.per_expert_scale[static_cast<std::size_t>(e)];
    }
  }

 private:
  Base m_base;
  rms_scaled_options m_options;
  float m_root = 1.0f;  // d^-1/2, rounded once to fp32 as the reference's scalar is
};

static_assert(router<rms_scaled_router<top_k<softmax_gate>>>);
static_assert(token_choice_policy<rms_scaled_router<top_k<softmax_gate>>>);

}  // namespace moe
