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
#include "moe/core/views.hpp"
#include "moe/core/workspace.hpp"
#include "moe/kernels/gating.hpp"
#include "moe/routing/detail/rows.hpp"
#include "moe/routing/routers/gates.hpp"
#include "moe/routing/routers/token_choice.hpp"
#include "moe/routing/routers/top_k.hpp"

namespace moe {

/// How group-limited routing scores a group of experts (docs/routing-spec.md §4 step 4).
enum class group_score {
  top2_sum,  ///< sum of the two largest biased scores of the group (DeepSeek-V3); a group of one expert scores its score
  max        ///< the largest biased score of the group (DeepSeek-V2 softmax mode)
};

/// Options of moe::group_limited (docs/routing-spec.md §4).
struct group_limited_options {
  /// Experts per token, in [1, topk_groups · E / n_groups].
  int k = 8;
  /// Number of contiguous expert groups; must divide E (expert e is in group e / (E / n_groups)).
  int n_groups = 8;
  /// Groups kept per token, in [1, n_groups].
  int topk_groups = 4;
  /// Group score: top2_sum (V3) or max (V2).
  group_score score = group_score::top2_sum;
  /// Divide the selected (unbiased) scores by their sum (V3 always does for sigmoid scores);
  /// a sum <= 0 gives weights 0, never NaN.
  bool renormalize = true;
  /// Multiplies every combine weight after renormalisation (V3: 2.5).
  float route_scale = 1.0f;
  /// Logits are divided by this before the gate (> 0).
  float temperature = 1.0f;
  /// Initial selection bias, one value per expert, or empty (zeros). The bias is router state:
  /// update_bias() changes it, route() only reads it.
  std::vector<float> selection_bias = {};
  /// NaN logits: an error (default) or mapped to -inf.
  nan_policy nan = nan_policy::error;
};

/// DeepSeek-V3 group-limited routing with auxiliary-loss-free bias balancing (docs/routing-spec.md §4).
///
/// Per token: scores `s = gate(z)`; biased scores `s' = s + b` choose the experts (a -inf logit
/// is never chosen); the experts form `n_groups` contiguous groups, each scored by its two best
/// (or its best) biased scores; the `topk_groups` best groups are kept (ties: lower group); the
/// biased scores of every expert in another group become **-inf**; the k best remaining experts
/// are selected (ties: lower expert); their weights are the *unbiased* scores, renormalised if
/// asked, times `route_scale`.
///
/// Without a bias (empty, or every entry 0, as the bias is after set_bias() with zeros) the
/// experts of the kept groups are selected on their logits instead, as moe::top_k does (errata 8,
/// style R11): the gates are monotone, so this is the same selection, except that logits whose
/// scores round to the same float (sigmoid(17) and sigmoid(20) are both 1.0f) do not tie. The
/// group scores are still sums (or maxima) of the scores.
///
/// Masking with -inf follows DeepSeek's official inference code. The Hugging Face port masks with
/// 0.0, which is wrong as soon as a biased score can be negative: a masked expert (biased score
/// 0) then beats every kept expert whose biased score is below 0. Here a masked expert is never
/// selected, so a token gets fewer than k experts only if the kept groups hold fewer than k
/// selectable experts.
///
/// A group whose score is -inf (in top2_sum mode: fewer than two selectable experts) ranks below
/// every group with a finite score, and among such groups the lower index wins; its selectable
/// expert, if any, stays selectable when the group is kept.
///
/// Balancing (aux-loss-free, docs/routing-spec.md §4): after each optimiser step call
/// `update_bias(plan, gamma)`: `b_e += gamma · sign(mean_load - load_e)` (sign(0) = 0), the load
/// counted over the assignments of the plan handed in; `update_bias(load, gamma)` takes counts
/// that the caller has summed itself (e.g. all-reduced over data-parallel ranks). Routing is
/// const and batch invariant.
///
/// Thread safety: the bias is router state. route() and route_logits() only read it and may run
/// concurrently with each other; update_bias() and set_bias() write it and must not run
/// concurrently with any other call on the same router (call them between steps, as training
/// does).
///
/// @tparam Gate moe::sigmoid_gate (DeepSeek-V3, default) or moe::softmax_gate (DeepSeek-V2).
template <class Gate = sigmoid_gate>
class group_limited {
 public:
  using router_type = group_limited;
  using gate_type = Gate;
  /// Routes each token independently of the others.
  static constexpr bool needs_whole_batch = false;

  /// @param weight router weight `[E × d]`, one row per expert (copied and packed).
  group_limited(const_matrix_map<float> weight, group_limited_options options = {})
      : m_options(checked(std::move(options), weight.rows(), weight.cols())),
        m_base(weight, {.k = m_options.k,
                        .renormalize = m_options.renormalize,
                        .route_scale = m_options.route_scale,
                        .temperature = m_options.temperature,
                        .nan = m_options.nan}),
        m_group_size(weight.rows() / m_options.n_groups) {
    m_bias = m_options.selection_bias;
    if (m_bias.empty()) m_bias.assign(static_cast<std::size_t>(weight.rows()), 0.0f);
    bias_changed();
  }

  /// Convenience: any row-major Eigen matrix `[E × d]`.
  template <class Derived>
  explicit group_limited(const Eigen::DenseBase<Derived>& weight, group_limited_options options = {})
      : group_limited(view(weight), std::move(options)) {}

  [[nodiscard]] index num_experts() const noexcept { return m_base.num_experts(); }
  [[nodiscard]] index hidden() const noexcept { return m_base.hidden(); }
  [[nodiscard]] index max_slots() const noexcept { return m_options.k; }
  /// The options given at construction (the bias there is the initial one; see bias()).
  [[nodiscard]] const group_limited_options& options() const noexcept { return m_options; }
  /// Experts per group, E / n_groups.
  [[nodiscard]] index group_size() const noexcept { return m_group_size; }
  /// The current selection bias `[E]`.
  [[nodiscard]] std::span<const float> bias() const noexcept { return m_bias; }

  /// Replaces the selection bias (`[E]`, finite values). Writes router state: not concurrently
  /// with route() or any other call on this router.
  void set_bias(std::span<const float> bias) {
    check_bias("moe::group_limited::set_bias", "bias", bias, num_experts());
    m_bias.assign(bias.begin(), bias.end());
    bias_changed();
  }

  /// Auxiliary-loss-free balancing step: counts the assignments of each expert in `plan` and
  /// applies update_bias(load, gamma). Writes router state: not concurrently with route() or any
  /// other call on this router.
  void update_bias(const routing_plan& plan, float gamma) {
    detail::check_extent("moe::group_limited::update_bias", "plan.num_experts()", plan.num_experts(),
                         num_experts());
    std::vector<index> load(static_cast<std::size_t>(num_experts()), 0);
    for (const std::int32_t e : plan.all_experts()) {
      if (e != no_expert) ++load[static_cast<std::size_t>(e)];
    }
    update_bias(std::span<const index>(load), gamma);
  }

  /// Auxiliary-loss-free balancing step from per-expert loads `c [E]` (assignments, any token
  /// set): `b_e += gamma · sign(mean(c) - c_e)`, sign(0) = 0. The sign is computed exactly, in
  /// integers (`sign(Σc - E·c_e)`), so an expert exactly at the mean is left alone. Writes router
  /// state: not concurrently with route() or any other call on this router.
  void update_bias(std::span<const index> load, float gamma) {
    constexpr const char* where = "moe::group_limited::update_bias";
    detail::check_extent(where, "load.size()", static_cast<index>(load.size()), num_experts());
    if (!(gamma >= 0.0f) || !std::isfinite(gamma)) {
      detail::fail_parameter(error_id::config, where, "gamma", "finite and >= 0", gamma);
    }
    index total = 0;
    for (const index c : load) {
      if (c < 0) detail::fail_parameter(error_id::input, where, "load[e]", ">= 0", c);
      total += c;
    }
    const index E = num_experts();
    for (index e = 0; e < E; ++e) {
      const index diff = total - E * load[static_cast<std::size_t>(e)];  // sign(cbar - c_e)
      const float sign = diff > 0 ? 1.0f : (diff < 0 ? -1.0f : 0.0f);
      m_bias[static_cast<std::size_t>(e)] += gamma * sign;
    }
    bias_changed();
  }

  /// Routes `x [T × d]` into `plan` (`[T × k]` over E experts), on up to `ctx.threads` threads.
  void route(const_matrix_map<float> x, const route_context& ctx, routing_plan& plan, workspace& ws) const {
    route_by_stages(*this, x, ctx, plan, ws, "moe::group_limited::route");
  }

  /// Routes precomputed raw logits `z = W x [T × E]` (copied; the temperature is applied here,
  /// once, so that route_logits(W x) routes as route(x)).
  void route_logits(const_matrix_map<float> z, routing_plan& plan, workspace& ws, const route_context& ctx = {}) const {
    route_logits_by_stages(*this, z, plan, ws, "moe::group_limited::route_logits", ctx);
  }

  // ---- Stages (moe::token_choice_policy): moe::top_k's, but for selection (groups first).

  [[nodiscard]] index columns() const noexcept { return num_experts(); }
  [[nodiscard]] std::int32_t column_expert(index c) const noexcept { return static_cast<std::int32_t>(c); }
  void logits(const_matrix_map<float> x, float* z, index ldz, workspace& ws) const { m_base.logits(x, z, ldz, ws); }
  [[nodiscard]] const kernels::packed_weights& logits_weight() const noexcept { return m_base.logits_weight(); }
  void scale_logits(float* z, index rows, index ldz) const noexcept { m_base.scale_logits(z, rows, ldz); }
  /// The NaN policy on one row (token t); an error names `where` and `param`.
  void prepare_row(float* z, index n, index t, std::string_view where = "moe::group_limited::route",
                   std::string_view param = "x") const {
    detail::apply_nan_policy(z, n, t, m_options.nan, {.where = where, .param = param, .option = "group_limited_options::nan"});
  }
  bool gate_row(const float* z, float* s) const noexcept { return m_base.gate_row(z, s); }
  [[nodiscard]] float row_entropy(const float* s, float* scratch) const noexcept { return m_base.row_entropy(s, scratch); }
  /// Keeps the topk_groups best groups of the biased scores `s + bias` (the groups with a score
  /// above -inf first, by score, ties to the lower group; then -inf groups by ascending index),
  /// then selects k experts in them: on the logits `z` without bias, else on `s + bias` (-inf
  /// logits never). `scratch` holds E floats.
  index select_row(const float* z, const float* s, std::int32_t* idx, float* scratch) const noexcept {
    constexpr float neg_inf = -std::numeric_limits<float>::infinity();
    const index E = num_experts(), G = m_options.n_groups, g = m_group_size;
    float* key = scratch;
    const float* b = m_bias.data();
    for (index e = 0; e < E; ++e) key[e] = z[e] == neg_inf ? neg_inf : s[e] + b[e];
    // Drops the groups not kept, in place (their keys become -inf), so that no group-sized
    // buffer is needed. Kept: the topk_groups best groups whose score is above -inf (ties to the
    // lower group), then, if too few, the -inf groups by ascending index. Ranked explicitly,
    // not through a sentinel score such as lowest(), which a finite group score can equal (two
    // biases of -FLT_MAX/2).
    const auto value = [&](index grp) { return group_value(key + grp * g, g); };
    const auto drop = [&](index grp) { std::fill(key + grp * g, key + (grp + 1) * g, neg_inf); };
    const index keep = m_options.topk_groups;
    index finite = 0;
    for (index grp = 0; grp < G; ++grp) finite += value(grp) != neg_inf;
    if (finite > keep) {
      for (index n = finite - keep; n > 0; --n) {  // the worst finite group, ties to the higher one
        index worst = -1;
        float worst_value = 0.0f;
        for (index grp = 0; grp < G; ++grp) {
          const float v = value(grp);
          if (v != neg_inf && (worst < 0 || v <= worst_value)) {
            worst = grp;
            worst_value = v;
          }
        }
        drop(worst);
      }
      for (index grp = 0; grp < G; ++grp) {
        if (value(grp) == neg_inf) drop(grp);
      }
    } else {
      index fill = keep - finite;
      for (index grp = 0; grp < G; ++grp) {
        if (value(grp) != neg_inf) continue;
        if (fill > 0) --fill;
        else drop(grp);
      }
    }
    if (m_select_on_logits) {  // no bias: select on the logits in the kept groups
      for (index e = 0; e < E; ++e) {
        if (key[e] != neg_inf) key[e] = z[e];
      }
    }
    return kernels::top_k(key, E, m_options.k, idx);
  }
  /// The base's weights from the unbiased scores (renormalised, route_scale).
  void weigh_row(const float* s, const std::int32_t* idx, index count, float* w) const noexcept {
    m_base.weigh_row(s, idx, count, w);
  }

 private:
  // Selection runs on the logits when the bias is all zero (the gates are monotone).
  void bias_changed() noexcept {
    m_select_on_logits = Gate::monotone && std::all_of(m_bias.begin(), m_bias.end(), [](float b) { return b == 0.0f; });
  }

  static void check_bias(const char* where, const char* param, std::span<const float> bias, index E) {
    detail::check_extent(where, detail::concat(param, ".size()"), static_cast<index>(bias.size()), E);
    for (const float b : bias) {
      if (!std::isfinite(b)) detail::fail_parameter(error_id::config, where, detail::concat(param, "[e]"), "finite", b);
    }
  }

  static group_limited_options checked(group_limited_options o, index E, index d) {
    constexpr const char* where = "moe::group_limited";
    detail::check_gate_options(where, E, d, o.route_scale, o.temperature);
    detail::check_range<index>(where, "n_groups", o.n_groups, 1, E);
    if (E % o.n_groups != 0) {
      detail::fail_parameter(error_id::config, where, "n_groups",
                             detail::concat("a divisor of the number of experts ", E), o.n_groups);
    }
    detail::check_range<index>(where, "topk_groups", o.topk_groups, 1, o.n_groups);
    detail::check_range<index>(where, "k", o.k, 1, index{o.topk_groups} * (E / o.n_groups));
    if (!o.selection_bias.empty()) check_bias(where, "selection_bias", o.selection_bias, E);
    return o;
  }

  // Score of one group of n biased scores (-inf entries are unselectable experts).
  float group_value(const float* key, index n) const noexcept {
    float first = key[0], second = -std::numeric_limits<float>::infinity();
    for (index i = 1; i < n; ++i) {
      if (key[i] > first) {
        second = first;
        first = key[i];
      } else if (key[i] > second) {
        second = key[i];
      }
    }
    if (m_options.score == group_score::max || n == 1) return first;
    return first + second;
  }

  group_limited_options m_options;
  top_k<Gate> m_base;  // logits, NaN policy, gate and weights; selection is done here
  index m_group_size;
  std::vector<float> m_bias;  // [E], the current selection bias
  bool m_select_on_logits = true;  // the bias is all zero and the gate monotone
};

static_assert(router<group_limited<sigmoid_gate>>);
static_assert(router<group_limited<softmax_gate>>);
static_assert(token_choice_policy<group_limited<sigmoid_gate>>);

}  // namespace moe
