// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>

#include "moe/concepts.hpp"
#include "moe/config.hpp"
#include "moe/core/context.hpp"
#include "moe/core/error.hpp"
#include "moe/plan.hpp"
#include "moe/core/rounding.hpp"
#include "moe/core/views.hpp"
#include "moe/core/workspace.hpp"
#include "moe/kernels/gating.hpp"
#include "moe/routing/detail/rows.hpp"
#include "moe/routing/routers/gates.hpp"
#include "moe/core/parallel.hpp"
#include "moe/routing/routers/token_choice.hpp"
#include "moe/routing/routers/top_k.hpp"

namespace moe {

/// What moe::expert_choice does with a batch too small for every expert to pick a token
/// (`k_c = floor(T·c/E) = 0`, i.e. `T < E/c`: typically a decode step).
enum class expert_choice_fallback {
  reject,         ///< throw moe::error naming 'x.rows()' (the default: expert choice is non-causal)
  route_nowhere,  ///< accept k_c = 0: no token is routed, every MoE output is 0 (docs/routing-spec.md §6 edge case)
  token_choice    ///< route this call by token-choice softmax top-`fallback_k` instead, explicitly
};

/// Options of moe::expert_choice (docs/routing-spec.md §6).
struct expert_choice_options {
  /// `c` in `k_c = floor(T·c/E)` (paper default 2, "EC-CF2"); finite and > 0.
  double capacity_factor = 2.0;
  /// How k_c follows from c: `floor(c · T / E)` (expert_choice_floor, the paper's, the default),
  /// `round(c · T / E)` with ties to even (switch_round: flaxformer's experts-choose router), or
  /// `ceil(c · T / E)` (gshard_ceil with K = 1). docs/routing-spec.md §5.4.
  capacity_convention convention = capacity_convention::expert_choice_floor;
  /// Lower bound of k_c (flaxformer's `min_expert_capacity`); >= 0. k_c stays <= T.
  index min_capacity = 0;
  /// Batches with k_c = 0: reject (default), route nowhere, or fall back to token choice.
  expert_choice_fallback small_batch = expert_choice_fallback::reject;
  /// Experts per token of the token-choice fallback, in [1, E].
  int fallback_k = 1;
  /// Whether the token-choice fallback renormalises its weights (expert-choice gates are not).
  bool fallback_renormalize = false;
  /// NaN logits: an error (default) or mapped to -inf.
  nan_policy nan = nan_policy::error;
};

/// What moe::expert_choice reports about a plan (moe::layer::policy_stats()).
struct expert_choice_stats {
  index tokens_per_expert = 0;      ///< k_c for this batch
  index tokens_not_chosen = 0;      ///< tokens no expert picked (their output is 0)
  index max_experts_per_token = 0;  ///< the most experts any token got
};

/// Expert-choice routing (Zhou et al., arXiv 2202.09368; docs/routing-spec.md §6).
///
/// `S = softmax(z)` per token over the E experts; each expert picks the `k_c = floor(T·c/E)`
/// tokens with the largest `S[:, e]` (floor guarded as in errata 1, clamped to [0, T]; ties: lower
/// token index; a token whose logit for e is -inf is never picked by e), with gate `S[t, e]`, not
/// renormalised. A token may get 0 to E experts (max_slots() = E); one picked by nobody has MoE
/// output 0. The plan is filled from the expert side: a token's slots list its experts in
/// ascending expert index, and the expert-major view lists each expert's tokens in token order.
///
/// Expert choice is non-causal (an expert's choice depends on every token of the call), so it
/// belongs in full-sequence calls (prefill, encoders, diffusion). It runs on up to
/// `route_context::threads` threads: the logits, NaN policy and softmax over tokens, each
/// expert's choice over experts (columns of S); bitwise the same plan as one thread, an error
/// naming the lowest bad token (docs/routing-spec.md §17.0). A call with `k_c = 0` (`T < E/c`,
/// a decode step) is rejected with moe::error unless `small_batch` says otherwise:
/// `route_nowhere` accepts it (nobody routed), `token_choice` routes that call by softmax top-
/// `fallback_k` (gates = softmax probabilities, renormalised if `fallback_renormalize`). The
/// fallback applies only when k_c = 0; it is never chosen silently.
class expert_choice {
 public:
  using router_type = expert_choice;
  /// An expert's choice depends on every token of the batch.
  static constexpr bool needs_whole_batch = true;

  /// @param weight router weight `[E × d]`, one row per expert (copied and packed).
  expert_choice(const_matrix_map<float> weight, expert_choice_options options = {})
      : m_options(checked(options, weight.rows(), weight.cols())),
        m_base(weight, {.k = m_options.fallback_k, .renormalize = m_options.fallback_renormalize, .nan = m_options.nan}) {}

  /// Convenience: any row-major Eigen matrix `[E × d]`.
  template <class Derived>
  explicit expert_choice(const Eigen::DenseBase<Derived>& weight, expert_choice_options options = {})
      : expert_choice(view(weight), options) {}

  [[nodiscard]] index num_experts() const noexcept { return m_base.num_experts(); }
  [[nodiscard]] index hidden() const noexcept { return m_base.hidden(); }
  /// A token can be picked by every expert.
  [[nodiscard]] index max_slots() const noexcept { return m_base.num_experts(); }
  [[nodiscard]] const expert_choice_options& options() const noexcept { return m_options; }

  /// `k_c` for a batch of T tokens: `floor(c·T/E)` (guarded; or the rule of the convention),
  /// raised to min_capacity, clamped to [0, T].
  [[nodiscard]] index tokens_per_expert(index T) const noexcept {
    const index c = convention_capacity(m_options.convention, m_options.capacity_factor, T, 1, num_experts());
    return std::clamp<index>(std::max(c, m_options.min_capacity), 0, T);
  }

  /// Routes `x [T × d]` into `plan` (`[T × E]` slots over E experts), on up to `ctx.threads`
  /// threads.
  void route(const_matrix_map<float> x, const route_context& ctx, routing_plan& plan, workspace& ws) const {
    detail::check_extent("moe::expert_choice::route", "x.cols()", x.cols(), hidden());
    const index T = x.rows(), E = num_experts();
    const int nt = detail::token_choice::threads_for(ctx, T);
    float* z = ws.take<float>(static_cast<std::size_t>(std::max<index>(T * E, 1)));  // [T × E]
    route_rows(z, T, ctx, plan, ws, detail::token_choice::logits_stage(m_base, x, z, nt, ws),
               "moe::expert_choice::route", "x");
  }

  /// Routes precomputed logits `z = W x [T × E]` (copied), on up to `ctx.threads` threads.
  void route_logits(const_matrix_map<float> z, routing_plan& plan, workspace& ws, const route_context& ctx = {}) const {
    detail::check_extent("moe::expert_choice::route_logits", "z.cols()", z.cols(), num_experts());
    const index T = z.rows();
    float* copy = ws.take<float>(static_cast<std::size_t>(std::max<index>(T * num_experts(), 1)));  // [T × E]
    route_rows(copy, T, ctx, plan, ws, [&](int tid, int team, auto&&) noexcept {
      const auto rows = detail::share_of(T, tid, team);
      detail::copy_rows(z, rows.begin, rows.end, copy);
    }, "moe::expert_choice::route_logits", "z");
  }

  /// k_c, unchosen tokens and the largest number of experts per token of a plan.
  [[nodiscard]] expert_choice_stats policy_stats(const routing_plan& plan) const {
    expert_choice_stats s;
    s.tokens_per_expert = tokens_per_expert(plan.num_tokens());
    for (index t = 0; t < plan.num_tokens(); ++t) {
      const index n = plan.active_slots(t);
      s.tokens_not_chosen += n == 0;
      s.max_experts_per_token = std::max(s.max_experts_per_token, n);
    }
    return s;
  }

 private:
  static expert_choice_options checked(expert_choice_options o, index E, index d) {
    constexpr const char* where = "moe::expert_choice";
    detail::check_gate_options(where, E, d, 1.0f, 1.0f);
    if (!(o.capacity_factor > 0.0) || !std::isfinite(o.capacity_factor)) {
      detail::fail_parameter(error_id::config, where, "capacity_factor", "finite and > 0", o.capacity_factor);
    }
    if (o.min_capacity < 0) detail::fail_parameter(error_id::config, where, "min_capacity", ">= 0", o.min_capacity);
    detail::check_range<index>(where, "fallback_k", o.fallback_k, 1, E);
    return o;
  }

  // Three phases, each on the threads: `logits` (a stage of parallel_rows() that fills the
  // thread's rows of z), then the NaN policy and softmax of each token (rows); then either the
  // token-choice fallback (rows) or each expert's top-k_c over its column of S (experts, whose
  // chosen tokens are written into the plan afterwards in expert order, so that every token's
  // slots list its experts ascending). `param` names the input ("x" or "z") in errors.
  template <class Logits>
  void route_rows(float* z, index T, const route_context& ctx, routing_plan& plan, workspace& ws, Logits&& logits,
                  const char* where, const char* param) const {
    constexpr float neg_inf = -std::numeric_limits<float>::infinity();
    const index E = num_experts();
    plan.reset(T, E, E);
    if (T == 0) return;
    const index kc = tokens_per_expert(T);
    if (kc == 0 && m_options.small_batch == expert_choice_fallback::reject) {
      detail::fail_parameter(error_id::input, where, detail::concat(param, ".rows()"),
                             detail::concat(">= E/c = ", static_cast<double>(E) / m_options.capacity_factor,
                                            " so that every expert picks a token (k_c is 0 under ",
                                            to_string(m_options.convention), "; "
                                            "expert choice needs a full-sequence call: for decode steps set "
                                            "expert_choice_options::small_batch to token_choice or route_nowhere)"),
                             T);
    }
    const int nt = detail::token_choice::threads_for(ctx, T);       // over tokens
    const int nt_experts = detail::token_choice::threads_for(ctx, E);  // over experts
    const index lane = std::max(T, E);
    float* S = ws.take<float>(static_cast<std::size_t>(T * E));  // [T × E] token-wise softmax
    float* scratch = ws.take<float>(static_cast<std::size_t>(std::max(nt, nt_experts) * lane));  // per thread
    float* entropy = plan.entropy_data();
    const auto gate = [&](index t, float* s) {  // throws the NaN error of token t
      float* zt = z + t * E;
      detail::apply_nan_policy(zt, E, t, m_options.nan,
                               {.where = where, .param = param, .option = "expert_choice_options::nan"});
      m_base.gate_row(zt, S + t * E, entropy + t, s);
    };
    detail::token_choice::parallel_rows(T, nt, ws, logits, [&](int tid, index t) noexcept {
      try {
        gate(t, scratch + tid * lane);
      } catch (...) {
        return false;
      }
      return true;
    }, [&](index t) { gate(t, scratch); });
    plan.mark_entropy();
    if (kc == 0) {
      if (m_options.small_batch != expert_choice_fallback::token_choice) return;  // route nowhere
      const index k = m_options.fallback_k;
      auto* idx = ws.take<std::int32_t>(static_cast<std::size_t>(nt * k));
      float* w = ws.take<float>(static_cast<std::size_t>(nt * k));
      detail::parallel_region(nt, [&](int tid, int team, auto&&) {
        std::int32_t* ti = idx + tid * k;
        float* tw = w + tid * k;
        const auto rows = detail::share_of(T, tid, team);
        for (index t = rows.begin; t < rows.end; ++t) {
          const index count = m_base.select_row(z + t * E, S + t * E, ti, scratch + tid * lane);
          m_base.weigh_row(S + t * E, ti, count, tw);
          for (index s = 0; s < count; ++s) detail::token_choice::write_slot(plan, t, s, ti[s], tw[s]);
        }
      });
      plan.invalidate();
      return;
    }
    auto* chosen = ws.take<std::int32_t>(static_cast<std::size_t>(E * kc));  // [E × k_c] tokens per expert
    auto* count = ws.take<index>(static_cast<std::size_t>(E));
    detail::parallel_region(nt_experts, [&](int tid, int team, auto&&) {
      float* key = scratch + tid * lane;
      const auto experts = detail::share_of(E, tid, team);
      for (index e = experts.begin; e < experts.end; ++e) {
        for (index t = 0; t < T; ++t) key[t] = z[t * E + e] == neg_inf ? neg_inf : S[t * E + e];
        count[e] = kernels::top_k(key, T, kc, chosen + e * kc);
      }
    });
    auto* next = ws.take_zeroed<std::int32_t>(static_cast<std::size_t>(T));  // next free slot per token
    for (index e = 0; e < E; ++e) {
      for (index i = 0; i < count[e]; ++i) {
        const index t = chosen[e * kc + i];
        plan.set(t, next[t]++, static_cast<std::int32_t>(e), S[t * E + e]);
      }
    }
  }

  expert_choice_options m_options;
  top_k<softmax_gate> m_base;  // logits, NaN policy, softmax, and the token-choice fallback
};

static_assert(router<expert_choice>);

}  // namespace moe
