// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// Mixture-of-Depths capacity routing (docs/routing-spec.md §13.2; Raposo et al., arXiv 2404.02258).
//
// Dispatch:
//   1. r_t = w · x_t, one scalar router weight per token (canonical GEMM, batch invariant);
//   2. decision::capacity (training, full-sequence processing): per sequence of length L the C
//      tokens with the largest r enter the layer (ties: lower position), the others skip;
//      decision::causal (autoregressive sampling): token t enters iff sigmoid(r_t) > 0.5 (strict,
//      errata 9: sigmoid(0) = 0.5 does not enter), decided as r_t > 0 (a rounded sigmoid would
//      turn a tiny positive r_t into 0.5);
//   3. a token that enters has its whole output scaled by r_t (identity, the paper) or
//      sigmoid(r_t), which puts the router on the gradient path.

#include <algorithm>
#include <cmath>
#include <span>
#include <vector>

#include "moe/config.hpp"
#include "moe/core/context.hpp"
#include "moe/core/error.hpp"
#include "moe/plan.hpp"
#include "moe/core/rounding.hpp"
#include "moe/core/sequences.hpp"
#include "moe/core/views.hpp"
#include "moe/core/workspace.hpp"
#include "moe/kernels/gemm.hpp"
#include "moe/kernels/math.hpp"
#include "moe/routing/wrappers/layer_skip.hpp"

namespace moe {

/// How a Mixture-of-Depths router weight becomes the factor on the layer output.
enum class mod_weight_transform {
  identity,  ///< the raw r_t (the paper; a negative r_t flips the delta)
  sigmoid    ///< sigmoid(r_t), in (0, 1)
};

/// Which tokens enter a Mixture-of-Depths layer.
enum class mod_decision {
  capacity,  ///< the top-C tokens of each sequence (training, full-sequence processing)
  causal     ///< token t enters iff sigmoid(r_t) > 0.5, i.e. r_t > 0 (autoregressive sampling)
};

/// Options of moe::mod_capacity.
struct mod_options {
  /// Tokens per sequence that enter the layer, clamped to the sequence length L; -1: computed
  /// from capacity_fraction.
  index capacity = -1;
  /// Fraction c of each sequence that enters when capacity = -1: `C = ceil(c L)` in double with
  /// the §1.2 guard, clamped to [0, L] (paper: 0.125).
  double capacity_fraction = 0.125;
  /// Factor on the output of a token that enters.
  mod_weight_transform weight_transform = mod_weight_transform::identity;
  /// Capacity (top-C) or the causal sigmoid rule.
  mod_decision decision = mod_decision::capacity;
};

/// Mixture-of-Depths depth policy: one scalar router `w [d]` per routed layer; per sequence
/// (route_context::sequence_starts) the top-C tokens by `r = w · x` enter the layer and their
/// output is scaled by r (or sigmoid(r)); the others skip it.
///
/// Edge cases: C = 0 makes the layer the identity (every token skips); C >= L runs every token,
/// still scaled by r; ties at the capacity boundary go to the lower position; a non-finite r
/// (from a non-finite x) throws moe::error naming 'x'. The auxiliary BCE loss that trains the
/// causal rule is moe::mod_aux_loss (losses/mixture_of_depths.hpp).
class mod_capacity {
 public:
  using depth_policy_type = mod_capacity;
  /// Capacity is per sequence.
  static constexpr bool needs_whole_batch = true;

  /// @param router_weight `w [d]` (copied).
  explicit mod_capacity(std::span<const float> router_weight, mod_options options = {})
      : m_options(options), m_hidden(static_cast<index>(router_weight.size())) {
    constexpr const char* where = "moe::mod_capacity";
    if (m_hidden < 1) detail::fail_parameter(error_id::shape, where, "router_weight.size()", ">= 1", m_hidden);
    for (std::size_t i = 0; i < router_weight.size(); ++i) {
      if (!std::isfinite(router_weight[i])) {
        detail::fail_parameter(error_id::config, where, detail::concat("router_weight[", i, "]"), "finite",
                               router_weight[i]);
      }
    }
    if (m_options.capacity < -1) {
      detail::fail_parameter(error_id::config, where, "capacity", ">= 0, or -1 for capacity_fraction",
                             m_options.capacity);
    }
    if (!std::isfinite(m_options.capacity_fraction) || m_options.capacity_fraction < 0.0) {
      detail::fail_parameter(error_id::config, where, "capacity_fraction", "finite and >= 0",
                             m_options.capacity_fraction);
    }
    m_weight = kernels::pack_panels(router_weight.data(), 1, m_hidden, m_hidden,
                                    kernels::panel_width<kernels::gemm_arch>);
  }

  [[nodiscard]] index hidden() const noexcept { return m_hidden; }
  [[nodiscard]] const mod_options& options() const noexcept { return m_options; }

  /// Tokens that enter in a sequence of L tokens (capacity decision).
  [[nodiscard]] index capacity(index L) const noexcept {
    if (m_options.capacity >= 0) return std::min(m_options.capacity, L);
    return std::clamp<index>(capacity_ceil(m_options.capacity_fraction * static_cast<double>(L)), 0, L);
  }

  /// Router weights `r [T] = x · w`.
  void router_logits(const_matrix_map<float> x, float* r, workspace& ws) const {
    detail::check_extent("moe::mod_capacity::router_logits", "x.cols()", x.cols(), m_hidden);
    kernels::gemm(x.data(), x.rows(), x.outerStride(), m_weight, r, 1, ws);
  }

  /// Sets passes and output scales of `plan` (reset to x.rows() tokens) from `x [T × d]`.
  void decide(const_matrix_map<float> x, const route_context& ctx, routing_plan& plan, workspace& ws) const {
    constexpr const char* where = "moe::mod_capacity::decide";
    detail::check_extent(where, "x.cols()", x.cols(), m_hidden);
    detail::check_extent(where, "plan.num_tokens()", plan.num_tokens(), x.rows());
    float* r = ws.take<float>(static_cast<std::size_t>(std::max<index>(x.rows(), 1)));
    router_logits(x, r, ws);
    decide_logits({r, static_cast<std::size_t>(x.rows())}, ctx, plan, ws);
  }

  /// The decision from given router weights `r [T]` (the stage after the router GEMM).
  void decide_logits(std::span<const float> r, const route_context& ctx, routing_plan& plan, workspace& ws) const {
    constexpr const char* where = "moe::mod_capacity::decide";
    const auto T = static_cast<index>(r.size());
    detail::check_extent(where, "plan.num_tokens()", plan.num_tokens(), T);
    for (index t = 0; t < T; ++t) {
      if (!std::isfinite(r[static_cast<std::size_t>(t)])) {
        detail::throw_error(error_id::input,
                            detail::concat(where, ": parameter 'x' gives a non-finite router weight r = ",
                                           r[static_cast<std::size_t>(t)], " (token ", t,
                                           "); expected finite token states"));
      }
    }
    if (m_options.decision == mod_decision::causal) {
      // Errata 9: MoD's own comparison, strict: sigmoid(r) > 0.5 exactly when r > 0 (decided on r,
      // not on the rounded sigmoid, which is 0.5f for 0 < r < 3e-8).
      for (index t = 0; t < T; ++t) plan.set_passes(t, r[static_cast<std::size_t>(t)] > 0.0f ? 1 : 0);
    } else {
      index* idx = ws.take<index>(static_cast<std::size_t>(std::max<index>(T, 1)));
      detail::for_each_sequence(ctx.sequence_starts, T, where, [&](index begin, index end) {
        detail::depth::select_top(r.data(), begin, end, capacity(end - begin), idx, plan);
      });
    }
    for (index t = 0; t < T; ++t) {
      if (plan.passes(t) == 0) continue;
      const float v = r[static_cast<std::size_t>(t)];
      plan.set_output_scale(t, m_options.weight_transform == mod_weight_transform::sigmoid ? kernels::sigmoid(v) : v);
    }
  }

 private:
  mod_options m_options;
  index m_hidden;
  kernels::packed_weights m_weight;
};

static_assert(depth_policy<mod_capacity>);

}  // namespace moe
