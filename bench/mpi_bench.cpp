// SPDX-License-Identifier: Apache-2.0
// Expert parallelism (moe::device::mpi) at the OLMoE shape (d 2048, f 1024, E 64, top-8, fp32),
// run with `mpirun -np 2 bench/moe_mpi_bench`. Rank 0 reports; every rank runs the same fixed
// number of iterations (collectives must match).
//   mpi_vs_threads/T      A/B in one loop: A = one process (rank 0, moe::device::cpu with as many
//                         threads as there are ranks) forwards all T tokens while the other ranks
//                         sleep; B = every rank forwards its T/ranks tokens with its E/ranks
//                         experts on one thread (moe::device::mpi<cpu{1}>). Manual time: B.
//                         Counters: tokens_per_second (B), threads_tokens_per_second (A),
//                         ratio_to_threads (B/A), bytes_per_token (sent + received over all ranks,
//                         per token), comm_share (rank 0's time in communication over its
//                         forward), imbalance (max/mean rows computed per rank).
//   mpi_shared_overlap/T/overlap  the same MPI layer with one sigmoid-gated shared expert of width
//                         4·f (Qwen2-MoE style) run while the rows are in flight (1) or after
//                         the combine (0); tokens_per_second.
#include <benchmark/benchmark.h>

#include <mpi.h>

#include <chrono>
#include <memory>
#include <thread>
#include <vector>

#include <moe/device/mpi.hpp>
#include <moe/moe.hpp>

#include "olmoe_fixture.hpp"

namespace {

using namespace moe_bench;
using moe::index;
using bank = moe::swiglu_experts<float>;
using mpi_dev = moe::device::mpi<moe::device::cpu>;
using mpi_layer = moe::layer<moe::top_k<>, bank, mpi_dev>;

int rank_of() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int ranks_of() {
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

// Waits at a barrier without spinning a core (the other ranks sleep while rank 0 runs A).
void idle_barrier() {
  MPI_Request req;
  MPI_Ibarrier(MPI_COMM_WORLD, &req);
  int done = 0;
  while (!done) {
    MPI_Test(&req, &done, MPI_STATUS_IGNORE);
    if (!done) std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

// This rank's share of the fixture's experts (contiguous placement), built from the same seeds.
struct mpi_setup {
  moe::placement placement = moe::placement::contiguous(E, ranks_of());
  std::vector<float> router_w = olmoe_router_weight();
  std::unique_ptr<mpi_layer> layer;
  std::unique_ptr<mpi_layer> layer_shared;
  mpi_setup() {
    const int r = rank_of();
    const auto local = placement.local_experts(r);
    const index n = static_cast<index>(local.size()), first = local.empty() ? 0 : local[0];
    const float sd = 1.0f / std::sqrt(float(d)), sf = 1.0f / std::sqrt(float(f));
    const auto gate = random_weights(static_cast<std::size_t>(E * f * d), sd, 2);
    const auto up = random_weights(static_cast<std::size_t>(E * f * d), sd, 3);
    const auto down = random_weights(static_cast<std::size_t>(E * d * f), sf, 4);
    const auto make_bank = [&] {
      return bank(gate.data() + first * f * d, up.data() + first * f * d, down.data() + first * d * f, {n, d, f});
    };
    const moe::top_k<> router(moe::map(router_w.data(), E, d), {.k = k});
    layer = std::make_unique<mpi_layer>(router, make_bank(), mpi_dev(placement, moe::device::cpu{1}));
    const index fs = 4 * f;
    const auto sg = random_weights(static_cast<std::size_t>(fs * d), sd, 5);
    const auto su = random_weights(static_cast<std::size_t>(fs * d), sd, 6);
    const auto sdn = random_weights(static_cast<std::size_t>(d * fs), 1.0f / std::sqrt(float(fs)), 7);
    const auto sgate = random_weights(static_cast<std::size_t>(d), sd, 8);
    moe::shared_experts<bank> shared(bank(sg.data(), su.data(), sdn.data(), {1, d, fs}), sgate);
    layer_shared = std::make_unique<mpi_layer>(router, make_bank(), std::move(shared), mpi_dev(placement, moe::device::cpu{1}));
  }
  static mpi_setup& get() {
    static mpi_setup s;
    return s;
  }
};

// One collective forward, timed from a barrier to a barrier (the slowest rank's time).
double timed_forward(mpi_layer& layer, const moe::row_matrix<float>& x, moe::row_matrix<float>& y) {
  MPI_Barrier(MPI_COMM_WORLD);
  const double t0 = MPI_Wtime();
  layer.forward(x, y);
  MPI_Barrier(MPI_COMM_WORLD);
  return MPI_Wtime() - t0;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void mpi_vs_threads(benchmark::State& state) {
  const index T = state.range(0);
  const int R = ranks_of(), me = rank_of();
  const index mine = T / R;
  auto& s = mpi_setup::get();
  const auto x_all = tokens(T, 7);
  const moe::row_matrix<float> x = x_all.middleRows(me * mine, mine);
  moe::row_matrix<float> y(mine, d), y_all(T, d);
  olmoe_layer<float>* single = nullptr;
  if (me == 0) {
    single = &olmoe_fixture::get().layer;
    single->device() = moe::device::cpu{R};
    single->forward(x_all, y_all);  // warm
  }
  MPI_Barrier(MPI_COMM_WORLD);
  s.layer->forward(x, y);  // warm
  double a_sum = 0, b_sum = 0, comm = 0, total = 0, bytes = 0, imbalance = 0;
  for (auto _ : state) {
    // A: one process, R threads, the whole batch; the other ranks sleep.
    if (me == 0) {
      const auto t0 = std::chrono::steady_clock::now();
      single->forward(x_all, y_all);
      a_sum += seconds_since(t0);
    }
    idle_barrier();
    // B: R ranks, one thread each.
    const double b = timed_forward(*s.layer, x, y);
    b_sum += b;
    state.SetIterationTime(b);
    const auto& st = s.layer->device().stats();
    comm += st.seconds_communication;
    total += st.seconds_communication + st.seconds_compute;
    double mine_bytes = st.bytes_sent + st.bytes_received, all_bytes = 0;
    MPI_Allreduce(&mine_bytes, &all_bytes, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    bytes += all_bytes / 2;  // each byte is sent once and received once
    imbalance += st.imbalance;
    benchmark::DoNotOptimize(y.data());
  }
  const double n = static_cast<double>(state.iterations());
  state.counters["tokens_per_second"] = static_cast<double>(T) / (b_sum / n);
  if (me == 0) {
    state.counters["threads_tokens_per_second"] = static_cast<double>(T) / (a_sum / n);
    state.counters["ratio_to_threads"] = a_sum / b_sum;
  }
  state.counters["bytes_per_token"] = bytes / n / static_cast<double>(T);
  state.counters["comm_share"] = comm / total;
  state.counters["imbalance"] = imbalance / n;
  state.counters["ranks"] = R;
}

void mpi_shared_overlap(benchmark::State& state) {
  const index T = state.range(0);
  const int R = ranks_of(), me = rank_of();
  const index mine = T / R;
  auto& s = mpi_setup::get();
  s.layer_shared->device().set_overlap_shared(state.range(1) != 0);
  const auto x_all = tokens(T, 7);
  const moe::row_matrix<float> x = x_all.middleRows(me * mine, mine);
  moe::row_matrix<float> y(mine, d);
  s.layer_shared->forward(x, y);
  double b_sum = 0;
  for (auto _ : state) {
    const double b = timed_forward(*s.layer_shared, x, y);
    b_sum += b;
    state.SetIterationTime(b);
  }
  state.counters["tokens_per_second"] = static_cast<double>(T) / (b_sum / static_cast<double>(state.iterations()));
  state.counters["comm_share"] = s.layer_shared->device().stats().seconds_communication /
                                 (s.layer_shared->device().stats().seconds_communication +
                                  s.layer_shared->device().stats().seconds_compute);
}

BENCHMARK(mpi_vs_threads)->Arg(1024)->Iterations(5)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(mpi_shared_overlap)->Args({1024, 0})->Args({1024, 1})->Iterations(5)->UseManualTime()->Unit(benchmark::kMillisecond);

// Ranks other than 0 run the same benchmarks and report nothing.
class silent_reporter : public benchmark::BenchmarkReporter {
 public:
  bool ReportContext(const Context&) override { return true; }
  void ReportRuns(const std::vector<Run>&) override {}
};

}  // namespace

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  benchmark::AddCustomContext("moe.version", moe::version_string);
  benchmark::AddCustomContext("moe.ranks", std::to_string(ranks_of()));
  benchmark::Initialize(&argc, argv);
  if (rank_of() == 0) {
    benchmark::RunSpecifiedBenchmarks();
  } else {
    silent_reporter quiet;
    benchmark::RunSpecifiedBenchmarks(&quiet, &quiet);
  }
  benchmark::Shutdown();
  MPI_Finalize();
  return 0;
}
