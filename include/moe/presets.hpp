// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

/// @file Model presets: the router type and options with which a published model routes.
///
/// A preset is a small struct: `router` (the policy type), the model's constants, `options()`
/// (the router options) and `make(weight)`; nothing in the generic code path knows about models.
/// Shared experts are built by the caller (`moe::shared_experts<Bank>`, gated or not) from the
/// checkpoint's weights; the presets say how many and how they are gated.

#include <utility>
#include <vector>

#include "moe/config.hpp"
#include "moe/core/error.hpp"
#include "moe/core/views.hpp"
#include "moe/experts/shared.hpp"
#include "moe/experts/swiglu.hpp"
#include "moe/losses/load_balance.hpp"
#include "moe/losses/sequence_balance.hpp"
#include "moe/routing/wrappers/capacity.hpp"
#include "moe/routing/routers/gates.hpp"
#include "moe/routing/routers/group_limited.hpp"
#include "moe/routing/routers/top_k.hpp"

namespace moe::presets {

namespace detail {
/// Checks a preset's router weight `[E × d]`: `E` rows when the model fixes the number of experts
/// (`experts` > 0), at least one column; throws moe::error naming 'weight.rows()' or
/// 'weight.cols()' and the preset.
template <class Derived>
void check_weight(const char* where, const Eigen::DenseBase<Derived>& weight, index experts) {
  if (experts > 0) moe::detail::check_extent(where, "weight.rows()", weight.rows(), experts);
  if (weight.cols() < 1) moe::detail::fail_parameter(error_id::shape, where, "weight.cols()", ">= 1", weight.cols());
}
}  // namespace detail

/// Mixtral 8x7B / 8x22B: softmax top-2 of 8 experts, the two probabilities renormalised (the same
/// as a softmax over the two selected logits). No shared expert.
struct mixtral {
  using router = top_k<softmax_gate>;
  static constexpr index num_experts = 8;
  static constexpr int k = 2;
  static top_k_options options() { return {.k = k, .renormalize = true}; }
  /// The router for a `[8 × d]` gate weight (any row-major Eigen matrix or map); other shapes
  /// throw moe::error.
  template <class Derived>
  static router make(const Eigen::DenseBase<Derived>& weight) {
    detail::check_weight("moe::presets::mixtral::make", weight, num_experts);
    return router(view(weight), options());
  }
};

/// Qwen2-MoE (Hugging Face `Qwen2MoeSparseMoeBlock`; Qwen1.5-MoE-A2.7B: 60 experts, top-4): softmax
/// top-k, renormalised only if `norm_topk_prob` (false in the released configs), plus one shared
/// expert whose output is scaled by `sigmoid(w_g · x)` per token: build it with
/// `shared(bank, gate)` (gate = `shared_expert_gate.weight`, `[d]`).
struct qwen2_moe {
  using router = top_k<softmax_gate>;
  using shared = shared_experts<swiglu_experts<float>>;
  static constexpr index num_experts = 60;
  static constexpr int k = 4;
  static constexpr index num_shared_experts = 1;
  static top_k_options options(bool norm_topk_prob = false, int top_k = k) {
    return {.k = top_k, .renormalize = norm_topk_prob};
  }
  /// The router for a `[60 × d]` gate weight; other shapes throw moe::error (other Qwen2-MoE
  /// sizes, e.g. 64 experts top-8: `router(weight, options(norm_topk_prob, 8))`).
  template <class Derived>
  static router make(const Eigen::DenseBase<Derived>& weight, bool norm_topk_prob = false, int top_k = k) {
    detail::check_weight("moe::presets::qwen2_moe::make", weight, num_experts);
    return router(view(weight), options(norm_topk_prob, top_k));
  }
};

/// OLMoE-1B-7B: softmax top-8 of 64 experts, not renormalised; trained with the load-balancing
/// loss (alpha 0.01) and the router z-loss (c_z 0.001).
struct olmoe {
  using router = top_k<softmax_gate>;
  static constexpr index num_experts = 64;
  static constexpr int k = 8;
  static constexpr double z_loss = 1e-3;
  static top_k_options options() { return {.k = k, .renormalize = false}; }
  static load_balance_options load_balance() { return {.alpha = 0.01}; }
  /// The router for a `[{num_experts} × d]` gate weight; other shapes throw moe::error.
  template <class Derived>
  static router make(const Eigen::DenseBase<Derived>& weight) {
    detail::check_weight("moe::presets::olmoe::make", weight, num_experts);
    return router(view(weight), options());
  }
};

/// DeepSeek-V3 (671B): sigmoid scores, selection bias, 8 groups of 32 experts, the 4 best groups
/// by top-2 sum, top-8 experts, weights renormalised and scaled by 2.5, one ungated shared expert;
/// bias update speed 0.001 and sequence-wise balance loss alpha 1e-4. Losing groups are masked
/// with -inf (official code), not with 0.0 as in the Hugging Face port.
struct deepseek_v3 {
  using router = group_limited<sigmoid_gate>;
  static constexpr index num_experts = 256;
  static constexpr int k = 8;
  static constexpr index num_shared_experts = 1;
  static constexpr float bias_update_speed = 0.001f;
  /// @param bias the checkpoint's `e_score_correction_bias` `[256]` (empty: zeros).
  static group_limited_options options(std::vector<float> bias = {}) {
    return {.k = k,
            .n_groups = 8,
            .topk_groups = 4,
            .score = group_score::top2_sum,
            .renormalize = true,
            .route_scale = 2.5f,
            .selection_bias = std::move(bias)};
  }
  static sequence_balance_options sequence_balance() { return {.alpha = 1e-4}; }
  /// The router for a `[256 × d]` gate weight; other shapes throw moe::error.
  template <class Derived>
  static router make(const Eigen::DenseBase<Derived>& weight, std::vector<float> bias = {}) {
    detail::check_weight("moe::presets::deepseek_v3::make", weight, num_experts);
    return router(view(weight), options(std::move(bias)));
  }
};

/// Jamba (AI21, Hugging Face `JambaSparseMoeBlock`): softmax top-2 of 16 experts, the selected
/// probabilities NOT renormalised (mlx-lm's port renormalises; we follow the reference code).
struct jamba {
  using router = top_k<softmax_gate>;
  static constexpr index num_experts = 16;
  static constexpr int k = 2;
  static top_k_options options() { return {.k = k, .renormalize = false}; }
  /// The router for a `[{num_experts} × d]` gate weight; other shapes throw moe::error.
  template <class Derived>
  static router make(const Eigen::DenseBase<Derived>& weight) {
    detail::check_weight("moe::presets::jamba::make", weight, num_experts);
    return router(view(weight), options());
  }
};

/// Switch Transformer: softmax top-1, the gate is the raw probability, expert capacity
/// `ceil(capacity_factor · T / E)` with dropping in token order; Switch load-balancing loss
/// (moe::switch_load_balance_loss) with alpha 0.01.
struct switch_transformer {
  using router = moe::capacity<top_k<softmax_gate>>;
  static constexpr int k = 1;
  static constexpr double load_balance_alpha = 0.01;
  static top_k_options options() { return {.k = k, .renormalize = false}; }
  /// @param capacity_factor 1.0 or 1.25 in training (Switch), 2.0 in evaluation.
  static capacity_options capacity_config(double capacity_factor = 1.25) { return {.capacity_factor = capacity_factor}; }
  /// The router for an `[E × d]` gate weight (Switch models have 8 to 2048 experts: any E).
  template <class Derived>
  static router make(const Eigen::DenseBase<Derived>& weight, double capacity_factor = 1.25) {
    detail::check_weight("moe::presets::switch_transformer::make", weight, 0);
    return router(top_k<softmax_gate>(view(weight), options()), capacity_config(capacity_factor));
  }
};

/// DiT-MoE: softmax top-2 of 8 (or 16) experts, not renormalised, plus 2 ungated shared experts
/// (the code fuses them into one FFN of width 2·d: a bank of one expert of that width is the same);
/// expert-level balance loss (moe::expert_balance_loss) with alpha 0.01.
struct dit_moe {
  using router = top_k<softmax_gate>;
  static constexpr index num_experts = 8;
  static constexpr int k = 2;
  static constexpr index num_shared_experts = 2;
  static constexpr double balance_alpha = 0.01;
  static top_k_options options() { return {.k = k, .renormalize = false}; }
  /// The router for a `[8 × d]` or `[16 × d]` gate weight (DiT-MoE's two configurations); other
  /// shapes throw moe::error (build `router(weight, options())` for another number of experts).
  template <class Derived>
  static router make(const Eigen::DenseBase<Derived>& weight) {
    constexpr const char* where = "moe::presets::dit_moe::make";
    if (weight.rows() != 8 && weight.rows() != 16) {
      moe::detail::fail_parameter(error_id::shape, where, "weight.rows()", "8 or 16", weight.rows());
    }
    detail::check_weight(where, weight, 0);
    return router(view(weight), options());
  }
};

}  // namespace moe::presets
