// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string_view>

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

/// Options of moe::sparsemixer (docs/routing-spec.md §17.1).
struct sparsemixer_options {
  /// Choices per token, in [1, E]. Phi-3.5-MoE uses 2, the only value its reference supports;
  /// a larger k continues the same rule (each choice masks the ones before it).
  int k = 2;
  /// The relative gap `2 · jitter_eps` beyond which a logit is masked out of a choice's softmax
  /// (finite, >= 0; Phi-3.5-MoE's `router_jitter_noise`, 0.01).
  float jitter_eps = 0.01f;
  /// NaN logits: an error (default) or mapped to -inf.
  nan_policy nan = nan_policy::error;
};

/// SparseMixer routing at inference (Phi-3.5-MoE: `sparsemixer()` with `training = False` in
/// Hugging Face transformers' `modeling_phimoe.py`, called by PhimoeTopKRouter; docs/routing-spec.md
/// §17.1).
///
/// Logits `z = W x`. Choice j (j = 1..k) takes the largest logit `m_j` among the experts not
/// chosen before it (ties: lower expert; -inf never), masks out every other expert e whose
/// relative gap `(m_j - z_e) / max(|z_e|, m_j)` exceeds `2 · jitter_eps` (and the experts chosen
/// before), and weighs its expert by the softmax over what is left: `w_j = 1 / Σ exp(z_e - m_j)`
/// (sum in expert order). The experts are therefore the top k of the logits; the weights are not
/// renormalised (w_1 + w_2 can exceed 1). A 0/0 gap (`z_e = m_j = 0`) is not above the threshold,
/// as in the reference. Differences from the reference, where it gives NaN: a choice whose `m_j`
/// is +inf shares its weight between the +inf logits left (`w_j = 1 / count`); a token with
/// fewer than k logits above -inf takes fewer choices, and one whose logits are all -inf routes
/// nowhere. The reference computes in the model's dtype; this router computes in fp32.
///
/// Runs on moe::route_by_stages: the gate stage computes every choice's weight into the score
/// row (0 elsewhere); the plan's entropy is that of the normalised weights and its top-1 score
/// the first choice's weight. Per token.
class sparsemixer {
 public:
  using router_type = sparsemixer;
  static constexpr bool needs_whole_batch = false;

  /// @param weight router weight `[E × d]` (copied and packed).
  sparsemixer(const_matrix_map<float> weight, sparsemixer_options options = {})
      : m_options(options), m_experts(weight.rows()), m_hidden(weight.cols()) {
    constexpr const char* where = "moe::sparsemixer";
    if (m_experts < 1) detail::fail_parameter(error_id::shape, where, "weight.rows()", ">= 1", m_experts);
    if (m_hidden < 1) detail::fail_parameter(error_id::shape, where, "weight.cols()", ">= 1", m_hidden);
    detail::check_range<index>(where, "k", m_options.k, 1, m_experts);
    if (!(m_options.jitter_eps >= 0.0f) || !std::isfinite(m_options.jitter_eps)) {
      detail::fail_parameter(error_id::config, where, "jitter_eps", "finite and >= 0", m_options.jitter_eps);
    }
    m_threshold = 2.0f * m_options.jitter_eps;
    m_weight = kernels::pack_panels(weight.data(), m_experts, m_hidden, weight.outerStride(),
                                    kernels::panel_width<kernels::gemm_arch>);
  }
  template <class Derived>
  explicit sparsemixer(const Eigen::DenseBase<Derived>& weight, sparsemixer_options options = {})
      : sparsemixer(view(weight), options) {}

  [[nodiscard]] index num_experts() const noexcept { return m_experts; }
  [[nodiscard]] index hidden() const noexcept { return m_hidden; }
  [[nodiscard]] index max_slots() const noexcept { return m_options.k; }
  [[nodiscard]] const sparsemixer_options& options() const noexcept { return m_options; }

  /// Routes `x [T × d]` into `plan` (`[T × k]`), on up to `ctx.threads` threads.
  void route(const_matrix_map<float> x, const route_context& ctx, routing_plan& plan, workspace& ws) const {
    route_by_stages(*this, x, ctx, plan, ws, "moe::sparsemixer::route");
  }
  /// Routes raw logits `z = W x [T × E]` (copied), bit for bit as route(x).
  void route_logits(const_matrix_map<float> z, routing_plan& plan, workspace& ws, const route_context& ctx = {}) const {
    route_logits_by_stages(*this, z, plan, ws, "moe::sparsemixer::route_logits", ctx);
  }

  // ---- Stages (moe::token_choice_policy), each on one row of E floats unless stated.

  [[nodiscard]] index columns() const noexcept { return m_experts; }
  [[nodiscard]] std::int32_t column_expert(index c) const noexcept { return static_cast<std::int32_t>(c); }
  /// Logits `z [T × E] = W x` (one thread).
  void logits(const_matrix_map<float> x, float* z, index ldz, workspace& ws) const {
    kernels::gemm(x.data(), x.rows(), x.outerStride(), m_weight, z, ldz, ws);
  }
  /// The packed router weight: logits() is `W x`.
  [[nodiscard]] const kernels::packed_weights& logits_weight() const noexcept { return m_weight; }
  /// The NaN policy on one row (token t); an error names `where` and `param`.
  void prepare_row(float* z, index n, index t, std::string_view where = "moe::sparsemixer::route",
                   std::string_view param = "x") const {
    detail::apply_nan_policy(z, n, t, m_options.nan, {.where = where, .param = param, .option = "sparsemixer_options::nan"});
  }
  /// Scores `s`: the weight `w_j` of each choice at its expert, 0 elsewhere; false if every logit
  /// is -inf. (Every w_j is in (0, 1], so s > 0 marks the experts chosen so far.)
  bool gate_row(const float* z, float* s) const noexcept {
    constexpr float inf = std::numeric_limits<float>::infinity();
    const index E = m_experts;
    std::fill(s, s + E, 0.0f);
    index n = 0;
    for (; n < m_options.k; ++n) {
      index best = -1;  // the largest logit left, ties to the lower expert
      for (index e = 0; e < E; ++e) {
        if (s[e] == 0.0f && z[e] != -inf && (best < 0 || z[e] > z[best])) best = e;
      }
      if (best < 0) break;
      const float m = z[best];
      float sum = 0.0f;
      for (index e = 0; e < E; ++e) {
        if (s[e] != 0.0f || z[e] == -inf) continue;  // chosen before, or never
        if (m == inf) {
          sum += z[e] == inf ? 1.0f : 0.0f;
        } else if (!((m - z[e]) / std::max(std::fabs(z[e]), m) > m_threshold)) {
          sum += kernels::exp(z[e] - m);
        }
      }
      s[best] = 1.0f / sum;
    }
    return n > 0;
  }
  /// Entropy (nats) of the normalised weights `s / Σ s`; `scratch` holds E floats.
  [[nodiscard]] float row_entropy(const float* s, float* scratch) const noexcept {
    return sigmoid_gate::entropy(s, m_experts, scratch);
  }
  /// The k largest logits, best first (ties: lower expert; -inf never): the gate's choices.
  index select_row(const float* z, const float*, std::int32_t* idx, float*) const noexcept {
    return kernels::top_k(z, m_experts, m_options.k, idx);
  }
  /// The scores of the selected experts.
  void weigh_row(const float* s, const std::int32_t* idx, index count, float* w) const noexcept {
    for (index slot = 0; slot < count; ++slot) w[slot] = s[idx[slot]];
  }

 private:
  sparsemixer_options m_options;
  index m_experts, m_hidden;
  float m_threshold = 0.0f;  // 2 · jitter_eps
  kernels::packed_weights m_weight;
};

static_assert(router<sparsemixer>);
static_assert(token_choice_policy<sparsemixer>);

}  // namespace moe
