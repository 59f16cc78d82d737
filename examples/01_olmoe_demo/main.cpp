// SPDX-License-Identifier: Apache-2.0
// Demo: a synthetic OLMoE-shaped MoE layer (d = 2048, f = 1024, E = 64, k = 8, fp32) from seeded
// random weights; routes a batch of 512 tokens and prints the load per expert, the mean experts
// per token, the routing entropy and the throughput.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <iostream>
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
}  // namespace

int main() {
  constexpr moe::index d = 2048, f = 1024, E = 64, T = 512;
  constexpr int k = 8;
  const auto t_build = std::chrono::steady_clock::now();

  using router = moe::top_k<moe::softmax_gate>;
  using experts = moe::swiglu_experts<float>;
  const auto router_w = random_vector(E * d, 1.0f / std::sqrt(float(d)), 1);
  auto layer = [&] {
    const auto gate = random_vector(E * f * d, 1.0f / std::sqrt(float(d)), 2);
    const auto up = random_vector(E * f * d, 1.0f / std::sqrt(float(d)), 3);
    const auto down = random_vector(E * d * f, 1.0f / std::sqrt(float(f)), 4);
    return moe::layer<router, experts, moe::device::cpu>{
        router{moe::map(router_w.data(), E, d), {.k = k, .renormalize = false}},
        experts{gate.data(), up.data(), down.data(), {.experts = E, .hidden = d, .intermediate = f}}};
  }();
  const double build_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_build).count();

  const auto x_data = random_vector(T * d, 1.0f, 5);
  std::vector<float> y_data(T * d);
  const auto x = moe::map(x_data.data(), T, d);
  auto y = moe::map(y_data.data(), T, d);

  layer.forward(x, y);  // warm-up: the workspace grows once
  std::vector<double> seconds;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    layer.forward(x, y);
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(seconds.begin(), seconds.end());
  const double median = seconds[seconds.size() / 2];

  std::printf("moe %s demo: OLMoE-shaped layer d=%td f=%td E=%td k=%d, fp32, device %s (%d threads)\n",
              moe::version_string, d, f, E, k, layer.device().name(), layer.device().concurrency());
  std::printf("weights: %.2f GB built and packed in %.1f s\n",
              3.0 * E * d * f * sizeof(float) / 1e9, build_s);
  std::cout << layer.stats();
  const double gflop = 6.0 * T * k * d * f / 1e9;
  std::printf("forward of %td tokens: median %.1f ms over 5 runs -> %.0f tokens/s, %.1f GFLOP/s\n", T,
              median * 1e3, T / median, gflop / median);
  double checksum = 0;
  for (float v : y_data) checksum += std::abs(v);
  std::printf("mean |y| = %.6f\n", checksum / static_cast<double>(y_data.size()));
  return 0;
}
