// SPDX-License-Identifier: Apache-2.0
// A cost model of expert parallelism: route recorded batches with a DeepSeek-V3-shaped router
// (256 experts, top-8, skewed expert popularity), then replay the plans for 8 to 1024 ranks under
// the contiguous placement and a balanced one built from the recorded loads
// (moe::placement::balanced, replicas of the hottest experts), and print the all-to-all volume
// per token and the load imbalance that moe::device::mpi would see. Nothing is sent: the model
// applies moe::device::mpi's own rules (tokens split evenly over ranks in order; each assignment
// goes to moe::placement::replica_for; rows out and outputs back) to the plans.
//
//   ./ep_cost_model [tokens_per_batch] [batches]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include <moe/device/placement.hpp>
#include <moe/moe.hpp>

int main(int argc, char** argv) {
  const moe::index T = argc > 1 ? std::atol(argv[1]) : 4096;
  const int batches = argc > 2 ? std::atoi(argv[2]) : 4;
  const moe::index E = 256, d = 512;  // d only shapes the router; the model counts rows
  const int k = 8;
  const double row_bytes = 7168.0 * 2;  // a DeepSeek-V3 token row in bf16 (d_model 7168)

  // A router whose experts have skewed popularity: expert e's row gets a bias on a shared
  // direction that falls off with e, so low ids are hot (as recorded loads of real models are).
  std::mt19937 rng(2026);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  moe::row_matrix<float> w(E, d);
  for (moe::index e = 0; e < E; ++e) {
    for (moe::index j = 0; j < d; ++j) w(e, j) = normal(rng) / std::sqrt(float(d));
    w(e, 0) += 2.5f * std::exp(-static_cast<float>(e) / 24.0f);
  }
  const moe::group_limited<> router(w, {.k = k, .n_groups = 8, .topk_groups = 4, .route_scale = 2.5f});

  // Record the plans and the load per expert.
  std::vector<moe::routing_plan> plans(static_cast<std::size_t>(batches));
  std::vector<double> load(static_cast<std::size_t>(E), 0.0);
  moe::workspace ws;
  for (auto& plan : plans) {
    moe::row_matrix<float> x(T, d);
    for (moe::index t = 0; t < T; ++t) {
      for (moe::index j = 0; j < d; ++j) x(t, j) = normal(rng);
      x(t, 0) = std::abs(x(t, 0)) + 1.0f;
    }
    ws.reset();
    router.route(moe::view(x), {}, plan, ws);
    for (moe::index t = 0; t < T; ++t) {
      for (moe::index s = 0; s < plan.max_slots(); ++s) {
        if (plan.expert(t, s) != moe::no_expert) load[static_cast<std::size_t>(plan.expert(t, s))] += 1.0;
      }
    }
  }
  const double hottest = *std::max_element(load.begin(), load.end());
  const double mean = static_cast<double>(batches) * static_cast<double>(T) * k / static_cast<double>(E);
  std::printf("recorded: %d batches of %ld tokens, %ld experts, top-%d; hottest expert %.2f x the mean load\n\n",
              batches, static_cast<long>(T), static_cast<long>(E), k, hottest / mean);
  std::printf("model: tokens are split evenly over R ranks in order; assignment (t, s) of expert e goes to\n"
              "  r(t, s) = placement.replica_for(e, rank(t), t); it is remote when r != rank(t).\n"
              "  volume per token V = 2 * B * (1/T) * sum_{t,s} [r(t, s) != rank(t)], B = %.0f bytes (a bf16 row\n"
              "  of d_model 7168; rows out and outputs back), imbalance I = max_r L_r / mean_r L_r with\n"
              "  L_r = rows computed on rank r, over all recorded batches.\n\n",
              row_bytes);
  std::printf("%6s  %-12s %7s %12s %10s %12s\n", "ranks", "placement", "slots", "V (kB/tok)", "remote", "imbalance I");
  for (const int R : {8, 16, 32, 64, 128, 256, 512, 1024}) {
    const moe::index slots = std::max<moe::index>((E + R - 1) / R, 1) + (R >= E ? 1 : 2);
    const moe::placement contiguous = moe::placement::contiguous(E, R);
    const moe::placement balanced = moe::placement::balanced(load, R, slots);
    for (const auto* pl : {&contiguous, &balanced}) {
      std::vector<double> rows(static_cast<std::size_t>(R), 0.0);
      double remote = 0, assignments = 0;
      for (const auto& plan : plans) {
        for (moe::index t = 0; t < T; ++t) {
          const int src = static_cast<int>(t * R / T);
          for (moe::index s = 0; s < plan.max_slots(); ++s) {
            const std::int32_t e = plan.expert(t, s);
            if (e == moe::no_expert || plan.weight(t, s) == 0.0f) continue;
            const auto loc = pl->replica_for(e, src, t);
            rows[static_cast<std::size_t>(loc.rank)] += 1.0;
            remote += loc.rank != src;
            assignments += 1.0;
          }
        }
      }
      const double tokens = static_cast<double>(T) * batches;
      const double mx = *std::max_element(rows.begin(), rows.end());
      const double mean_rows = assignments / R;
      std::printf("%6d  %-12s %7ld %12.1f %9.1f%% %12.2f\n", R, pl == &contiguous ? "contiguous" : "balanced",
                  static_cast<long>(pl == &contiguous ? (E + R - 1) / R : slots), 2.0 * row_bytes * remote / tokens / 1e3,
                  100.0 * remote / assignments, mx / mean_rows);
    }
  }
  return 0;
}
