// SPDX-License-Identifier: Apache-2.0
#pragma once

// The OLMoE-shaped layer shared by the benchmarks (d = 2048, f = 1024, E = 64, k = 8, fp32),
// built once per process from seeded random weights, kept in checkpoint layout for baselines.

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include <moe/moe.hpp>

namespace moe_bench {

inline constexpr moe::index d = 2048, f = 1024, E = 64;
inline constexpr int k = 8;

/// Uniform floats in [-scale, scale) from a seeded LCG.
inline std::vector<float> random(std::size_t n, float scale, std::uint64_t seed) {
  std::vector<float> v(n);
  std::uint64_t s = seed;
  for (auto& x : v) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    x = scale * (static_cast<float>(s >> 40) * 0x1.0p-23f - 1.0f);
  }
  return v;
}

/// Random token states `[T × d]`.
inline moe::row_matrix<float> tokens(moe::index T, std::uint64_t seed = 7) {
  const auto v = random(static_cast<std::size_t>(T * d), 1.0f, seed);
  return Eigen::Map<const moe::row_matrix<float>>(v.data(), T, d);
}

/// The OLMoE layer with fp32 or bf16 expert weights, on the cpu device.
template <class Scalar>
using olmoe_layer = moe::layer<moe::top_k<>, moe::swiglu_experts<Scalar>, moe::device::cpu>;

struct olmoe_fixture {
  std::vector<float> router_w, gate, up, down;  // checkpoint layout
  olmoe_layer<float> layer;

  olmoe_fixture()
      : router_w(random(E * d, 1.0f / std::sqrt(float(d)), 1)),
        gate(random(E * f * d, 1.0f / std::sqrt(float(d)), 2)),
        up(random(E * f * d, 1.0f / std::sqrt(float(d)), 3)),
        down(random(E * d * f, 1.0f / std::sqrt(float(f)), 4)),
        layer(moe::top_k<>(moe::map(router_w.data(), E, d), {.k = k}),
              moe::swiglu_experts<float>(gate.data(), up.data(), down.data(), {E, d, f})) {}

  static olmoe_fixture& get() {
    static olmoe_fixture instance;
    return instance;
  }

  /// The same layer with its expert weights rounded to bf16 (built on first use).
  olmoe_layer<moe::bf16>& bf16_layer() {
    static olmoe_layer<moe::bf16> instance(moe::top_k<>(moe::map(router_w.data(), E, d), {.k = k}),
                                           moe::swiglu_experts<moe::bf16>(gate.data(), up.data(), down.data(), {E, d, f}));
    return instance;
  }

  template <class Scalar>
  olmoe_layer<Scalar>& layer_of() {
    if constexpr (std::is_same_v<Scalar, float>) {
      return layer;
    } else {
      return bf16_layer();
    }
  }

  using row_map = Eigen::Map<const moe::row_matrix<float>>;
  row_map router() const { return row_map(router_w.data(), E, d); }
  row_map gate_of(moe::index e) const { return row_map(gate.data() + e * f * d, f, d); }
  row_map up_of(moe::index e) const { return row_map(up.data() + e * f * d, f, d); }
  row_map down_of(moe::index e) const { return row_map(down.data() + e * d * f, d, f); }
};

/// Active FLOPs of a forward of T tokens.
inline double layer_flops(moe::index T) { return 6.0 * double(T) * k * d * f; }

// Spelled-out names, as routing_bench.cpp uses them.
inline constexpr moe::index olmoe_d = d, olmoe_f = f, olmoe_experts = E;
inline constexpr int olmoe_k = k;

/// `n` uniform floats in [-scale, scale) from a seeded 64-bit LCG.
inline std::vector<float> random_weights(std::size_t n, float scale, std::uint64_t seed) { return random(n, scale, seed); }

/// The router weight `[E × d]` (seed 1).
inline std::vector<float> olmoe_router_weight() { return random(E * d, 1.0f / std::sqrt(float(d)), 1); }

/// A fresh SwiGLU expert bank with the fixture's weights (seeds 2, 3, 4).
inline moe::swiglu_experts<float> olmoe_expert_bank() {
  const float sd = 1.0f / std::sqrt(float(d)), sf = 1.0f / std::sqrt(float(f));
  const auto gate = random(E * f * d, sd, 2);
  const auto up = random(E * f * d, sd, 3);
  const auto down = random(E * d * f, sf, 4);
  return moe::swiglu_experts<float>(gate.data(), up.data(), down.data(), {E, d, f});
}

/// `T` tokens `[T × d]` of uniform values in [-1, 1) (seed 7).
inline moe::row_matrix<float> olmoe_tokens(moe::index T) { return tokens(T, 7); }

}  // namespace moe_bench
