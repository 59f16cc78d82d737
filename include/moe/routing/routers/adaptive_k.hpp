// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

#include "moe/concepts.hpp"
#include "moe/config.hpp"
#include "moe/core/context.hpp"
#include "moe/core/error.hpp"
#include "moe/plan.hpp"
#include "moe/core/views.hpp"
#include "moe/core/workspace.hpp"
#include "moe/kernels/gating.hpp"
#include "moe/routing/detail/rows.hpp"
#include "moe/routing/routers/gates.hpp"
#include "moe/routing/routers/token_choice.hpp"
#include "moe/routing/routers/top_k.hpp"

namespace moe {

/// The entropy scale moe::adaptive_k compares with its thresholds.
enum class entropy_scale {
  normalized,  ///< `H / ln E`, in [0, 1] whatever E (0 when E = 1); the default
  nats         ///< `H` in nats, as TensorRT-LLM's AdaptiveK compares it
};

/// Options of moe::adaptive_k.
struct adaptive_k_options {
  /// Experts of a confident token (low entropy), >= 1.
  int k_min = 2;
  /// Experts of a token between the thresholds; 0 means `(k_min + k_max) / 2` (TensorRT-LLM).
  int k_mid = 0;
  /// Experts of an uncertain token (high entropy), in [k_min, E]; also max_slots().
  int k_max = 8;
  /// `h < low` gives k_min. The defaults are TensorRT-LLM's 1.3 and 1.7 nats expressed for
  /// E = 8 (Mixtral): 1.3 / ln 8 = 0.625, 1.7 / ln 8 = 0.8175.
  float low = 0.625f;
  /// `low <= h < high` gives k_mid, `h >= high` gives k_max.
  float high = 0.8175f;
  /// Whether h is the normalised entropy (default) or the entropy in nats.
  entropy_scale scale = entropy_scale::normalized;
  /// Divide the k_t selected scores by their sum (TensorRT-LLM does); a sum <= 0 gives weights 0.
  bool renormalize = true;
  /// Multiplies every combine weight after renormalisation.
  float route_scale = 1.0f;
  /// Logits are divided by this before the gate (> 0).
  float temperature = 1.0f;
  /// NaN logits: an error (default) or mapped to -inf.
  nan_policy nan = nan_policy::error;
};

/// Options of moe::top_p.
struct top_p_options {
  /// Cumulative score share to reach, in (0, 1].
  float p = 0.9f;
  /// At least this many experts per token (when that many are selectable), >= 1.
  int k_min = 1;
  /// At most this many experts per token, in [k_min, E]; also max_slots().
  int k_max = 8;
  /// Divide the selected scores by their sum; a sum <= 0 gives weights 0.
  bool renormalize = true;
  /// Multiplies every combine weight after renormalisation.
  float route_scale = 1.0f;
  /// Logits are divided by this before the gate (> 0).
  float temperature = 1.0f;
  /// NaN logits: an error (default) or mapped to -inf.
  nan_policy nan = nan_policy::error;
};

/// What an adaptive-k policy reports about a plan (moe::layer::policy_stats()).
struct adaptive_k_stats {
  double mean_k = 0;               ///< mean active experts per token
  std::vector<index> tokens_with;  ///< tokens_with[k]: tokens with k active experts, k in [0, max_slots]
};

namespace detail {
inline adaptive_k_stats adaptive_stats(const routing_plan& plan) {
  adaptive_k_stats s;
  s.tokens_with.assign(static_cast<std::size_t>(plan.max_slots() + 1), 0);
  index total = 0;
  for (index t = 0; t < plan.num_tokens(); ++t) {
    const index n = plan.active_slots(t);
    ++s.tokens_with[static_cast<std::size_t>(n)];
    total += n;
  }
  if (plan.num_tokens() > 0) s.mean_k = static_cast<double>(total) / static_cast<double>(plan.num_tokens());
  return s;
}

inline void check_common(const char* where, index E, int k_min, int k_max) {
  if (E < 1) fail_parameter(error_id::shape, where, "weight.rows()", ">= 1", E);
  check_range<index>(where, "k_min", k_min, 1, E);
  check_range<index>(where, "k_max", k_max, k_min, E);
}
}  // namespace detail

/// Entropy-adaptive k: each token gets k_min, k_mid or k_max experts according to the entropy
/// of its routing distribution, the rule of TensorRT-LLM's `AdaptiveKMoeRoutingMethod`
/// (tensorrt_llm/_torch/modules/fused_moe/routing.py):
/// ```
/// p = gate(z);  H = -Σ p ln p  (nats; 0 ln 0 = 0);  h = H / ln E (normalized, default) or H (nats)
/// k_t = k_min if h < low;  k_mid if low <= h < high;  k_max if h >= high
/// route to the k_t best experts (ties: lower index; -inf never), weights renormalised over them
/// ```
/// Differences from TensorRT-LLM, on purpose: the thresholds apply to the normalised entropy by
/// default (`scale = nats` compares H itself, as TensorRT-LLM does, whose defaults are 1.3 and
/// 1.7 nats); the entropy is the canonical kernels::entropy, not `-Σ p ln(p + 1e-9)`; the
/// renormalisation uses the zero-denominator rule, not `+ 1e-9`; and renormalisation can be
/// turned off. With a sigmoid gate the entropy is that of the normalised scores.
/// Batch invariant. max_slots() = k_max; slots beyond k_t are `no_expert`.
///
/// @tparam Gate moe::softmax_gate (default) or moe::sigmoid_gate.
template <class Gate = softmax_gate>
class adaptive_k {
 public:
  using router_type = adaptive_k;
  using gate_type = Gate;
  static constexpr bool needs_whole_batch = false;

  /// @param weight router weight `[E × d]`, one row per expert (copied and packed).
  adaptive_k(const_matrix_map<float> weight, adaptive_k_options options = {})
      : m_options(checked(options, weight.rows(), weight.cols())),
        m_base(weight, {.k = m_options.k_max,
                        .renormalize = m_options.renormalize,
                        .route_scale = m_options.route_scale,
                        .temperature = m_options.temperature,
                        .nan = m_options.nan}) {}

  /// Convenience: any row-major Eigen matrix `[E × d]`.
  template <class Derived>
  explicit adaptive_k(const Eigen::DenseBase<Derived>& weight, adaptive_k_options options = {})
      : adaptive_k(view(weight), options) {}

  [[nodiscard]] index num_experts() const noexcept { return m_base.num_experts(); }
  [[nodiscard]] index hidden() const noexcept { return m_base.hidden(); }
  [[nodiscard]] index max_slots() const noexcept { return m_options.k_max; }
  /// The options, with k_mid resolved.
  [[nodiscard]] const adaptive_k_options& options() const noexcept { return m_options; }

  /// The k of a token whose routing entropy is H nats (the rule above).
  [[nodiscard]] int k_for_entropy(float H) const noexcept {
    const index E = num_experts();
    const double h = m_options.scale == entropy_scale::nats
                         ? static_cast<double>(H)
                         : (E > 1 ? static_cast<double>(H) / std::log(static_cast<double>(E)) : 0.0);
    if (h < static_cast<double>(m_options.low)) return m_options.k_min;
    if (h < static_cast<double>(m_options.high)) return m_options.k_mid;
    return m_options.k_max;
  }

  /// Routes `x [T × d]` into `plan` (`[T × k_max]` over E experts), on up to `ctx.threads` threads.
  void route(const_matrix_map<float> x, const route_context& ctx, routing_plan& plan, workspace& ws) const {
    route_by_stages(*this, x, ctx, plan, ws, "moe::adaptive_k::route");
  }

  /// Routes precomputed raw logits `z = W x [T × E]` (copied; the temperature is applied here,
  /// once, so that route_logits(W x) routes as route(x)).
  void route_logits(const_matrix_map<float> z, routing_plan& plan, workspace& ws, const route_context& ctx = {}) const {
    route_logits_by_stages(*this, z, plan, ws, "moe::adaptive_k::route_logits", ctx);
  }

  // ---- Stages (moe::token_choice_policy): moe::top_k's (k = k_max), but for selection.

  [[nodiscard]] index columns() const noexcept { return num_experts(); }
  [[nodiscard]] std::int32_t column_expert(index c) const noexcept { return static_cast<std::int32_t>(c); }
  void logits(const_matrix_map<float> x, float* z, index ldz, workspace& ws) const { m_base.logits(x, z, ldz, ws); }
  [[nodiscard]] const kernels::packed_weights& logits_weight() const noexcept { return m_base.logits_weight(); }
  void scale_logits(float* z, index rows, index ldz) const noexcept { m_base.scale_logits(z, rows, ldz); }
  /// The NaN policy on one row (token t); an error names `where` and `param`.
  void prepare_row(float* z, index n, index t, std::string_view where = "moe::adaptive_k::route",
                   std::string_view param = "x") const {
    detail::apply_nan_policy(z, n, t, m_options.nan, {.where = where, .param = param, .option = "adaptive_k_options::nan"});
  }
  bool gate_row(const float* z, float* s) const noexcept { return m_base.gate_row(z, s); }
  [[nodiscard]] float row_entropy(const float* s, float* scratch) const noexcept { return m_base.row_entropy(s, scratch); }
  void weigh_row(const float* s, const std::int32_t* idx, index count, float* w) const noexcept {
    m_base.weigh_row(s, idx, count, w);
  }
  /// The base's best experts, as many as the row's entropy asks for (k_for_entropy of the
  /// entropy the plan records). `scratch` holds E floats.
  index select_row(const float* z, const float* s, std::int32_t* idx, float* scratch) const noexcept {
    const index k = k_for_entropy(m_base.row_entropy(s, scratch));
    return std::min<index>(m_base.select_row(z, s, idx, scratch), k);
  }

  /// Mean k and the number of tokens per k.
  [[nodiscard]] adaptive_k_stats policy_stats(const routing_plan& plan) const { return detail::adaptive_stats(plan); }

 private:
  static adaptive_k_options checked(adaptive_k_options o, index E, index d) {
    constexpr const char* where = "moe::adaptive_k";
    detail::check_gate_options(where, E, d, o.route_scale, o.temperature);
    detail::check_common(where, E, o.k_min, o.k_max);
    if (o.k_mid == 0) o.k_mid = (o.k_min + o.k_max) / 2;
    detail::check_range<index>(where, "k_mid", o.k_mid, o.k_min, o.k_max);
    if (!std::isfinite(o.low)) detail::fail_parameter(error_id::config, where, "low", "finite", o.low);
    if (!std::isfinite(o.high) || !(o.high >= o.low)) {
      detail::fail_parameter(error_id::config, where, "high", detail::concat("finite and >= low = ", o.low), o.high);
    }
    return o;
  }

  adaptive_k_options m_options;
  top_k<Gate> m_base;  // k = k_max: logits, NaN policy, gate, selection order and weights
};

/// Top-p (nucleus) expert selection with a minimum k: each token takes its best experts, in
/// descending score (ties: lower index; -inf never), until their scores reach a share p of the
/// token's total score:
/// ```
/// q = gate(z);  Q = Σ_e q_e (canonical sum; 1 for softmax up to rounding)
/// k_t = the smallest m with q_(1) + ... + q_(m) >= p·Q  (float, summed in that order), at most k_max
/// k_t = max(k_t, k_min), limited by the number of selectable experts
/// ```
/// Weights: the k_t scores, renormalised if asked, times route_scale. Batch invariant.
/// max_slots() = k_max.
///
/// @tparam Gate moe::softmax_gate (default) or moe::sigmoid_gate.
template <class Gate = softmax_gate>
class top_p {
 public:
  using router_type = top_p;
  using gate_type = Gate;
  static constexpr bool needs_whole_batch = false;

  /// @param weight router weight `[E × d]`, one row per expert (copied and packed).
  top_p(const_matrix_map<float> weight, top_p_options options = {})
      : m_options(checked(options, weight.rows(), weight.cols())),
        m_base(weight, {.k = m_options.k_max,
                        .renormalize = m_options.renormalize,
                        .route_scale = m_options.route_scale,
                        .temperature = m_options.temperature,
                        .nan = m_options.nan}) {}

  /// Convenience: any row-major Eigen matrix `[E × d]`.
  template <class Derived>
  explicit top_p(const Eigen::DenseBase<Derived>& weight, top_p_options options = {})
      : top_p(view(weight), options) {}

  [[nodiscard]] index num_experts() const noexcept { return m_base.num_experts(); }
  [[nodiscard]] index hidden() const noexcept { return m_base.hidden(); }
  [[nodiscard]] index max_slots() const noexcept { return m_options.k_max; }
  [[nodiscard]] const top_p_options& options() const noexcept { return m_options; }

  /// Routes `x [T × d]` into `plan` (`[T × k_max]` over E experts), on up to `ctx.threads` threads.
  void route(const_matrix_map<float> x, const route_context& ctx, routing_plan& plan, workspace& ws) const {
    route_by_stages(*this, x, ctx, plan, ws, "moe::top_p::route");
  }

  /// Routes precomputed raw logits `z = W x [T × E]` (copied; the temperature is applied here,
  /// once, so that route_logits(W x) routes as route(x)).
  void route_logits(const_matrix_map<float> z, routing_plan& plan, workspace& ws, const route_context& ctx = {}) const {
    route_logits_by_stages(*this, z, plan, ws, "moe::top_p::route_logits", ctx);
  }

  // ---- Stages (moe::token_choice_policy): moe::top_k's (k = k_max), but for selection.

  [[nodiscard]] index columns() const noexcept { return num_experts(); }
  [[nodiscard]] std::int32_t column_expert(index c) const noexcept { return static_cast<std::int32_t>(c); }
  void logits(const_matrix_map<float> x, float* z, index ldz, workspace& ws) const { m_base.logits(x, z, ldz, ws); }
  [[nodiscard]] const kernels::packed_weights& logits_weight() const noexcept { return m_base.logits_weight(); }
  void scale_logits(float* z, index rows, index ldz) const noexcept { m_base.scale_logits(z, rows, ldz); }
  /// The NaN policy on one row (token t); an error names `where` and `param`.
  void prepare_row(float* z, index n, index t, std::string_view where = "moe::top_p::route",
                   std::string_view param = "x") const {
    detail::apply_nan_policy(z, n, t, m_options.nan, {.where = where, .param = param, .option = "top_p_options::nan"});
  }
  bool gate_row(const float* z, float* s) const noexcept { return m_base.gate_row(z, s); }
  [[nodiscard]] float row_entropy(const float* s, float* scratch) const noexcept { return m_base.row_entropy(s, scratch); }
  void weigh_row(const float* s, const std::int32_t* idx, index count, float* w) const noexcept {
    m_base.weigh_row(s, idx, count, w);
  }
  /// The base's best experts (up to k_max) until their scores reach `p` times the row's total
  /// score, at least k_min (as many as there are selectable experts).
  index select_row(const float* z, const float* s, std::int32_t* idx, float* scratch) const noexcept {
    const index count = m_base.select_row(z, s, idx, scratch);
    const float target = m_options.p * kernels::sum(s, num_experts());
    index kt = 0;
    float mass = 0.0f;
    while (kt < count) {
      mass += s[idx[kt++]];
      if (mass >= target) break;
    }
    return std::min<index>(std::max<index>(kt, m_options.k_min), count);
  }

  /// Mean k and the number of tokens per k.
  [[nodiscard]] adaptive_k_stats policy_stats(const routing_plan& plan) const { return detail::adaptive_stats(plan); }

 private:
  static top_p_options checked(top_p_options o, index E, index d) {
    constexpr const char* where = "moe::top_p";
    detail::check_gate_options(where, E, d, o.route_scale, o.temperature);
    detail::check_common(where, E, o.k_min, o.k_max);
    if (!(o.p > 0.0f && o.p <= 1.0f)) detail::fail_parameter(error_id::config, where, "p", "in (0, 1]", o.p);
    return o;
  }

  top_p_options m_options;
  top_k<Gate> m_base;  // k = k_max: logits, NaN policy, gate, selection order and weights
};

static_assert(router<adaptive_k<softmax_gate>>);
static_assert(router<adaptive_k<sigmoid_gate>>);
static_assert(router<top_p<softmax_gate>>);
static_assert(router<top_p<sigmoid_gate>>);
static_assert(token_choice_policy<adaptive_k<softmax_gate>>);
static_assert(token_choice_policy<top_p<sigmoid_gate>>);

}  // namespace moe
