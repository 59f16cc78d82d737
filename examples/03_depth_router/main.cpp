// SPDX-License-Identifier: Apache-2.0
// Demo: Dr.LLM depth routing (docs/routing-spec.md §13.1) over a stack of 8 small synthetic MoE layers
// (d = 64, 8 SwiGLU experts, top-2) with seeded random weights. Each layer's router is
// moe::layer_skip<moe::top_k<>, moe::dr_llm>: top-k picks the experts, a Dr.LLM router (windowed
// mean pooling -> Linear(64, 32) -> GELU -> Linear(32, 3)) decides per sequence whether the layer
// is skipped, executed or repeated. Prints each layer's decision for four sequences of one batch
// and the layer executions saved.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <string>
#include <utility>
#include <vector>

#include <moe/moe.hpp>

namespace {
// splitmix64: a seeded, platform-independent stream of uniform floats in [-scale, scale).
struct random_stream {
  std::uint64_t state;
  float next(float scale) {
    std::uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return scale * (static_cast<float>(z >> 40) * 0x1.0p-23f - 1.0f);
  }
};

std::vector<float> random_vector(std::size_t n, float scale, std::uint64_t seed) {
  std::vector<float> v(n);
  random_stream r{seed};
  for (auto& x : v) x = r.next(scale);
  return v;
}

const char* name(int passes) { return passes == 0 ? "skip" : passes == 1 ? "execute" : "repeat"; }
}  // namespace

int main() {
  constexpr moe::index d = 64, f = 32, E = 8, h = 32, layers = 8;
  constexpr int k = 2;
  using router = moe::layer_skip<moe::top_k<moe::softmax_gate>, moe::dr_llm>;
  using layer_t = moe::layer<router, moe::swiglu_experts<float>, moe::device::cpu>;

  std::vector<layer_t> stack;
  stack.reserve(layers);
  for (moe::index l = 0; l < layers; ++l) {
    const std::uint64_t seed = 100 * static_cast<std::uint64_t>(l + 1);
    const auto router_w = random_vector(E * d, 1.0f / std::sqrt(float(d)), seed + 1);
    const auto gate = random_vector(E * f * d, 1.0f / std::sqrt(float(d)), seed + 2);
    const auto up = random_vector(E * f * d, 1.0f / std::sqrt(float(d)), seed + 3);
    const auto down = random_vector(E * d * f, 0.5f / std::sqrt(float(f)), seed + 4);
    // Dr.LLM router: Linear(d, h) -> GELU(tanh) -> Linear(h, 3), biases; execute is favoured.
    const auto w1 = random_vector(h * d, 2.0f / std::sqrt(float(d)), seed + 5);
    const auto b1 = random_vector(h, 0.1f, seed + 6);
    const auto w2 = random_vector(3 * h, 3.0f / std::sqrt(float(h)), seed + 7);
    const auto noise = random_vector(3, 0.4f, seed + 8);
    const std::vector<float> b2 = {-0.6f + noise[0], 0.4f + noise[1], -0.8f + noise[2]};
    stack.emplace_back(
        router{moe::top_k<>{moe::map(router_w.data(), E, d), {.k = k, .renormalize = true}},
               moe::dr_llm{moe::map(w1.data(), h, d), b1, moe::map(w2.data(), 3, h), b2, {.windows = 8}}},
        moe::swiglu_experts<float>{gate.data(), up.data(), down.data(), {.experts = E, .hidden = d, .intermediate = f}});
  }

  // One batch of four sequences with different lengths and statistics (token embeddings).
  const std::vector<moe::index> lengths = {5, 12, 23, 40};
  const std::vector<float> scales = {0.5f, 1.0f, 1.5f, 2.5f};
  std::vector<moe::index> starts;
  moe::index T = 0;
  for (auto L : lengths) {
    starts.push_back(T);
    T += L;
  }
  std::vector<float> h_data(static_cast<std::size_t>(T * d)), y_data(h_data.size());
  for (std::size_t s = 0; s < lengths.size(); ++s) {
    const auto emb = random_vector(static_cast<std::size_t>(lengths[s] * d), scales[s], 7 + s);
    const auto bias = random_vector(static_cast<std::size_t>(d), scales[s], 70 + s);
    for (moe::index t = 0; t < lengths[s]; ++t) {
      for (moe::index i = 0; i < d; ++i) h_data[(starts[s] + t) * d + i] = emb[t * d + i] + bias[i];
    }
  }
  auto hidden = moe::map(h_data.data(), T, d);
  auto y = moe::map(y_data.data(), T, d);
  const moe::route_context ctx{.sequence_starts = starts};

  // Forward through the stack; the residual stays outside each layer: h += layer(h).
  std::vector<std::vector<int>> decisions(lengths.size());
  moe::depth_stack_stats stats;
  for (auto& layer : stack) {
    layer.forward(std::as_const(hidden), y, ctx);
    hidden += y;
    for (std::size_t s = 0; s < lengths.size(); ++s) decisions[s].push_back(layer.plan().passes(starts[s]));
    stats.add(layer.policy_stats());
  }

  std::printf("moe %s depth-router demo: %td layers (d=%td, %td experts, top-%d), Dr.LLM routers (h=%td, W=8)\n\n",
              moe::version_string, layers, d, E, k, h);
  std::printf("%-22s", "");
  for (moe::index l = 0; l < layers; ++l) std::printf(" %-8s", ("layer " + std::to_string(l)).c_str());
  std::printf(" | executed  saved\n");
  double saved_sum = 0;
  for (std::size_t s = 0; s < lengths.size(); ++s) {
    int executed = 0;
    std::printf("sequence %zu (%2td tokens) ", s, lengths[s]);
    for (int p : decisions[s]) {
      std::printf(" %-8s", name(p));
      executed += p;
    }
    std::printf(" | %8d  %5d\n", executed, static_cast<int>(layers) - executed);
    saved_sum += static_cast<double>(layers - executed);
  }
  std::printf("mean layers saved per sequence: %.2f\n", saved_sum / static_cast<double>(lengths.size()));
  std::printf("\nover the batch (per token): ");
  std::cout << stats;
  double checksum = 0;
  for (float v : h_data) checksum += std::abs(v);
  std::printf("mean |h| after the stack = %.6f\n", checksum / static_cast<double>(h_data.size()));
  return 0;
}
