// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
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
#include "moe/kernels/gemm.hpp"
#include "moe/kernels/math.hpp"
#include "moe/routing/detail/rows.hpp"
#include "moe/routing/routers/gates.hpp"
#include "moe/routing/routers/token_choice.hpp"

namespace moe {

/// How moe::prototypical turns the scaled cosines into gates (ProMoE's `A`).
enum class prototype_activation {
  identity,  ///< the gate is the scaled cosine itself, negative gates included (ProMoE default)
  sigmoid,   ///< sigmoid of the scaled cosine
  softmax    ///< softmax of the scaled cosines over the N_E routed experts
};

/// Options of moe::prototypical (docs/routing-spec.md §8).
struct prototypical_options {
  /// Routed experts per conditional token, in [1, N_E] (ProMoE: 1).
  int k = 1;
  /// Scale of the cosine similarity, finite and > 0 (ProMoE: 1).
  float alpha = 1.0f;
  /// Gate function of the scaled cosines.
  prototype_activation activation = prototype_activation::identity;
  /// Unconditional experts N_u >= 0 (ProMoE configs: 1). They are experts N_E .. N_E+N_u-1 of
  /// the bank; every unconditional token goes to all of them with weight 1.
  index unconditional_experts = 1;
  /// Norm floor of the cosine, as PyTorch's F.normalize: `x / max(‖x‖, eps)`; finite and > 0
  /// (with 0 a zero token would get the cosines 0 / 0).
  float eps = 1e-12f;
  /// NaN cosines (from NaN or infinite token states): an error (default) or -inf.
  nan_policy nan = nan_policy::error;
};

/// What a prototypical plan looks like: how many tokens were conditional, and its gates.
struct prototypical_stats {
  index conditional_tokens = 0;    ///< tokens routed by prototypes
  index unconditional_tokens = 0;  ///< tokens sent to the unconditional experts
  double mean_gate = 0;            ///< mean gate of the routed (prototype) slots
  index negative_gates = 0;        ///< routed slots whose gate is < 0 (identity activation)
};

/// ProMoE prototypical routing with conditional routing (docs/routing-spec.md §8).
///
/// A conditional token `x` scores the N_E routed experts by the scaled cosine similarity to
/// their prototypes, `Z_j = alpha · <x/max(‖x‖,eps), p_j/max(‖p_j‖,eps)>`, selects the k best
/// (ties: lower index; all identity, sigmoid and softmax gates are monotone, so selection runs
/// on Z), and weighs each with its gate `A(Z)_j` — **not renormalised**; with the identity
/// activation a gate can be negative. An unconditional token (`ctx.conditional[t] == 0`) goes to
/// the N_u unconditional experts N_E .. N_E+N_u-1 with weight 1 each and never sees the
/// prototypes. Shared experts are the layer's (moe::shared_experts). The routing contrastive
/// loss is moe::routing_contrastive_loss (losses/prototypical.hpp).
///
/// Batch invariant. A zero token (or zero prototype) has cosine 0: ties go to the lowest index.
/// The plan records an entropy only with the softmax activation (of the softmax gates; 0 for
/// unconditional tokens). route() runs on up to `route_context::threads` threads, bitwise the
/// same plan as one thread; an error names the lowest bad token (docs/routing-spec.md §17.0).
class prototypical {
 public:
  using router_type = prototypical;
  /// Routes each token independently of the others.
  static constexpr bool needs_whole_batch = false;

  /// @param prototypes `[N_E × d]`, one learnable prototype per routed expert (copied).
  prototypical(const_matrix_map<float> prototypes, prototypical_options options = {})
      : m_options(options), m_routed(prototypes.rows()), m_hidden(prototypes.cols()) {
    constexpr const char* where = "moe::prototypical";
    if (m_routed < 1) detail::fail_parameter(error_id::shape, where, "prototypes.rows()", ">= 1", m_routed);
    if (m_hidden < 1) detail::fail_parameter(error_id::shape, where, "prototypes.cols()", ">= 1", m_hidden);
    detail::check_range<index>(where, "k", m_options.k, 1, m_routed);
    if (!(m_options.alpha > 0.0f) || !std::isfinite(m_options.alpha)) {
      detail::fail_parameter(error_id::config, where, "alpha", "finite and > 0", m_options.alpha);
    }
    if (m_options.unconditional_experts < 0) {
      detail::fail_parameter(error_id::config, where, "unconditional_experts", ">= 0", m_options.unconditional_experts);
    }
    if (!(m_options.eps > 0.0f) || !std::isfinite(m_options.eps)) {
      detail::fail_parameter(error_id::config, where, "eps", "finite and > 0", m_options.eps);
    }
    m_prototypes = prototypes;
    m_norm.resize(static_cast<std::size_t>(m_routed));
    for (index j = 0; j < m_routed; ++j) {
      double sq = 0;
      for (index i = 0; i < m_hidden; ++i) {
        const double v = prototypes(j, i);
        if (!std::isfinite(v)) detail::fail_parameter(error_id::input, where, "prototypes", "finite", v);
        sq += v * v;
      }
      m_norm[static_cast<std::size_t>(j)] = std::max(std::sqrt(sq), static_cast<double>(m_options.eps));
    }
    m_packed = kernels::pack_panels(prototypes.data(), m_routed, m_hidden, prototypes.outerStride(),
                                    kernels::panel_width<kernels::gemm_arch>);
  }

  /// Convenience: any row-major Eigen matrix `[N_E × d]`.
  template <class Derived>
  explicit prototypical(const Eigen::DenseBase<Derived>& prototypes, prototypical_options options = {})
      : prototypical(view(prototypes), options) {}

  /// Experts of the bank: N_E routed + N_u unconditional.
  [[nodiscard]] index num_experts() const noexcept { return m_routed + m_options.unconditional_experts; }
  [[nodiscard]] index hidden() const noexcept { return m_hidden; }
  /// max(k, N_u).
  [[nodiscard]] index max_slots() const noexcept {
    return std::max<index>(m_options.k, m_options.unconditional_experts);
  }
  /// Routed experts N_E (those with a prototype).
  [[nodiscard]] index num_routed() const noexcept { return m_routed; }
  [[nodiscard]] const prototypical_options& options() const noexcept { return m_options; }
  /// The prototypes `[N_E × d]`.
  [[nodiscard]] const row_matrix<float>& prototypes() const noexcept { return m_prototypes; }

  /// Routes `x [T × d]`; `ctx.conditional` (`[T]` or empty) marks the unconditional tokens. On up
  /// to `ctx.threads` threads, each computing the dot products of its share of the tokens (of the
  /// prototypes' panels in a decode step, as the stage engine does) and routing them.
  void route(const_matrix_map<float> x, const route_context& ctx, routing_plan& plan, workspace& ws) const {
    constexpr const char* where = "moe::prototypical::route";
    detail::check_extent(where, "x.cols()", x.cols(), m_hidden);
    const index T = x.rows();
    const auto& cond = ctx.conditional;
    if (!cond.empty()) detail::check_extent(where, "ctx.conditional.size()", static_cast<index>(cond.size()), T);
    plan.reset(T, max_slots(), num_experts());
    if (T == 0) return;
    const index N = m_routed;
    const index K = m_options.k;
    const int nt = detail::token_choice::threads_for(ctx, T);
    const auto n = static_cast<std::size_t>(nt);
    float* z = ws.take<float>(static_cast<std::size_t>(T * N));  // [T × N_E] dots
    float* cos = ws.take<float>(n * static_cast<std::size_t>(N));  // per thread: [N_E] scaled cosines
    float* g = ws.take<float>(n * static_cast<std::size_t>(N));    // per thread: [N_E] gates
    auto* idx = ws.take<std::int32_t>(n * static_cast<std::size_t>(K));
    const auto buffers = [&](int tid) { return row_buffers{cos + tid * N, g + tid * N, idx + tid * K}; };
    detail::token_choice::parallel_rows(T, nt, ws, detail::token_choice::logits_stage(*this, x, z, nt, ws),
                                        [&](int tid, index t) noexcept {
      try {
        route_token(x, cond, z, t, buffers(tid), plan);
      } catch (...) {
        return false;
      }
      return true;
    }, [&](index t) { route_token(x, cond, z, t, buffers(0), plan); });
    if (m_options.activation == prototype_activation::softmax) plan.mark_entropy();
    if (cond.empty() || std::any_of(cond.begin(), cond.end(), [](std::uint8_t c) { return c != 0; })) {
      plan.mark_top_score();  // some token was routed by the prototypes
    }
    plan.invalidate();
  }

  /// Counts of conditional and unconditional tokens and the routed gates of a plan.
  [[nodiscard]] prototypical_stats policy_stats(const routing_plan& plan) const {
    prototypical_stats s;
    index routed = 0;
    double total = 0;
    for (index t = 0; t < plan.num_tokens(); ++t) {
      bool unconditional = false;
      for (index slot = 0; slot < plan.max_slots(); ++slot) {
        const auto e = plan.expert(t, slot);
        if (e == no_expert) continue;
        if (e >= m_routed) {
          unconditional = true;
          continue;
        }
        ++routed;
        total += plan.weight(t, slot);
        s.negative_gates += plan.weight(t, slot) < 0.0f;
      }
      (unconditional ? s.unconditional_tokens : s.conditional_tokens) += 1;
    }
    if (routed > 0) s.mean_gate = total / static_cast<double>(routed);
    return s;
  }

  // ---- Stage 1, as the stage engine (routing/routers/token_choice.hpp) computes it.

  /// N_E: one dot product per routed expert.
  [[nodiscard]] index columns() const noexcept { return m_routed; }
  /// The prototypes, packed: stage 1 is `z = P x`, the cosines follow per token.
  [[nodiscard]] const kernels::packed_weights& logits_weight() const noexcept { return m_packed; }
  /// Dot products `z [T × N_E] = P x` (one thread).
  void logits(const_matrix_map<float> x, float* z, index ldz, workspace& ws) const {
    kernels::gemm(x.data(), x.rows(), x.outerStride(), m_packed, z, ldz, ws);
  }

 private:
  /// Per-thread buffers of route_token(): scaled cosines and gates [N_E], selection [k].
  struct row_buffers {
    float* cos;
    float* g;
    std::int32_t* idx;
  };

  // Routes token t from its dot products `z[t]` (left as they are) into its own row of the plan
  // (bulk entropy and top-score arrays, no shared state); throws the token's error.
  void route_token(const_matrix_map<float> x, std::span<const std::uint8_t> cond, const float* z, index t,
                   const row_buffers& b, routing_plan& plan) const {
    const index N = m_routed;
    const bool softmax = m_options.activation == prototype_activation::softmax;
    if (!cond.empty() && cond[static_cast<std::size_t>(t)] == 0) {
      route_unconditional(t, plan);
      if (softmax) plan.entropy_data()[t] = 0.0f;
      return;
    }
    const float* zt = z + t * N;
    double sq = 0;
    for (index i = 0; i < m_hidden; ++i) sq += static_cast<double>(x(t, i)) * x(t, i);
    const double nx = std::max(std::sqrt(sq), static_cast<double>(m_options.eps));
    for (index j = 0; j < N; ++j) {
      b.cos[j] = static_cast<float>(m_options.alpha * (zt[j] / (nx * m_norm[static_cast<std::size_t>(j)])));
    }
    // The NaN policy (NaN cosines come from NaN or infinite token states).
    detail::apply_nan_policy(b.cos, N, t, m_options.nan,
                             {.where = "moe::prototypical::route",
                              .param = "x",
                              .option = "prototypical_options::nan",
                              .value = "cosine",
                              .expected = "finite token states"});
    const index count = kernels::top_k(b.cos, N, m_options.k, b.idx);
    switch (m_options.activation) {
      case prototype_activation::identity: std::copy(b.cos, b.cos + N, b.g); break;
      case prototype_activation::sigmoid: kernels::sigmoid(b.cos, N, b.g); break;
      case prototype_activation::softmax:
        kernels::softmax(b.cos, N, b.g);
        plan.entropy_data()[t] = kernels::entropy(b.g, N);
        break;
    }
    for (index s = 0; s < count; ++s) detail::token_choice::write_slot(plan, t, s, b.idx[s], b.g[b.idx[s]]);
    plan.top_score_data()[t] = count > 0 ? b.g[b.idx[0]] : 0.0f;
  }

  void route_unconditional(index t, routing_plan& plan) const {
    if (m_options.unconditional_experts == 0) {
      detail::throw_error(error_id::input,
                          detail::concat("moe::prototypical::route: parameter 'ctx.conditional' marks token ", t,
                                         " unconditional, but the policy has no unconditional experts; expected "
                                         "prototypical_options::unconditional_experts >= 1"));
    }
    for (index u = 0; u < m_options.unconditional_experts; ++u) {
      detail::token_choice::write_slot(plan, t, u, static_cast<std::int32_t>(m_routed + u), 1.0f);
    }
  }

  prototypical_options m_options;
  index m_routed;
  index m_hidden;
  row_matrix<float> m_prototypes;  // [N_E × d]
  std::vector<double> m_norm;      // [N_E] max(‖p_j‖, eps)
  kernels::packed_weights m_packed;
};

static_assert(router<prototypical>);

}  // namespace moe
