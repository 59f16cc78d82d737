// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <limits>

#include "moe/config.hpp"
#include "moe/kernels/gating.hpp"

namespace moe {

/// What a router does with NaN logits (routing-spec §1.2).
enum class nan_policy {
  error,      ///< throw moe::error naming the token and the expert (the default)
  to_neg_inf  ///< map NaN to -inf before anything else (the expert is then never selected)
};

/// Softmax gate: `p = softmax(z)` over all experts; +inf logits share the mass, an all -inf row
/// is degenerate and routes nowhere. Monotone: routers select on the logits.
struct softmax_gate {
  static constexpr const char* name() noexcept { return "softmax"; }
  /// Selecting on the logits selects the same experts, in the same order, as on the scores.
  static constexpr bool monotone = true;
  /// `p = gate(z)`; returns false for a degenerate (all -inf) row.
  static bool apply(const float* z, index n, float* p) noexcept { return kernels::softmax(z, n, p); }
  /// Entropy (nats) of the distribution `p`; `scratch` has room for n floats.
  static float entropy(const float* p, index n, float* /*scratch*/) noexcept {
    return kernels::entropy(p, n);
  }
};

/// Sigmoid gate (DeepSeek-V3 scores): `s = sigmoid(z)` elementwise, independent across experts.
/// Monotone: routers select on the logits (a -inf logit is never selected, a finite logit whose
/// sigmoid underflows to 0 is).
struct sigmoid_gate {
  static constexpr const char* name() noexcept { return "sigmoid"; }
  static constexpr bool monotone = true;
  static bool apply(const float* z, index n, float* s) noexcept {
    kernels::sigmoid(z, n, s);
    return kernels::max(z, n) > -std::numeric_limits<float>::infinity();
  }
  /// Entropy of the normalised scores `s / Σ s` (0 if every score is 0).
  static float entropy(const float* s, index n, float* scratch) noexcept {
    const float total = kernels::sum(s, n);
    if (!(total > 0.0f)) return 0.0f;
    for (index i = 0; i < n; ++i) scratch[i] = s[i] / total;
    return kernels::entropy(scratch, n);
  }
};

}  // namespace moe
