// SPDX-License-Identifier: Apache-2.0
#pragma once

// Random SwiGLU weights and the naive layer reference.

#include <moe/experts/swiglu.hpp>

#include "naive.hpp"
#include "random.hpp"

namespace moe_test {

/// Random expert weights, scaled so activations stay O(1).
inline naive_swiglu random_swiglu(rng& r, index E, index d, index f) {
  naive_swiglu w;
  w.experts = E;
  w.d = d;
  w.f = f;
  w.gate = r.matrix(E * f, d, 1.0f / std::sqrt(static_cast<float>(d)));
  w.up = r.matrix(E * f, d, 1.0f / std::sqrt(static_cast<float>(d)));
  w.down = r.matrix(E * d, f, 1.0f / std::sqrt(static_cast<float>(f)));
  return w;
}

inline moe::swiglu_experts<float> make_bank(const naive_swiglu& w) {
  return moe::swiglu_experts<float>(moe::view(w.gate), moe::view(w.up), moe::view(w.down));
}

/// Naive top-k softmax MoE layer: per token, per slot, plain loops (double accumulation).
inline std::vector<double> naive_layer(const moe::row_matrix<float>& router_w, const naive_swiglu& experts,
                                       const moe::row_matrix<float>& x, index k, bool renormalize) {
  const index T = x.rows(), d = x.cols();
  std::vector<double> y(static_cast<std::size_t>(T * d), 0.0);
  for (index t = 0; t < T; ++t) {
    const auto z = naive_logits(router_w, x.data() + t * d);
    const auto route = naive_top_k(z, k, false, renormalize);
    for (std::size_t s = 0; s < route.experts.size(); ++s) {
      experts.accumulate(route.experts[s], x.data() + t * d, route.weights[s], y.data() + t * d);
    }
  }
  return y;
}

}  // namespace moe_test
