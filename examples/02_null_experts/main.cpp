// SPDX-License-Identifier: Apache-2.0
// Demo: AdaMoE null experts on a synthetic OLMoE-shaped layer (d = 2048, f = 1024, E = 64,
// k = 8, fp32, seeded random weights). m = 16 null experts join the router; a token's k slots
// may now go to null experts, which compute nothing, so the mean number of true experts per
// token k_eff falls below k. The demo routes 512 tokens, first with plain top-k (m = 0, the same
// layer and experts), then with the null experts, and prints k_eff, the FLOPs saved and the
// forward times.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
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

template <class Layer>
double median_forward_seconds(Layer& layer, moe::const_matrix_map<float> x, moe::matrix_map<float> y) {
  layer.forward(x, y);  // warm-up: the workspace grows once
  std::vector<double> seconds;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    layer.forward(x, y);
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(seconds.begin(), seconds.end());
  return seconds[seconds.size() / 2];
}
}  // namespace

int main() {
  constexpr moe::index d = 2048, f = 1024, E = 64, m = 16, T = 512;
  constexpr int k = 8;
  using router = moe::null_experts<moe::top_k<moe::softmax_gate>>;
  using experts = moe::swiglu_experts<float>;

  const float scale = 1.0f / std::sqrt(float(d));
  const auto w_true = random_vector(E * d, scale, 1);  // [E × d]
  // Null router rows [m × d]: the true rows' distribution, untrained (AdaMoE initialises them by
  // tiling the pretrained gate; fine-tuning then teaches tokens when to pick a null expert).
  const auto w_null = random_vector(m * d, scale, 6);
  const std::vector<float> no_rows;
  const auto t_build = std::chrono::steady_clock::now();
  auto layer = [&] {
    const auto gate = random_vector(E * f * d, scale, 2);
    const auto up = random_vector(E * f * d, scale, 3);
    const auto down = random_vector(E * d * f, 1.0f / std::sqrt(float(f)), 4);
    // m = 0 first: exactly softmax top-k with renormalisation.
    return moe::layer<router, experts, moe::device::cpu>{
        router{moe::map(w_true.data(), E, d), moe::map(no_rows.data(), 0, d), {.k = k, .renormalize = true}},
        experts{gate.data(), up.data(), down.data(), {.experts = E, .hidden = d, .intermediate = f}}};
  }();
  const double build_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_build).count();

  const auto x_data = random_vector(T * d, 1.0f, 5);
  std::vector<float> y_data(T * d);
  const auto x = moe::map(x_data.data(), T, d);
  auto y = moe::map(y_data.data(), T, d);

  std::printf("moe %s: AdaMoE null experts on an OLMoE-shaped layer d=%td f=%td E=%td k=%d, fp32, %d threads\n",
              moe::version_string, d, f, E, k, layer.device().concurrency());
  std::printf("weights: %.2f GB built and packed in %.1f s; batch of %td tokens\n",
              3.0 * E * d * f * sizeof(float) / 1e9, build_s, T);

  const double plain_s = median_forward_seconds(layer, x, y);
  const auto plain = layer.policy_stats();
  std::printf("\nplain top-k (m = 0):   k_eff %.3f of k = %d, FLOPs saved %5.1f %%, forward %.1f ms\n",
              plain.mean_true_experts, k, 100.0 * plain.flops_saved, plain_s * 1e3);

  layer.router() = router{moe::map(w_true.data(), E, d), moe::map(w_null.data(), m, d), {.k = k, .renormalize = true}};
  const double null_s = median_forward_seconds(layer, x, y);
  const auto s = layer.policy_stats();
  std::printf("null experts (m = %td): k_eff %.3f of k = %d, FLOPs saved %5.1f %%, forward %.1f ms\n", m,
              s.mean_true_experts, k, 100.0 * s.flops_saved, null_s * 1e3);
  std::printf("  expert FLOPs per forward: %.1f GFLOP instead of %.1f GFLOP (6·T·k_eff·d·f)\n",
              6.0 * T * s.mean_true_experts * d * f / 1e9, 6.0 * T * k * d * f / 1e9);
  std::printf("  tokens routed to null experts only (MoE output 0): %td of %td\n", s.tokens_without_expert, T);
  std::printf("  forward time ratio %.3f for a k_eff ratio of %.3f\n", null_s / plain_s, s.mean_true_experts / k);
  return 0;
}
