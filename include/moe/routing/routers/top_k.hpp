// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <cmath>
#include <algorithm>
#include <cstdint>
#include <limits>
#include <string_view>
#include <vector>

#include "moe/concepts.hpp"
#include "moe/config.hpp"
#include "moe/core/context.hpp"
#include "moe/core/error.hpp"
#include "moe/core/parallel.hpp"
#include "moe/plan.hpp"
#include "moe/core/views.hpp"
#include "moe/core/workspace.hpp"
#include "moe/kernels/gemm.hpp"
#include "moe/routing/detail/rows.hpp"
#include "moe/routing/routers/gates.hpp"

namespace moe {

/// Options of moe::top_k (docs/routing-spec.md §2 softmax, §3 sigmoid).
struct top_k_options {
  /// Experts per token, in [1, num_experts].
  int k = 2;
  /// Divide the selected scores by their sum (Mixtral, Qwen `norm_topk_prob`). If that sum is
  /// <= 0 (every selected sigmoid score underflowed), the weights are 0, never NaN.
  bool renormalize = false;
  /// With `renormalize`: the divisor is `max(sum, renormalize_floor)` (ERNIE 4.5's moe_norm_min
  /// 1e-12, Hunyuan's FLT_EPSILON; finite, >= 0; 0 = the plain sum). It binds only when the
  /// selected scores sum below it, e.g. when a selection bias chose experts of tiny probability.
  float renormalize_floor = 0.0f;
  /// Multiplies every combine weight after renormalisation (DeepSeek-V3: 2.5).
  float route_scale = 1.0f;
  /// Logits are divided by this before the gate (> 0).
  float temperature = 1.0f;
  /// Selection-only bias, one value per expert or empty: experts are chosen by `gate(z) + bias`,
  /// weighed by the unbiased `gate(z)` (DeepSeek-V3 auxiliary-loss-free balancing).
  std::vector<float> selection_bias = {};
  /// NaN logits: an error (default) or mapped to -inf.
  nan_policy nan = nan_policy::error;
  /// Soft cap `c` of the logits (> 0), or 0 for none: after the temperature, every logit becomes
  /// `c · tanh(z / c)`, in (-c, c) (docs/routing-spec.md §17.3). Selection and weights then use the
  /// capped logits; a +inf logit becomes c, a -inf logit stays -inf (never selected).
  float softcap = 0.0f;
};

namespace detail {

/// The checks moe::top_k makes of its weight `[E × d]` and of `route_scale` and `temperature`,
/// reported as `where` (the policies built on moe::top_k name themselves).
inline void check_gate_options(std::string_view where, index experts, index hidden, float route_scale,
                               float temperature) {
  if (experts < 1) fail_parameter(error_id::shape, where, "weight.rows()", ">= 1", experts);
  if (hidden < 1) fail_parameter(error_id::shape, where, "weight.cols()", ">= 1", hidden);
  if (!std::isfinite(route_scale)) fail_parameter(error_id::config, where, "route_scale", "finite", route_scale);
  if (!(temperature > 0.0f) || !std::isfinite(temperature)) {
    fail_parameter(error_id::config, where, "temperature", "finite and > 0", temperature);
  }
}

/// The check of a soft cap option: finite and >= 0 (0: none).
inline void check_softcap(std::string_view where, float softcap) {
  if (!(softcap >= 0.0f) || !std::isfinite(softcap)) {
    fail_parameter(error_id::config, where, "softcap", "finite and >= 0 (0: no cap)", softcap);
  }
}

/// `cap · tanh(z / cap)` for cap > 0: NaN stays NaN (for the NaN policy), -inf stays -inf (a
/// masked expert stays masked), +inf becomes cap.
inline float softcap(float z, float cap) noexcept {
  if (z == -std::numeric_limits<float>::infinity() || std::isnan(z)) return z;
  return std::tanh(z / cap) * cap;
}

}  // namespace detail

/// Token-choice top-k router: logits `z = W x / temperature` (soft-capped with `softcap`), scores
/// `gate(z)`, the k best experts per token (ties: lower expert index; -inf logits never
/// selected), weights from the scores.
///
/// Llama 4's router (transformers' Llama4Router, docs/routing-spec.md §17.4) is
/// `top_k<sigmoid_gate>` with `{.k = 1, .renormalize = false}`: the sigmoid of the selected
/// logits, not renormalised (moe::llama4_router_options()).
///
/// @tparam Gate moe::softmax_gate (default) or moe::sigmoid_gate.
///
/// Selection runs on the logits when the gate is monotone and there is no selection bias (so
/// every ISA selects the same experts); with a bias it runs on `gate(z) + bias`.
/// Batch invariant: a token's route depends on its own row only.
template <class Gate = softmax_gate>
class top_k {
 public:
  using router_type = top_k;
  using gate_type = Gate;
  /// Routes each token independently of the others.
  static constexpr bool needs_whole_batch = false;

  /// @param weight router weight `[E × d]`, one row per expert (copied and packed).
  top_k(const_matrix_map<float> weight, top_k_options options = {})
      : m_options(std::move(options)), m_experts(weight.rows()), m_hidden(weight.cols()) {
    constexpr const char* where = "moe::top_k";
    detail::check_gate_options(where, m_experts, m_hidden, m_options.route_scale, m_options.temperature);
    detail::check_range<index>(where, "k", m_options.k, 1, m_experts);
    detail::check_softcap(where, m_options.softcap);
    if (!(m_options.renormalize_floor >= 0.0f) || !std::isfinite(m_options.renormalize_floor)) {
      detail::fail_parameter(error_id::config, where, "renormalize_floor", "finite and >= 0", m_options.renormalize_floor);
    }
    if (!m_options.selection_bias.empty()) {
      detail::check_extent(where, "selection_bias.size()",
                           static_cast<index>(m_options.selection_bias.size()), m_experts);
      for (float b : m_options.selection_bias) {
        if (!std::isfinite(b)) detail::fail_parameter(error_id::config, where, "selection_bias[e]", "finite", b);
      }
    }
    m_weight = kernels::pack_panels(weight.data(), m_experts, m_hidden, weight.outerStride(),
                                    kernels::panel_width<kernels::gemm_arch>);
  }

  /// Convenience: any row-major Eigen matrix `[E × d]`.
  template <class Derived>
  explicit top_k(const Eigen::DenseBase<Derived>& weight, top_k_options options = {})
      : top_k(view(weight), std::move(options)) {}

  [[nodiscard]] index num_experts() const noexcept { return m_experts; }
  [[nodiscard]] index hidden() const noexcept { return m_hidden; }
  [[nodiscard]] index max_slots() const noexcept { return m_options.k; }
  [[nodiscard]] const top_k_options& options() const noexcept { return m_options; }

  /// Routes `x [T × d]` into `plan` (`[T × k]` over E experts), on up to `ctx.threads` threads.
  ///
  /// Dispatch: 1. T <= decode_rows: every thread computes the logits of its share of the router's
  /// panels for all tokens in one pass over the weights, then (after a barrier) gates its share of
  /// the tokens; 2. larger T: every thread computes and gates its share of the tokens.
  void route(const_matrix_map<float> x, const route_context& ctx, routing_plan& plan,
             workspace& ws) const {
    detail::check_extent("moe::top_k::route", "x.cols()", x.cols(), m_hidden);
    const index T = x.rows();
    const int nt = threads_for(ctx, T);
    const bool decode = T <= decode_rows;
    auto* scratch = ws.take<kernels::gemm_scratch>(static_cast<std::size_t>(nt));
    for (int i = 0; i < nt; ++i) scratch[i] = kernels::make_gemm_scratch(decode ? T : (T + nt - 1) / nt, m_hidden, ws);
    route_rows(T, nt, plan, ws, [&](float* z, int tid, int team, auto&& barrier) {
      const auto rows = detail::share_of(T, tid, team);
      if (decode) {
        const auto panels = detail::share_of(m_weight.panels, tid, team);
        kernels::gemm_rows(x.data(), T, x.outerStride(), m_weight, panels.begin, panels.end, z, m_experts, scratch[tid]);
        barrier();
      } else {
        kernels::gemm_rows(x.data() + rows.begin * x.outerStride(), rows.end - rows.begin, x.outerStride(),
                           m_weight, 0, m_weight.panels, z + rows.begin * m_experts, m_experts, scratch[tid]);
      }
      scale_logits(z + rows.begin * m_experts, rows.end - rows.begin, m_experts);
    }, "moe::top_k::route", "x");
  }

  /// Routes precomputed raw logits `z = W x [T × E]` (copied; the temperature is applied here,
  /// once, so that route_logits(W x) routes as route(x)): the linear map is skipped. NaN
  /// handling follows the options; an error names 'z'.
  void route_logits(const_matrix_map<float> z, routing_plan& plan, workspace& ws,
                    const route_context& ctx = {}) const {
    detail::check_extent("moe::top_k::route_logits", "z.cols()", z.cols(), m_experts);
    const index T = z.rows();
    route_rows(T, threads_for(ctx, T), plan, ws, [&](float* copy, int tid, int team, auto&&) {
      const auto rows = detail::share_of(T, tid, team);
      detail::copy_rows(z, rows.begin, rows.end, copy);
      scale_logits(copy + rows.begin * m_experts, rows.end - rows.begin, m_experts);
    }, "moe::top_k::route_logits", "z");
  }

  /// Token count up to which route() splits the router's panels (not the tokens) between threads.
  static constexpr index decode_rows = 8;

  // ---- Stages, public so that wrapper policies (null experts, similarity mixing, capacity)
  // ---- can reuse them. Each works on one row of E floats unless stated.

  /// Score columns per token: E here (wrappers such as moe::null_experts add columns).
  [[nodiscard]] index columns() const noexcept { return m_experts; }

  /// Expert computed for score column `c`: the identity here.
  [[nodiscard]] std::int32_t column_expert(index c) const noexcept { return static_cast<std::int32_t>(c); }

  /// Entropy (nats) of one row of E scores, as the plan records it; `scratch` holds E floats.
  [[nodiscard]] float row_entropy(const float* p, float* scratch) const noexcept {
    return Gate::entropy(p, m_experts, scratch);
  }

  /// Logits `z [T × E]` (row stride ldz) of `x`, divided by the temperature (one thread): the
  /// GEMM, then scale_logits().
  void logits(const_matrix_map<float> x, float* z, index ldz, workspace& ws) const {
    kernels::gemm(x.data(), x.rows(), x.outerStride(), m_weight, z, ldz, ws);
    scale_logits(z, x.rows(), ldz);
  }

  /// What logits() applies after the linear map: divides `rows` rows of E raw logits (row stride
  /// ldz) by the temperature, then applies the soft cap, in place (nothing at temperature 1
  /// without a cap). route_logits() of this policy and of the policies built on it apply it
  /// exactly once to the caller's raw logits.
  void scale_logits(float* z, index rows, index ldz) const noexcept {
    const float tau = m_options.temperature, cap = m_options.softcap;
    if (tau != 1.0f) {
      for (index t = 0; t < rows; ++t) {
        for (index e = 0; e < m_experts; ++e) z[t * ldz + e] /= tau;
      }
    }
    if (cap > 0.0f) {
      for (index t = 0; t < rows; ++t) {
        for (index e = 0; e < m_experts; ++e) z[t * ldz + e] = detail::softcap(z[t * ldz + e], cap);
      }
    }
  }

  /// The router weight, packed for kernels::gemm_rows (`[E × d]` in panels).
  [[nodiscard]] const kernels::packed_weights& packed_weight() const noexcept { return m_weight; }
  /// The same weight, as the stage protocol names it: logits() is `scale_logits(W x)`, so that
  /// moe::route_by_stages() computes stage 1 on its threads.
  [[nodiscard]] const kernels::packed_weights& logits_weight() const noexcept { return m_weight; }

  /// Applies the NaN policy to a logits row of length n (token t, for the message); an error
  /// names `where` and `param` (the caller's entry point and its input: 'x' for route(), 'z' for
  /// route_logits()).
  void prepare_row(float* z, index n, index t, std::string_view where = "moe::top_k::route",
                   std::string_view param = "x") const {
    detail::apply_nan_policy(z, n, t, m_options.nan, {.where = where, .param = param, .option = "top_k_options::nan"});
  }

  /// Scores `p = gate(z)` of one row of E logits; false if the row is degenerate (all -inf).
  /// With `entropy`, also the entropy of the routing distribution (`scratch`: E floats).
  bool gate_row(const float* z, float* p, float* entropy = nullptr, float* scratch = nullptr) const noexcept {
    return Gate::apply(z, m_experts, p, entropy, scratch);
  }

  /// Selects up to k experts of one row: on the logits `z` when the gate is monotone and there
  /// is no bias, else on `p + bias` (-inf logits excluded). `scratch` holds E floats.
  index select_row(const float* z, const float* p, std::int32_t* idx, float* scratch) const noexcept {
    const index E = m_experts;
    if (Gate::monotone && m_options.selection_bias.empty()) {
      return kernels::top_k(z, E, m_options.k, idx);
    }
    constexpr float neg_inf = -std::numeric_limits<float>::infinity();
    const float* b = m_options.selection_bias.empty() ? nullptr : m_options.selection_bias.data();
    for (index e = 0; e < E; ++e) scratch[e] = z[e] == neg_inf ? neg_inf : (b ? p[e] + b[e] : p[e]);
    return kernels::top_k(scratch, E, m_options.k, idx);
  }

  /// Combine weights of the `count` selected experts from the unbiased scores `p`:
  /// renormalised (zero-denominator rule) if asked, then scaled by route_scale.
  void weigh_row(const float* p, const std::int32_t* idx, index count, float* w) const noexcept {
    for (index s = 0; s < count; ++s) w[s] = p[idx[s]];
    if (m_options.renormalize && m_options.renormalize_floor > 0.0f) {
      // The same sum as renormalize_scale's; below the floor, divide by the floor instead.
      const float total = kernels::sum(w, count);
      if (total < m_options.renormalize_floor) {
        for (index s = 0; s < count; ++s) w[s] = w[s] / m_options.renormalize_floor * m_options.route_scale;
        return;
      }
    }
    kernels::renormalize_scale(w, count, m_options.renormalize, m_options.route_scale);
  }

 private:
  int threads_for(const route_context& ctx, index T) const noexcept {
    const int nt = ctx.threads > 0 ? ctx.threads : detail::default_threads();
    return static_cast<int>(std::max<index>(1, std::min<index>(nt, T)));
  }

  // Runs scores(z, tid, team, barrier), which fills the team's logits, then gates, selects and
  // weighs each thread's share of the rows. A NaN logit under nan_policy::error is reported after
  // the parallel region, for the lowest such token, naming `where` and `param`.
  template <class Scores>
  void route_rows(index T, int nt, routing_plan& plan, workspace& ws, Scores&& scores, std::string_view where,
                  std::string_view param) const {
    const index E = m_experts, k = m_options.k;
    plan.reset(T, k, E);
    if (T == 0) return;
    float* z = ws.take<float>(static_cast<std::size_t>(T * E));  // [T × E]
    float* p = ws.take<float>(static_cast<std::size_t>(nt * E));
    float* scratch = ws.take<float>(static_cast<std::size_t>(nt * E));
    auto* idx = ws.take<std::int32_t>(static_cast<std::size_t>(nt * k));
    float* w = ws.take<float>(static_cast<std::size_t>(nt * k));
    auto* nan_token = ws.take<index>(static_cast<std::size_t>(nt));
    std::fill(nan_token, nan_token + nt, index{-1});
    float* entropy = plan.entropy_data();
    float* top = plan.top_score_data();
    detail::parallel_region(nt, [&](int tid, int team, auto&& barrier) {
      scores(z, tid, team, barrier);
      float* pt = p + tid * E;
      float* st = scratch + tid * E;
      std::int32_t* it = idx + tid * k;
      float* wt = w + tid * k;
      const auto rows = detail::share_of(T, tid, team);
      for (index t = rows.begin; t < rows.end; ++t) {
        float* zt = z + t * E;
        if (kernels::has_nan(zt, E)) {
          if (m_options.nan == nan_policy::error) {
            nan_token[tid] = t;
            break;
          }
          kernels::nan_to_neg_inf(zt, E);
        }
        gate_row(zt, pt, entropy + t, st);
        const index count = select_row(zt, pt, it, st);
        top[t] = count > 0 ? pt[it[0]] : 0.0f;
        weigh_row(pt, it, count, wt);
        auto experts = plan.experts(t);
        auto weights = plan.weights(t);
        for (index s = 0; s < count; ++s) {
          experts[static_cast<std::size_t>(s)] = it[s];
          weights[static_cast<std::size_t>(s)] = wt[s];
        }
      }
    });
    plan.mark_entropy();
    plan.mark_top_score();
    for (int i = 0; i < nt; ++i) {
      if (nan_token[i] >= 0) prepare_row(z + nan_token[i] * E, E, nan_token[i], where, param);  // throws
    }
  }

  top_k_options m_options;
  index m_experts;
  index m_hidden;
  kernels::packed_weights m_weight;
};

static_assert(router<top_k<softmax_gate>>);
static_assert(router<top_k<sigmoid_gate>>);

}  // namespace moe
