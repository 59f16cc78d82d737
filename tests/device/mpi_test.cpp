// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/device/mpi.hpp and device/placement.hpp, run under mpirun with 1, 2, 3, 4
// and 8 ranks (tests/CMakeLists.txt). Every rank builds the same model and the same global batch
// from the same seed, runs its rows through moe::device::mpi, and compares them bit for bit with
// one process (moe::device::serial) running the whole batch. Test cases tagged [multi] need two
// ranks or more.
#include <catch2/catch.hpp>

#include <mpi.h>

#include <cstring>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include <moe/device/mpi.hpp>
#include <moe/moe.hpp>

#include "../support/compare.hpp"
#include "../support/devices.hpp"
#include "../support/layers.hpp"
#include "../support/random.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;
using bank = moe::swiglu_experts<float>;
using shared_bank = moe::shared_experts<bank>;

using moe_test::select_experts;
using moe_test::world_rank;
using moe_test::world_size;

// This rank's rows of a global batch: rank r has 3 + 5 r tokens (uneven), in rank order.
struct batch_split {
  std::vector<index> starts;  // first global row of each rank
  index total = 0;
  index begin = 0, rows = 0;
};
batch_split split(int ranks, int rank, index base = 3, index step = 5) {
  batch_split s;
  for (int r = 0; r < ranks; ++r) {
    s.starts.push_back(s.total);
    const index n = base + step * r;
    if (r == rank) {
      s.begin = s.total;
      s.rows = n;
    }
    s.total += n;
  }
  return s;
}

struct fixture {
  index E = 16, d = 24, f = 16;
  moe_test::rng rng{2026};
  moe_test::naive_swiglu w = moe_test::random_swiglu(rng, E, d, f);
  moe_test::naive_swiglu ws1 = moe_test::random_swiglu(rng, 1, d, 20);
  moe_test::naive_swiglu ws2 = moe_test::random_swiglu(rng, 2, d, 8);
  moe::row_matrix<float> router_w = rng.matrix(E, d, 2.0f);
  moe::row_matrix<float> null_w = rng.matrix(4, d, 2.0f);
  std::vector<float> shared_gate = [this] {
    std::vector<float> g(static_cast<std::size_t>(d));
    for (auto& v : g) v = rng.uniform();
    return g;
  }();
  std::vector<float> mod_w = [this] {
    std::vector<float> g(static_cast<std::size_t>(d));
    for (auto& v : g) v = rng.uniform();
    return g;
  }();
};

// A per-token depth policy: token t skips, executes or repeats by t mod 3 (repeated passes are
// re-routed on x + y, so they exercise the device's row operations).
struct pattern_depth {
  using depth_policy_type = pattern_depth;
  static constexpr bool needs_whole_batch = false;
  void decide(moe::const_matrix_map<float> x, const moe::route_context&, moe::routing_plan& plan, moe::workspace&) const {
    for (index t = 0; t < x.rows(); ++t) {
      const float v = x(t, 0);
      plan.set_passes(t, v < -0.3f ? 0 : v > 0.3f ? 2 : 1);
    }
  }
};

enum class shared_kind { none, one_gated, two_ungated };

// One process on the whole batch against `ranks` processes on their rows, for one router.
template <class Router>
void check_against_one_process(const fixture& fx, const Router& router, const moe::placement& pl, shared_kind sk,
                               const batch_split& sp, const moe::row_matrix<float>& X) {
  const int rank = world_rank();
  const std::vector<index>& starts = sp.starts;
  // Reference: one process, the whole batch, every rank's tokens a sequence.
  moe::row_matrix<float> Y(sp.total, fx.d);
  const auto make_shared = [&]() -> std::optional<shared_bank> {
    if (sk == shared_kind::one_gated) return shared_bank(moe_test::make_bank(fx.ws1), fx.shared_gate);
    if (sk == shared_kind::two_ungated) return shared_bank(moe_test::make_bank(fx.ws2));
    return std::nullopt;
  };
  {
    auto sh = make_shared();
    if (sh) {
      moe::layer<Router, bank, moe::device::serial> one(router, moe_test::make_bank(fx.w), *sh);
      one.forward(X, Y, {.sequence_starts = starts});
    } else {
      moe::layer<Router, bank, moe::device::serial> one(router, moe_test::make_bank(fx.w));
      one.forward(X, Y, {.sequence_starts = starts});
    }
  }
  // This rank: its rows, its experts.
  const moe::row_matrix<float> x = X.middleRows(sp.begin, sp.rows);
  moe::row_matrix<float> y(sp.rows, fx.d);
  using dev = moe::device::mpi<moe::device::cpu>;
  auto local = select_experts(fx.w, pl.local_experts(rank));
  auto sh = make_shared();
  moe::mpi_stats st;
  if (sh) {
    moe::layer<Router, bank, dev> mine(router, std::move(local), *sh, dev(pl, moe::device::cpu{1}));
    mine.forward(x, y);
    st = mine.device().stats();
  } else {
    moe::layer<Router, bank, dev> mine(router, std::move(local), dev(pl, moe::device::cpu{1}));
    mine.forward(x, y);
    st = mine.device().stats();
  }
  INFO("rank " << rank << " of " << world_size());
  CHECK(moe_test::bitwise_equal_rows(y, Y, sp.begin));
  // Statistics add up over the ranks: every row computed somewhere, imbalance >= 1 when loaded.
  const index computed = std::accumulate(st.load_per_rank.begin(), st.load_per_rank.end(), index{0});
  CHECK(st.rows_computed == st.load_per_rank[static_cast<std::size_t>(rank)]);
  std::int64_t sent = st.rows_sent, received = st.rows_received, all_sent = 0, all_received = 0;
  MPI_Allreduce(&sent, &all_sent, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
  MPI_Allreduce(&received, &all_received, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
  CHECK(all_sent == all_received);
  if (computed > 0) CHECK(st.imbalance >= 1.0);
  CHECK(st.seconds_communication >= 0.0);
}

std::vector<moe::placement> placements(index E, int ranks) {
  std::vector<moe::placement> out;
  out.push_back(moe::placement::contiguous(E, ranks));
  // Uneven: rank 0 holds half the experts, the others share the rest (some may hold none).
  std::vector<index> sizes(static_cast<std::size_t>(ranks), 0);
  sizes[0] = ranks > 1 ? E / 2 : E;
  for (index e = 0; e < E - sizes[0]; ++e) sizes[static_cast<std::size_t>(1 + e % std::max(ranks - 1, 1))] += 1;
  out.push_back(moe::placement::blocks(sizes));
  // Replicated: every expert on two ranks (round robin), or on the only rank.
  std::vector<std::vector<index>> rep(static_cast<std::size_t>(ranks));
  for (index e = 0; e < E; ++e) {
    rep[static_cast<std::size_t>(e % ranks)].push_back(e);
    if (ranks > 1) rep[static_cast<std::size_t>((e + 1) % ranks)].push_back(e);
  }
  for (auto& l : rep) std::sort(l.begin(), l.end());
  out.emplace_back(E, rep);
  // Balanced from skewed loads (EPLB): hot experts replicated.
  std::vector<double> load(static_cast<std::size_t>(E));
  for (index e = 0; e < E; ++e) load[e] = e < 3 ? 100.0 : 1.0 + static_cast<double>(e);
  out.push_back(moe::placement::balanced(load, ranks, (E + ranks - 1) / ranks + 1));
  return out;
}

TEST_CASE("mpi: outputs equal one process bit for bit, for every policy and placement", "[mpi]") {
  const fixture fx;
  const int ranks = world_size(), rank = world_rank();
  const auto sp = split(ranks, rank);
  moe_test::rng xr(99);
  const auto X = xr.matrix(sp.total, fx.d);
  const auto pls = placements(fx.E, ranks);
  // Each policy under every placement (contiguous, uneven, replicated, balanced).
  const auto each = [&](auto&& check) {
    for (std::size_t p = 0; p < pls.size(); ++p) {
      INFO("placement " << p);
      check(pls[p]);
    }
  };
  SECTION("top-k (softmax, k = 4) with a gated shared expert") {
    each([&](const moe::placement& pl) {
      check_against_one_process(fx, moe::top_k<>(fx.router_w, {.k = 4, .renormalize = true}), pl, shared_kind::one_gated, sp, X);
    });
  }
  SECTION("grouped (DeepSeek-V3: sigmoid, 4 groups, top-2 groups, bias, scale 2.5) with two shared experts") {
    std::vector<float> bias(static_cast<std::size_t>(fx.E));
    for (index e = 0; e < fx.E; ++e) bias[e] = 0.05f * static_cast<float>(e % 5);
    const moe::group_limited<> r(fx.router_w, {.k = 4, .n_groups = 4, .topk_groups = 2, .route_scale = 2.5f,
                                               .selection_bias = bias});
    each([&](const moe::placement& pl) { check_against_one_process(fx, r, pl, shared_kind::two_ungated, sp, X); });
  }
  SECTION("null experts (AdaMoE, m = 4)") {
    using ada = moe::null_experts<moe::top_k<>>;
    each([&](const moe::placement& pl) {
      check_against_one_process(fx, ada(fx.router_w, fx.null_w, {.k = 4, .renormalize = true}), pl, shared_kind::none, sp, X);
    });
  }
  SECTION("capacity (cf 0.5: drops across the whole batch)") {
    using cap = moe::capacity<moe::top_k<>>;
    each([&](const moe::placement& pl) {
      check_against_one_process(fx, cap(moe::top_k<>(fx.router_w, {.k = 2}), {.capacity_factor = 0.5}), pl,
                                shared_kind::none, sp, X);
    });
  }
  SECTION("similarity-aware (per sequence, each rank's rows one sequence)") {
    using sim = moe::similarity_aware<moe::top_k<>>;
    each([&](const moe::placement& pl) {
      check_against_one_process(fx, sim(moe::top_k<>(fx.router_w, {.k = 2, .renormalize = true})), pl,
                                shared_kind::one_gated, sp, X);
    });
  }
  SECTION("layer skip (Mixture-of-Depths capacity 0.5 per sequence, scaled outputs)") {
    using skip = moe::layer_skip<moe::top_k<>, moe::mod_capacity>;
    each([&](const moe::placement& pl) {
      check_against_one_process(fx, skip(moe::top_k<>(fx.router_w, {.k = 2}), moe::mod_capacity(fx.mod_w, {.capacity_fraction = 0.5})),
                                pl, shared_kind::one_gated, sp, X);
    });
  }
  SECTION("layer skip with repeats (Dr.LLM-style pattern: skip, execute, repeat) and a shared expert") {
    using rep = moe::layer_skip<moe::top_k<>, pattern_depth>;
    each([&](const moe::placement& pl) {
      check_against_one_process(fx, rep(moe::top_k<>(fx.router_w, {.k = 2}), pattern_depth{}), pl, shared_kind::one_gated, sp, X);
    });
  }
}

TEST_CASE("mpi: a rank with no tokens and an empty batch", "[mpi]") {
  const fixture fx;
  const int ranks = world_size(), rank = world_rank();
  // Rank 0 has no tokens; the others have 4 each.
  batch_split sp = split(ranks, rank, 0, 4);
  moe_test::rng xr(5);
  const auto X = xr.matrix(sp.total, fx.d);
  check_against_one_process(fx, moe::top_k<>(fx.router_w, {.k = 3}), moe::placement::contiguous(fx.E, ranks),
                            shared_kind::one_gated, sp, X);
  using cap = moe::capacity<moe::top_k<>>;
  check_against_one_process(fx, cap(moe::top_k<>(fx.router_w, {.k = 2}), {.capacity_factor = 0.75}),
                            moe::placement::contiguous(fx.E, ranks), shared_kind::none, sp, X);
}

TEST_CASE("placement: contiguous, blocks, replicas, balanced, and the errors", "[mpi][placement]") {
  const auto c = moe::placement::contiguous(10, 4);  // 2, 3, 2, 3
  CHECK(c.local_count(0) == 2);
  CHECK(c.local_count(1) == 3);
  CHECK(c.local_experts(3)[0] == 7);
  CHECK(c.replicas(5).size() == 1);
  CHECK(c.replicas(5)[0] == moe::expert_location{2, 0});
  const moe::placement r(4, {{0, 1, 2}, {2, 3}});
  CHECK(r.replicas(2).size() == 2);
  CHECK(r.replica_for(2, 1, 7) == moe::expert_location{1, 0});  // the source's own copy
  CHECK(r.replica_for(2, 5, 7).rank == 1);                        // 7 mod 2 = 1
  CHECK(r.replica_for(2, 5, 6).rank == 0);
  // Balanced: three hot experts of eight over 4 ranks of 3 slots each.
  const std::vector<double> load = {90, 80, 70, 5, 5, 5, 5, 5};
  const auto b = moe::placement::balanced(load, 4, 3);
  CHECK(b.replicas(0).size() >= 2);
  CHECK(b.balancedness(load) > moe::placement::contiguous(8, 4).balancedness(load));
  CHECK(b.balancedness(load) > 0.85);
  CHECK(b.fingerprint() == moe::placement::balanced(load, 4, 3).fingerprint());  // deterministic
  CHECK(b.fingerprint() != c.fingerprint());
  CHECK_THROWS_WITH(moe::placement(4, {{0, 1}, {3}}), Catch::Contains("parameter 'expert 2' must be held by at least one rank"));
  CHECK_THROWS_WITH(moe::placement(4, {{0, 1, 4}, {2, 3}}), Catch::Contains("parameter 'experts_of_rank[0][2]' must be a logical expert in [0, 4)"));
  CHECK_THROWS_WITH(moe::placement(2, {{0, 0}, {1}}), Catch::Contains("parameter 'experts_of_rank[0][1]' must be an expert not already held by rank 0"));
  CHECK_THROWS_WITH(moe::placement::balanced(load, 2, 3), Catch::Contains("parameter 'slots_per_rank'"));
}

TEST_CASE("mpi: a placement for another number of ranks is an error on every rank", "[mpi][error]") {
  const int ranks = world_size();
  CHECK_THROWS_WITH(moe::device::mpi<moe::device::serial>(moe::placement::contiguous(16, ranks + 1)),
                    Catch::Contains("parameter 'placement.num_ranks()' must be equal to the communicator size"));
  CHECK_NOTHROW(moe::device::mpi<moe::device::serial>(moe::placement::contiguous(16, ranks)));
}

TEST_CASE("mpi: counts beyond MPI's int range are refused", "[mpi][error]") {
  const std::vector<moe::index> fine = {1000, INT_MAX - 1000};
  CHECK_NOTHROW(moe::detail::mpi_impl::check_counts("where", "sent", fine));
  const std::vector<moe::index> over = {INT_MAX, 1};
  CHECK_THROWS_WITH(moe::detail::mpi_impl::check_counts("where", "sent", over),
                    Catch::Contains("parameter 'sent rows (up to rank 1)' must be <= INT_MAX"));
  const std::vector<moe::index> huge = {index{1} << 40};
  CHECK_THROWS_WITH(moe::detail::mpi_impl::check_counts("where", "received", huge), Catch::Contains("split the batch"));
}

TEST_CASE("mpi: ranks that disagree, or one rank's bad input, fail on every rank without a hang", "[mpi][error][multi]") {
  const fixture fx;
  const int ranks = world_size(), rank = world_rank();
  REQUIRE(ranks >= 2);
  using dev = moe::device::mpi<moe::device::serial>;
  using L = moe::layer<moe::top_k<>, bank, dev>;
  const auto pl = moe::placement::contiguous(fx.E, ranks);
  // A different placement on the last rank.
  {
    const auto other = rank == ranks - 1 ? moe::placement::blocks([&] {
      std::vector<index> s(static_cast<std::size_t>(ranks), 0);
      s[0] = fx.E;
      return s;
    }())
                                         : pl;
    CHECK_THROWS_WITH(dev(other), Catch::Contains("placement fingerprint on rank " + std::to_string(ranks - 1)));
  }
  // A different d on rank 1: every rank's layer constructor throws.
  {
    moe_test::rng r(3);
    const index d = rank == 1 ? 32 : fx.d;
    const auto wd = moe_test::random_swiglu(r, fx.E, d, fx.f);
    const moe::row_matrix<float> rw = r.matrix(fx.E, d);
    CHECK_THROWS_WITH(L(moe::top_k<>(rw, {.k = 2}), select_experts(wd, pl.local_experts(rank)), dev(pl)),
                      Catch::Contains("hidden (d) on rank 1' must be equal to rank 0's 24"));
  }
  // A router over another number of experts on rank 1.
  {
    moe_test::rng r(4);
    const moe::row_matrix<float> rw = r.matrix(rank == 1 ? fx.E + 1 : fx.E, fx.d);
    auto check = [&] { L(moe::top_k<>(rw, {.k = 2}), select_experts(fx.w, pl.local_experts(rank)), dev(pl)); };
    if (rank == 1) {
      CHECK_THROWS_WITH(check(), Catch::Contains("parameter 'router.num_experts()' must be equal to 16, got 17"));
    } else {
      CHECK_THROWS_WITH(check(), Catch::Contains("rank 1 failed: [moe.error.shape]"));
    }
  }
  // One rank's batch holds a NaN: every rank's forward throws, naming that rank.
  {
    L layer(moe::top_k<>(fx.router_w, {.k = 2}), select_experts(fx.w, pl.local_experts(rank)), dev(pl));
    moe_test::rng r(8);
    moe::row_matrix<float> x = r.matrix(5, fx.d), y(5, fx.d);
    if (rank == ranks - 1) x(2, 3) = std::numeric_limits<float>::quiet_NaN();
    if (rank == ranks - 1) {
      CHECK_THROWS_WITH(layer.forward(x, y), Catch::Contains("parameter 'x' has a non-finite value nan at (2, 3)"));
    } else {
      CHECK_THROWS_WITH(layer.forward(x, y), Catch::Contains("rank " + std::to_string(ranks - 1) + " failed"));
    }
    // A wrong width on rank 0 only.
    moe::row_matrix<float> xw = r.matrix(5, rank == 0 ? fx.d + 1 : fx.d), yw(5, rank == 0 ? fx.d + 1 : fx.d);
    CHECK_THROWS_WITH(layer.forward(xw, yw), Catch::Contains(rank == 0 ? "parameter 'x.cols()' must be equal to 24, got 25"
                                                                       : "rank 0 failed"));
    // The layer still works afterwards, on every rank.
    moe::row_matrix<float> ok = r.matrix(4, fx.d), yo(4, fx.d);
    layer.forward(ok, yo);
    CHECK(yo.allFinite());
  }
}

}  // namespace
