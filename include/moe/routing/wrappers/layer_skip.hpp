// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// Layer skipping (docs/routing-spec.md §13): a depth policy decides, per token, how many times the layer
// runs (0 = skip, 1 = execute, 2 = repeat) and by how much its output is scaled; moe::layer_skip
// wraps any token-choice router with such a policy, so the experts a token would use come from
// the inner router and whether it uses them at all from the depth policy.
//
// The layer (moe::layer) honours the decisions: a skipped token computes nothing (output 0, no
// shared experts either), a scaled token has its whole output (routed + shared) multiplied by
// output_scale(t), a repeated token gets `MoE(x) + MoE(x + MoE(x))` (see layer.hpp).

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <iomanip>
#include <limits>
#include <ostream>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "moe/concepts.hpp"
#include "moe/config.hpp"
#include "moe/core/context.hpp"
#include "moe/core/error.hpp"
#include "moe/plan.hpp"
#include "moe/core/views.hpp"
#include "moe/core/workspace.hpp"

namespace moe {

/// A depth policy: decides, for the tokens of a plan that an inner router has just filled, how
/// many passes each token makes through the layer (`plan.set_passes`) and, optionally, a factor on
/// its output (`plan.set_output_scale`). It must not change the slots: moe::layer_skip clears the
/// slots of skipped tokens itself.
///
/// Optional members: `hidden()` (checked against the inner router's), `needs_whole_batch`
/// (default true), `policy_stats(plan)` (replaces moe::compute_depth_stats).
template <class D>
concept depth_policy = requires(const D& d, const_matrix_map<float> x, const route_context& ctx,
                                routing_plan& plan, workspace& ws) {
  typename D::depth_policy_type;
  d.decide(x, ctx, plan, ws);
};

/// Statistics of one layer's depth decisions (what the layer-skip papers report), from a plan.
///
/// Counts are in tokens. For per-sequence policies (Dr.LLM) every token of a sequence carries the
/// sequence's decision, so rates are sequence rates weighted by length.
struct depth_stats {
  index tokens = 0;        ///< T
  index skipped = 0;       ///< tokens with passes = 0
  index executed = 0;      ///< tokens with passes = 1
  index repeated = 0;      ///< tokens with passes >= 2
  index block_passes = 0;  ///< Σ_t passes(t): token-passes through the layer
  double skip_rate = 0;    ///< skipped / T (0 if T = 0)
  double repeat_rate = 0;  ///< repeated / T
  /// (T - skipped) / T: the capacity used (MoD), the kept fraction (FTP, γ-MoD).
  double kept_fraction = 0;
  /// block_passes / T: layer executions per token (1 for a dense layer).
  double mean_passes = 0;
  /// 1 - mean_passes: layer executions saved per token by this layer (negative if it repeats
  /// more than it skips).
  double layers_saved = 0;
  /// Mean output scale over the tokens that run (1 when the policy sets none).
  double mean_output_scale = 0;
};

/// Depth statistics of a plan.
inline depth_stats compute_depth_stats(const routing_plan& plan) {
  depth_stats s;
  s.tokens = plan.num_tokens();
  double scale_sum = 0;
  for (index t = 0; t < s.tokens; ++t) {
    const int p = plan.passes(t);
    s.skipped += p == 0;
    s.executed += p == 1;
    s.repeated += p >= 2;
    s.block_passes += p;
    if (p > 0) scale_sum += plan.output_scale(t);
  }
  if (s.tokens > 0) {
    const auto T = static_cast<double>(s.tokens);
    s.skip_rate = static_cast<double>(s.skipped) / T;
    s.repeat_rate = static_cast<double>(s.repeated) / T;
    s.kept_fraction = static_cast<double>(s.tokens - s.skipped) / T;
    s.mean_passes = static_cast<double>(s.block_passes) / T;
    s.layers_saved = 1.0 - s.mean_passes;
  }
  const index run = s.tokens - s.skipped;
  if (run > 0) s.mean_output_scale = scale_sum / static_cast<double>(run);
  return s;
}

/// Prints one line: tokens, skip / execute / repeat counts and rates, layers saved.
inline std::ostream& operator<<(std::ostream& out, const depth_stats& s) {
  const auto flags = out.flags();
  out << std::fixed << std::setprecision(3) << "tokens " << s.tokens << ", skipped " << s.skipped
      << ", executed " << s.executed << ", repeated " << s.repeated << " (skip rate "
      << s.skip_rate << ", repeat rate " << s.repeat_rate << ", kept " << s.kept_fraction
      << "), passes/token " << s.mean_passes << ", layers saved/token " << s.layers_saved;
  out.flags(flags);
  return out;
}

/// Depth statistics over a stack of layers (Dr.LLM reports layers saved per example): add each
/// layer's moe::depth_stats for one batch, in order.
struct depth_stack_stats {
  std::vector<depth_stats> layers;  ///< one entry per layer, in the order added

  /// Appends the statistics of the next layer.
  void add(const depth_stats& s) { layers.push_back(s); }
  /// Number of layers added.
  [[nodiscard]] index num_layers() const noexcept { return static_cast<index>(layers.size()); }
  /// Σ_l mean passes: layer executions per token over the stack (num_layers() when dense).
  [[nodiscard]] double layers_executed() const noexcept {
    double sum = 0;
    for (const auto& l : layers) sum += l.mean_passes;
    return sum;
  }
  /// num_layers() - layers_executed(): layer executions saved per token.
  [[nodiscard]] double layers_saved() const noexcept {
    return static_cast<double>(num_layers()) - layers_executed();
  }
  /// Fraction of (layer, token) decisions that skip.
  [[nodiscard]] double skip_rate() const noexcept { return rate(&depth_stats::skipped); }
  /// Fraction of (layer, token) decisions that repeat.
  [[nodiscard]] double repeat_rate() const noexcept { return rate(&depth_stats::repeated); }

 private:
  [[nodiscard]] double rate(index depth_stats::*count) const noexcept {
    index num = 0, den = 0;
    for (const auto& l : layers) {
      num += l.*count;
      den += l.tokens;
    }
    return den > 0 ? static_cast<double>(num) / static_cast<double>(den) : 0.0;
  }
};

/// Prints the stack summary and one line per layer.
inline std::ostream& operator<<(std::ostream& out, const depth_stack_stats& s) {
  const auto flags = out.flags();
  out << std::fixed << std::setprecision(3) << "layers " << s.num_layers() << ", executed/token "
      << s.layers_executed() << ", saved/token " << s.layers_saved() << ", skip rate "
      << s.skip_rate() << ", repeat rate " << s.repeat_rate() << '\n';
  for (std::size_t l = 0; l < s.layers.size(); ++l) out << "  layer " << l << ": " << s.layers[l] << '\n';
  out.flags(flags);
  return out;
}

/// Writes `mask[t] = 1` for the tokens of `plan` that run (passes > 0), else 0: the targets of the
/// MoD and γ-MoD auxiliary losses. `mask.size()` must be plan.num_tokens().
template <class Scalar>
void executed_mask(const routing_plan& plan, std::span<Scalar> mask) {
  detail::check_extent("moe::executed_mask", "mask.size()", static_cast<index>(mask.size()),
                       plan.num_tokens());
  for (index t = 0; t < plan.num_tokens(); ++t) {
    mask[static_cast<std::size_t>(t)] = plan.passes(t) > 0 ? Scalar(1) : Scalar(0);
  }
}

namespace detail::depth {

/// Marks (passes = 1) the C tokens with the largest keys among rows `[begin, end)` and skips
/// (passes = 0) the others. Ties go to the lower position. `idx` has room for end - begin values.
/// Tokens at positions `>= forced_from` within the sequence (row `begin + forced_from` onwards)
/// rank ahead of every other token whatever the keys (γ-MoD's question tokens): the rank is
/// explicit, not a score offset, which saturated keys could tie (`p + 1 = 1.0f = p'`).
/// The order is a total order (forced first, key descending, then position ascending), so the
/// selected set does not depend on the selection algorithm.
inline void select_top(const float* key, index begin, index end, index C, index* idx, routing_plan& plan,
                       index forced_from = std::numeric_limits<index>::max()) {
  const index n = end - begin;
  for (index i = 0; i < n; ++i) idx[i] = begin + i;
  const auto before = [key, begin, forced_from](index a, index b) {
    const bool fa = a - begin >= forced_from, fb = b - begin >= forced_from;
    if (fa != fb) return fa;
    return key[a] > key[b] || (key[a] == key[b] && a < b);
  };
  if (C > 0 && C < n) std::nth_element(idx, idx + C - 1, idx + n, before);
  for (index i = 0; i < n; ++i) plan.set_passes(idx[i], i < C ? 1 : 0);
}


}  // namespace detail::depth

/// A token-choice router with a depth policy in front: the inner router picks the experts and
/// weights of every token, the depth policy decides how many passes each token makes through the
/// layer (0 skip, 1 execute, 2 repeat) and the factor on its output. Skipped tokens get no slots.
///
/// @tparam Inner a moe::router (moe::top_k<>, a wrapper such as null experts, or your own).
/// @tparam Depth a moe::depth_policy (moe::mod_capacity, moe::dr_llm, moe::gamma_mod, moe::ftp,
///               or your own).
///
/// `route_repeat()` routes with the inner router alone: moe::layer uses it for the second pass of
/// a repeated token. `policy_stats(plan)` gives the moe::depth_stats of the plan (or the depth
/// policy's own statistics when it defines policy_stats).
template <class Inner, class Depth>
class layer_skip {
  static_assert(router<Inner>,
                "moe::layer_skip<Inner, Depth>: Inner must model moe::router (e.g. moe::top_k<>)");
  static_assert(depth_policy<Depth>,
                "moe::layer_skip<Inner, Depth>: Depth must model moe::depth_policy: give it "
                "'using depth_policy_type = ...' and a const decide(x, ctx, plan, workspace)");

 public:
  using router_type = layer_skip;
  using inner_type = Inner;
  using depth_type = Depth;
  /// Depth decisions are per sequence (MoD capacity, Dr.LLM pooling) unless the policy says not.
  static constexpr bool needs_whole_batch =
      moe::needs_whole_batch<Inner>() || moe::needs_whole_batch<Depth>();

  layer_skip(Inner inner, Depth depth) : m_inner(std::move(inner)), m_depth(std::move(depth)) {
    if constexpr (requires(const Depth& d) { d.hidden(); }) {
      detail::check_extent("moe::layer_skip", "depth.hidden()", static_cast<index>(m_depth.hidden()),
                           static_cast<index>(m_inner.hidden()));
    }
  }

  [[nodiscard]] index num_experts() const noexcept { return m_inner.num_experts(); }
  [[nodiscard]] index hidden() const noexcept { return m_inner.hidden(); }
  [[nodiscard]] index max_slots() const noexcept { return m_inner.max_slots(); }
  [[nodiscard]] const Inner& inner() const noexcept { return m_inner; }
  [[nodiscard]] Inner& inner() noexcept { return m_inner; }
  [[nodiscard]] const Depth& depth() const noexcept { return m_depth; }
  [[nodiscard]] Depth& depth() noexcept { return m_depth; }

  /// Routes `x [T × d]`: the inner router fills the slots, the depth policy sets passes and
  /// output scales from `ctx.block_input` when given (the decoder block's input, as the papers
  /// decide) or from `x`, and the slots of skipped tokens are cleared.
  void route(const_matrix_map<float> x, const route_context& ctx, routing_plan& plan, workspace& ws) const {
    m_inner.route(x, ctx, plan, ws);
    if (ctx.block_input) {
      detail::check_extent("moe::layer_skip::route", "ctx.block_input->rows()", ctx.block_input->rows(), x.rows());
      m_depth.decide(*ctx.block_input, ctx, plan, ws);
    } else {
      m_depth.decide(x, ctx, plan, ws);
    }
    for (index t = 0; t < plan.num_tokens(); ++t) {
      if (plan.passes(t) != 0) continue;
      for (index s = 0; s < plan.max_slots(); ++s) plan.set(t, s, no_expert, 0.0f);
    }
  }

  /// Routes with the inner router alone (every token one pass): the second pass of a repeat.
  void route_repeat(const_matrix_map<float> x, const route_context& ctx, routing_plan& plan,
                    workspace& ws) const {
    m_inner.route(x, ctx, plan, ws);
  }

  /// Depth statistics of a plan this router produced.
  [[nodiscard]] auto policy_stats(const routing_plan& plan) const {
    if constexpr (requires { m_depth.policy_stats(plan); }) {
      return m_depth.policy_stats(plan);
    } else {
      return compute_depth_stats(plan);
    }
  }

 private:
  Inner m_inner;
  Depth m_depth;
};

}  // namespace moe
