// SPDX-License-Identifier: Apache-2.0
// Token-choice policies at the OLMoE shape (d = 2048, f = 1024, E = 64, k = 8, fp32), T = 512,
// every comparison in the same run and on the same expert bank:
//   routing_topk_forward                plain softmax top-8 (renormalised): the baseline layer
//   routing_null_experts_forward/s      AdaMoE, m = 16 null experts whose router rows are the true
//                                       rows' distribution scaled by s/100; larger null logits win
//                                       more of the k slots, so the measured k_eff falls
//                                       (counters k_eff and k_eff_ratio = k_eff / k): the layer
//                                       time against k_eff
//   routing_similarity_forward/causal   similarity-aware top-8, one sequence of 512 tokens
//                                       (scaled dot product, tau = sqrt(d)); compare with
//                                       routing_topk_forward for the added fraction
//   routing_*_route                     the routing alone (layer.route), to isolate that overhead
//   routing_similarity_ab/causal,       the same comparisons as A/B pairs inside one loop (plain
//   routing_null_experts_ab/s,          top-8, then the policy, every iteration): counters
//   routing_topk_k_ab/k                 time_over_topk / added_fraction, robust to drift; top-k
//                                       with a smaller k is the reference for null experts (what
//                                       the layer costs at that many experts per token), and
//                                       bound_over_topk is the machine's lower bound for the
//                                       policy's forward (below) over top-8's time
//
// The lower bound of a forward: every expert that the plan selects has its weights read once
// (bytes / the read bandwidth, measured after the loop) and its FLOPs run at best at the FMA
// probe's rate; the bound is the larger of the two (perfect overlap, no other work).
// One layer serves all of them: its router is a variant over the three policies (a policy
// written outside the library), so the 1.6 GB bank is built once.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <variant>
#include <vector>

#include <moe/moe.hpp>

#include "olmoe_fixture.hpp"
#include "probes.hpp"

namespace {

using moe_bench::olmoe_d;
using moe_bench::olmoe_experts;
using moe_bench::olmoe_f;
using moe_bench::olmoe_k;
constexpr moe::index T = 512, null_count = 16;

using topk = moe::top_k<moe::softmax_gate>;
using nulls = moe::null_experts<topk>;
using similarity = moe::similarity_aware<topk>;

/// A router that is one of the three policies, chosen at run time.
class switchable_router {
 public:
  using router_type = switchable_router;
  explicit switchable_router(topk r) : m_router(std::move(r)) {}
  moe::index num_experts() const { return std::visit([](const auto& r) { return r.num_experts(); }, m_router); }
  moe::index hidden() const { return std::visit([](const auto& r) { return r.hidden(); }, m_router); }
  moe::index max_slots() const { return std::visit([](const auto& r) { return r.max_slots(); }, m_router); }
  void route(moe::const_matrix_map<float> x, const moe::route_context& ctx, moe::routing_plan& plan,
             moe::workspace& ws) const {
    std::visit([&](const auto& r) { r.route(x, ctx, plan, ws); }, m_router);
  }
  std::variant<topk, nulls, similarity> m_router;
};

struct routing_fixture {
  std::vector<float> router_w = moe_bench::olmoe_router_weight();  // [E × d]
  std::vector<float> null_w =                                      // [m × d]
      moe_bench::random_weights(null_count * olmoe_d, 1.0f / std::sqrt(float(olmoe_d)), 11);
  moe::row_matrix<float> x = moe_bench::olmoe_tokens(T);
  moe::row_matrix<float> y = moe::row_matrix<float>(T, olmoe_d);
  moe::layer<switchable_router, moe::swiglu_experts<float>, moe::device::cpu> layer{
      switchable_router(plain()), moe_bench::olmoe_expert_bank()};

  static routing_fixture& get() {
    static routing_fixture instance;
    return instance;
  }
  topk plain(int k = olmoe_k) const {
    return topk(moe::map(router_w.data(), olmoe_experts, olmoe_d), {.k = k, .renormalize = true});
  }
  void use_plain(int k = olmoe_k) { layer.router().m_router = plain(k); }
  void use_nulls(float scale) {
    std::vector<float> scaled(null_w);
    for (auto& v : scaled) v *= scale;
    layer.router().m_router = nulls(moe::map(router_w.data(), olmoe_experts, olmoe_d),
                                    moe::map(scaled.data(), null_count, olmoe_d), {.k = olmoe_k, .renormalize = true});
  }
  void use_similarity(bool causal) { layer.router().m_router = similarity(plain(), {.causal = causal}); }
};

void forward_loop(benchmark::State& state, routing_fixture& fx) {
  fx.layer.forward(fx.x, fx.y);  // warm-up: the workspace grows once
  for (auto _ : state) {
    fx.layer.forward(fx.x, fx.y);
    benchmark::DoNotOptimize(fx.y.data());
    benchmark::ClobberMemory();
  }
  const auto stats = fx.layer.stats();
  const double k_eff = stats.mean_experts_per_token;
  state.counters["max_over_mean_load"] = stats.max_over_mean_load;
  state.counters["k_eff"] = k_eff;
  state.counters["k_eff_ratio"] = k_eff / olmoe_k;
  state.counters["tokens_per_second"] = benchmark::Counter(double(T), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["gflops"] = benchmark::Counter(6.0 * T * k_eff * olmoe_d * olmoe_f / 1e9,
                                                benchmark::Counter::kIsIterationInvariantRate);
}

void route_loop(benchmark::State& state, routing_fixture& fx) {
  benchmark::DoNotOptimize(fx.layer.route(fx.x).num_tokens());
  for (auto _ : state) {
    const auto& plan = fx.layer.route(fx.x);
    benchmark::DoNotOptimize(plan.all_experts().data());
    benchmark::ClobberMemory();
  }
  state.counters["tokens_per_second"] = benchmark::Counter(double(T), benchmark::Counter::kIsIterationInvariantRate);
}

void routing_topk_forward(benchmark::State& state) {
  auto& fx = routing_fixture::get();
  fx.use_plain();
  forward_loop(state, fx);
}

void routing_null_experts_forward(benchmark::State& state) {
  auto& fx = routing_fixture::get();
  fx.use_nulls(static_cast<float>(state.range(0)) / 100.0f);
  forward_loop(state, fx);
  state.counters["flops_saved"] = 1.0 - state.counters["k_eff"] / olmoe_k;
}

void routing_similarity_forward(benchmark::State& state) {
  auto& fx = routing_fixture::get();
  fx.use_similarity(state.range(0) != 0);
  forward_loop(state, fx);
}

// A/B in one loop: each iteration runs a plain top-8 forward and a forward with `policy`, timed
// apart, so that both see the same machine (its memory bandwidth drifts with the host's load).
// Manual time is the policy's forward; counters give its time over plain top-8's.
template <class Use>
void ab_loop(benchmark::State& state, routing_fixture& fx, Use&& use_policy) {
  fx.use_plain();
  fx.layer.forward(fx.x, fx.y);
  use_policy();
  fx.layer.forward(fx.x, fx.y);  // warm-up of both
  double plain_s = 0, policy_s = 0;
  double k_eff = 0;
  for (auto _ : state) {
    fx.use_plain();
    auto t0 = std::chrono::steady_clock::now();
    fx.layer.forward(fx.x, fx.y);
    plain_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    use_policy();
    t0 = std::chrono::steady_clock::now();
    fx.layer.forward(fx.x, fx.y);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    policy_s += dt;
    state.SetIterationTime(dt);
    k_eff = fx.layer.stats().mean_experts_per_token;
  }
  state.counters["time_over_topk"] = policy_s / plain_s;
  state.counters["added_fraction"] = policy_s / plain_s - 1.0;
  state.counters["k_eff"] = k_eff;
  state.counters["k_eff_ratio"] = k_eff / olmoe_k;
  const double plain_mean_s = plain_s / static_cast<double>(state.iterations());
  state.counters["topk_ms"] = plain_mean_s * 1e3;
  // The policy's plan is the layer's last: its lower bound on this machine, over top-8's time.
  const auto& plan = fx.layer.plan();
  const auto& bank = fx.layer.experts();
  double bytes = 0;
  for (moe::index e = 0; e < plan.num_experts(); ++e) bytes += plan.load(e) > 0 ? bank.bytes_per_expert() : 0.0;
  const double flops = bank.flops_per_row() * static_cast<double>(plan.total_assignments());
  const double bound_s = std::max(bytes / (moe_bench::read_bandwidth_now() * 1e9), flops / (moe_bench::fma_peak() * 1e9));
  state.counters["bound_over_topk"] = bound_s / plain_mean_s;
}

void routing_similarity_ab(benchmark::State& state) {
  auto& fx = routing_fixture::get();
  const bool causal = state.range(0) != 0;
  ab_loop(state, fx, [&] { fx.use_similarity(causal); });
}

void routing_null_experts_ab(benchmark::State& state) {
  auto& fx = routing_fixture::get();
  const float scale = static_cast<float>(state.range(0)) / 100.0f;
  ab_loop(state, fx, [&] { fx.use_nulls(scale); });
}

void routing_topk_k_ab(benchmark::State& state) {
  auto& fx = routing_fixture::get();
  const int k = static_cast<int>(state.range(0));
  ab_loop(state, fx, [&] { fx.use_plain(k); });
}

void routing_topk_route(benchmark::State& state) {
  auto& fx = routing_fixture::get();
  fx.use_plain();
  route_loop(state, fx);
}

void routing_similarity_route(benchmark::State& state) {
  auto& fx = routing_fixture::get();
  fx.use_similarity(state.range(0) != 0);
  route_loop(state, fx);
}

}  // namespace

BENCHMARK(routing_topk_forward)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(routing_null_experts_forward)->ArgName("null_scale_pct")->Arg(100)->Arg(150)->Arg(200)->Arg(300)
    ->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(routing_similarity_forward)->ArgName("causal")->Arg(1)->Arg(0)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(routing_similarity_ab)->ArgName("causal")->Arg(1)->Arg(0)->UseManualTime()->MinTime(2.0)->Unit(benchmark::kMillisecond);
BENCHMARK(routing_null_experts_ab)->ArgName("null_scale_pct")->Arg(100)->Arg(150)->Arg(200)->Arg(300)
    ->UseManualTime()->MinTime(2.0)->Unit(benchmark::kMillisecond);
BENCHMARK(routing_topk_k_ab)->ArgName("k")->Arg(2)->Arg(3)->Arg(4)->Arg(6)->Arg(8)
    ->UseManualTime()->MinTime(2.0)->Unit(benchmark::kMillisecond);
BENCHMARK(routing_topk_route)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(routing_similarity_route)->ArgName("causal")->Arg(1)->Arg(0)->UseRealTime()->Unit(benchmark::kMillisecond);
