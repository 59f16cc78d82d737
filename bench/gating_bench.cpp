// SPDX-License-Identifier: Apache-2.0
// Gating: top-k + softmax + renormalised weights per row, against a std::partial_sort + std::exp
// baseline in the same binary; routing's share of the OLMoE layer forward; router logits GEMM
// against Eigen.
//   gating/E/k              the SIMD kernels (best ISA of this CPU), rows_per_second
//   gating_baseline/E/k     std::exp softmax + std::partial_sort, rows_per_second
//   gating_isa/I            E = 64, k = 8 on the I-th runnable ISA (context: moe.isa.I)
//   routing_share/T         layer.route() at the OLMoE shape; counters route_share (route time /
//                           forward time of the same layer and tokens, measured in this benchmark)
//   router_logits/T, router_logits_eigen/T   the canonical GEMM against an Eigen GEMM
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include <moe/kernels/dispatch.hpp>
#include <moe/kernels/gating.hpp>

#include "olmoe_fixture.hpp"

namespace {

constexpr moe::index rows = 4096;

std::vector<float> logit_rows(moe::index n) { return moe_bench::random(static_cast<std::size_t>(rows * n), 4.0f, 11); }

// The router's per-row work: select on logits, softmax, renormalised weights of the selection.
template <class Table>
void gate_rows(const Table& t, const std::vector<float>& z, moe::index n, moe::index k, float* p, std::int32_t* idx,
               float* w) {
  for (moe::index r = 0; r < rows; ++r) {
    const float* zr = z.data() + r * n;
    const moe::index c = t.top_k(zr, n, k, idx);
    t.softmax(zr, n, p, nullptr);
    for (moe::index s = 0; s < c; ++s) w[s] = p[idx[s]];
    t.renormalize_scale(w, c, true, 1.0f);
    benchmark::DoNotOptimize(w);
  }
}

void gating(benchmark::State& state) {
  const moe::index n = state.range(0), k = state.range(1);
  const auto z = logit_rows(n);
  std::vector<float> p(n), w(k);
  std::vector<std::int32_t> idx(k);
  const auto& t = moe::kernels::active_gating();
  for (auto _ : state) gate_rows(t, z, n, k, p.data(), idx.data(), w.data());
  state.counters["rows_per_second"] = benchmark::Counter(double(rows), benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(t.name);
}

void gating_baseline(benchmark::State& state) {
  const moe::index n = state.range(0), k = state.range(1);
  const auto z = logit_rows(n);
  std::vector<float> p(n), w(k);
  std::vector<int> order(n);
  for (auto _ : state) {
    for (moe::index r = 0; r < rows; ++r) {
      const float* zr = z.data() + r * n;
      const float m = *std::max_element(zr, zr + n);
      float total = 0;
      for (moe::index i = 0; i < n; ++i) total += p[i] = std::exp(zr[i] - m);
      for (moe::index i = 0; i < n; ++i) p[i] /= total;
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + k, order.end(),
                        [&](int a, int b) { return p[a] > p[b] || (p[a] == p[b] && a < b); });
      float sel = 0;
      for (moe::index s = 0; s < k; ++s) sel += w[s] = p[order[s]];
      for (moe::index s = 0; s < k; ++s) w[s] /= sel;
      benchmark::DoNotOptimize(w.data());
    }
  }
  state.counters["rows_per_second"] = benchmark::Counter(double(rows), benchmark::Counter::kIsIterationInvariantRate);
}

void gating_isa(benchmark::State& state) {
  const auto tables = moe::kernels::runnable_gating_tables();
  const auto i = static_cast<std::size_t>(state.range(0));
  if (i >= tables.size()) {
    state.SkipWithError("ISA not runnable here");
    return;
  }
  const moe::index n = 64, k = 8;
  const auto z = logit_rows(n);
  std::vector<float> p(n), w(k);
  std::vector<std::int32_t> idx(k);
  for (auto _ : state) gate_rows(tables[i], z, n, k, p.data(), idx.data(), w.data());
  state.counters["rows_per_second"] = benchmark::Counter(double(rows), benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(tables[i].name);
}

// Routing (logits + gate + select + weights) against a forward of the same layer and tokens. T = 1
// rotates through 64 different tokens so that the forward's experts are not all cache-hot.
void routing_share(benchmark::State& state) {
  auto& fx = moe_bench::olmoe_fixture::get();
  const moe::index T = state.range(0);
  const moe::index pool = T == 1 ? 64 : 1;
  const auto x = moe_bench::tokens(T * pool, 13);
  moe::row_matrix<float> y(T, moe_bench::d);
  auto batch = [&](moe::index i) { return x.middleRows((i % pool) * T, T); };
  fx.layer.forward(batch(0), y);
  std::vector<double> fwd;
  for (moe::index i = 0; i < std::max<moe::index>(5, pool); ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fx.layer.forward(batch(i), y);
    fwd.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(fwd.begin(), fwd.end());
  const double forward_s = fwd[fwd.size() / 2];
  double route_s = 0;
  moe::index it = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    benchmark::DoNotOptimize(&fx.layer.route(batch(it++)));
    route_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  state.counters["forward_ms"] = forward_s * 1e3;
  state.counters["route_ms"] = route_s / double(state.iterations()) * 1e3;
  state.counters["route_share"] = route_s / double(state.iterations()) / forward_s;
}

void router_logits(benchmark::State& state) {
  auto& fx = moe_bench::olmoe_fixture::get();
  const moe::index T = state.range(0);
  const auto x = moe_bench::tokens(T, 17);
  moe::row_matrix<float> z(T, moe_bench::E);
  moe::workspace ws;
  const auto& r = fx.layer.router();
  for (auto _ : state) {
    ws.reset();
    r.logits(moe::view(x), z.data(), moe_bench::E, ws);
    benchmark::DoNotOptimize(z.data());
  }
  state.counters["gflops"] = benchmark::Counter(2.0 * T * moe_bench::E * moe_bench::d / 1e9,
                                                benchmark::Counter::kIsIterationInvariantRate);
}

void router_logits_eigen(benchmark::State& state) {
  auto& fx = moe_bench::olmoe_fixture::get();
  const moe::index T = state.range(0);
  const auto x = moe_bench::tokens(T, 17);
  moe::row_matrix<float> z(T, moe_bench::E);
  Eigen::setNbThreads(1);
  for (auto _ : state) {
    z.noalias() = x * fx.router().transpose();
    benchmark::DoNotOptimize(z.data());
  }
  Eigen::setNbThreads(0);
  state.counters["gflops"] = benchmark::Counter(2.0 * T * moe_bench::E * moe_bench::d / 1e9,
                                                benchmark::Counter::kIsIterationInvariantRate);
}

void gating_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"E", "k"});
  for (int e : {8, 64, 128, 256})
    for (int k : {2, 8}) b->Args({e, k});
}

}  // namespace

BENCHMARK(gating)->Apply(gating_args);
BENCHMARK(gating_baseline)->Apply(gating_args);
BENCHMARK(gating_isa)->ArgName("isa")->DenseRange(0, 2);
BENCHMARK(routing_share)->ArgName("T")->Arg(1)->Arg(512)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(router_logits)->ArgName("T")->Arg(1)->Arg(32)->Arg(512)->Unit(benchmark::kMicrosecond);
BENCHMARK(router_logits_eigen)->ArgName("T")->Arg(1)->Arg(32)->Arg(512)->Unit(benchmark::kMicrosecond);
