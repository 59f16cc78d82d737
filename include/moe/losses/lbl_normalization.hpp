// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

namespace moe {

/// How a load-balancing loss normalises the expert counts `c_j` (docs/routing-spec.md §1.3).
enum class lbl_normalization {
  /// `f_j = c_j / (T·k)`, the share of the T·k assignment slots (default). moe::load_balance_loss
  /// divides by T·k whatever the plan holds, so the fractions sum to 1 only when every token fills
  /// its k slots (a token with fewer assignments, from -inf logits or a capacity drop, leaves its
  /// share unused); moe::null_experts_balance_loss divides by `Σ_i c_i`, so its fractions sum to 1.
  per_assignment,
  hf_mixtral  ///< `f_j = c_j / T`, as HF Mixtral's function: k times per_assignment
};

}  // namespace moe
