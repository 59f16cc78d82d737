// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/routing/wrappers/similarity_aware.hpp: similarity- and attention-aware routing (§9).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include <moe/routing/wrappers/similarity_aware.hpp>

#include "../../support/naive.hpp"
#include "../../support/naive_policies.hpp"
#include "../../support/policies.hpp"
#include "../../support/random.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;
using moe_test::check_slots;
using moe_test::golden;
using sa = moe::similarity_aware<moe::top_k<moe::softmax_gate>>;

moe::row_matrix<float> common_w() { return moe_test::fmatrix({{1, 0}, {0, 1}, {-1, 0.5}, {0.5, 0.5}}); }
moe::row_matrix<float> common_x() { return moe_test::fmatrix({{1, 0}, {0, 1}, {1, 1}}); }

sa common(bool renormalize, moe::similarity_aware_options o) {
  return sa(moe::top_k<>(common_w(), {.k = 2, .renormalize = renormalize}), o, moe::scaled_dot_similarity(1.0f));
}

void check_row(const moe::row_matrix<float>& S, index i, std::vector<double> want) {
  INFO("row " << i);
  for (std::size_t j = 0; j < want.size(); ++j) CHECK(golden(S(i, static_cast<index>(j)), want[j]));
}

bool same_plans(const moe::routing_plan& a, const moe::routing_plan& b) {
  return a.num_tokens() == b.num_tokens() && a.max_slots() == b.max_slots() &&
         std::memcmp(a.all_experts().data(), b.all_experts().data(), a.all_experts().size_bytes()) == 0 &&
         std::memcmp(a.all_weights().data(), b.all_weights().data(), a.all_weights().size_bytes()) == 0;
}

TEST_CASE("similarity_aware: golden non-causal example of spec §9", "[routing][similarity_aware][golden]") {
  const auto r = common(true, {.causal = false});
  const auto S = r.mixing_matrix(moe::view(common_x()));
  check_row(S, 0, {0.422319, 0.155362, 0.422319});
  check_row(S, 1, {0.155362, 0.422319, 0.422319});
  check_row(S, 2, {0.211942, 0.211942, 0.576117});
  const auto plan = moe_test::route(r, common_x());
  check_slots(plan, 0, {0, 3}, {0.550130, 0.449870});
  check_slots(plan, 1, {1, 3}, {0.539224, 0.460776});  // mixing moves token 1's second expert 2 -> 3
  check_slots(plan, 2, {0, 1}, {0.509546, 0.490454});
  // Without renormalisation the weights are the mixed probabilities q themselves.
  const auto raw = moe_test::route(common(false, {.causal = false}), common_x());
  check_slots(raw, 0, {0, 3}, {0.353348, 0.288951});
  check_slots(raw, 1, {1, 3}, {0.321748, 0.274939});
  check_slots(raw, 2, {0, 1}, {0.309412, 0.297819});
  // The plan records the entropy of q.
  const double q0[4] = {0.353348, 0.264864, 0.092838, 0.288951};
  double h = 0;
  for (double q : q0) h -= q * std::log(q);
  CHECK(plan.entropy(0) == Approx(h).epsilon(1e-5));
}

TEST_CASE("similarity_aware: golden causal example of spec §9", "[routing][similarity_aware][golden]") {
  const auto r = common(true, {.causal = true});
  const auto S = r.mixing_matrix(moe::view(common_x()));
  check_row(S, 0, {1, 0, 0});
  check_row(S, 1, {0.268941, 0.731059, 0});
  check_row(S, 2, {0.211942, 0.211942, 0.576117});
  const auto plan = moe_test::route(r, common_x());
  check_slots(plan, 0, {0, 3}, {0.622459, 0.377541});  // = plain softmax top-2
  check_slots(plan, 1, {1, 3}, {0.569941, 0.430059});
  check_slots(plan, 2, {0, 1}, {0.509546, 0.490454});  // the last token sees everything
  const auto raw = moe_test::route(common(false, {.causal = true}), common_x());
  check_slots(raw, 0, {0, 3}, {0.473991, 0.287490});
  check_slots(raw, 1, {1, 3}, {0.330148, 0.249119});
}

TEST_CASE("similarity_aware: golden logit-space example of spec §9 (errata 6)", "[routing][similarity_aware][golden]") {
  const auto plan = moe_test::route(common(true, {.causal = false, .space = moe::mix_space::logit}), common_x());
  check_slots(plan, 0, {0, 3}, {0.533320, 0.466680});
  check_slots(plan, 1, {1, 3}, {0.533320, 0.466680});
  // Token 2: z~ = [0.788059, 0.788059, -0.394029, 0.788059] is a three-way tie that arises from
  // arithmetic; in float a different summation order could let expert 3 win by one ulp (errata
  // 6), so any two of {0, 1, 3} with weight 0.5 each would be a correct float result.
  for (index s = 0; s < 2; ++s) {
    const int e = plan.expert(2, s);
    CHECK((e == 0 || e == 1 || e == 3));
    CHECK(golden(plan.weight(2, s), 0.5));
  }
  CHECK(plan.expert(2, 0) != plan.expert(2, 1));
  // The library's row: it mixes with the canonical fmadd over j = 0, 1, 2 (the same bits on every
  // ISA), which makes the three mixed logits exactly equal, so the ties go to the lower index.
  const auto S = common(true, {.causal = false, .space = moe::mix_space::logit}).mixing_matrix(common_x());
  const float Z[3][4] = {{1, 0, -1, 0.5f}, {0, 1, 0.5f, 0.5f}, {1, 1, -0.5f, 1}};
  float mixed[4];
  for (int c = 0; c < 4; ++c) {
    float m = 0.0f;
    for (int j = 0; j < 3; ++j) m = moe::kernels::fmadd(S(2, j), Z[j][c], m);
    mixed[c] = m;
  }
  CHECK(mixed[0] == mixed[1]);
  CHECK(mixed[0] == mixed[3]);
  CHECK(plan.expert(2, 0) == 0);
  CHECK(plan.expert(2, 1) == 1);
  CHECK(plan.weight(2, 0) == 0.5f);
  CHECK(plan.weight(2, 1) == 0.5f);
}

TEST_CASE("similarity_aware: one-token sequences route exactly as the base policy", "[routing][similarity_aware]") {
  moe_test::rng rng(902);
  const index E = 16, d = 24, T = 40;
  const auto w = rng.matrix(E, d);
  const auto x = rng.matrix(T, d);
  std::vector<index> starts(T);
  std::iota(starts.begin(), starts.end(), 0);
  const moe::top_k<> base(w, {.k = 3, .renormalize = true});
  const auto want = moe_test::route(base, x);
  for (const auto space : {moe::mix_space::probability, moe::mix_space::logit}) {
    for (const bool causal : {true, false}) {
      const sa r(base, {.causal = causal, .space = space});
      CHECK(same_plans(moe_test::route(r, x, {.sequence_starts = starts}), want));
    }
  }
  // The first token of a causal sequence too.
  const sa causal(base, {.causal = true});
  const auto plan = moe_test::route(causal, x);
  for (index s = 0; s < 3; ++s) {
    CHECK(plan.expert(0, s) == want.expert(0, s));
    CHECK(plan.weight(0, s) == want.weight(0, s));
  }
}

TEST_CASE("similarity_aware equals a naive double reference on random sequences", "[routing][similarity_aware]") {
  moe_test::rng rng(903);
  const index E = 8, d = 16, T = 37;
  const auto w = rng.matrix(E, d, 2.0f);
  const auto x = rng.matrix(T, d);
  for (const bool causal : {true, false}) {
    for (const bool logit : {false, true}) {
      for (const bool own : {false, true}) {
        const sa r(moe::top_k<>(w, {.k = 2, .renormalize = true}),
                   {.causal = causal,
                    .space = logit ? moe::mix_space::logit : moe::mix_space::probability,
                    .combine = own ? moe::combine_weights::own : moe::combine_weights::mixed},
                   moe::scaled_dot_similarity(2.0f));
        const auto plan = moe_test::route(r, x);
        const auto want = moe_test::naive_similarity(w, x, 2, causal, logit, own, 2.0);
        for (index t = 0; t < T; ++t) {
          INFO("causal " << causal << " logit " << logit << " own " << own << " token " << t);
          for (index s = 0; s < 2; ++s) {
            REQUIRE(plan.expert(t, s) == want[t].experts[s]);
            REQUIRE(plan.weight(t, s) == Approx(want[t].weights[s]).margin(2e-5));
          }
        }
      }
    }
  }
}

TEST_CASE("similarity_aware: sequences are independent and results deterministic", "[routing][similarity_aware]") {
  moe_test::rng rng(904);
  const index E = 8, d = 32;
  const auto w = rng.matrix(E, d);
  const auto a = rng.matrix(21, d);
  const auto b = rng.matrix(13, d);
  moe::row_matrix<float> ab(34, d);
  ab.topRows(21) = a;
  ab.bottomRows(13) = b;
  const std::vector<index> starts = {0, 21};
  const sa r(moe::top_k<>(w, {.k = 2, .renormalize = true}), {.causal = false});
  const auto alone_a = moe_test::route(r, a);
  const auto alone_b = moe_test::route(r, b);
  const auto both = moe_test::route(r, ab, {.sequence_starts = starts});
  bool equal = true;
  for (index t = 0; t < 34; ++t) {
    const auto& ref = t < 21 ? alone_a : alone_b;
    const index u = t < 21 ? t : t - 21;
    for (index s = 0; s < 2; ++s) {
      equal &= both.expert(t, s) == ref.expert(u, s);
      equal &= std::memcmp(&both.weights(t)[s], &ref.weights(u)[s], sizeof(float)) == 0;
    }
  }
  CHECK(equal);
  CHECK(same_plans(both, moe_test::route(r, ab, {.sequence_starts = starts})));
  // As one sequence the two halves mix, so the routes change somewhere.
  CHECK(moe::routing_fluctuation(both, moe_test::route(r, ab)) > 0.0);
}

TEST_CASE("similarity_aware: the workspace does not grow with the number of sequences", "[routing][similarity_aware]") {
  moe_test::rng rng(906);
  const index E = 8, d = 512, T = 256;
  const auto w = rng.matrix(E, d);
  const auto x = rng.matrix(T, d);
  std::vector<index> starts;
  for (index t = 0; t < T; t += 2) starts.push_back(t);  // 128 sequences of 2 tokens
  const sa r(moe::top_k<>(w, {.k = 2}), {.causal = false});
  moe::routing_plan plan;
  moe::workspace ws;
  for (int pass = 0; pass < 2; ++pass) {
    ws.reset();
    r.route(moe::view(x), {.sequence_starts = starts}, plan, ws);
  }
  // The pairwise kernel takes d · 2·SIMD-width floats per sequence (64 KiB at AVX-512): 128 of
  // them would be 8 MiB; released after each sequence, the pass needs well under 1 MiB.
  CHECK(ws.capacity() < (std::size_t{1} << 20));
  CHECK(plan.active_slots(0) == 2);
}

TEST_CASE("similarity_aware: attention-aware routing with sharpness", "[routing][similarity_aware][attention]") {
  // Two sequences: [t0, t1] and [t2]; attention rows given directly.
  const auto x = common_x();
  const std::vector<index> starts = {0, 2};
  const std::vector<float> att = {1.0f, 0.0f,  // sequence 0, row 0
                                  0.2f, 0.6f,  // sequence 0, row 1 (rows need not sum to 1)
                                  0.7f};       // sequence 1
  const moe::route_context ctx{.sequence_starts = starts, .attention = att};
  for (const float sigma : {1.0f, 0.5f, 2.0f}) {
    const sa r(moe::top_k<>(common_w(), {.k = 2}), {.source = moe::similarity_source::attention, .sharpness = sigma});
    const auto S = r.mixing_matrix(moe::view(x), ctx, 0);
    const double a = std::pow(0.2, 1 / sigma), b = std::pow(0.6, 1 / sigma);
    CHECK(S(0, 0) == 1.0f);
    CHECK(S(0, 1) == 0.0f);
    CHECK(S(1, 0) == Approx(a / (a + b)).epsilon(1e-6));
    CHECK(S(1, 1) == Approx(b / (a + b)).epsilon(1e-6));
    const auto plan = moe_test::route(r, x, ctx);
    // Token 1: q = S10 π_0 + S11 π_1 with the §2.5 probabilities; raw weights (no renormalisation).
    const double p0[4] = {0.473991, 0.174371, 0.064148, 0.287490}, p1[4] = {0.142537, 0.387456, 0.235004, 0.235004};
    std::vector<float> q(4);
    for (int e = 0; e < 4; ++e) q[e] = static_cast<float>(S(1, 0) * p0[e] + S(1, 1) * p1[e]);
    const auto sel = moe_test::brute_force_top_k(q, 2);
    INFO("sigma " << sigma);
    check_slots(plan, 1, {sel[0], sel[1]}, {q[sel[0]], q[sel[1]]});
    // Tokens 0 and 2 attend only to themselves: plain top-2 of §2.5 (raw probabilities).
    check_slots(plan, 0, {0, 3}, {0.473991, 0.287490});
    check_slots(plan, 2, {0, 1}, {0.310257, 0.310257});
  }
  // An all-zero attention row (padding) routes its token nowhere.
  const std::vector<float> padded = {1.0f, 0.0f, 0.0f, 0.0f, 1.0f};
  const sa r(moe::top_k<>(common_w(), {.k = 2}), {.source = moe::similarity_source::attention});
  const auto plan = moe_test::route(r, x, {.sequence_starts = starts, .attention = padded});
  CHECK(plan.active_slots(0) == 2);
  CHECK(plan.active_slots(1) == 0);
  CHECK(plan.active_slots(2) == 2);
}

TEST_CASE("similarity_aware: probability mixing can raise the routing entropy (spec §9 Additions)",
          "[routing][similarity_aware]") {
  // π_0 = [.5, .5] (z = [0, 0]); π_1 ≈ [1, 0] (z = [30, 0]); token 1 mixes them half and half.
  const moe::row_matrix<float> w = moe::row_matrix<float>::Identity(2, 2);
  const auto x = moe_test::fmatrix({{0, 0}, {30, 0}});
  const std::vector<float> att = {1, 0, 0.5f, 0.5f};
  const moe::similarity_aware<moe::top_k<>> r(moe::top_k<>(w, {.k = 1}), {.source = moe::similarity_source::attention});
  const auto plan = moe_test::route(r, x, {.attention = att});
  const double h = -(0.75 * std::log(0.75) + 0.25 * std::log(0.25));  // 0.562
  CHECK(plan.entropy(1) == Approx(h).epsilon(1e-5));
  const auto plain = moe_test::route(moe::top_k<>(w, {.k = 1}), x);
  CHECK(plain.entropy(1) < 1e-6);
  const auto stats = r.policy_stats(plan);
  CHECK(stats.routing_entropy == Approx((std::log(2.0) + h) / 2).epsilon(1e-5));
  CHECK(std::isnan(stats.fluctuation));
  CHECK(r.policy_stats(plan, plain).fluctuation == 0.0);  // both pick expert 0 for both tokens
}

TEST_CASE("similarity_aware: -inf and NaN rules", "[routing][similarity_aware][inf]") {
  constexpr float inf = std::numeric_limits<float>::infinity();
  // Logits given through a one-column router, W = [[1], [2], [-1]]: x = ±inf gives ±inf logits.
  const moe::row_matrix<float> w = moe_test::fmatrix({{1}, {2}, {-1}});
  const auto x = moe_test::fmatrix({{1}, {-inf}, {inf}});  // logits [1,2,-1], [-inf,-inf,inf], [inf,inf,-inf]
  const std::vector<float> att = {1, 0, 0, 0.5f, 0.5f, 0, 0.3f, 0.3f, 0.4f};
  const sa r(moe::top_k<>(w, {.k = 3, .renormalize = true}), {.source = moe::similarity_source::attention});
  const auto plan = moe_test::route(r, x, {.attention = att});
  // Token 1: only expert 2 survives its own -inf mask, whatever its neighbour gives the others.
  CHECK(plan.active_slots(1) == 1);
  CHECK(plan.expert(1, 0) == 2);
  CHECK(plan.weight(1, 0) == 1.0f);
  CHECK(plan.active_slots(2) == 2);  // experts 0 and 1; expert 2 is masked by its own -inf
  CHECK(plan.active_slots(0) == 3);  // attends only to itself: the base's route
  // Logit space: token 2's mixtures meet +inf and -inf (NaN -> -inf) or its own -inf: nowhere.
  const sa rl(moe::top_k<>(w, {.k = 3, .renormalize = true}),
              {.source = moe::similarity_source::attention, .space = moe::mix_space::logit});
  const auto pl = moe_test::route(rl, x, {.attention = att});
  CHECK(pl.active_slots(2) == 0);
  CHECK(pl.active_slots(1) == 1);
  CHECK(pl.expert(1, 0) == 2);
  CHECK(pl.active_slots(0) == 3);
  // NaN logits follow the base's NaN policy.
  const auto xn = moe_test::fmatrix({{1}, {std::numeric_limits<double>::quiet_NaN()}, {2}});
  moe_test::throws_naming([&] { moe_test::route(r, xn, {.attention = att}); }, "x");
}

TEST_CASE("similarity_aware: bilinear similarity x_i^T W_s x_j", "[routing][similarity_aware]") {
  moe_test::rng rng(905);
  const index d = 6, E = 5, T = 9;
  const auto w = rng.matrix(E, d);
  const auto x = rng.matrix(T, d);
  const moe::row_matrix<float> identity = moe::row_matrix<float>::Identity(d, d);
  const moe::top_k<> base(w, {.k = 2, .renormalize = true});
  // W_s = I is the scaled dot product.
  const moe::similarity_aware<moe::top_k<>, moe::bilinear_similarity> bi(base, {.causal = false},
                                                                         moe::bilinear_similarity(identity, 1.5f));
  const sa dot(base, {.causal = false}, moe::scaled_dot_similarity(1.5f));
  CHECK(same_plans(moe_test::route(bi, x), moe_test::route(dot, x)));
  // A general W_s against a double computation of S.
  const auto ws = rng.matrix(d, d);
  const moe::similarity_aware<moe::top_k<>, moe::bilinear_similarity> gen(base, {.causal = true},
                                                                          moe::bilinear_similarity(ws));
  const auto S = gen.mixing_matrix(moe::view(x));
  for (index i = 0; i < T; ++i) {
    std::vector<double> s(i + 1);
    double total = 0;
    for (index j = 0; j <= i; ++j) {
      s[j] = std::exp(x.row(i).cast<double>().dot(ws.cast<double>() * x.row(j).cast<double>().transpose()) /
                      std::sqrt(double(d)));
      total += s[j];
    }
    for (index j = 0; j <= i; ++j) CHECK(S(i, j) == Approx(s[j] / total).margin(1e-6));
    for (index j = i + 1; j < T; ++j) CHECK(S(i, j) == 0.0f);
  }
}

TEST_CASE("routing_fluctuation: fraction of changed assignments", "[routing][similarity_aware][fluctuation]") {
  moe::routing_plan a, b;
  a.reset(3, 2, 4);
  b.reset(3, 2, 4);
  a.set(0, 0, 0, 0.5f), a.set(0, 1, 1, 0.5f);  // {0, 1}
  b.set(0, 0, 1, 0.9f), b.set(0, 1, 0, 0.1f);  // same set, other order and weights: no change
  a.set(1, 0, 2, 1.0f), a.set(1, 1, 3, 1.0f);  // {2, 3}
  b.set(1, 0, 2, 1.0f), b.set(1, 1, 1, 1.0f);  // {2, 1}: one of two moved
  a.set(2, 0, 3, 1.0f);                        // {3}
  // b routes token 2 nowhere: its one assignment moved.
  CHECK(moe::routing_fluctuation(a, b) == Approx(2.0 / 5.0));
  CHECK(moe::routing_fluctuation(a, a) == 0.0);
  moe::routing_plan c;
  c.reset(2, 2, 4);
  moe_test::throws_naming([&] { (void)moe::routing_fluctuation(a, c); }, "b.num_tokens()");
  moe::routing_plan e1, e2;
  e1.reset(0, 2, 4);
  e2.reset(0, 2, 4);
  CHECK(moe::routing_fluctuation(e1, e2) == 0.0);
}

TEST_CASE("similarity_aware: errors name the parameter", "[routing][similarity_aware][error]") {
  const moe::top_k<> base(common_w(), {.k = 2});
  moe_test::throws_naming([&] { sa(base, {.sharpness = 0.0f}); }, "sharpness");
  moe_test::throws_naming([&] { moe::scaled_dot_similarity(-1.0f); }, "tau");
  moe_test::throws_naming([&] { moe::bilinear_similarity(moe::row_matrix<float>(moe::row_matrix<float>::Zero(2, 3))); }, "w_s.rows()");
  const sa r(base);
  const auto x = common_x();
  const std::vector<index> bad_first = {1};
  moe_test::throws_naming([&] { moe_test::route(r, x, {.sequence_starts = bad_first}); }, "ctx.sequence_starts[0]");
  const std::vector<index> descending = {0, 2, 1};
  moe_test::throws_naming([&] { moe_test::route(r, x, {.sequence_starts = descending}); }, "ctx.sequence_starts[2]");
  moe_test::throws_naming([&] { moe_test::route(r, moe::row_matrix<float>::Zero(2, 3)); }, "x.cols()");
  const sa att(base, {.source = moe::similarity_source::attention});
  moe_test::throws_naming([&] { moe_test::route(att, x); }, "ctx.attention");
  const std::vector<float> short_att(8, 0.1f);
  moe_test::throws_naming([&] { moe_test::route(att, x, {.attention = short_att}); }, "ctx.attention.size()");
  std::vector<float> negative(9, 0.1f);
  negative[4] = -0.5f;
  moe_test::throws_naming([&] { moe_test::route(att, x, {.attention = negative}); }, "ctx.attention");
  negative[4] = std::numeric_limits<float>::quiet_NaN();
  moe_test::throws_naming([&] { moe_test::route(att, x, {.attention = negative}); }, "ctx.attention");
  moe_test::throws_naming([&] { (void)r.mixing_matrix(moe::view(x), {}, 1); }, "sequence");
  CHECK(moe_test::route(r, moe::row_matrix<float>(0, 2)).num_tokens() == 0);
  CHECK(moe_test::route(att, moe::row_matrix<float>(0, 2)).num_tokens() == 0);
}

}  // namespace
