// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/routing/depth/dr_llm.hpp: docs/routing-spec.md §13.1 (windows, bottleneck MLP with the
// tanh GELU, logit averaging, argmax ties, rho, per-sequence decisions) and Dr.LLM in a layer stack.
#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <limits>
#include <vector>

#include <moe/moe.hpp>

#include "../../support/layers.hpp"
#include "../../support/policies.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;
using moe_test::golden;
using moe::depth_decision;

namespace {
struct toy {
  moe::row_matrix<float> w1, w2;
  std::vector<float> b1, b2;
};

// The §13.1 golden router: d = h = 2, W1 = I, b1 = 0, W2 = [[1,-1],[0.5,0.5],[-1,1]], b2 = [0, 0.2, -0.5].
toy golden_router() {
  toy r;
  r.w1 = moe::row_matrix<float>::Identity(2, 2);
  r.b1 = {0, 0};
  r.w2.resize(3, 2);
  r.w2 << 1, -1, 0.5f, 0.5f, -1, 1;
  r.b2 = {0, 0.2f, -0.5f};
  return r;
}
moe::row_matrix<float> golden_prompt() {
  moe::row_matrix<float> h(5, 2);
  h << 1, 2, 3, 0, 0, 1, 2, 2, 10, 10;
  return h;
}

moe::dr_llm make(const toy& r, moe::dr_llm_options o = {}) { return moe::dr_llm(r.w1, r.b1, r.w2, r.b2, o); }

std::array<float, 3> logits(const moe::dr_llm& r, const moe::row_matrix<float>& prompt) {
  moe::workspace ws;
  ws.reset();
  return r.sequence_logits(moe::view(prompt), ws);
}

// Plain double reference of §13.1 steps 1-3.
std::array<double, 3> naive_logits(const toy& r, const moe::row_matrix<float>& h, index W) {
  const index tp = h.rows(), d = h.cols(), hid = r.w1.rows();
  const index nw = std::min(W, tp), w = tp / nw;
  std::array<double, 3> z{};
  for (index k = 0; k < nw; ++k) {
    std::vector<double> m(static_cast<std::size_t>(d), 0.0);
    for (index t = k * w; t < (k + 1) * w; ++t) {
      for (index i = 0; i < d; ++i) m[i] += h(t, i) / static_cast<double>(w);
    }
    std::vector<double> a(static_cast<std::size_t>(hid));
    for (index j = 0; j < hid; ++j) {
      double v = r.b1[j];
      for (index i = 0; i < d; ++i) v += r.w1(j, i) * m[i];
      a[j] = 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
    }
    for (index c = 0; c < 3; ++c) {
      double v = r.b2[c];
      for (index j = 0; j < hid; ++j) v += r.w2(c, j) * a[j];
      z[c] += v / static_cast<double>(nw);
    }
  }
  return z;
}

toy random_router(moe_test::rng& rng, index d, index h) {
  toy r;
  r.w1 = rng.matrix(h, d, 1.0f / std::sqrt(static_cast<float>(d)));
  r.w2 = rng.matrix(3, h, 1.0f / std::sqrt(static_cast<float>(h)));
  for (index j = 0; j < h; ++j) r.b1.push_back(rng.uniform(-0.1f, 0.1f));
  for (index c = 0; c < 3; ++c) r.b2.push_back(rng.uniform(-0.5f, 0.5f));
  return r;
}

std::vector<int> passes(const moe::dr_llm& r, const moe::row_matrix<float>& x, const moe::route_context& ctx = {}) {
  moe::routing_plan plan;
  plan.reset(x.rows(), 1, 1);
  moe::workspace ws;
  ws.reset();
  r.decide(moe::view(x), ctx, plan, ws);
  std::vector<int> out;
  for (index t = 0; t < x.rows(); ++t) out.push_back(plan.passes(t));
  return out;
}
}  // namespace

TEST_CASE("dr_llm: golden §13.1 (W = 2, token 4 dropped, GELU tanh approximation)", "[dr_llm][golden]") {
  const auto r = make(golden_router(), {.windows = 2});
  const auto h = golden_prompt();
  const auto z = logits(r, h);
  CHECK(golden(z[0], 0.277513));
  CHECK(golden(z[1], 1.459138));
  CHECK(golden(z[2], -0.777513));
  CHECK(r.decision(z) == depth_decision::execute);
  float p[3];
  moe::kernels::softmax(z.data(), 3, p);
  CHECK(golden(p[0], 0.217021));
  CHECK(golden(p[1], 0.707416));
  CHECK(golden(p[2], 0.075563));
  // The per-window logits of the golden, through a one-window prompt each.
  moe::row_matrix<float> w1 = h.topRows(2), w2 = h.middleRows(2, 2);
  const auto z1 = logits(make(golden_router(), {.windows = 1}), w1);
  const auto z2 = logits(make(golden_router(), {.windows = 1}), w2);
  CHECK(golden(z1[0], 1.113406));
  CHECK(golden(z1[1], 1.597895));
  CHECK(golden(z1[2], -1.613406));
  CHECK(golden(z2[0], -0.558380));
  CHECK(golden(z2[1], 1.320382));
  CHECK(golden(z2[2], 0.058380));
  // Token 4 is dropped: changing it changes nothing.
  auto h2 = h;
  h2.row(4) << -1000, 1000;
  CHECK(logits(r, h2) == z);
  // Every token of the sequence executes.
  CHECK(passes(r, h) == std::vector<int>{1, 1, 1, 1, 1});
}

TEST_CASE("dr_llm: T_p < W uses one token per window and drops nothing", "[dr_llm]") {
  const auto tr = golden_router();
  const auto h = golden_prompt();
  const auto z = logits(make(tr, {.windows = 8}), h);  // W' = 5
  const auto want = naive_logits(tr, h, 8);
  for (int c = 0; c < 3; ++c) CHECK(golden(z[c], want[c]));
  auto h2 = h;
  h2.row(4) << 0, 0;
  CHECK(logits(make(tr, {.windows = 8}), h2) != z);
  // A one-token prompt.
  moe::row_matrix<float> one = h.topRows(1);
  const auto z1 = logits(make(tr, {.windows = 8}), one);
  const auto w1 = naive_logits(tr, one, 8);
  for (int c = 0; c < 3; ++c) CHECK(golden(z1[c], w1[c]));
  // Random routers and lengths against the double reference (remainders dropped).
  moe_test::rng rng(3);
  for (int rep = 0; rep < 10; ++rep) {
    const index d = rng.integer(1, 40), hid = rng.integer(1, 20), tp = rng.integer(1, 50), W = rng.integer(1, 9);
    const auto rr = random_router(rng, d, hid);
    const auto x = rng.matrix(tp, d);
    const auto got = logits(make(rr, {.windows = W}), x);
    const auto ref = naive_logits(rr, x, W);
    INFO("d " << d << " h " << hid << " T_p " << tp << " W " << W);
    for (int c = 0; c < 3; ++c) CHECK(std::abs(got[c] - ref[c]) < 1e-5 * (1 + std::abs(ref[c])));
  }
}

TEST_CASE("dr_llm: logit ties go to the lower class, all -inf is skip", "[dr_llm]") {
  const auto r = make(golden_router());
  CHECK(r.decision(std::array<float, 3>{1, 1, 0}) == depth_decision::skip);
  CHECK(r.decision(std::array<float, 3>{0, 1, 1}) == depth_decision::execute);
  CHECK(r.decision(std::array<float, 3>{2, 2, 2}) == depth_decision::skip);
  CHECK(r.decision(std::array<float, 3>{0, 0, 0.5f}) == depth_decision::repeat);
  const float inf = std::numeric_limits<float>::infinity();
  CHECK(r.decision(std::array<float, 3>{-inf, -inf, -inf}) == depth_decision::skip);
  // Ties through the router: W2 = 0, b2 gives the logits.
  auto tr = golden_router();
  tr.w2.setZero();
  tr.b2 = {0.3f, 0.3f, 0.1f};
  CHECK(passes(make(tr), golden_prompt()) == std::vector<int>{0, 0, 0, 0, 0});
  tr.b2 = {0.1f, 0.3f, 0.3f};
  CHECK(passes(make(tr), golden_prompt()) == std::vector<int>{1, 1, 1, 1, 1});
  tr.b2 = {0.1f, 0.3f, 0.4f};
  CHECK(passes(make(tr), golden_prompt()) == std::vector<int>{2, 2, 2, 2, 2});
}

TEST_CASE("dr_llm: router penalty rho interpolates the probabilities", "[dr_llm]") {
  const auto h = golden_prompt();
  const auto z = logits(make(golden_router(), {.windows = 2}), h);  // p = [0.217, 0.707, 0.076]
  auto at = [&](float rho) { return make(golden_router(), {.windows = 2, .rho = rho}).decision(z); };
  CHECK(at(-1.0f) == depth_decision::skip);
  CHECK(at(-0.75f) == depth_decision::skip);     // q = [0.609, 0.354, 0.038]
  CHECK(at(-0.6f) == depth_decision::execute);   // q = [0.374, 0.566, 0.060]
  CHECK(at(-0.5f) == depth_decision::execute);
  CHECK(at(0.5f) == depth_decision::execute);
  CHECK(at(0.75f) == depth_decision::execute);  // q = [0, 0.5, 0.5]: tie -> lower class
  CHECK(at(0.8f) == depth_decision::repeat);
  CHECK(at(1.0f) == depth_decision::repeat);
  // A router that prefers skip: p = [0.6, 0.3, 0.1].
  const std::array<float, 3> zs = {std::log(0.6f), std::log(0.3f), std::log(0.1f)};
  auto at_s = [&](float rho) { return make(golden_router(), {.rho = rho}).decision(zs); };
  CHECK(at_s(-0.5f) == depth_decision::skip);
  CHECK(at_s(-0.4f) == depth_decision::skip);      // q = [0.54, 0.37, 0.09]
  CHECK(at_s(-0.25f) == depth_decision::execute);  // q = [0.45, 0.475, 0.075]
  CHECK(at_s(0.5f) == depth_decision::execute);    // execute everywhere
}

TEST_CASE("dr_llm: decisions are per sequence, forced decisions replace the router's", "[dr_llm]") {
  moe_test::rng rng(8);
  const index d = 16;
  auto tr = random_router(rng, d, 8);
  tr.w2 *= 8.0f;  // sharper decisions
  auto r = make(tr, {.windows = 3});
  const index T = 40;
  const auto x = rng.matrix(T, d, 2.0f);
  const std::vector<index> starts = {0, 7, 8, 25};
  const moe::route_context ctx{.sequence_starts = starts};
  const auto got = passes(r, x, ctx);
  std::vector<float> z(12);
  moe::workspace ws;
  ws.reset();
  r.logits(moe::view(x), ctx, z, ws);
  for (std::size_t s = 0; s < starts.size(); ++s) {
    const index b = starts[s], e = s + 1 < starts.size() ? starts[s + 1] : T;
    const moe::row_matrix<float> seq = x.middleRows(b, e - b);
    const auto zs = logits(r, seq);  // the sequence alone gives the same bits
    for (int c = 0; c < 3; ++c) CHECK(zs[c] == z[s * 3 + c]);
    for (index t = b; t < e; ++t) CHECK(got[t] == static_cast<int>(r.decision(zs)));
  }
  r.set_forced_decisions({depth_decision::repeat, depth_decision::skip, depth_decision::execute, depth_decision::skip});
  const auto forced = passes(r, x, ctx);
  CHECK(forced[0] == 2);
  CHECK(forced[6] == 2);
  CHECK(forced[7] == 0);
  CHECK(forced[8] == 1);
  CHECK(forced[39] == 0);
  CHECK_THROWS_WITH(passes(r, x), Catch::Contains("parameter 'forced_decisions().size()' must be equal to 1, got 4"));
  CHECK_THROWS_WITH(r.set_forced_decisions({static_cast<depth_decision>(3)}), Catch::Contains("parameter 'decisions[0]'"));
  r.clear_forced_decisions();
  CHECK(passes(r, x, ctx) == got);
  // T = 0: empty plan, no error.
  CHECK(passes(r, moe::row_matrix<float>(0, d)).empty());
  // ... also with forced decisions (there is no sequence to check them against).
  r.set_forced_decisions({depth_decision::repeat});
  CHECK(passes(r, moe::row_matrix<float>(0, d)).empty());
  CHECK(passes(r, x) == std::vector<int>(static_cast<std::size_t>(T), 2));
}

TEST_CASE("dr_llm: the workspace does not grow with the number of sequences", "[dr_llm]") {
  moe_test::rng rng(9);
  const index d = 16, L = 10;
  const auto r = make(random_router(rng, d, 8), {.windows = 4});
  const auto peak = [&](index sequences) {
    const auto x = rng.matrix(sequences * L, d);
    std::vector<index> starts;
    for (index q = 0; q < sequences; ++q) starts.push_back(q * L);
    moe::routing_plan plan;
    plan.reset(x.rows(), 1, 1);
    moe::workspace ws;
    ws.reset();
    r.decide(moe::view(x), {.sequence_starts = starts}, plan, ws);
    ws.reset();  // the block now has the peak size of that pass
    return ws.capacity();
  };
  const auto one = peak(1);
  CHECK(one > 0);
  // 64 sequences need 64 × 3 logits more, not 64 × the per-sequence scratch (pooled windows,
  // activations, GEMM scratch): at most one more 4 KiB page here.
  CHECK(peak(64) <= one + 4096);
}

TEST_CASE("dr_llm: errors name the parameter (T_p = 0 included)", "[dr_llm][error]") {
  const auto tr = golden_router();
  CHECK_THROWS_WITH(moe::dr_llm(tr.w1, std::vector<float>{0}, tr.w2, tr.b2), Catch::Contains("parameter 'b1.size()'"));
  CHECK_THROWS_WITH(moe::dr_llm(tr.w1, tr.b1, moe::row_matrix<float>(2, 2), tr.b2), Catch::Contains("parameter 'w2.rows()'"));
  CHECK_THROWS_WITH(moe::dr_llm(tr.w1, tr.b1, moe::row_matrix<float>(3, 3), tr.b2), Catch::Contains("parameter 'w2.cols()'"));
  CHECK_THROWS_WITH(moe::dr_llm(tr.w1, tr.b1, tr.w2, std::vector<float>{0, 0}), Catch::Contains("parameter 'b2.size()'"));
  CHECK_THROWS_WITH(make(tr, {.windows = 0}), Catch::Contains("parameter 'windows'"));
  CHECK_THROWS_WITH(make(tr, {.rho = 1.5f}), Catch::Contains("parameter 'rho'"));
  CHECK_THROWS_WITH(make(tr, {.rho = NAN}), Catch::Contains("parameter 'rho'"));
  // Non-finite router parameters.
  auto nan_b1 = tr;
  nan_b1.b1[1] = NAN;
  CHECK_THROWS_WITH(make(nan_b1), Catch::Contains("parameter 'b1[1]'"));
  auto inf_b2 = tr;
  inf_b2.b2[2] = std::numeric_limits<float>::infinity();
  CHECK_THROWS_WITH(make(inf_b2), Catch::Contains("parameter 'b2[2]'"));
  auto nan_w1 = tr;
  nan_w1.w1(1, 0) = NAN;
  CHECK_THROWS_WITH(make(nan_w1), Catch::Contains("parameter 'w1(1, 0)'"));
  auto inf_w2 = tr;
  inf_w2.w2(2, 1) = -std::numeric_limits<float>::infinity();
  CHECK_THROWS_WITH(make(inf_w2), Catch::Contains("parameter 'w2(2, 1)'"));
  const auto r = make(tr);
  CHECK_THROWS_WITH(logits(r, moe::row_matrix<float>(0, 2)), Catch::Contains("parameter 'prompt.rows()' must be >= 1"));
  const auto x = golden_prompt();
  const std::vector<index> empty_seq = {0, 2, 2};
  CHECK_THROWS_WITH(passes(r, x, {.sequence_starts = empty_seq}), Catch::Contains("parameter 'ctx.sequence_starts' gives an empty sequence 1"));
  CHECK_THROWS_WITH(passes(r, moe::row_matrix<float>(3, 4)), Catch::Contains("parameter 'x.cols()'"));
  auto bad = x;
  bad(1, 1) = NAN;
  CHECK_THROWS_WITH(passes(r, bad), Catch::Contains("parameter 'x' gives a NaN router logit"));
}

TEST_CASE("dr_llm: a stack of layers routes depth per sequence, the stack statistics add up", "[dr_llm][layer]") {
  moe_test::rng rng(21);
  const index d = 16, E = 4, f = 8, L = 4;
  using router = moe::layer_skip<moe::top_k<>, moe::dr_llm>;
  using layer_t = moe::layer<router, moe::swiglu_experts<float>, moe::device::cpu>;
  std::vector<layer_t> stack;
  std::vector<moe_test::naive_swiglu> weights;
  std::vector<moe::row_matrix<float>> router_w;
  for (index l = 0; l < L; ++l) {
    weights.push_back(moe_test::random_swiglu(rng, E, d, f));
    router_w.push_back(rng.matrix(E, d));
    auto tr = random_router(rng, d, 8);
    // Layer 1 skips, layer 2 repeats, layers 0 and 3 execute.
    tr.b2 = {l == 1 ? 5.0f : 0.0f, l == 0 || l == 3 ? 5.0f : 0.0f, l == 2 ? 5.0f : 0.0f};
    tr.w2 *= 0.01f;
    stack.emplace_back(router(moe::top_k<>(router_w.back(), {.k = 2}), make(tr, {.windows = 4})),
                       moe_test::make_bank(weights.back()), moe::device::cpu{2});
  }
  const index T = 12;
  auto h = rng.matrix(T, d);
  const std::vector<index> starts = {0, 5};
  moe::depth_stack_stats stats;
  moe::row_matrix<float> y(T, d);
  for (index l = 0; l < L; ++l) {
    const moe::row_matrix<float> before = h;
    stack[static_cast<std::size_t>(l)].forward(h, y, {.sequence_starts = starts});
    stats.add(stack[static_cast<std::size_t>(l)].policy_stats());
    const auto& plan = stack[static_cast<std::size_t>(l)].plan();
    for (index t = 0; t < T; ++t) CHECK(plan.passes(t) == (l == 1 ? 0 : l == 2 ? 2 : 1));
    if (l == 1) CHECK(y.isZero(0.0f));
    h += y;
    if (l == 1) CHECK(h == before);
  }
  CHECK(stats.num_layers() == 4);
  CHECK(stats.layers_executed() == 4.0);  // 1 + 0 + 2 + 1
  CHECK(stats.layers_saved() == 0.0);
  CHECK(stats.skip_rate() == 0.25);
  CHECK(stats.repeat_rate() == 0.25);

  // Every layer skips (legal): the stack is the identity on the hidden states.
  const moe::row_matrix<float> h0 = h;
  moe::depth_stack_stats none;
  for (auto& layer : stack) {
    layer.router().depth().set_forced_decisions({depth_decision::skip, depth_decision::skip});
    layer.forward(h, y, {.sequence_starts = starts});
    CHECK(y.isZero(0.0f));
    h += y;
    none.add(layer.policy_stats());
  }
  CHECK(h == h0);
  CHECK(none.layers_saved() == 4.0);
  CHECK(none.skip_rate() == 1.0);
}

}  // namespace
