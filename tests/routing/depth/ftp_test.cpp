// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/routing/depth/ftp.hpp: docs/routing-spec.md §13.4 ([OURS] definition), errata 1 and 9.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include <moe/moe.hpp>

#include "../../support/compare.hpp"
#include "../../support/layers.hpp"
#include "../../support/policies.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;
using moe_test::golden;

namespace {
std::vector<int> static_mask(index L, double s) {
  std::vector<int> m(static_cast<std::size_t>(L));
  moe::ftp_static_mask(L, s, std::span<int>(m));
  return m;
}

// A small router: h0 = ReLU(phi1), h1 = ReLU(phi2 - phi3 + 0.1), u = 0.3 + h0 - 2 h1 + 4 (phi4 - 0.5) h2,
// h2 = ReLU(phi4).
std::shared_ptr<const moe::ftp_router> small_router() {
  moe::row_matrix<float> w1(3, 4);
  w1 << 1, 0, 0, 0, 0, 1, -1, 0, 0, 0, 0, 1;
  return std::make_shared<moe::ftp_router>(w1, std::vector<float>{0, 0.1f, 0}, std::vector<float>{1, -2, -3}, 0.3f);
}
double small_router_ref(const double* phi) {
  const double h0 = std::max(phi[0], 0.0), h1 = std::max(phi[1] - phi[2] + 0.1, 0.0), h2 = std::max(phi[3], 0.0);
  return 1.0 / (1.0 + std::exp(-(0.3 + h0 - 2 * h1 - 3 * h2)));
}

// Causal, row-stochastic attention of L tokens from random scores.
std::vector<float> random_attention(moe_test::rng& rng, index L) {
  std::vector<float> a(static_cast<std::size_t>(L * L), 0.0f);
  for (index q = 0; q < L; ++q) {
    float total = 0;
    for (index t = 0; t <= q; ++t) total += a[q * L + t] = std::exp(2.0f * rng.uniform());
    for (index t = 0; t <= q; ++t) a[q * L + t] /= total;
  }
  return a;
}

std::vector<int> decide(const moe::ftp& f, index T, const moe::route_context& ctx) {
  moe::routing_plan plan;
  plan.reset(T, 1, 1);
  moe::workspace ws;
  ws.reset();
  const moe::row_matrix<float> x(T, 1);
  f.decide(moe::view(x), ctx, plan, ws);
  std::vector<int> out;
  for (index t = 0; t < T; ++t) {
    out.push_back(plan.passes(t));
    CHECK(plan.output_scale(t) == 1.0f);
  }
  return out;
}
}  // namespace

TEST_CASE("ftp: golden §13.4 (keep iff pi >= 0.5, static router)", "[ftp][golden]") {
  moe::routing_plan plan;
  plan.reset(5, 1, 1);
  moe::ftp::decide_probabilities(std::vector<float>{0.9f, 0.2f, 0.6f, 0.4f, 0.8f}, plan);
  std::vector<int> kept;
  for (index t = 0; t < 5; ++t) kept.push_back(plan.passes(t));
  CHECK(kept == std::vector<int>{1, 0, 1, 0, 1});  // keep {0, 2, 4}
  // Errata 9: FTP keeps pi = 0.5 exactly.
  plan.reset(2, 1, 1);
  moe::ftp::decide_probabilities(std::vector<float>{0.5f, std::nextafter(0.5f, 0.0f)}, plan);
  CHECK(plan.passes(0) == 1);
  CHECK(plan.passes(1) == 0);
  // Static router, s = 0.4: keep ceil(0.6 * 5) = 3 of [0, 4, 3, 2, 1].
  CHECK(static_mask(5, 0.4) == std::vector<int>{1, 0, 0, 1, 1});
}

TEST_CASE("ftp: static router edge cases and the capacity guard", "[ftp]") {
  CHECK(static_mask(5, 0.0) == std::vector<int>{1, 1, 1, 1, 1});
  CHECK(static_mask(5, 1.0) == std::vector<int>{0, 0, 0, 0, 0});
  CHECK(static_mask(5, 0.8) == std::vector<int>{1, 0, 0, 0, 0});
  CHECK(static_mask(5, 0.6) == std::vector<int>{1, 0, 0, 0, 1});
  CHECK(static_mask(1, 0.5) == std::vector<int>{1});
  CHECK(static_mask(0, 0.5).empty());
  // (1 - 0.7) * 10 = 3.0000000000000004 keeps 3, (1 - 0.45) * 100 = 55.00000000000001 keeps 55.
  CHECK(static_mask(10, 0.7) == std::vector<int>{1, 0, 0, 0, 0, 0, 0, 0, 1, 1});
  const auto m = static_mask(100, 0.45);
  int n = 0;
  for (int v : m) n += v;
  CHECK(n == 55);
  CHECK(m[0] == 1);
  CHECK(m[45] == 0);
  CHECK(m[46] == 1);
}

TEST_CASE("ftp: the static mode keeps its capacity guard (sparsity is a double)", "[ftp]") {
  // 0.7 as a float is 0.699999988: (1 - s) * 10 = 3.0000001 would keep 4 tokens; as a double the
  // guard of errata 1 gives ceil(3.0000000000000004) = 3.
  const moe::ftp f(nullptr, {.sparsity = 0.7, .mode = moe::ftp_mode::static_priority});
  CHECK(decide(f, 10, {}) == std::vector<int>{1, 0, 0, 0, 0, 0, 0, 0, 1, 1});
  const moe::ftp g(nullptr, {.sparsity = 0.45, .mode = moe::ftp_mode::static_priority});
  const auto kept = decide(g, 100, {});
  CHECK(std::count(kept.begin(), kept.end(), 1) == 55);
}

TEST_CASE("ftp: features from positions and a caller-supplied attention matrix", "[ftp]") {
  // Head-averaged causal attention of 3 tokens.
  const std::vector<float> a = {1, 0, 0, 0.4f, 0.6f, 0, 0.2f, 0.3f, 0.5f};
  std::vector<float> phi(12);
  moe::ftp_features(a, 3, 0.25f, phi);
  // a_t = mean over q >= t of A[q, t]: [0.533333, 0.45, 0.5]; ranks [0, 2, 1].
  const double want[3][4] = {{0, 0.533333, 0, 0.25}, {0.5, 0.45, 1, 0.25}, {1, 0.5, 0.5, 0.25}};
  for (int t = 0; t < 3; ++t) {
    for (int i = 0; i < 4; ++i) CHECK(golden(phi[t * 4 + i], want[t][i]));
  }
  // Ties in a_t: the lower position ranks first.
  const std::vector<float> u = {0.5f, 0.5f, 0.5f, 0.5f};
  std::vector<float> phi2(8);
  moe::ftp_features(u, 2, 0.0f, phi2);
  CHECK(phi2[1] == 0.5f);
  CHECK(phi2[5] == 0.5f);
  CHECK(phi2[2] == 0.0f);
  CHECK(phi2[6] == 1.0f);
  // L = 1: phi1 = phi3 = 0.
  std::vector<float> phi1(4);
  moe::ftp_features(std::vector<float>{1.0f}, 1, 0.3f, phi1);
  CHECK(phi1 == std::vector<float>{0, 1, 0, 0.3f});
}

TEST_CASE("ftp: the router 4 -> h -> 1 and the decision per sequence", "[ftp]") {
  const auto router = small_router();
  const float phi[4] = {0.5f, 0.2f, 0.9f, 0.4f};
  const double phid[4] = {0.5, 0.2, 0.9, 0.4};
  CHECK(golden(router->keep_probability(phi), small_router_ref(phid)));
  moe_test::rng rng(61);
  const std::vector<index> lengths = {7, 1, 12};
  std::vector<float> attention;
  std::vector<index> starts;
  index T = 0;
  for (index L : lengths) {
    starts.push_back(T);
    T += L;
    const auto a = random_attention(rng, L);
    attention.insert(attention.end(), a.begin(), a.end());
  }
  const moe::route_context ctx{.sequence_starts = starts, .attention = attention};
  for (const float s : {0.0f, 0.3f}) {
    const moe::ftp f(router, {.sparsity = s});
    std::vector<float> pi(static_cast<std::size_t>(T));
    moe::workspace ws;
    ws.reset();
    f.keep_probabilities(T, ctx, pi, ws);
    std::vector<float> u(static_cast<std::size_t>(T));
    f.keep_logits(T, ctx, u, ws);
    const auto got = decide(f, T, ctx);
    index offset = 0;
    for (std::size_t q = 0; q < lengths.size(); ++q) {
      const index L = lengths[q];
      std::vector<float> phi_seq(static_cast<std::size_t>(4 * L));
      moe::ftp_features(std::span<const float>(attention).subspan(static_cast<std::size_t>(offset), static_cast<std::size_t>(L * L)), L, s,
                        phi_seq);
      for (index t = 0; t < L; ++t) {
        const double pd[4] = {phi_seq[4 * t], phi_seq[4 * t + 1], phi_seq[4 * t + 2], phi_seq[4 * t + 3]};
        const double ref = small_router_ref(pd);
        const index g = starts[q] + t;
        CHECK(golden(pi[g], ref));
        CHECK(got[g] == (u[g] >= 0.0f ? 1 : 0));
        CHECK(pi[g] == moe::kernels::sigmoid(u[g]));
      }
      offset += L * L;
    }
  }
}

TEST_CASE("ftp: keep iff u >= 0 on the router's pre-sigmoid value (errata 9)", "[ftp]") {
  // w2 = 0: u = b2 for every token. sigmoid(-1e-9) rounds to 0.5f, so pi >= 0.5 would keep it.
  const moe::row_matrix<float> w1 = moe::row_matrix<float>::Zero(1, 4);
  const std::vector<float> attention = {1, 0, 0.5f, 0.5f};
  const moe::route_context ctx{.attention = attention};
  const float phi[4] = {0, 0, 0, 0};
  for (const float b2 : {-1e-9f, 0.0f, 1e-9f, -0.5f}) {
    INFO("b2 = " << b2);
    const auto router = std::make_shared<moe::ftp_router>(w1, std::vector<float>{0}, std::vector<float>{0}, b2);
    CHECK(router->keep_logit(phi) == b2);
    const int want = b2 >= 0.0f ? 1 : 0;
    CHECK(decide(moe::ftp(router), 2, ctx) == std::vector<int>{want, want});
    std::vector<float> u(2);
    moe::workspace ws;
    ws.reset();
    moe::ftp(router).keep_logits(2, ctx, u, ws);
    CHECK(u == std::vector<float>{b2, b2});
  }
}

TEST_CASE("ftp: pruning in a layer, one router shared by two blocks, the static mode", "[ftp][layer]") {
  moe_test::rng rng(62);
  const index d = 12, E = 4, f = 8, T = 10;
  const auto w = moe_test::random_swiglu(rng, E, d, f);
  const auto tw = rng.matrix(E, d);
  const auto router = small_router();
  using skip_router = moe::layer_skip<moe::top_k<>, moe::ftp>;
  using layer_t = moe::layer<skip_router, moe::swiglu_experts<float>, moe::device::cpu>;
  layer_t a(skip_router(moe::top_k<>(tw, {.k = 2}), moe::ftp(router, {.sparsity = 0.1f})), moe_test::make_bank(w), moe::device::cpu{2});
  layer_t b(skip_router(moe::top_k<>(tw, {.k = 2}), moe::ftp(router, {.sparsity = 0.5f})), moe_test::make_bank(w), moe::device::cpu{2});
  layer_t s(skip_router(moe::top_k<>(tw, {.k = 2}), moe::ftp(nullptr, {.sparsity = 0.4f, .mode = moe::ftp_mode::static_priority})),
            moe_test::make_bank(w), moe::device::cpu{2});
  CHECK(router.use_count() == 3);
  const auto x = rng.matrix(T, d);
  const auto attention = random_attention(rng, T);
  moe::row_matrix<float> ya(T, d), yb(T, d), ys(T, d), yp(T, d);
  a.forward(x, ya, {.attention = attention});
  b.forward(x, yb, {.attention = attention});
  s.forward(x, ys);  // the static router needs no attention
  moe::layer<moe::top_k<>, moe::swiglu_experts<float>, moe::device::serial> plain(moe::top_k<>(tw, {.k = 2}), moe_test::make_bank(w));
  plain.forward(x, yp);
  index kept_a = 0, kept_b = 0;
  for (index t = 0; t < T; ++t) {
    for (auto* l : {&a, &b, &s}) {
      const auto& y = l == &a ? ya : l == &b ? yb : ys;
      if (l->plan().passes(t) == 0) {
        CHECK(y.row(t).isZero(0.0f));
      } else {
        CHECK(moe_test::bitwise_equal_rows(y.middleRows(t, 1), yp, t));
      }
    }
    kept_a += a.plan().passes(t);
    kept_b += b.plan().passes(t);
  }
  // phi4 = s_l enters the router: h2 = ReLU(phi4) pushes u down, so the sparser block keeps fewer.
  CHECK(kept_b < kept_a);
  CHECK(a.policy_stats().kept_fraction == Approx(static_cast<double>(kept_a) / T));
  CHECK(s.policy_stats().kept_fraction == Approx(0.6));  // ceil(0.6 * 10) = 6
  CHECK(s.plan().passes(0) == 1);
  CHECK(s.plan().passes(9) == 1);
  CHECK(s.plan().passes(4) == 0);
}

TEST_CASE("ftp: errors name the parameter", "[ftp][error]") {
  const auto router = small_router();
  CHECK_THROWS_WITH(moe::ftp(nullptr), Catch::Contains("parameter 'router'"));
  CHECK_THROWS_WITH(moe::ftp(router, {.sparsity = 1.5f}), Catch::Contains("parameter 'sparsity'"));
  CHECK_THROWS_WITH(moe::ftp(router, {.sparsity = NAN}), Catch::Contains("parameter 'sparsity'"));
  CHECK_THROWS_WITH(static_mask(3, -0.1), Catch::Contains("parameter 'sparsity'"));
  const moe::row_matrix<float> w3(2, 3), w4 = moe::row_matrix<float>::Zero(2, 4);
  CHECK_THROWS_WITH(moe::ftp_router(w3, std::vector<float>{0, 0}, std::vector<float>{0, 0}, 0.0f), Catch::Contains("parameter 'w1.cols()'"));
  CHECK_THROWS_WITH(moe::ftp_router(w4, std::vector<float>{0}, std::vector<float>{0, 0}, 0.0f), Catch::Contains("parameter 'b1.size()'"));
  CHECK_THROWS_WITH(moe::ftp_router(w4, std::vector<float>{0, 0}, std::vector<float>{0}, 0.0f), Catch::Contains("parameter 'w2.size()'"));
  CHECK_THROWS_WITH(moe::ftp_router(w4, std::vector<float>{0, NAN}, std::vector<float>{0, 0}, 0.0f), Catch::Contains("parameter 'b1[1]'"));
  CHECK_THROWS_WITH(moe::ftp_router(w4, std::vector<float>{0, 0}, std::vector<float>{0, 0}, INFINITY), Catch::Contains("parameter 'b2'"));
  const moe::ftp f(router);
  CHECK_THROWS_WITH(decide(f, 3, {}), Catch::Contains("parameter 'ctx.attention.size()' must be equal to 9, got 0"));
  std::vector<float> a(9, 0.1f);
  a[3] = NAN;
  CHECK_THROWS_WITH(decide(f, 3, {.attention = a}), Catch::Contains("parameter 'attention[1, 0]'"));
  std::vector<float> phi(7);
  CHECK_THROWS_WITH(moe::ftp_features(std::vector<float>(4, 0.5f), 2, 0.0f, phi), Catch::Contains("parameter 'phi.size()'"));
}

}  // namespace
