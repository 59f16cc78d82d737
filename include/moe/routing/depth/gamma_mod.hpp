// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// γ-MoD: Mixture-of-Depths adapted to multimodal LLMs (docs/routing-spec.md §13.3; Yaxin9Luo/Gamma-MOD,
// arXiv 2410.13859).
//
// Dispatch, per sequence of L tokens whose first L_ic are image + instruction tokens:
//   1. z_t = W x_t, W [2 × d] without bias: ONE router shared by every γ-MoD layer;
//      p_t = softmax(z_t)[1], the probability of "process";
//   2. phase training (and prefill by default): masked routing, the question / response tokens
//      (position >= L_ic) always selected (the paper scores them p_t + 1; here they rank ahead of
//      every image token explicitly, so saturated logits cannot tie them, §13.3); capacity
//      C = ceil(L (1 - f L_ic / L)) in double with the §1.2 guard (f = 0.5: C = L - floor(L_ic/2));
//      if L <= L_ic every token is processed; the top-C scores enter (ties: lower position);
//   3. phase prefill with a prefill threshold: token t enters iff p_t > threshold (the released
//      code's nearly dense 0.005); phase decode: token t enters iff p_t >= decode threshold (0.5);
//      both are decided on the logits, `z1 - z0` against `log(theta / (1 - theta))` in double
//      (errata 9: `p >= 0.5` is `z1 - z0 >= 0`; a rounded p would make |z1 - z0| < 3e-8 a tie);
//   4. a token that enters has its output scaled by p_t (γ-MoD scales the MLP output, which is
//      what an MoE layer computes).

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <span>

#include "moe/config.hpp"
#include "moe/core/context.hpp"
#include "moe/core/error.hpp"
#include "moe/plan.hpp"
#include "moe/core/rounding.hpp"
#include "moe/core/sequences.hpp"
#include "moe/core/views.hpp"
#include "moe/core/workspace.hpp"
#include "moe/kernels/gating.hpp"
#include "moe/kernels/gemm.hpp"
#include "moe/routing/wrappers/layer_skip.hpp"

namespace moe {

/// The γ-MoD router `Linear(d, 2, bias = False)`, shared by all γ-MoD layers of a model: hold it
/// in a `std::shared_ptr` and give the same pointer to every layer's moe::gamma_mod.
class gamma_mod_router {
 public:
  /// @param weight `[2 × d]`: row 0 "skip", row 1 "process" (copied and packed); finite.
  explicit gamma_mod_router(const_matrix_map<float> weight) : m_hidden(weight.cols()) {
    constexpr const char* where = "moe::gamma_mod_router";
    detail::check_extent(where, "weight.rows()", weight.rows(), 2);
    if (m_hidden < 1) detail::fail_parameter(error_id::shape, where, "weight.cols()", ">= 1", m_hidden);
    for (index i = 0; i < 2; ++i) {
      for (index j = 0; j < m_hidden; ++j) {
        if (!std::isfinite(weight(i, j))) {
          detail::fail_parameter(error_id::config, where, detail::concat("weight(", i, ", ", j, ")"), "finite",
                                 weight(i, j));
        }
      }
    }
    m_weight = kernels::pack_panels(weight.data(), 2, m_hidden, weight.outerStride(),
                                    kernels::panel_width<kernels::gemm_arch>);
  }
  /// Convenience: any row-major Eigen matrix `[2 × d]`.
  template <class Derived>
  explicit gamma_mod_router(const Eigen::DenseBase<Derived>& weight) : gamma_mod_router(view(weight)) {}

  [[nodiscard]] index hidden() const noexcept { return m_hidden; }

  /// Logits `z [T × 2]` (row-major) of `x [T × d]`.
  void logits(const_matrix_map<float> x, float* z, workspace& ws) const {
    detail::check_extent("moe::gamma_mod_router::logits", "x.cols()", x.cols(), m_hidden);
    kernels::gemm(x.data(), x.rows(), x.outerStride(), m_weight, z, 2, ws);
  }

 private:
  index m_hidden;
  kernels::packed_weights m_weight;
};

/// What a γ-MoD layer is doing.
enum class gamma_mod_phase {
  training,  ///< masked routing with capacity (the training rule)
  prefill,   ///< the training rule, or `p > prefill_threshold` when that is >= 0
  decode     ///< `p >= decode_threshold` per token (decided on the logits)
};

/// Options of moe::gamma_mod.
struct gamma_mod_options {
  /// L_ic: image + system-instruction tokens at the start of every sequence (code: 1024 + 35).
  index instruction_tokens = 1059;
  /// f: fraction of the L_ic tokens that skip, `C = ceil(L (1 - f L_ic / L))` (code: 0.5).
  double skip_fraction = 0.5;
  gamma_mod_phase phase = gamma_mod_phase::training;
  /// Prefill rule: < 0 uses the training rule [OURS default]; >= 0 processes the tokens with
  /// `p > prefill_threshold` (released code: 0.005), no question-token mask; decided as
  /// `z1 - z0 > log(t / (1 - t))` in double.
  double prefill_threshold = -1.0;
  /// Decode rule: a token is processed iff `p >= decode_threshold` (code: 0.5), decided as
  /// `z1 - z0 >= log(t / (1 - t))` in double (0 for t = 0.5; t = 1 processes nothing).
  double decode_threshold = 0.5;
};

/// γ-MoD depth policy of one layer: the shared 2-class router gives p_t; masked routing with
/// capacity (training, prefill) or a threshold (decode) picks the tokens that enter; their output
/// is scaled by p_t. Non-finite router logits throw moe::error naming 'x'. Aux loss:
/// moe::gamma_mod_aux_loss (losses/gamma_mod.hpp).
class gamma_mod {
 public:
  using depth_policy_type = gamma_mod;
  static constexpr bool needs_whole_batch = true;

  gamma_mod(std::shared_ptr<const gamma_mod_router> router, gamma_mod_options options = {})
      : m_router(std::move(router)), m_options(options) {
    constexpr const char* where = "moe::gamma_mod";
    if (!m_router) detail::fail_parameter(error_id::config, where, "router", "not null", "nullptr");
    if (m_options.instruction_tokens < 0) {
      detail::fail_parameter(error_id::config, where, "instruction_tokens", ">= 0", m_options.instruction_tokens);
    }
    if (!(m_options.skip_fraction >= 0.0 && m_options.skip_fraction <= 1.0)) {
      detail::fail_parameter(error_id::config, where, "skip_fraction", "in [0, 1]", m_options.skip_fraction);
    }
    if (!(m_options.prefill_threshold <= 1.0)) {  // also rejects NaN
      detail::fail_parameter(error_id::config, where, "prefill_threshold", "<= 1 (< 0: training rule)",
                             m_options.prefill_threshold);
    }
    if (!(m_options.decode_threshold >= 0.0 && m_options.decode_threshold <= 1.0)) {
      detail::fail_parameter(error_id::config, where, "decode_threshold", "in [0, 1]", m_options.decode_threshold);
    }
    m_decode_logit = logit(m_options.decode_threshold);
    m_prefill_logit = logit(m_options.prefill_threshold);
  }

  [[nodiscard]] index hidden() const noexcept { return m_router->hidden(); }
  [[nodiscard]] const std::shared_ptr<const gamma_mod_router>& router() const noexcept { return m_router; }
  [[nodiscard]] const gamma_mod_options& options() const noexcept { return m_options; }

  /// Tokens that enter a sequence of L tokens under the training rule.
  [[nodiscard]] index capacity(index L) const noexcept {
    const index lic = m_options.instruction_tokens;
    if (L <= lic) return L;
    const double x = static_cast<double>(L) *
                     (1.0 - m_options.skip_fraction * static_cast<double>(lic) / static_cast<double>(L));
    return std::clamp<index>(capacity_ceil(x), 0, L);
  }

  /// Sets passes and output scales of `plan` (reset to x.rows() tokens) from `x [T × d]`.
  void decide(const_matrix_map<float> x, const route_context& ctx, routing_plan& plan, workspace& ws) const {
    detail::check_extent("moe::gamma_mod::decide", "x.cols()", x.cols(), hidden());
    float* z = ws.take<float>(static_cast<std::size_t>(std::max<index>(2 * x.rows(), 1)));
    m_router->logits(x, z, ws);
    decide_logits(map(static_cast<const float*>(z), x.rows(), 2), ctx, plan, ws);
  }

  /// The decision from given router logits `z [T × 2]`.
  void decide_logits(const_matrix_map<float> z, const route_context& ctx, routing_plan& plan, workspace& ws) const {
    constexpr const char* where = "moe::gamma_mod::decide";
    detail::check_extent(where, "z.cols()", z.cols(), 2);
    const index T = z.rows();
    detail::check_extent(where, "plan.num_tokens()", plan.num_tokens(), T);
    float* p = ws.take<float>(static_cast<std::size_t>(std::max<index>(T, 1)));
    double* v = ws.take<double>(static_cast<std::size_t>(std::max<index>(T, 1)));  // z1 - z0
    for (index t = 0; t < T; ++t) {
      const float row[2] = {z(t, 0), z(t, 1)};
      if (!std::isfinite(row[0]) || !std::isfinite(row[1])) {
        detail::throw_error(error_id::input, detail::concat(where, ": parameter 'x' gives a non-finite router logit "
                                                                   "(token ", t, "); expected finite token states"));
      }
      float q[2];
      kernels::softmax(row, 2, q);
      p[t] = q[1];
      v[t] = static_cast<double>(row[1]) - static_cast<double>(row[0]);
    }
    const auto phase = m_options.phase;
    if (phase == gamma_mod_phase::decode) {
      // Errata 9: γ-MoD's own comparison, >=, on the logits: p >= t iff z1 - z0 >= logit(t).
      for (index t = 0; t < T; ++t) plan.set_passes(t, v[t] >= m_decode_logit ? 1 : 0);
    } else if (phase == gamma_mod_phase::prefill && m_options.prefill_threshold >= 0.0) {
      for (index t = 0; t < T; ++t) plan.set_passes(t, v[t] > m_prefill_logit ? 1 : 0);
    } else {
      index* idx = ws.take<index>(static_cast<std::size_t>(std::max<index>(T, 1)));
      detail::for_each_sequence(ctx.sequence_starts, T, where, [&](index begin, index end) {
        // Question / response tokens rank ahead of every image token explicitly: the paper's
        // `p + 1` ties with a saturated image token (p = 1.0f) once p < 2^-24.
        detail::depth::select_top(p, begin, end, capacity(end - begin), idx, plan, m_options.instruction_tokens);
      });
    }
    for (index t = 0; t < T; ++t) {
      if (plan.passes(t) != 0) plan.set_output_scale(t, p[t]);
    }
  }

 private:
  // log(t / (1 - t)): p = sigmoid(z1 - z0) >= t iff z1 - z0 >= logit(t) (±inf at t = 0 and 1).
  static double logit(double t) noexcept {
    if (!(t > 0.0)) return -std::numeric_limits<double>::infinity();
    if (t >= 1.0) return std::numeric_limits<double>::infinity();
    return std::log(t / (1.0 - t));
  }

  std::shared_ptr<const gamma_mod_router> m_router;
  gamma_mod_options m_options;
  double m_decode_logit = 0;
  double m_prefill_logit = 0;
};

static_assert(depth_policy<gamma_mod>);

}  // namespace moe
