// SPDX-License-Identifier: Apache-2.0
// Layer forward at the OLMoE shape (d = 2048, f = 1024, E = 64, k = 8, fp32), against two
// baselines in the same binary:
//   layer_naive/T      per token, per slot: three Eigen matrix-vector products (the naive way)
//   layer_eigen_gemm/T per expert: gather rows -> Eigen GEMMs -> weighted scatter-add
//   layer_forward/T    moe::layer<top_k<softmax>, swiglu_experts<float>, device::cpu>
// Counters: tokens_per_second, gflops (active FLOPs = 6·T·k·d·f per forward).
#include <benchmark/benchmark.h>

#include <vector>

#include "olmoe_fixture.hpp"

namespace {

using namespace moe_bench;

void set_counters(benchmark::State& state, moe::index T) {
  state.counters["tokens_per_second"] = benchmark::Counter(double(T), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["gflops"] =
      benchmark::Counter(6.0 * double(T) * k * d * f / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

void layer_forward(benchmark::State& state) {
  auto& fx = olmoe_fixture::get();
  const moe::index T = state.range(0);
  const auto x = tokens(T);
  moe::row_matrix<float> y(T, d);
  fx.layer.forward(x, y);
  for (auto _ : state) {
    fx.layer.forward(x, y);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, T);
}

// Per token, per slot: y_t += w · W_down (silu(W_gate x_t) ⊙ W_up x_t), Eigen GEMVs.
void layer_naive(benchmark::State& state) {
  auto& fx = olmoe_fixture::get();
  const moe::index T = state.range(0);
  const auto x = tokens(T);
  moe::row_matrix<float> y(T, d);
  Eigen::VectorXf g(f), u(f), h(f), out(d);
  for (auto _ : state) {
    const auto& plan = fx.layer.route(x);
    y.setZero();
    for (moe::index t = 0; t < T; ++t) {
      for (moe::index s = 0; s < plan.max_slots(); ++s) {
        const auto e = plan.expert(t, s);
        if (e == moe::no_expert) continue;
        g.noalias() = fx.gate_of(e) * x.row(t).transpose();
        u.noalias() = fx.up_of(e) * x.row(t).transpose();
        h = g.array() / (1.0f + (-g.array()).exp()) * u.array();
        out.noalias() = fx.down_of(e) * h;
        y.row(t) += plan.weight(t, s) * out.transpose();
      }
    }
    benchmark::DoNotOptimize(y.data());
  }
  set_counters(state, T);
}

// Per expert: gather its rows, three Eigen GEMMs, weighted scatter-add.
void layer_eigen_gemm(benchmark::State& state) {
  auto& fx = olmoe_fixture::get();
  const moe::index T = state.range(0);
  const auto x = tokens(T);
  moe::row_matrix<float> y(T, d);
  for (auto _ : state) {
    const auto& plan = fx.layer.route(x);
    y.setZero();
    for (moe::index e = 0; e < E; ++e) {
      const auto rows = plan.entries(e);
      const auto n = static_cast<moe::index>(rows.size());
      if (n == 0) continue;
      moe::row_matrix<float> xe(n, d);
      for (moe::index i = 0; i < n; ++i) xe.row(i) = x.row(rows[static_cast<std::size_t>(i)].token);
      moe::row_matrix<float> g = xe * fx.gate_of(e).transpose();
      moe::row_matrix<float> u = xe * fx.up_of(e).transpose();
      moe::row_matrix<float> h = (g.array() / (1.0f + (-g.array()).exp()) * u.array()).matrix();
      moe::row_matrix<float> out = h * fx.down_of(e).transpose();
      for (moe::index i = 0; i < n; ++i) {
        const auto& entry = rows[static_cast<std::size_t>(i)];
        y.row(entry.token) += plan.weight(entry.token, entry.slot) * out.row(i);
      }
    }
    benchmark::DoNotOptimize(y.data());
  }
  set_counters(state, T);
}

}  // namespace

BENCHMARK(layer_forward)->ArgName("T")->Arg(1)->Arg(32)->Arg(512)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(layer_eigen_gemm)->ArgName("T")->Arg(1)->Arg(32)->Arg(512)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(layer_naive)->ArgName("T")->Arg(1)->Arg(32)->Arg(512)->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(0.5);
