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
/// the Shannon entropy of `â / Σ â` and, as its top-1 score, `â` of the first expert (before the
/// gain, as moe::rms_scaled_router's per-expert scale). Losses: moe::chunk_sparsification_loss
/// and moe::activation_locality_loss (losses/blockffn.hpp). Batch invariant.
///
/// A token-choice policy of the stage engine (routing/routers/token_choice.hpp): route() and
/// route_logits() run on up to `route_context::threads` threads, bitwise the same plan as one
/// thread (docs/routing-spec.md §17.0).
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

  /// Routes `x [T × d]` into `plan` (`[T × E]`), on up to `ctx.threads` threads.
  void route(const_matrix_map<float> x, const route_context& ctx, routing_plan& plan, workspace& ws) const {
    route_by_stages(*this, x, ctx, plan, ws, "moe::blockffn::route");
  }

  /// Routes precomputed raw scores `z = W_r x [T × E]` (copied), on up to `ctx.threads` threads.
  void route_logits(const_matrix_map<float> z, routing_plan& plan, workspace& ws, const route_context& ctx = {}) const {
    route_logits_by_stages(*this, z, plan, ws, "moe::blockffn::route_logits", ctx);
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

  // ---- Stages (moe::token_choice_policy), each on one row of E floats.

  [[nodiscard]] index columns() const noexcept { return m_experts; }
  [[nodiscard]] std::int32_t column_expert(index c) const noexcept { return static_cast<std::int32_t>(c); }
  /// Raw scores `r [T × E] = W_r x` (one thread).
  void logits(const_matrix_map<float> x, float* z, index ldz, workspace& ws) const {
    kernels::gemm(x.data(), x.rows(), x.outerStride(), m_weight, z, ldz, ws);
  }
  [[nodiscard]] const kernels::packed_weights& logits_weight() const noexcept { return m_weight; }
  /// The NaN policy on one row (token t); an error names `where` and `param`.
  void prepare_row(float* r, index n, index t, std::string_view where = "moe::blockffn::route",
                   std::string_view param = "x") const {
    detail::apply_nan_policy(r, n, t, m_options.nan,
                             {.where = where,
                              .param = param,
                              .option = "blockffn_options::nan",
                              .value = "router score",
                              .expected = "finite or ±inf scores"});
  }
  /// `â = RMSNorm(ReLU(r))` before the gain (its limit `sqrt(E / n_inf)` on the n_inf `+inf`
  /// scores when there are any); false if no score is > 0 (the token uses no expert).
  bool gate_row(const float* r, float* a_hat) const noexcept {
    constexpr float inf = std::numeric_limits<float>::infinity();
    const index E = m_experts;
    index n_inf = 0, active = 0;
    double sq = 0;
    for (index e = 0; e < E; ++e) {
      n_inf += r[e] == inf;
      active += r[e] > 0.0f;
      if (r[e] > 0.0f) sq += static_cast<double>(r[e]) * r[e];
    }
    if (active == 0) return false;
    if (n_inf > 0) {
      const float share = static_cast<float>(std::sqrt(static_cast<double>(E) / static_cast<double>(n_inf)));
      for (index e = 0; e < E; ++e) a_hat[e] = r[e] == inf ? share : 0.0f;
    } else {
      const double rho = std::sqrt(sq / static_cast<double>(E) + static_cast<double>(m_options.eps));
      for (index e = 0; e < E; ++e) a_hat[e] = r[e] > 0.0f ? static_cast<float>(r[e] / rho) : 0.0f;
    }
    return true;
  }
  /// Shannon entropy of `â / Σ â` (`scratch`: E floats).
  [[nodiscard]] float row_entropy(const float* a_hat, float* scratch) const noexcept {
    const index E = m_experts;
    const float total = kernels::sum(a_hat, E);
    for (index e = 0; e < E; ++e) scratch[e] = a_hat[e] / total;
    return kernels::entropy(scratch, E);
  }
  /// The experts with `r > 0`, in descending order of r (ties: lower index); only the `+inf`
  /// ones when there are any (finite scores vanish next to them). `scratch`: E floats.
  index select_row(const float* r, const float*, std::int32_t* idx, float* scratch) const noexcept {
    constexpr float inf = std::numeric_limits<float>::infinity();
    const index E = m_experts;
    bool any_inf = false;
    for (index e = 0; e < E; ++e) {
      scratch[e] = r[e] > 0.0f ? r[e] : -inf;
      any_inf = any_inf || r[e] == inf;
    }
    const index count = kernels::top_k(scratch, E, E, idx);  // active experts, best first
    if (!any_inf) return count;
    index kept = 0;
    for (index s = 0; s < count; ++s) {
      if (r[idx[s]] == inf) idx[kept++] = idx[s];
    }
    return kept;
  }
  /// The gate `â_e · gamma_e` of each selected expert.
  void weigh_row(const float* a_hat, const std::int32_t* idx, index count, float* w) const noexcept {
    for (index s = 0; s < count; ++s) w[s] = a_hat[idx[s]] * m_options.gain[static_cast<std::size_t>(idx[s])];
  }

 private:
  blockffn_options m_options;
  index m_experts;
  index m_hidden;
  kernels::packed_weights m_weight;
};

static_assert(router<blockffn>);
static_assert(token_choice_policy<blockffn>);

}  // namespace moe
