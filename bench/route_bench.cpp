// SPDX-License-Identifier: Apache-2.0
// moe-route's core (tools/moe-route/analysis.hpp) at the OLMoE shape: d 2048, f 1024, 64 experts,
// top-8, 16 MoE layers, 512 tokens, the model's own router plus 5 policies, every policy running
// its experts (teacher-forced, as `moe-route` does):
//   moe-route --preset olmoe --dim 2048 --ffn 1024 --num-layers 16 --tokens 512 --bf16
//     --policy top_k:k=4 --policy null_experts:m=16,k=10 --policy capacity:factor=1.25
//     --policy top_p:p=0.7 --policy mod:capacity=0.5
//   route_compare/bf16, route_compare/fp32   seconds of one whole comparison (goal <= 10 s)
//   route_compare_route_only/{bf16,fp32}    the same with --route-only (the model's own layers run
//                                           their experts, the policies route and are measured)
// The synthetic model shares ONE expert bank between its 16 layers (each layer has its own
// seeded router): 16 distinct OLMoE banks would need 12.9 GB in bf16 (25.8 GB in fp32), more than
// the machine's memory. The expert compute is the same as with distinct banks; only the weights
// are cache- and page-hot across layers, which at T = 512 (compute-bound) changes little.
// Counters: seconds (per comparison), layer_forwards_per_second (16 × 6 forwards per comparison,
// 16 with route only), tokens_per_second (512 tokens per layer forward), and the baseline measured
// in the same run: model_expert_seconds (the model's own 16 layer forwards, which any
// teacher-forced comparison must run) and over_model_forwards = seconds / model_expert_seconds
// (what the comparison costs beyond running the model once).
#include <benchmark/benchmark.h>

#include <chrono>
#include <memory>

#include "analysis.hpp"

namespace {

constexpr moe::index layers = 16, tokens = 512;

std::unique_ptr<moe_route::model> make_model(bool bf16) {
  moe_route::model_options o;
  o.preset = "olmoe";
  o.dim = 2048;
  o.ffn = 1024;
  o.layers = layers;
  o.seed = 1;
  o.bf16 = bf16;
  return moe_route::open_model(o);
}

void compare(benchmark::State& state, bool bf16, bool route_only) {
  const auto m = make_model(bf16);
  moe_route::hidden_source h;
  h.tokens = tokens;
  moe_route::run_options o;
  for (const char* p : {"top_k:k=4", "null_experts:m=16,k=10", "capacity:factor=1.25", "top_p:p=0.7", "mod:capacity=0.5"}) {
    o.policies.push_back(moe_route::parse_policy(p));
  }
  o.layers = moe_route::parse_layers("all", *m);
  o.route_only = route_only;
  double seconds = 0, model = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    const auto a = moe_route::analyse(*m, h, o);
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    for (const auto& l : a.policies.front().layers) model += l.expert_seconds;
    benchmark::DoNotOptimize(a.policies.back().jaccard);
  }
  const double n = static_cast<double>(state.iterations());
  // Layer forwards per comparison: the model's own and, unless route only, one per policy.
  const double forwards = static_cast<double>(layers) * (route_only ? 1.0 : 6.0);
  state.counters["seconds"] = seconds / n;
  state.counters["layer_forwards_per_second"] = forwards * n / seconds;
  state.counters["tokens_per_second"] = forwards * static_cast<double>(tokens) * n / seconds;
  state.counters["model_expert_seconds"] = model / n;
  state.counters["over_model_forwards"] = seconds / model;
}

BENCHMARK_CAPTURE(compare, route_compare/bf16, true, false)->Unit(benchmark::kSecond)->Iterations(1)->Repetitions(3);
BENCHMARK_CAPTURE(compare, route_compare/fp32, false, false)->Unit(benchmark::kSecond)->Iterations(1)->Repetitions(1);
BENCHMARK_CAPTURE(compare, route_compare_route_only/bf16, true, true)->Unit(benchmark::kSecond)->Iterations(1)->Repetitions(1);
BENCHMARK_CAPTURE(compare, route_compare_route_only/fp32, false, true)->Unit(benchmark::kSecond)->Iterations(1)->Repetitions(3);

}  // namespace
