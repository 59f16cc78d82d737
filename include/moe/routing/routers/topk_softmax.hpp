// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string_view>
#include <vector>

#include "moe/concepts.hpp"
#include "moe/config.hpp"
#include "moe/core/context.hpp"
#include "moe/core/error.hpp"
#include "moe/core/views.hpp"
#include "moe/core/workspace.hpp"
#include "moe/kernels/gating.hpp"
#include "moe/kernels/gemm.hpp"
#include "moe/kernels/math.hpp"
#include "moe/plan.hpp"
#include "moe/routing/detail/rows.hpp"
#include "moe/routing/routers/gates.hpp"

namespace moe {

struct topk_softmax_options {
  /// Experts per token, in [1, E].
  int k = 4;
  /// Router bias `b [E]` added to the logits (it changes selection and weights), or empty.
  std::vector<float> logit_bias = {};
  /// NaN logits: an error (default) or mapped to -inf.
  nan_policy nan = nan_policy::error;
};

/// gpt-oss's router (GptOssTopKRouter in Hugging Face transformers, `openai/gpt-oss`'s
/// reference): logits `z = W x + b`, the k largest logits (ties: lower expert; -inf never), and
/// the combine weights a softmax over those k logits only:
/// `w_s = exp(z_s - z_max) / Σ_selected exp(z_j - z_max)` (canonical exp, the sum in slot order).
/// A softmax over all experts then renormalised over the k is the same function but rounds
/// differently; this router follows the reference's order of operations. Per token. A token
/// whose largest logit is +inf gives its weight equally to its +inf logits (the reference would
/// give NaN); a token whose logits are all -inf routes nowhere.
class topk_softmax {
 public:
  using router_type = topk_softmax;
  static constexpr bool needs_whole_batch = false;

  /// @param weight router weight `[E × d]` (copied and packed).
  topk_softmax(const_matrix_map<float> weight, topk_softmax_options options = {})
      : m_options(std::move(options)), m_experts(weight.rows()), m_hidden(weight.cols()) {
    constexpr const char* where = "moe::topk_softmax";
    if (m_experts < 1) detail::fail_parameter(error_id::shape, where, "weight.rows()", ">= 1", m_experts);
    if (m_hidden < 1) detail::fail_parameter(error_id::shape, where, "weight.cols()", ">= 1", m_hidden);
    detail::check_range<index>(where, "k", m_options.k, 1, m_experts);
    if (!m_options.logit_bias.empty()) {
      detail::check_extent(where, "logit_bias.size()", static_cast<index>(m_options.logit_bias.size()), m_experts);
      for (float b : m_options.logit_bias) {
        if (!std::isfinite(b)) detail::fail_parameter(error_id::config, where, "logit_bias[e]", "finite", b);
      }
    }
    m_weight = kernels::pack_panels(weight.data(), m_experts, m_hidden, weight.outerStride(),
                                    kernels::panel_width<kernels::gemm_arch>);
  }
  template <class Derived>
  explicit topk_softmax(const Eigen::DenseBase<Derived>& weight, topk_softmax_options options = {})
      : topk_softmax(view(weight), std::move(options)) {}

  [[nodiscard]] index num_experts() const noexcept { return m_experts; }
  [[nodiscard]] index hidden() const noexcept { return m_hidden; }
  [[nodiscard]] index max_slots() const noexcept { return m_options.k; }
  [[nodiscard]] const topk_softmax_options& options() const noexcept { return m_options; }

  void route(const_matrix_map<float> x, const route_context&, routing_plan& plan, workspace& ws) const {
    detail::check_extent("moe::topk_softmax::route", "x.cols()", x.cols(), m_hidden);
    const index T = x.rows(), E = m_experts;
    float* z = ws.take<float>(static_cast<std::size_t>(std::max<index>(T * E, 1)));
    kernels::gemm(x.data(), T, x.outerStride(), m_weight, z, E, ws);
    route_rows(z, T, plan, ws, "moe::topk_softmax::route", "x");
  }
  /// Routes raw logits `z = W x [T × E]` (the bias is added here, as route() adds it).
  void route_logits(const_matrix_map<float> z, routing_plan& plan, workspace& ws) const {
    detail::check_extent("moe::topk_softmax::route_logits", "z.cols()", z.cols(), m_experts);
    const index T = z.rows(), E = m_experts;
    float* copy = ws.take<float>(static_cast<std::size_t>(std::max<index>(T * E, 1)));
    detail::copy_rows(z, 0, T, copy);
    route_rows(copy, T, plan, ws, "moe::topk_softmax::route_logits", "z");
  }

 private:
  void route_rows(float* z, index T, routing_plan& plan, workspace& ws, std::string_view where, std::string_view param) const {
    const index E = m_experts, k = m_options.k;
    plan.reset(T, k, E);
    auto* idx = ws.take<std::int32_t>(static_cast<std::size_t>(k));
    auto* wp = ws.take<float>(static_cast<std::size_t>(k));
    for (index t = 0; t < T; ++t) {
      float* zt = z + t * E;
      if (!m_options.logit_bias.empty()) {
        for (index e = 0; e < E; ++e) zt[e] += m_options.logit_bias[static_cast<std::size_t>(e)];
      }
      detail::apply_nan_policy(zt, E, t, m_options.nan, {.where = where, .param = param, .option = "topk_softmax_options::nan"});
      const index n = kernels::top_k(zt, E, k, idx);
      if (n == 0) continue;  // every logit -inf: the token routes nowhere
      const float zmax = zt[idx[0]];
      float sum = 0.0f;
      const bool inf = std::isinf(zmax);  // +inf logits share the weight equally (exp(inf - inf) is NaN)
      for (index s = 0; s < n; ++s) {
        wp[s] = inf ? (zt[idx[s]] == zmax ? 1.0f : 0.0f) : kernels::exp(zt[idx[s]] - zmax);
        sum += wp[s];
      }
      for (index s = 0; s < n; ++s) plan.set(t, s, idx[s], wp[s] / sum);
    }
  }

  topk_softmax_options m_options;
  index m_experts, m_hidden;
  kernels::packed_weights m_weight;
};

static_assert(router<topk_softmax>);

}  // namespace moe
