// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
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
#include "moe/routing/routers/token_choice.hpp"

namespace moe {

/// Options of moe::topk_softmax (docs/routing-spec.md §17.5).
struct topk_softmax_options {
  /// Experts per token, in [1, E].
  int k = 4;
  /// Router bias `b [E]` added to the logits (it changes selection and weights), or empty.
  std::vector<float> logit_bias = {};
  /// NaN logits: an error (default) or mapped to -inf.
  nan_policy nan = nan_policy::error;
};

/// gpt-oss's router (GptOssTopKRouter in Hugging Face transformers, `openai/gpt-oss`'s
/// reference; docs/routing-spec.md §17.5): logits `z = W x + b`, the k largest logits (ties:
/// lower expert; -inf never), and the combine weights a softmax over those k logits only:
/// `w_s = exp(z_s - z_max) / Σ_selected exp(z_j - z_max)` (canonical exp, the sum in slot order).
/// A softmax over all experts then renormalised over the k is the same function but rounds
/// differently; this router follows the reference's order of operations. Per token. A token
/// whose largest logit is +inf gives its weight equally to its +inf logits (the reference would
/// give NaN); a token whose logits are all -inf routes nowhere.
///
/// It runs on moe::route_by_stages (so on `ctx.threads` threads): its gate stage computes the
/// weights of the k selected experts into the score row (0 elsewhere), which is the routing
/// distribution the plan's entropy and top-1 score are taken from.
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

  /// Routes `x [T × d]` into `plan` (`[T × k]`), on up to `ctx.threads` threads.
  void route(const_matrix_map<float> x, const route_context& ctx, routing_plan& plan, workspace& ws) const {
    route_by_stages(*this, x, ctx, plan, ws, "moe::topk_softmax::route");
  }
  /// Routes raw logits `z = W x [T × E]` (the bias is added here, as route() adds it).
  void route_logits(const_matrix_map<float> z, routing_plan& plan, workspace& ws, const route_context& ctx = {}) const {
    route_logits_by_stages(*this, z, plan, ws, "moe::topk_softmax::route_logits", ctx);
  }

  // ---- Stages (moe::token_choice_policy), each on one row of E floats unless stated.

  [[nodiscard]] index columns() const noexcept { return m_experts; }
  [[nodiscard]] std::int32_t column_expert(index c) const noexcept { return static_cast<std::int32_t>(c); }
  /// Logits `z [T × E]` of x (one thread): `W x`, then scale_logits() (the bias).
  void logits(const_matrix_map<float> x, float* z, index ldz, workspace& ws) const {
    kernels::gemm(x.data(), x.rows(), x.outerStride(), m_weight, z, ldz, ws);
    scale_logits(z, x.rows(), ldz);
  }
  /// The packed router weight: logits() is `scale_logits(W x)`.
  [[nodiscard]] const kernels::packed_weights& logits_weight() const noexcept { return m_weight; }
  /// Adds the router bias to `rows` rows of raw logits (row stride ldz); nothing without a bias.
  void scale_logits(float* z, index rows, index ldz) const noexcept {
    if (m_options.logit_bias.empty()) return;
    for (index t = 0; t < rows; ++t) {
      for (index e = 0; e < m_experts; ++e) z[t * ldz + e] += m_options.logit_bias[static_cast<std::size_t>(e)];
    }
  }
  /// The NaN policy on one row (token t); an error names `where` and `param`.
  void prepare_row(float* z, index n, index t, std::string_view where = "moe::topk_softmax::route",
                   std::string_view param = "x") const {
    detail::apply_nan_policy(z, n, t, m_options.nan, {.where = where, .param = param, .option = "topk_softmax_options::nan"});
  }
  /// Scores `s`: the softmax over the k largest logits at their experts (the combine weights,
  /// in the reference's order of operations), 0 elsewhere; false if every logit is -inf.
  bool gate_row(const float* z, float* s) const noexcept {
    const index E = m_experts;
    constexpr float chosen = -1.0f;  // marks a selected expert while the weights are summed
    std::fill(s, s + E, 0.0f);
    float zmax = 0.0f, sum = 0.0f;
    index n = 0;
    for (; n < m_options.k; ++n) {  // the k largest, best first, ties to the lower expert
      index best = -1;
      for (index e = 0; e < E; ++e) {
        if (s[e] != chosen && z[e] != -std::numeric_limits<float>::infinity() && (best < 0 || z[e] > z[best])) best = e;
      }
      if (best < 0) break;
      s[best] = chosen;
      if (n == 0) zmax = z[best];
      sum += weight_of(z[best], zmax);
    }
    if (n == 0) return false;  // every logit -inf: the token routes nowhere
    for (index e = 0; e < E; ++e) {
      if (s[e] == chosen) s[e] = weight_of(z[e], zmax) / sum;
    }
    return true;
  }
  /// Entropy (nats) of the scores (the k weights, which sum to 1).
  [[nodiscard]] float row_entropy(const float* s, float*) const noexcept { return kernels::entropy(s, m_experts); }
  /// The k largest logits, best first (ties: lower expert; -inf never).
  index select_row(const float* z, const float*, std::int32_t* idx, float*) const noexcept {
    return kernels::top_k(z, m_experts, m_options.k, idx);
  }
  /// The scores of the selected experts.
  void weigh_row(const float* s, const std::int32_t* idx, index count, float* w) const noexcept {
    for (index slot = 0; slot < count; ++slot) w[slot] = s[idx[slot]];
  }

 private:
  // exp(z - zmax), the unnormalised weight; +inf logits share the weight equally (exp(inf - inf)
  // is NaN).
  static float weight_of(float z, float zmax) noexcept {
    if (std::isinf(zmax)) return z == zmax ? 1.0f : 0.0f;
    return kernels::exp(z - zmax);
  }

  topk_softmax_options m_options;
  index m_experts, m_hidden;
  kernels::packed_weights m_weight;
};

static_assert(router<topk_softmax>);
static_assert(token_choice_policy<topk_softmax>);

}  // namespace moe
