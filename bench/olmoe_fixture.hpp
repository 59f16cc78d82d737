// SPDX-License-Identifier: Apache-2.0
#pragma once

// The OLMoE reference shape of performance.md (d = 2048, f = 1024, E = 64, k = 8, fp32) and
// seeded random weights and tokens for benchmarks. Weights follow checkpoint layout; the seeds
// and the generator are those of layer_bench.cpp, so the two benchmarks see the same layer.

#include <cmath>
#include <cstdint>
#include <vector>

#include <Eigen/Core>

#include <moe/core/views.hpp>
#include <moe/experts/swiglu.hpp>

namespace moe_bench {

inline constexpr moe::index olmoe_d = 2048, olmoe_f = 1024, olmoe_experts = 64;
inline constexpr int olmoe_k = 8;

/// `n` uniform floats in [-scale, scale) from a seeded 64-bit LCG.
inline std::vector<float> random_weights(std::size_t n, float scale, std::uint64_t seed) {
  std::vector<float> v(n);
  std::uint64_t s = seed;
  for (auto& x : v) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    x = scale * (static_cast<float>(s >> 40) * 0x1.0p-23f - 1.0f);
  }
  return v;
}

/// The router weight `[E × d]` (seed 1).
inline std::vector<float> olmoe_router_weight() {
  return random_weights(olmoe_experts * olmoe_d, 1.0f / std::sqrt(float(olmoe_d)), 1);
}

/// The SwiGLU expert bank (seeds 2, 3, 4); the raw weights are freed once packed.
inline moe::swiglu_experts<float> olmoe_expert_bank() {
  const float sd = 1.0f / std::sqrt(float(olmoe_d)), sf = 1.0f / std::sqrt(float(olmoe_f));
  const auto gate = random_weights(olmoe_experts * olmoe_f * olmoe_d, sd, 2);
  const auto up = random_weights(olmoe_experts * olmoe_f * olmoe_d, sd, 3);
  const auto down = random_weights(olmoe_experts * olmoe_d * olmoe_f, sf, 4);
  return moe::swiglu_experts<float>(gate.data(), up.data(), down.data(), {olmoe_experts, olmoe_d, olmoe_f});
}

/// `T` tokens `[T × d]` of uniform values in [-1, 1) (seed 7).
inline moe::row_matrix<float> olmoe_tokens(moe::index T) {
  const auto v = random_weights(static_cast<std::size_t>(T * olmoe_d), 1.0f, 7);
  return Eigen::Map<const moe::row_matrix<float>>(v.data(), T, olmoe_d);
}

}  // namespace moe_bench
