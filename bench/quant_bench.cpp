// SPDX-License-Identifier: Apache-2.0
// Quantized expert banks (moe::gated_mlp_experts<Format>) at the OLMoE shape, on 2 threads:
//   layer_forward_quant/F/T   F = q8_0, q4_0, q4_k, q6_k, mxfp4; T = 1, 8, 32, 512
// Counters: tokens_per_second; format_gbytes_per_second (the GGUF bytes of the distinct experts
// a batch selects, each read once per call) and frac_bandwidth (against the read-bandwidth
// probe measured right before and after the timed loop); packed_over_format (the kernels' bytes
// over the format's); and, timed in the same loop on the same batches, ratio_to_fp32 (T <= 32:
// the fp32 layer's time over this one's) or ratio_to_bf16 (T = 512).
#include <benchmark/benchmark.h>

#include <chrono>
#include <memory>
#include <vector>

#include <moe/experts/quantized.hpp>

#include "olmoe_fixture.hpp"
#include "probes.hpp"

namespace {

using namespace moe_bench;
namespace fm = moe::formats;

template <class F>
using quant_layer = moe::layer<moe::top_k<>, moe::gated_mlp_experts<F>, moe::device::cpu>;

template <class F>
quant_layer<F>& quant_layer_of() {
  static auto instance = [] {
    auto& fx = olmoe_fixture::get();
    using row_map = Eigen::Map<const moe::row_matrix<float>>;
    return std::make_unique<quant_layer<F>>(
        moe::top_k<>(moe::map(fx.router_w.data(), E, d), {.k = k}),
        moe::gated_mlp_experts<F>(row_map(fx.gate.data(), E * f, d), row_map(fx.up.data(), E * f, d),
                                  row_map(fx.down.data(), E * d, f)));
  }();
  return *instance;
}

moe::index distinct(const moe::routing_plan& plan) {
  moe::index n = 0;
  for (moe::index e = 0; e < plan.num_experts(); ++e) n += plan.load(e) > 0;
  return n;
}

template <class F>
void layer_forward_quant(benchmark::State& state) {
  auto& layer = quant_layer_of<F>();
  auto& fx = olmoe_fixture::get();
  const moe::index T = state.range(0);
  const moe::index pool = T <= 32 ? 64 : 1;
  const auto x = tokens(T * pool, 7);
  moe::row_matrix<float> y(T, d), yb(T, d);
  auto batch = [&](moe::index i) { return x.middleRows((i % pool) * T, T); };
  const double format_bytes = static_cast<double>(2 * f * fm::row_bytes<F>(d) + d * fm::row_bytes<F>(f));
  layer.forward(batch(0), y);
  const double bandwidth_before = read_bandwidth_now();
  double seconds = 0, base = 0, bytes = 0;
  moe::index it = 0;
  for (auto _ : state) {
    auto t0 = std::chrono::steady_clock::now();
    layer.forward(batch(it), y);
    seconds += seconds_since(t0);
    benchmark::DoNotOptimize(y.data());
    bytes += static_cast<double>(distinct(layer.plan())) * format_bytes;
    state.PauseTiming();
    t0 = std::chrono::steady_clock::now();
    if (T <= 32) {
      fx.layer.forward(batch(it), yb);
    } else {
      fx.bf16_layer().forward(batch(it), yb);
    }
    base += seconds_since(t0);
    state.ResumeTiming();
    ++it;
  }
  const double bandwidth = (bandwidth_before + read_bandwidth_now()) / 2;
  state.counters["tokens_per_second"] = benchmark::Counter(double(T) * double(state.iterations()) / seconds);
  state.counters["format_gbytes_per_second"] = bytes / seconds / 1e9;
  state.counters["frac_bandwidth"] = bytes / seconds / 1e9 / bandwidth;
  state.counters["probe_gbytes_per_second"] = bandwidth;
  state.counters["packed_over_format"] = layer.experts().bytes_per_expert() / format_bytes;
  state.counters[T <= 32 ? "ratio_to_fp32" : "ratio_to_bf16"] = base / seconds;
}

}  // namespace

#define MOE_QUANT_BENCH(F)                                                                                   \
  BENCHMARK_TEMPLATE(layer_forward_quant, fm::F)->Name("layer_forward_quant/" #F)->ArgName("T")->Arg(1)->Arg(8)->Arg(32)->Arg(512) \
      ->UseRealTime()->Unit(benchmark::kMillisecond)
MOE_QUANT_BENCH(q8_0);
MOE_QUANT_BENCH(q4_0);
MOE_QUANT_BENCH(q4_k);
MOE_QUANT_BENCH(q6_k);
MOE_QUANT_BENCH(mxfp4);
