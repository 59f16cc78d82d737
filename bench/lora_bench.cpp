// SPDX-License-Identifier: Apache-2.0
// LoRA experts over a base projection (moe::lora_experts + moe::shared_experts of its
// base_projection), y = W_0 x + Σ_top-2 w (α/r) B_e A_e x, at d = 4096, E = 16, on 2 threads:
//   layer_forward_lora/S/r/T   S = fp32, bf16 (weights); r = 8, 64; T = 1, 32
// Each iteration is one forward of the next layer of a ring of layers whose base projections
// add up to 1 GiB (16 fp32 or 32 bf16 layers), so that W_0 comes from memory, not from the L3.
// Counters: tokens_per_second; base_gbytes_per_second (W_0's packed bytes, read once per
// forward, over the forward's time) and frac_bandwidth (that against the read-bandwidth probe
// measured right before and after the timed loop: how close the layer gets to its bound, the
// bytes of the base projection); adapter_over_base (the packed bytes of the distinct adapters a
// batch selects over W_0's; rank-8 A panels are zero-padded to the panel width, see lora.hpp).
#include <benchmark/benchmark.h>

#include <chrono>
#include <cmath>
#include <memory>
#include <vector>

#include <moe/experts/lora.hpp>

#include "olmoe_fixture.hpp"
#include "probes.hpp"

namespace {

namespace mb = moe_bench;
constexpr moe::index lora_d = 4096, lora_E = 16;
constexpr int lora_k = 2;

template <class S>
using lora_layer = moe::layer<moe::top_k<>, moe::lora_experts<S>, moe::device::cpu>;

// A ring of layers with their own packed weights, as the layers of a decoder stack: the base
// projections of one layer (64 MiB in fp32 at d = 4096) fit in this host's 300 MiB L3, a stack's
// do not, so the benchmark walks layers whose base bytes add up to 1 GiB and every forward
// reads its W_0 from memory. One ring lives at a time (the last (S, r) asked for).
template <class S>
std::vector<std::unique_ptr<lora_layer<S>>>& lora_ring_of(moe::index r) {
  static std::vector<std::unique_ptr<lora_layer<S>>> ring;
  static moe::index ring_r = 0;
  if (ring_r != r) {
    ring.clear();
    ring_r = r;
    const float sd = 1.0f / std::sqrt(float(lora_d));
    const auto router = mb::random(static_cast<std::size_t>(lora_E * lora_d), sd, 31);
    const auto a = mb::random(static_cast<std::size_t>(lora_E * r * lora_d), sd, 32);
    const auto b = mb::random(static_cast<std::size_t>(lora_E * lora_d * r), 1.0f / std::sqrt(float(r)), 33);
    const auto w0 = mb::random(static_cast<std::size_t>(lora_d * lora_d), sd, 34);
    using bank = moe::lora_experts<S>;
    const std::size_t layers = (std::size_t{1} << 30) / (static_cast<std::size_t>(lora_d * lora_d) * sizeof(S));
    for (std::size_t l = 0; l < layers; ++l) {
      ring.push_back(std::make_unique<lora_layer<S>>(
          moe::top_k<>(moe::map(router.data(), lora_E, lora_d), {.k = lora_k, .renormalize = true}),
          bank(a.data(), b.data(), lora_E, lora_d, {r, 2.0 * double(r)}),
          moe::shared_experts<bank>(bank::base_projection(moe::map(w0.data(), lora_d, lora_d)))));
    }
  }
  return ring;
}

template <class S>
void layer_forward_lora(benchmark::State& state) {
  const moe::index r = state.range(0), T = state.range(1);
  auto& ring = lora_ring_of<S>(r);
  auto& layer = *ring[0];
  const moe::index pool = 16;
  const auto xs = mb::random(static_cast<std::size_t>(T * pool * lora_d), 1.0f, 7);
  const auto x = moe::map(xs.data(), T * pool, lora_d);
  moe::row_matrix<float> y(T, lora_d);
  auto batch = [&](moe::index i) { return x.middleRows((i % pool) * T, T); };
  const double base_bytes = layer.has_shared_experts() ? double(lora_d) * double(lora_d) * sizeof(S) : 0.0;
  const double adapter_bytes = layer.experts().bytes_per_expert();
  for (auto& l : ring) l->forward(batch(0), y);
  const double bandwidth_before = mb::read_bandwidth_now();
  double seconds = 0, adapters = 0;
  moe::index it = 0;
  for (auto _ : state) {
    auto& l = *ring[static_cast<std::size_t>(it) % ring.size()];
    const auto t0 = std::chrono::steady_clock::now();
    l.forward(batch(it), y);
    seconds += mb::seconds_since(t0);
    benchmark::DoNotOptimize(y.data());
    moe::index distinct = 0;
    for (moe::index e = 0; e < lora_E; ++e) distinct += l.plan().load(e) > 0;
    adapters += double(distinct) * adapter_bytes;
    ++it;
  }
  const double bandwidth = (bandwidth_before + mb::read_bandwidth_now()) / 2;
  const double n = double(state.iterations());
  state.counters["tokens_per_second"] = benchmark::Counter(double(T) * n / seconds);
  state.counters["base_gbytes_per_second"] = base_bytes * n / seconds / 1e9;
  state.counters["frac_bandwidth"] = base_bytes * n / seconds / 1e9 / bandwidth;
  state.counters["probe_gbytes_per_second"] = bandwidth;
  state.counters["adapter_over_base"] = adapters / n / base_bytes;
}

}  // namespace

BENCHMARK_TEMPLATE(layer_forward_lora, float)
    ->Name("layer_forward_lora/fp32")
    ->ArgNames({"r", "T"})
    ->ArgsProduct({{8, 64}, {1, 32}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(layer_forward_lora, moe::bf16)
    ->Name("layer_forward_lora/bf16")
    ->ArgNames({"r", "T"})
    ->ArgsProduct({{8, 64}, {1, 32}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
