// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/device/cuda/routing_math.hpp and host_emulation.hpp: the logic of the CUDA
// routing and sorting kernels, run on the host over the kernels' grid/block index math, equals
// the CPU routers and routing_plan::build_expert_major bit for bit. Built in every configuration
// (no nvcc, no GPU needed).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include <moe/device/cuda/host_emulation.hpp>
#include <moe/device/cuda/routing_math.hpp>
#include <moe/kernels/math.hpp>
#include <moe/routing/routers/group_limited.hpp>
#include <moe/routing/routers/top_k.hpp>
#include <moe/routing/wrappers/null_experts.hpp>

#include "../support/random.hpp"

namespace {
using moe::index;
namespace cu = moe::kernels::cuda;

constexpr float inf = std::numeric_limits<float>::infinity();
constexpr float nan_v = std::numeric_limits<float>::quiet_NaN();

std::uint32_t bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// A random row of C logits of one of several kinds: continuous, few distinct values (exact ties),
// with -inf entries, all -inf, with +inf entries, large magnitudes (exp underflow), with NaN
// entries (only when `nans`), or all equal.
void random_row(moe_test::rng& rng, float* z, index C, bool nans) {
  const int kind = rng.integer(0, nans ? 8 : 7);
  for (index c = 0; c < C; ++c) {
    float v = rng.uniform(-4.0f, 4.0f);
    switch (kind) {
      case 1: v = static_cast<float>(rng.integer(-2, 2)) * 0.5f; break;          // ties
      case 2: if (rng.integer(0, 3) == 0) v = -inf; break;                        // some -inf
      case 3: v = -inf; break;                                                    // degenerate
      case 4: if (rng.integer(0, 9) == 0) v = inf; else if (rng.integer(0, 5) == 0) v = -inf; break;
      case 5: v = rng.uniform(-120.0f, 120.0f); break;                            // underflow
      case 6: v = static_cast<float>(rng.integer(0, 1)) * 1e-3f; break;          // ties near 0
      case 7: v = 0.25f; break;                                                   // all equal
      case 8: if (rng.integer(0, 4) == 0) v = nan_v; else if (rng.integer(0, 4) == 0) v = -inf; break;
      default: break;
    }
    z[c] = v;
  }
}

moe::row_matrix<float> random_logits(moe_test::rng& rng, index T, index C, bool nans) {
  moe::row_matrix<float> z(T, C);
  for (index t = 0; t < T; ++t) random_row(rng, z.data() + t * C, C, nans);
  return z;
}

// The plan of the emulated kernel equals the router's: slots, weights, entropy and top-1 score,
// bit for bit.
void check_same_plan(const moe::routing_plan& ref, const moe::routing_plan& emu) {
  REQUIRE(emu.num_tokens() == ref.num_tokens());
  REQUIRE(emu.max_slots() == ref.max_slots());
  REQUIRE(emu.num_experts() == ref.num_experts());
  index mismatches = 0;
  for (index t = 0; t < ref.num_tokens(); ++t) {
    bool same = bits(emu.entropy(t)) == bits(ref.entropy(t)) && bits(emu.top_score(t)) == bits(ref.top_score(t));
    for (index s = 0; s < ref.max_slots(); ++s) {
      same = same && emu.expert(t, s) == ref.expert(t, s) && bits(emu.weight(t, s)) == bits(ref.weight(t, s));
    }
    if (!same && mismatches++ < 3) {
      std::string msg = "token " + std::to_string(t) + ": ref/emu";
      for (index s = 0; s < ref.max_slots(); ++s) {
        msg += " (" + std::to_string(ref.expert(t, s)) + " " + std::to_string(ref.weight(t, s)) + " | " +
               std::to_string(emu.expert(t, s)) + " " + std::to_string(emu.weight(t, s)) + ")";
      }
      msg += " H " + std::to_string(ref.entropy(t)) + " | " + std::to_string(emu.entropy(t));
      UNSCOPED_INFO(msg);
    }
  }
  CHECK(mismatches == 0);
}

template <class Router>
void check_router(const Router& r, const moe::row_matrix<float>& z, index experts) {
  moe::workspace ws;
  moe::routing_plan ref, emu;
  r.route_logits(moe::view(z), ref, ws);
  cu::host_emulation::route_logits(cu::policy_of(r), moe::view(z), experts, emu);
  check_same_plan(ref, emu);
}

const std::vector<index> expert_counts = {1, 2, 7, 16, 17, 64, 100, 256, 1000, 1024};

TEST_CASE("cuda routing math: exp, log, sigmoid and silu give the canonical bits", "[device][cuda]") {
  // Every 61st bit pattern (about 7·10^7 floats; every 1021st, 4·10^6, under the sanitizers,
  // which run this loop 35 times slower), NaN excluded; log on x >= 0.
#ifdef MOE_TEST_SANITIZED
  constexpr std::uint64_t stride = 1021;
#else
  constexpr std::uint64_t stride = 61;
#endif
  index bad_exp = 0, bad_log = 0, bad_sig = 0, bad_silu = 0;
  for (std::uint64_t u = 0; u <= 0xffffffffull; u += stride) {
    float x;
    const auto b = static_cast<std::uint32_t>(u);
    std::memcpy(&x, &b, sizeof x);
    if (std::isnan(x)) continue;
    bad_exp += bits(cu::exp(x)) != bits(moe::kernels::exp(x));
    bad_sig += bits(cu::sigmoid(x)) != bits(moe::kernels::sigmoid(x));
    bad_silu += bits(cu::silu(x)) != bits(moe::kernels::silu(x));
    if (x >= 0.0f) bad_log += bits(cu::log(x)) != bits(moe::kernels::log(x));
  }
  for (const float x : {0.0f, -0.0f, inf, -inf, 88.72283935546875f, -87.3365f, 1e-45f, 1.0f, -1.0f}) {
    bad_exp += bits(cu::exp(x)) != bits(moe::kernels::exp(x));
    bad_sig += bits(cu::sigmoid(x)) != bits(moe::kernels::sigmoid(x));
    if (!(x < 0.0f)) bad_log += bits(cu::log(x)) != bits(moe::kernels::log(x));
  }
  CHECK(bad_exp == 0);
  CHECK(bad_log == 0);
  CHECK(bad_sig == 0);
  CHECK(bad_silu == 0);
  // The canonical sum and top-k.
  moe_test::rng rng(3);
  for (const index n : {0, 1, 15, 16, 17, 32, 100, 1024}) {
    std::vector<float> x(static_cast<std::size_t>(std::max<index>(n, 1)));
    for (auto& v : x) v = rng.uniform(-3.0f, 3.0f);
    CHECK(bits(cu::canonical_sum(x.data(), static_cast<int>(n))) == bits(moe::kernels::sum(x.data(), n)));
    for (auto& v : x) v = static_cast<float>(rng.integer(-2, 2));
    for (const index k : {1, 4, 32}) {
      std::vector<std::int32_t> a(static_cast<std::size_t>(k)), b(static_cast<std::size_t>(k));
      const index na = cu::serial_top_k(x.data(), static_cast<int>(n), static_cast<int>(k), a.data());
      const index nb = moe::kernels::top_k(x.data(), n, k, b.data());
      REQUIRE(na == nb);
      for (index i = 0; i < na; ++i) CHECK(a[static_cast<std::size_t>(i)] == b[static_cast<std::size_t>(i)]);
    }
  }
}

TEST_CASE("cuda routing kernel logic equals moe::top_k with softmax bit for bit", "[device][cuda]") {
  moe_test::rng rng(101);
  for (const index E : expert_counts) {
    for (const index k : {index{1}, index{2}, index{8}, index{32}}) {
      if (k > E) continue;
      const index T = E >= 256 ? 60 : 200;
      const auto w = rng.matrix(E, 4);
      const auto z = random_logits(rng, T, E, true);
      for (const bool renorm : {false, true}) {
        const float temperature = renorm ? 0.7f : 1.0f;
        const moe::top_k<moe::softmax_gate> r(w, {.k = static_cast<int>(k), .renormalize = renorm,
                                                  .route_scale = renorm ? 2.5f : 1.0f, .temperature = temperature,
                                                  .nan = moe::nan_policy::to_neg_inf});
        INFO("E " << E << " k " << k << " renormalize " << renorm);
        check_router(r, z, E);
      }
    }
  }
}

TEST_CASE("cuda routing kernel logic equals moe::top_k with sigmoid and selection bias bit for bit", "[device][cuda]") {
  moe_test::rng rng(202);
  for (const index E : expert_counts) {
    for (const index k : {index{1}, index{6}, index{32}}) {
      if (k > E) continue;
      const index T = E >= 256 ? 60 : 200;
      const auto w = rng.matrix(E, 4);
      const auto z = random_logits(rng, T, E, true);
      std::vector<float> bias(static_cast<std::size_t>(E));
      // Biases with exact ties and of both signs.
      for (auto& b : bias) b = static_cast<float>(rng.integer(-2, 2)) * 0.125f;
      for (const bool biased : {false, true}) {
        const moe::top_k<moe::sigmoid_gate> r(w, {.k = static_cast<int>(k), .renormalize = biased, .route_scale = 2.5f,
                                                  .selection_bias = biased ? bias : std::vector<float>{},
                                                  .nan = moe::nan_policy::to_neg_inf});
        INFO("E " << E << " k " << k << " biased " << biased);
        check_router(r, z, E);
      }
      // A bias of zeros is a bias: selection on gate(z) + 0 (not on the logits).
      const moe::top_k<moe::softmax_gate> rz(w, {.k = static_cast<int>(k), .selection_bias = std::vector<float>(bias.size()),
                                                 .nan = moe::nan_policy::to_neg_inf});
      check_router(rz, z, E);
    }
  }
}

TEST_CASE("cuda routing kernel logic equals moe::group_limited bit for bit", "[device][cuda]") {
  moe_test::rng rng(303);
  struct shape { index E; int groups; int topk_groups; int k; };
  for (const shape sh : {shape{8, 4, 2, 2}, shape{16, 8, 3, 4}, shape{64, 8, 4, 8}, shape{256, 8, 4, 8},
                         shape{256, 16, 4, 32}, shape{1024, 32, 8, 32}, shape{12, 12, 5, 3}, shape{7, 1, 1, 7}}) {
    const index T = sh.E >= 256 ? 60 : 200;
    const auto w = rng.matrix(sh.E, 4);
    const auto z = random_logits(rng, T, sh.E, true);
    std::vector<float> bias(static_cast<std::size_t>(sh.E));
    for (auto& b : bias) b = static_cast<float>(rng.integer(-3, 3)) * 0.25f;
    for (const bool biased : {false, true}) {
      for (const auto score : {moe::group_score::top2_sum, moe::group_score::max}) {
        const moe::group_limited_options o{.k = sh.k, .n_groups = sh.groups, .topk_groups = sh.topk_groups,
                                           .score = score, .renormalize = !biased || score == moe::group_score::top2_sum,
                                           .route_scale = 2.5f, .temperature = biased ? 1.0f : 1.3f,
                                           .selection_bias = biased ? bias : std::vector<float>{},
                                           .nan = moe::nan_policy::to_neg_inf};
        INFO("E " << sh.E << " groups " << sh.groups << " biased " << biased);
        check_router(moe::group_limited<moe::sigmoid_gate>(w, o), z, sh.E);
        check_router(moe::group_limited<moe::softmax_gate>(w, o), z, sh.E);
      }
    }
  }
}

TEST_CASE("cuda routing kernel logic equals moe::null_experts over top_k bit for bit", "[device][cuda]") {
  moe_test::rng rng(404);
  for (const index E : {index{4}, index{16}, index{64}, index{1000}}) {
    for (const index m : {index{1}, index{3}, index{24}}) {
      const index k = std::min<index>(8, E);
      const index T = E >= 256 ? 60 : 200;
      const auto wt = rng.matrix(E, 4);
      const auto wn = rng.matrix(m, 4);
      const auto z = random_logits(rng, T, E + m, true);
      for (const bool renorm : {false, true}) {
        const moe::null_experts<moe::top_k<moe::softmax_gate>> r(
            wt, wn, {.k = static_cast<int>(k), .renormalize = renorm, .nan = moe::nan_policy::to_neg_inf});
        INFO("E " << E << " m " << m << " renormalize " << renorm);
        check_router(r, z, E);
        std::vector<float> bias(static_cast<std::size_t>(E + m), 0.5f);
        const moe::null_experts<moe::top_k<moe::sigmoid_gate>> rs(
            moe::top_k<moe::sigmoid_gate>(moe::row_matrix<float>(rng.matrix(E + m, 4)),
                                          {.k = static_cast<int>(k), .renormalize = renorm, .selection_bias = bias,
                                           .nan = moe::nan_policy::to_neg_inf}),
            m);
        check_router(rs, z, E);
      }
    }
  }
}

TEST_CASE("cuda routing kernel logic reports the NaN row the router rejects", "[device][cuda]") {
  moe_test::rng rng(505);
  const index E = 64, T = 50;
  const auto w = rng.matrix(E, 4);
  auto z = random_logits(rng, T, E, false);
  z(31, 40) = nan_v;
  z(31, 17) = nan_v;
  z(44, 2) = nan_v;
  const moe::top_k<moe::softmax_gate> r(w, {.k = 4});
  moe::workspace ws;
  moe::routing_plan plan;
  CHECK_THROWS_WITH(r.route_logits(moe::view(z), plan, ws), Catch::Contains("(token 31, expert 17)"));
  CHECK_THROWS_WITH(cu::host_emulation::route_logits(cu::policy_of(r), moe::view(z), E, plan),
                    Catch::Contains("(token 31, expert 17)"));
  // The kernel's per-row report: the first NaN column of each NaN row, -1 elsewhere.
  std::vector<float> copy(z.data(), z.data() + T * E), wts(T * 4), h(T), top(T);
  std::vector<std::int32_t> ex(T * 4), nan(T);
  cu::host_emulation::route(cu::policy_of(r), copy.data(), T, {ex.data(), wts.data(), h.data(), top.data(), nan.data()});
  for (index t = 0; t < T; ++t) CHECK(nan[t] == (t == 31 ? 17 : t == 44 ? 2 : -1));
  CHECK(ex[31 * 4] == moe::no_expert);
}

TEST_CASE("cuda counting sort equals routing_plan::build_expert_major", "[device][cuda]") {
  moe_test::rng rng(606);
  for (const index E : {1, 3, 64, 1024}) {
    for (const index K : {1, 2, 8, 32}) {
      const index T = 300;
      moe::routing_plan plan;
      plan.reset(T, K, E);
      for (index t = 0; t < T; ++t) {
        for (index s = 0; s < K; ++s) {
          const int kind = rng.integer(0, 9);
          const std::int32_t e = kind == 0 ? moe::no_expert : rng.integer(0, static_cast<int>(E) - 1);
          const float wgt = kind == 1 ? 0.0f : kind == 2 ? -0.0f : rng.uniform(0.0f, 1.0f);
          plan.set(t, s, e, wgt);
        }
      }
      plan.build_expert_major();
      for (const std::int64_t tile : {1, 7, 256, 100000}) {
        std::vector<std::int64_t> offsets;
        std::vector<cu::sort_entry> entries;
        cu::host_emulation::expert_major(plan.all_experts().data(), plan.all_weights().data(), T, static_cast<int>(K),
                                         static_cast<int>(E), tile, offsets, entries);
        REQUIRE(offsets.size() == plan.offsets().size());
        for (std::size_t e = 0; e < offsets.size(); ++e) CHECK(offsets[e] == plan.offsets()[e]);
        REQUIRE(entries.size() == plan.entries().size());
        index diff = 0;
        for (std::size_t i = 0; i < entries.size(); ++i) {
          const auto& a = entries[i];
          const auto& b = plan.entries()[i];
          diff += a.token != b.token || a.slot != b.slot || bits(a.weight) != bits(b.weight);
        }
        CHECK(diff == 0);
      }
    }
  }
  // An expert id out of range is refused, naming the first such slot, as the plan does.
  std::vector<std::int32_t> ex = {0, 1, 5, 1, 9, 0};
  std::vector<float> w(6, 1.0f);
  std::vector<std::int64_t> off;
  std::vector<cu::sort_entry> ent;
  CHECK_THROWS_WITH(cu::host_emulation::expert_major(ex.data(), w.data(), 3, 2, 4, 2, off, ent),
                    Catch::Contains("expert(1, 0)") && Catch::Contains("got 5"));
}

TEST_CASE("cuda routing kernel parameters: what the fused kernel takes", "[device][cuda]") {
  moe_test::rng rng(707);
  const auto w = rng.matrix(64, 4);
  const moe::top_k<moe::softmax_gate> r(w, {.k = 8});
  const auto p = cu::policy_of(r);
  CHECK(p.columns == 64);
  CHECK(p.k == 8);
  CHECK(p.select_on_logits);
  CHECK(p.bias == nullptr);
  CHECK(cu::can_route(p));
  auto big = p;
  big.k = 33;
  CHECK_FALSE(cu::can_route(big));
  // Scratch: 16-byte aligned pieces, p and key hold C floats each.
  CHECK(cu::row_scratch_bytes(64, 0) % 16 == 0);
  CHECK(cu::row_scratch_bytes(1024, 8) >= 2 * 1024 * sizeof(float) + sizeof(cu::row_state));
  const auto rl = cu::routing_row_of(3, 37);
  CHECK(rl.row == 3 * cu::routing_rows_per_block + 2);
  CHECK(rl.lane == 5);
}

}  // namespace
