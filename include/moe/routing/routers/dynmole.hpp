// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string_view>
#include <utility>

#include "moe/concepts.hpp"
#include "moe/config.hpp"
#include "moe/core/context.hpp"
#include "moe/core/error.hpp"
#include "moe/plan.hpp"
#include "moe/core/views.hpp"
#include "moe/core/workspace.hpp"
#include "moe/kernels/gating.hpp"
#include "moe/kernels/gemm.hpp"
#include "moe/routing/detail/rows.hpp"
#include "moe/routing/routers/token_choice.hpp"
#include "moe/routing/routers/gates.hpp"

namespace moe {

/// The entropy DynMoLE measures routing confidence with.
enum class dynmole_entropy {
  tsallis,  ///< `H_q = (1 − Σ (p+eps)^q) / (q − 1)`, normalised by its maximum (default)
  renyi     ///< `log(Σ (p+eps)^q + 1e-10) / (1 − q)`, normalised by log E
};

/// Options of moe::dynmole (docs/routing-spec.md §10; defaults are DynMoLE's released config).
struct dynmole_options {
  /// Keep rank r (0-based, by descending probability) iff the cumulative probability `C_r <=
  /// top_p` or `r < keep_top_k`; finite and >= 0 (>= 1 keeps every expert).
  float top_p = 0.75f;
  /// Ranks always kept, in [0, E].
  int keep_top_k = 2;
  /// Entropic index q, finite and > 0 (q = 1: Shannon entropy).
  float q = 1.1f;
  /// Broadcast (activate every expert) when the normalised entropy exceeds this; finite
  /// (>= 1 never broadcasts).
  float entropy_threshold = 0.9f;
  /// Added to every probability inside the entropy; finite and >= 0.
  float entropy_eps = 1e-5f;
  /// Tsallis (default) or Rényi entropy (q = 1 is Shannon's for both).
  dynmole_entropy entropy = dynmole_entropy::tsallis;
  /// NaN logits: an error (default) or -inf.
  nan_policy nan = nan_policy::error;
};

/// What DynMoLE routing did on a plan.
struct dynmole_stats {
  index tokens = 0;                 ///< T
  double mean_experts_per_token = 0;  ///< active (token, expert) pairs / T
  /// Fraction of tokens that use every expert (entropy broadcast, or top-p keeping all).
  double all_experts_fraction = 0;
};

namespace detail::dynmole {

/// Normalised entropy of the probabilities `p[0..E)` in double, docs/routing-spec.md §10; E = 1 gives 0.
/// What moe::dynmole_loss uses (and the router for Rényi); the router's Tsallis and Shannon
/// entropies come from kernels::tsallis_entropy (dynmole::normalised_entropy).
template <class P>
double normalised_entropy(const P* p, index E, double q, double eps, dynmole_entropy kind) noexcept {
  if (E <= 1) return 0.0;
  const double log_e = std::log(static_cast<double>(E));
  if (q == 1.0) {
    double h = 0;
    for (index e = 0; e < E; ++e) {
      const double v = static_cast<double>(p[e]) + eps;
      h -= v > 0 ? v * std::log(v) : 0.0;
    }
    return h / log_e;
  }
  double s = 0;
  for (index e = 0; e < E; ++e) s += std::pow(static_cast<double>(p[e]) + eps, q);
  if (kind == dynmole_entropy::renyi) return std::log(s + 1e-10) / (1.0 - q) / log_e;
  return (1.0 - s) / (1.0 - std::pow(static_cast<double>(E), 1.0 - q));
}

/// `dH/dp` of normalised_entropy into `g[0..E)`.
template <class P>
void normalised_entropy_gradient(const P* p, index E, double q, double eps, dynmole_entropy kind, double* g) noexcept {
  if (E <= 1) {
    for (index e = 0; e < E; ++e) g[e] = 0.0;
    return;
  }
  const double log_e = std::log(static_cast<double>(E));
  if (q == 1.0) {
    for (index e = 0; e < E; ++e) {
      const double v = static_cast<double>(p[e]) + eps;
      g[e] = v > 0 ? -(std::log(v) + 1.0) / log_e : 0.0;
    }
    return;
  }
  if (kind == dynmole_entropy::renyi) {
    double s = 0;
    for (index e = 0; e < E; ++e) s += std::pow(static_cast<double>(p[e]) + eps, q);
    for (index e = 0; e < E; ++e) {
      g[e] = q * std::pow(static_cast<double>(p[e]) + eps, q - 1.0) / ((s + 1e-10) * (1.0 - q) * log_e);
    }
    return;
  }
  const double h_max = 1.0 - std::pow(static_cast<double>(E), 1.0 - q);  // (q − 1) · H_max
  for (index e = 0; e < E; ++e) g[e] = -q * std::pow(static_cast<double>(p[e]) + eps, q - 1.0) / h_max;
}

}  // namespace detail::dynmole

/// DynMoLE hybrid routing (docs/routing-spec.md §10): softmax probabilities, a top-p selection with a
/// minimum of `keep_top_k` experts, and a broadcast to every expert when the token's normalised
/// Tsallis (or Rényi) entropy exceeds `entropy_threshold`.
///
/// Experts are ranked by logit (= by probability; ties: lower index); rank r is kept iff
/// `C_r = Σ_{s<=r} p_(s) <= top_p` or `r < keep_top_k` (unlike nucleus sampling, the expert
/// whose probability crosses top_p is not kept unless forced); the cumulative sum runs in fp32,
/// in rank order. Weights are the probabilities themselves, **not renormalised**. A -inf logit
/// is never selected (not even by a broadcast); an all -inf token routes nowhere. The number of
/// experts per token varies in [0, E] (max_slots() = E). The plan records the Shannon entropy
/// (nats) of p. Losses: moe::dynmole_loss (losses/dynmole.hpp). Batch invariant.
class dynmole {
 public:
  using router_type = dynmole;
  /// Routes each token independently of the others.
  static constexpr bool needs_whole_batch = false;

  /// @param weight router weight `[E × d]` (fp32 linear, no bias; copied and packed).
  dynmole(const_matrix_map<float> weight, dynmole_options options = {})
      : m_options(options), m_experts(weight.rows()), m_hidden(weight.cols()) {
    constexpr const char* where = "moe::dynmole";
    if (m_experts < 1) detail::fail_parameter(error_id::shape, where, "weight.rows()", ">= 1", m_experts);
    if (m_hidden < 1) detail::fail_parameter(error_id::shape, where, "weight.cols()", ">= 1", m_hidden);
    if (!(m_options.top_p >= 0.0f) || !std::isfinite(m_options.top_p)) {
      detail::fail_parameter(error_id::config, where, "top_p", "finite and >= 0", m_options.top_p);
    }
    detail::check_range<index>(where, "keep_top_k", m_options.keep_top_k, 0, m_experts);
    if (!(m_options.q > 0.0f) || !std::isfinite(m_options.q)) {
      detail::fail_parameter(error_id::config, where, "q", "finite and > 0", m_options.q);
    }
    if (!std::isfinite(m_options.entropy_threshold)) {
      detail::fail_parameter(error_id::config, where, "entropy_threshold", "finite", m_options.entropy_threshold);
    }
    if (!(m_options.entropy_eps >= 0.0f) || !std::isfinite(m_options.entropy_eps)) {
      detail::fail_parameter(error_id::config, where, "entropy_eps", "finite and >= 0", m_options.entropy_eps);
    }
    const double q = m_options.q, E = static_cast<double>(m_experts);
    m_entropy_max = m_options.q == 1.0f ? std::log(E) : (1.0 - std::pow(E, 1.0 - q)) / (q - 1.0);
    m_weight = kernels::pack_panels(weight.data(), m_experts, m_hidden, weight.outerStride(),
                                    kernels::panel_width<kernels::gemm_arch>);
  }

  /// Convenience: any row-major Eigen matrix `[E × d]`.
  template <class Derived>
  explicit dynmole(const Eigen::DenseBase<Derived>& weight, dynmole_options options = {})
      : dynmole(view(weight), options) {}

  [[nodiscard]] index num_experts() const noexcept { return m_experts; }
  [[nodiscard]] index hidden() const noexcept { return m_hidden; }
  /// E: a broadcast token uses every expert.
  [[nodiscard]] index max_slots() const noexcept { return m_experts; }
  [[nodiscard]] const dynmole_options& options() const noexcept { return m_options; }

  /// Routes `x [T × d]` into `plan` (`[T × E]`), on up to `ctx.threads` threads.
  void route(const_matrix_map<float> x, const route_context& ctx, routing_plan& plan, workspace& ws) const {
    route_by_stages(*this, x, ctx, plan, ws, "moe::dynmole::route");
  }

  /// Routes precomputed logits `z = W x [T × E]` (copied).
  void route_logits(const_matrix_map<float> z, routing_plan& plan, workspace& ws, const route_context& ctx = {}) const {
    route_logits_by_stages(*this, z, plan, ws, "moe::dynmole::route_logits", ctx);
  }

  // ---- Stages (moe::token_choice_policy), each on one row of E floats.

  [[nodiscard]] index columns() const noexcept { return m_experts; }
  [[nodiscard]] std::int32_t column_expert(index c) const noexcept { return static_cast<std::int32_t>(c); }
  /// Logits `z [T × E] = W x` (one thread).
  void logits(const_matrix_map<float> x, float* z, index ldz, workspace& ws) const {
    kernels::gemm(x.data(), x.rows(), x.outerStride(), m_weight, z, ldz, ws);
  }
  [[nodiscard]] const kernels::packed_weights& logits_weight() const noexcept { return m_weight; }
  /// The NaN policy on one row (token t); an error names `where` and `param`.
  void prepare_row(float* z, index n, index t, std::string_view where = "moe::dynmole::route",
                   std::string_view param = "x") const {
    detail::apply_nan_policy(z, n, t, m_options.nan, {.where = where, .param = param, .option = "dynmole_options::nan"});
  }
  /// `p = softmax(z)`; false if every logit is -inf (the token routes nowhere).
  bool gate_row(const float* z, float* p) const noexcept { return kernels::softmax(z, m_experts, p); }
  [[nodiscard]] float row_entropy(const float* p, float*) const noexcept { return kernels::entropy(p, m_experts); }
  /// Every expert above -inf, best first, if the token broadcasts (normalised entropy above
  /// the threshold); else the top-p prefix (ranks whose cumulative probability is <= top_p), at
  /// least keep_top_k.
  index select_row(const float* z, const float* p, std::int32_t* idx, float*) const noexcept {
    const index ranked = kernels::top_k(z, m_experts, m_experts, idx);  // finite logits, best first
    const bool broadcast = m_options.entropy_threshold < 1.0f && normalised_entropy(p) > m_options.entropy_threshold;
    if (broadcast || !(m_options.top_p < 1.0f)) return ranked;
    index below = 0;  // ranks with C_r <= top_p: a prefix, C is nondecreasing
    float cumulative = 0.0f;
    while (below < ranked) {
      cumulative += p[idx[below]];
      if (!(cumulative <= m_options.top_p)) break;
      ++below;
    }
    return std::max<index>(below, std::min<index>(m_options.keep_top_k, ranked));
  }
  /// The probabilities of the kept experts (not renormalised).
  void weigh_row(const float* p, const std::int32_t* idx, index count, float* w) const noexcept {
    for (index r = 0; r < count; ++r) w[r] = p[idx[r]];
  }

  /// Normalised entropy of one token's probabilities `p [E]` (what the broadcast test uses); 0
  /// when E = 1. Tsallis (and Shannon, q = 1): the canonical fp32 kernels::tsallis_entropy (the
  /// same bits on every ISA; within the golden tolerance of docs/routing-spec.md §10) over its maximum
  /// `(1 − E^(1−q)) / (q − 1)` (`log E` at q = 1) computed in double. Its `1 − Σ (p+eps)^q` cancels
  /// for q near 1 (about 1e-4 relative at |q − 1| = 1e-3), which moves only tokens within that of
  /// the threshold. Rényi stays in double (detail::dynmole::normalised_entropy): rebuilding
  /// `Σ (p+eps)^q` from the fp32 Tsallis value would cancel twice. moe::dynmole_loss computes
  /// every entropy in double (its gradient is checked against finite differences).
  [[nodiscard]] double normalised_entropy(const float* p) const noexcept {
    if (m_experts <= 1) return 0.0;
    if (m_options.entropy == dynmole_entropy::renyi && m_options.q != 1.0f) {
      return detail::dynmole::normalised_entropy(p, m_experts, m_options.q, m_options.entropy_eps, m_options.entropy);
    }
    return static_cast<double>(kernels::tsallis_entropy(p, m_experts, m_options.q, m_options.entropy_eps)) /
           m_entropy_max;
  }

  /// Experts per token and the fraction of tokens routed to every expert.
  [[nodiscard]] dynmole_stats policy_stats(const routing_plan& plan) const {
    dynmole_stats s;
    s.tokens = plan.num_tokens();
    index active = 0, all = 0;
    for (index t = 0; t < s.tokens; ++t) {
      const index a = plan.active_slots(t);
      active += a;
      all += a == m_experts;
    }
    if (s.tokens > 0) {
      s.mean_experts_per_token = static_cast<double>(active) / static_cast<double>(s.tokens);
      s.all_experts_fraction = static_cast<double>(all) / static_cast<double>(s.tokens);
    }
    return s;
  }

 private:
  dynmole_options m_options;
  index m_experts;
  index m_hidden;
  double m_entropy_max = 0;  // the maximum Tsallis (Shannon at q = 1) entropy over E experts
  kernels::packed_weights m_weight;
};

static_assert(router<dynmole>);
static_assert(token_choice_policy<dynmole>);

}  // namespace moe
