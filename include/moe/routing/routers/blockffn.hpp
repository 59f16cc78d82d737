// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include "moe/concepts.hpp"
#include "moe/config.hpp"
#include "moe/core/context.hpp"
#include "moe/core/error.hpp"
#include "moe/plan.hpp"
#include "moe/core/sequences.hpp"
#include "moe/core/views.hpp"
#include "moe/core/workspace.hpp"
#include "moe/kernels/gating.hpp"
#include "moe/kernels/gemm.hpp"
#include "moe/routing/detail/rows.hpp"
#include "moe/routing/routers/gates.hpp"
#include "moe/routing/routers/token_choice.hpp"

namespace moe {

/// Options of moe::blockffn (docs/routing-spec.md §11).
struct blockffn_options {
  /// RMSNorm epsilon, finite and >= 0 (BlockFFN: 1e-5).
  float eps = 1e-5f;
  /// RMSNorm gain gamma `[E]` (learnable, init 1); empty means 1 for every expert.
  std::vector<float> gain = {};
  /// Chunk length of the chunk-level sparsity that policy_stats() reports, >= 1 (the paper
  /// reports 8-token chunks).
  index chunk_length = 8;
  /// NaN scores: an error (default) or -inf (inactive).
  nan_policy nan = nan_policy::error;
};

/// Token- and chunk-level activation sparsity of a plan (BlockFFN's TLS and CLS).
struct blockffn_stats {
  index tokens = 0;                   ///< T
  double mean_experts_per_token = 0;  ///< active (token, expert) pairs / T
  /// `1 − (active (token, expert) pairs) / (T · E)`.
  double token_sparsity = 0;
  index chunk_length = 0;  ///< tokens per chunk of chunk_sparsity
  /// `1 − mean over chunks of |experts used by the chunk| / E`.
  double chunk_sparsity = 0;
};

/// Chunk-level sparsity of a plan: the tokens of each sequence are cut into consecutive chunks
/// of `chunk_length` (a sequence's last chunk may be shorter), and
/// `CLS = 1 − mean over chunks of |∪_{t in chunk} experts(t)| / E` (0 for an empty plan).
inline double chunk_sparsity(const routing_plan& plan, index chunk_length, std::span<const index> sequence_starts = {}) {
  constexpr const char* where = "moe::chunk_sparsity";
  if (chunk_length < 1) detail::fail_parameter(error_id::config, where, "chunk_length", ">= 1", chunk_length);
  const index T = plan.num_tokens(), E = plan.num_experts();
  detail::check_sequence_starts(sequence_starts, T, where);
  if (T == 0 || E == 0) return 0.0;
  std::vector<std::uint8_t> used(static_cast<std::size_t>(E));
  double fraction = 0;
  index chunks = 0;
  for (index q = 0; q < detail::sequence_count(sequence_starts); ++q) {
    const auto [s0, s1] = detail::sequence_range(sequence_starts, q, T);
    for (index c0 = s0; c0 < s1; c0 += chunk_length) {
      std::fill(used.begin(), used.end(), std::uint8_t{0});
      index count = 0;
      for (index t = c0; t < std::min(c0 + chunk_length, s1); ++t) {
        for (auto e : plan.experts(t)) {
          if (e == no_expert || used[static_cast<std::size_t>(e)]) continue;
          used[static_cast<std::size_t>(e)] = 1;
          ++count;
        }
      }
      fraction += static_cast<double>(count) / static_cast<double>(E);
      ++chunks;
    }
  }
  return chunks > 0 ? 1.0 - fraction / static_cast<double>(chunks) : 0.0;
}

/// BlockFFN's router (docs/routing-spec.md §11): ReLU then RMSNorm over the experts, no top-k.
///
/// Raw scores `r = W_r x`; `a = ReLU(r)`; `â = a / sqrt(mean_e(a_e²) + eps)`; the gate of expert
/// e is `â_e · gamma_e`. The active experts are those with `r_e > 0` (exact zeros compute
/// nothing), in descending order of r (ties: lower index), so the number of experts per token
/// varies in [0, E] (max_slots() = E); a token whose scores are all <= 0 uses no expert (its MoE
/// output is 0). The RMSNorm runs in double (no overflow of a²). `+inf` scores: the limit of the
/// RMSNorm, `â = sqrt(E / n_inf)` on the n_inf infinite entries, 0 elsewhere. The plan records
/// the Shannon entropy of `â / Σ â`. Losses: moe::chunk_sparsification_loss and
/// moe::activation_locality_loss (losses/blockffn.hpp). Batch invariant.
class blockffn {
 public:
  using router_type = blockffn;
  /// Routes each token independently of the others.
  static constexpr bool needs_whole_batch = false;

  /// @param weight router weight `[E × d]` (no bias; copied and packed).
  blockffn(const_matrix_map<float> weight, blockffn_options options = {})
      : m_options(std::move(options)), m_experts(weight.rows()), m_hidden(weight.cols()) {
    constexpr const char* where = "moe::blockffn";
    if (m_experts < 1) detail::fail_parameter(error_id::shape, where, "weight.rows()", ">= 1", m_experts);
    if (m_hidden < 1) detail::fail_parameter(error_id::shape, where, "weight.cols()", ">= 1", m_hidden);
    if (!(m_options.eps >= 0.0f) || !std::isfinite(m_options.eps)) {
      detail::fail_parameter(error_id::config, where, "eps", "finite and >= 0", m_options.eps);
    }
    if (m_options.gain.empty()) m_options.gain.assign(static_cast<std::size_t>(m_experts), 1.0f);
    detail::check_extent(where, "gain.size()", static_cast<index>(m_options.gain.size()), m_experts);
    for (float g : m_options.gain) {
      if (!std::isfinite(g)) detail::fail_parameter(error_id::config, where, "gain[e]", "finite", g);
    }
    if (m_options.chunk_length < 1) {
      detail::fail_parameter(error_id::config, where, "chunk_length", ">= 1", m_options.chunk_length);
    }
    m_weight = kernels::pack_panels(weight.data(), m_experts, m_hidden, weight.outerStride(),
                                    kernels::panel_width<kernels::gemm_arch>);
  }

  /// Convenience: any row-major Eigen matrix `[E × d]`.
  template <class Derived>
  explicit blockffn(const Eigen::DenseBase<Derived>& weight, blockffn_options options = {})
      : blockffn(view(weight), std::move(options)) {}

  [[nodiscard]] index num_experts() const noexcept { return m_experts; }
  [[nodiscard]] index hidden() const noexcept { return m_hidden; }
  /// E: sparsity is learned, not capped.
  [[nodiscard]] index max_slots() const noexcept { return m_experts; }
  [[nodiscard]] const blockffn_options& options() const noexcept { return m_options; }

  /// Routes `x [T × d]` into `plan` (`[T × E]`).
  void route(const_matrix_map<float> x, const route_context& /*ctx*/, routing_plan& plan, workspace& ws) const {
    detail::check_extent("moe::blockffn::route", "x.cols()", x.cols(), m_hidden);
    const index T = x.rows();
    float* r = ws.take<float>(static_cast<std::size_t>(std::max<index>(T * m_experts, 1)));  // [T × E]
    kernels::gemm(x.data(), T, x.outerStride(), m_weight, r, m_experts, ws);
    route_rows(r, T, plan, ws, "moe::blockffn::route", "x");
  }

  /// Routes precomputed raw scores `z = W_r x [T × E]` (copied).
  void route_logits(const_matrix_map<float> z, routing_plan& plan, workspace& ws) const {
    detail::check_extent("moe::blockffn::route_logits", "z.cols()", z.cols(), m_experts);
    route_rows(detail::copy_logits(z, ws), z.rows(), plan, ws, "moe::blockffn::route_logits", "z");
  }

  /// Token-level and chunk-level sparsity (chunks of options().chunk_length consecutive tokens,
  /// the whole plan taken as one sequence; use moe::chunk_sparsity for several sequences).
  [[nodiscard]] blockffn_stats policy_stats(const routing_plan& plan) const {
    blockffn_stats s;
    s.tokens = plan.num_tokens();
    s.chunk_length = m_options.chunk_length;
    index active = 0;
    for (index t = 0; t < s.tokens; ++t) active += plan.active_slots(t);
    if (s.tokens > 0) {
      s.mean_experts_per_token = static_cast<double>(active) / static_cast<double>(s.tokens);
      s.token_sparsity = 1.0 - static_cast<double>(active) / static_cast<double>(s.tokens * m_experts);
      s.chunk_sparsity = chunk_sparsity(plan, m_options.chunk_length);
    }
    return s;
  }

 private:
  void route_rows(float* r, index T, routing_plan& plan, workspace& ws, std::string_view where,
                  std::string_view param) const {
    const index E = m_experts;
    plan.reset(T, E, E);
    if (T == 0) return;
    constexpr float inf = std::numeric_limits<float>::infinity();
    float* key = ws.take<float>(static_cast<std::size_t>(E));
    float* a_hat = ws.take<float>(static_cast<std::size_t>(E));
    std::int32_t* idx = ws.take<std::int32_t>(static_cast<std::size_t>(E));
    for (index t = 0; t < T; ++t) {
      float* rt = r + t * E;
      detail::apply_nan_policy(rt, E, t, m_options.nan,
                               {.where = where,
                                .param = param,
                                .option = "blockffn_options::nan",
                                .value = "router score",
                                .expected = "finite or ±inf scores"});
      index n_inf = 0;
      double sq = 0;
      for (index e = 0; e < E; ++e) {
        key[e] = rt[e] > 0.0f ? rt[e] : -inf;
        n_inf += rt[e] == inf;
        if (rt[e] > 0.0f) sq += static_cast<double>(rt[e]) * rt[e];
      }
      const index count = kernels::top_k(key, E, E, idx);  // active experts, best first
      if (count == 0) {
        plan.set_entropy(t, 0.0f);
        continue;  // every score <= 0: no expert
      }
      if (n_inf > 0) {
        const float share = static_cast<float>(std::sqrt(static_cast<double>(E) / static_cast<double>(n_inf)));
        for (index e = 0; e < E; ++e) a_hat[e] = rt[e] == inf ? share : 0.0f;
      } else {
        const double rho = std::sqrt(sq / static_cast<double>(E) + static_cast<double>(m_options.eps));
        for (index e = 0; e < E; ++e) a_hat[e] = rt[e] > 0.0f ? static_cast<float>(rt[e] / rho) : 0.0f;
      }
      index written = 0;
      for (index s = 0; s < count; ++s) {
        const auto e = idx[s];
        if (n_inf > 0 && rt[e] != inf) continue;  // finite scores vanish next to +inf ones
        plan.set(t, written++, e, a_hat[e] * m_options.gain[static_cast<std::size_t>(e)]);
      }
      const float total = kernels::sum(a_hat, E);
      for (index e = 0; e < E; ++e) key[e] = a_hat[e] / total;
      plan.set_entropy(t, kernels::entropy(key, E));
    }
  }

  blockffn_options m_options;
  index m_experts;
  index m_hidden;
  kernels::packed_weights m_weight;
};

static_assert(router<blockffn>);

}  // namespace moe
