// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/routing/wrappers/forced_routes.hpp (docs/routing-spec.md §19): replaying a
// capture reproduces the captured layer outputs bitwise, over the devices of support/devices.hpp
// (serial and cpu here; mpi under mpirun in moe_mpi_tests, which compiles this file too: every
// rank records and replays its own rows);
// the live weight rule under changed router weights; every check of the constructor and route().
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include <moe/layer.hpp>
#include <moe/routing/recording.hpp>
#include <moe/routing/routers/group_limited.hpp>
#include <moe/routing/routers/top_k.hpp>
#include <moe/routing/wrappers/capacity.hpp>
#include <moe/routing/wrappers/forced_routes.hpp>
#include <moe/routing/wrappers/null_experts.hpp>
#include <moe/routing/wrappers/rms_scaled.hpp>

#include "../../support/compare.hpp"
#include "../../support/devices.hpp"
#include "../../support/layers.hpp"
#include "../../support/policies.hpp"
#include "../../support/random.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;
using moe_test::bitwise_equal;
using moe_test::make_layer;
constexpr float inf = std::numeric_limits<float>::infinity();

// Whether two plans hold the same slots, bit for bit (experts and weights).
bool same_slots(const moe::routing_plan& a, const moe::routing_plan& b) {
  if (a.num_tokens() != b.num_tokens() || a.max_slots() != b.max_slots() || a.num_experts() != b.num_experts()) {
    return false;
  }
  const auto ea = a.all_experts(), eb = b.all_experts();
  const auto wa = a.all_weights(), wb = b.all_weights();
  return std::equal(ea.begin(), ea.end(), eb.begin()) &&
         (wa.empty() || std::memcmp(wa.data(), wb.data(), wa.size() * sizeof(float)) == 0);
}

// Runs `original` on x over Device, records its plan as layer 0 of a recording, runs
// forced_routes<Base>(replay_base, recording, 0) on the same x and checks that the plan's slots
// and the layer output are bitwise the same.
template <class Device, class Router, class Base>
void check_replay(Router original, Base replay_base, const moe_test::naive_swiglu& w, const moe::row_matrix<float>& x,
                  moe::forced_routes_options options = {}) {
  const index T = x.rows(), d = x.cols();
  auto captured = make_layer<Device>(std::move(original), w);
  moe::row_matrix<float> y1(T, d), y2(T, d);
  captured.forward(x, y1);
  moe::route_recorder rec(T, 1, captured.plan().max_slots(), options.weights == moe::replay_weights::recorded);
  rec.record(0, captured.plan());
  auto replayed = make_layer<Device>(moe::forced_routes<Base>(std::move(replay_base), rec, 0, options), w);
  replayed.forward(x, y2);
  INFO("T = " << T);
  CHECK(same_slots(captured.plan(), replayed.plan()));
  CHECK(bitwise_equal(y1, y2));
}

TEMPLATE_LIST_TEST_CASE("forced_routes: replaying a top_k capture reproduces the layer outputs bitwise (softmax and sigmoid, renormalised or not)",
                        "[routing][forced_routes][replay]", moe_test::devices) {
  moe_test::rng rng(1901);
  const index E = 16, d = 48, f = 24;
  const auto w = moe_test::random_swiglu(rng, E, d, f);
  const auto router_w = rng.matrix(E, d);
  for (const index T : {1, 5, 9, 130}) {  // decode (panels split) and prefill (rows split)
    const auto x = rng.matrix(T, d);
    for (const bool renorm : {false, true}) {
      INFO("renormalize = " << renorm);
      const moe::top_k_options o{.k = 4, .renormalize = renorm};
      check_replay<TestType>(moe::top_k<>(router_w, o), moe::top_k<>(router_w, o), w, x);
      const moe::top_k_options sig{.k = 3, .renormalize = renorm, .route_scale = 1.5f, .temperature = 0.7f};
      check_replay<TestType>(moe::top_k<moe::sigmoid_gate>(router_w, sig), moe::top_k<moe::sigmoid_gate>(router_w, sig),
                             w, x);
      // A selection bias chooses the experts; replay weighs the same experts alike.
      std::vector<float> bias(static_cast<std::size_t>(E));
      for (index e = 0; e < E; ++e) bias[static_cast<std::size_t>(e)] = 0.05f * static_cast<float>(e % 5);
      const moe::top_k_options biased{.k = 2, .renormalize = renorm, .selection_bias = bias};
      check_replay<TestType>(moe::top_k<>(router_w, biased), moe::top_k<>(router_w, biased), w, x);
    }
  }
}

TEMPLATE_LIST_TEST_CASE("forced_routes: replaying a group_limited capture (DeepSeek-V3 groups, bias) reproduces the layer outputs bitwise",
                        "[routing][forced_routes][replay]", moe_test::devices) {
  moe_test::rng rng(1902);
  const index E = 32, d = 40, f = 16;
  const auto w = moe_test::random_swiglu(rng, E, d, f);
  const auto router_w = rng.matrix(E, d);
  std::vector<float> bias(static_cast<std::size_t>(E));
  for (auto& b : bias) b = rng.uniform(-0.2f, 0.2f);
  const moe::group_limited_options o{
      .k = 4, .n_groups = 8, .topk_groups = 2, .renormalize = true, .route_scale = 2.5f, .selection_bias = bias};
  for (const index T : {3, 77}) {
    const auto x = rng.matrix(T, d);
    check_replay<TestType>(moe::group_limited<>(router_w, o), moe::group_limited<>(router_w, o), w, x);
    // The selection does not matter to replay: a plain sigmoid top_k base with the same weight
    // rule replays the group-limited capture bitwise too.
    check_replay<TestType>(moe::group_limited<>(router_w, o),
                           moe::top_k<moe::sigmoid_gate>(router_w, {.k = 4, .renormalize = true, .route_scale = 2.5f}),
                           w, x);
  }
}

TEMPLATE_LIST_TEST_CASE("forced_routes: replaying an rms_scaled_router capture (Gemma 4: transformed input, per-expert scales) reproduces the layer outputs bitwise",
                        "[routing][forced_routes][replay]", moe_test::devices) {
  moe_test::rng rng(1907);
  const index E = 8, d = 24, f = 16;
  const auto w = moe_test::random_swiglu(rng, E, d, f);
  const auto router_w = rng.matrix(E, d);
  moe::rms_scaled_options o;
  for (index i = 0; i < d; ++i) o.input_scale.push_back(rng.uniform(0.5f, 1.5f));
  for (index e = 0; e < E; ++e) o.per_expert_scale.push_back(rng.uniform(0.5f, 2.0f));
  using gemma = moe::rms_scaled_router<moe::top_k<>>;
  for (const index T : {4, 50}) {
    const auto x = rng.matrix(T, d);
    check_replay<TestType>(gemma(moe::top_k<>(router_w, {.k = 2, .renormalize = true}), o),
                           gemma(moe::top_k<>(router_w, {.k = 2, .renormalize = true}), o), w, x);
  }
}

TEMPLATE_LIST_TEST_CASE("forced_routes: recorded weights replay null_experts and capacity captures bitwise",
                        "[routing][forced_routes][replay]", moe_test::devices) {
  moe_test::rng rng(1903);
  const index E = 8, m = 4, d = 32, f = 16, T = 40;
  const auto w = moe_test::random_swiglu(rng, E, d, f);
  const auto router_w = rng.matrix(E, d), null_w = rng.matrix(m, d);
  const auto x = rng.matrix(T, d);
  const moe::forced_routes_options recorded{.weights = moe::replay_weights::recorded};
  check_replay<TestType>(moe::null_experts<moe::top_k<>>(router_w, null_w, {.k = 3, .renormalize = true}),
                         moe::top_k<>(router_w, {.k = 3}), w, x, recorded);
  check_replay<TestType>(moe::capacity<moe::top_k<>>(moe::top_k<>(router_w, {.k = 2}), {.capacity_factor = 0.5}),
                         moe::top_k<>(router_w, {.k = 2}), w, x, recorded);
}

TEMPLATE_LIST_TEST_CASE("forced_routes: a capture of several layers replays every layer bitwise",
                        "[routing][forced_routes][replay]", moe_test::devices) {
  moe_test::rng rng(1904);
  const index E = 12, d = 36, f = 20, T = 33, L = 3, k = 3;
  std::vector<moe_test::naive_swiglu> banks;
  std::vector<moe::row_matrix<float>> routers;
  for (index l = 0; l < L; ++l) {
    banks.push_back(moe_test::random_swiglu(rng, E, d, f));
    routers.push_back(rng.matrix(E, d));
  }
  const moe::top_k_options o{.k = k, .renormalize = true};
  // The captured forward: h_{l+1} = h_l + MoE_l(h_l), recording every layer.
  moe::route_recorder rec(T, L, k);
  std::vector<moe::row_matrix<float>> inputs, outputs;
  moe::row_matrix<float> h = rng.matrix(T, d);
  for (index l = 0; l < L; ++l) {
    auto layer = make_layer<TestType>(moe::top_k<>(routers[static_cast<std::size_t>(l)], o), banks[static_cast<std::size_t>(l)]);
    moe::row_matrix<float> y(T, d);
    layer.forward(h, y);
    rec.record(l, layer.plan());
    inputs.push_back(h);
    outputs.push_back(y);
    h += y;
  }
  CHECK(rec.num_experts() == E);
  // Replay, layer by layer, over the captured inputs.
  for (index l = 0; l < L; ++l) {
    auto layer = make_layer<TestType>(
        moe::forced_routes<>(moe::top_k<>(routers[static_cast<std::size_t>(l)], o), rec, l), banks[static_cast<std::size_t>(l)]);
    moe::row_matrix<float> y(T, d);
    layer.forward(inputs[static_cast<std::size_t>(l)], y);
    INFO("layer " << l);
    CHECK(bitwise_equal(y, outputs[static_cast<std::size_t>(l)]));
  }
}

TEST_CASE("forced_routes: under changed router weights the recorded experts keep their slots and take the live weights",
          "[routing][forced_routes]") {
  // Identity router rows: with d = E the logits are x itself.
  const index E = 4;
  const auto eye = moe_test::eye(E);
  moe::route_recording rec(2, 1, 2);
  rec.ids()[0] = 3;  // token 0: experts 3, then 1
  rec.ids()[1] = 1;
  rec.ids()[2] = -1;  // token 1: an empty slot, then expert 0
  rec.ids()[3] = 0;
  rec.set_recorded(0);
  // Logits given as they are (route_logits), so that they may hold ±inf.
  const auto z = moe_test::fmatrix({{1, 2, 3, 0}, {0.5, -1, inf, -inf}});
  for (const bool renorm : {false, true}) {
    INFO("renormalize = " << renorm);
    const moe::forced_routes<> r(moe::top_k<>(eye, {.k = 2, .renormalize = renorm}), rec, 0);
    const auto plan = moe_test::route_logits(r, z);
    // Token 0: softmax over all four logits, taken at experts 3 and 1.
    double sum = 0;
    for (const double v : {1.0, 2.0, 3.0, 0.0}) sum += std::exp(v);
    const double p3 = std::exp(0.0) / sum, p1 = std::exp(2.0) / sum;
    CHECK(plan.expert(0, 0) == 3);
    CHECK(plan.expert(0, 1) == 1);
    CHECK(plan.weight(0, 0) == Approx(renorm ? p3 / (p3 + p1) : p3).epsilon(1e-6));
    CHECK(plan.weight(0, 1) == Approx(renorm ? p1 / (p3 + p1) : p1).epsilon(1e-6));
    // Token 1: the +inf logit (expert 2) takes all the mass, so the recorded expert 0 has score 0
    // (a zero renormalisation denominator gives 0 too) and computes nothing; the empty slot
    // stays empty.
    CHECK(plan.expert(1, 0) == moe::no_expert);
    CHECK(plan.expert(1, 1) == 0);
    CHECK(plan.weight(1, 1) == 0.0f);
  }
  // Every logit -inf: the recorded experts stay, with weight 0.
  const moe::forced_routes<> r(moe::top_k<>(eye, {.k = 2}), rec, 0);
  const auto masked = moe_test::route_logits(r, moe_test::fmatrix({{-inf, -inf, -inf, -inf}, {-inf, -inf, -inf, -inf}}));
  CHECK(masked.expert(0, 0) == 3);
  CHECK(masked.expert(0, 1) == 1);
  CHECK(masked.weight(0, 0) == 0.0f);
  CHECK(masked.weight(0, 1) == 0.0f);
  // route_logits(W x) routes as route(x).
  const auto x = moe_test::fmatrix({{1, 2, 3, 0}, {0.5, -1, 2, -3}});
  CHECK(same_slots(moe_test::route_logits(r, x), moe_test::route(r, x)));
}

TEST_CASE("forced_routes: routes with the same bits on any number of threads", "[routing][forced_routes][determinism]") {
  moe_test::rng rng(1905);
  const index E = 24, d = 40, T = 61, k = 6;
  const auto router_w = rng.matrix(E, d);
  const auto x = rng.matrix(T, d);
  const moe::top_k<> base(router_w, {.k = k, .renormalize = true});
  moe::route_recording rec(T, 2, k);
  rec.record(1, moe_test::route(base, x, {.threads = 1}));
  const moe::forced_routes<> r(base, rec, 1);
  const auto one = moe_test::route(r, x, {.threads = 1});
  CHECK(same_slots(one, moe_test::route(base, x, {.threads = 1})));
  for (const int threads : {2, 3, 7}) {
    INFO("threads = " << threads);
    CHECK(same_slots(one, moe_test::route(r, x, {.threads = threads})));
  }
}

TEST_CASE("forced_routes: the checks of the constructor and of route name the parameter", "[routing][forced_routes][errors]") {
  moe_test::rng rng(1906);
  const index E = 8, d = 16, T = 5;
  const auto router_w = rng.matrix(E, d);
  const moe::top_k<> base(router_w, {.k = 2});
  moe::route_recording rec(T, 2, 2);
  rec.record(0, moe_test::route(base, rng.matrix(T, d)));
  using Catch::Matchers::Contains;
  // Layer out of range, or never recorded.
  CHECK_THROWS_WITH(moe::forced_routes<>(base, rec, 2), Contains("parameter 'layer' must be in [0, 1], got 2"));
  CHECK_THROWS_WITH(moe::forced_routes<>(base, rec, 1), Contains("parameter 'layer'") && Contains("never recorded"));
  // k and E of the base.
  CHECK_THROWS_WITH(moe::forced_routes<>(moe::top_k<>(router_w, {.k = 3}), rec, 0),
                    Contains("'base.max_slots()' must be equal to the recording's k = 2, got 3"));
  CHECK_THROWS_WITH(moe::forced_routes<>(moe::top_k<>(rng.matrix(6, d), {.k = 2}), rec, 0),
                    Contains("'base.num_experts()' must be equal to the recording's expert count 8, got 6"));
  // Recorded weights of a recording without.
  CHECK_THROWS_WITH(moe::forced_routes<>(base, rec, 0, {.weights = moe::replay_weights::recorded}),
                    Contains("'options.weights'"));
  // An id outside [-1, E) (E unknown to the recording, known to the base).
  moe::route_recording raw(T, 1, 2);
  raw.ids()[7] = 8;
  raw.set_recorded(0);
  CHECK_THROWS_WITH(moe::forced_routes<>(base, raw, 0),
                    Contains("'expert id of token 3, layer 0, slot 1' must be in [-1, 8), got 8"));
  // A base with null columns.
  using ada = moe::null_experts<moe::top_k<>>;
  CHECK_THROWS_WITH(moe::forced_routes<ada>(ada(router_w, rng.matrix(2, d), {.k = 2}), rec, 0),
                    Contains("'base.columns()' must be equal to base.num_experts() = 8"));
  // The batch must be the recording's.
  const moe::forced_routes<> r(base, rec, 0);
  CHECK(r.num_tokens() == T);
  CHECK(r.layer() == 0);
  CHECK_THROWS_WITH(moe_test::route(r, rng.matrix(T + 1, d)),
                    Contains("moe::forced_routes::route: parameter 'x.rows()' must be equal to the recording's token count 5, got 6"));
  CHECK_THROWS_WITH(moe_test::route(r, rng.matrix(T, d + 1)), Contains("parameter 'x.cols()' must be equal to 16, got 17"));
  // NaN logits follow the base's policy; the error names forced_routes and the lowest bad token.
  moe::row_matrix<float> nan_x = rng.matrix(T, d);
  nan_x(3, 2) = std::numeric_limits<float>::quiet_NaN();
  nan_x(4, 0) = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH(moe_test::route(r, nan_x, {.threads = 2}),
                    Contains("moe::forced_routes::route: parameter 'x' gives a NaN router logit (token 3"));
  static_assert(!moe::needs_whole_batch<moe::forced_routes<>>());  // each process replays its own rows
}

}  // namespace
