// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/device/: the device trait, serial and cpu.
#include <catch2/catch.hpp>

#include <type_traits>

#include <cstring>
#include <utility>

#include <moe/device/cpu.hpp>
#include <moe/device/serial.hpp>
#include <moe/routing/routers/top_k.hpp>

#include "../support/compare.hpp"
#include "../support/layers.hpp"
#include "../support/policies.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;

static_assert(moe::device_for<moe::device::serial, moe::swiglu_experts<float>>);
static_assert(moe::device_for<moe::device::cpu, moe::swiglu_experts<float>>);
static_assert(moe::accessible_from<moe::device::cpu, moe::host_memory>);
static_assert(moe::execution_device<moe::device::cpu>);
static_assert(std::is_same_v<moe::device::cpu::workspace_type, moe::workspace>);
// A memory space that host devices cannot read: the layer refuses such views at compile time.
struct other_memory {
  static constexpr const char* name() noexcept { return "other"; }
};
static_assert(!moe::accessible_from<moe::device::cpu, other_memory>);
// The bank interface of host devices is theirs, not part of moe::expert_bank.
struct weights_only {
  moe::index num_experts() const { return 4; }
  moe::index hidden() const { return 8; }
};
static_assert(moe::expert_bank<weights_only>);
static_assert(!moe::detail::host_ffn_bank<weights_only>);
static_assert(!moe::device_for<moe::device::cpu, weights_only>);

using moe_test::bitwise_equal;

TEST_CASE("devices name themselves and their memory space", "[device]") {
  CHECK(std::string(moe::device::serial::name()) == "serial");
  CHECK(std::string(moe::device::cpu::name()) == "cpu");
  CHECK(std::string(moe::device::cpu::memory_space::name()) == "host");
  CHECK(moe::device::serial::concurrency() == 1);
  CHECK(moe::device::cpu(2).concurrency() >= 1);
  CHECK_THROWS_WITH(moe::device::cpu(-1), Catch::Contains("parameter 'threads' must be >= 0, got -1"));
}

TEST_CASE("serial and cpu are bitwise equal for 1 and 2 threads", "[device][determinism]") {
  // (3 threads and more threads than panels: see the next test.)
  moe_test::rng rng(17);
  for (const index T : {1, 7, 100, 300}) {
    const index E = 16, d = 80, f = 48, k = 4;
    const auto w = moe_test::random_swiglu(rng, E, d, f);
    const auto bank = moe_test::make_bank(w);
    const auto router_w = rng.matrix(E, d);
    const moe::top_k<> router(router_w, {.k = k, .renormalize = true});
    const auto x = rng.matrix(T, d);
    moe::routing_plan plan = moe_test::route(router, x);
    plan.build_expert_major();
    moe::workspace ws;
    moe::row_matrix<float> y_serial(T, d), y1(T, d), y2(T, d);
    ws.reset();
    moe::device::serial{}.dispatch(plan, moe::view(x), bank, moe::view(y_serial), ws);
    ws.reset();
    moe::device::cpu{1}.dispatch(plan, moe::view(x), bank, moe::view(y1), ws);
    ws.reset();
    moe::device::cpu{2}.dispatch(plan, moe::view(x), bank, moe::view(y2), ws);
    INFO("T = " << T);
    CHECK(bitwise_equal(y_serial, y1));
    CHECK(bitwise_equal(y_serial, y2));
    CHECK(moe_test::relative_error(y_serial, moe_test::naive_layer(router_w, w, x, k, true)) < 1e-5);
  }
}

TEST_CASE("cpu with 3 threads, and with more threads than panels, equals serial bit for bit", "[device][determinism]") {
  moe_test::rng rng(18);
  const index E = 5, d = 40, f = 20, k = 2, T = 33;  // 2 down-panels, 1-2 up-panels per expert
  const auto w = moe_test::random_swiglu(rng, E, d, f);
  const auto bank = moe_test::make_bank(w);
  const moe::top_k<> router(rng.matrix(E, d), {.k = k});
  const auto x = rng.matrix(T, d);
  moe::routing_plan plan = moe_test::route(router, x);
  plan.build_expert_major();
  moe::workspace ws;
  moe::row_matrix<float> want(T, d);
  ws.reset();
  moe::device::serial{}.dispatch(plan, moe::view(x), bank, moe::view(want), ws);
  for (const int threads : {3, 7}) {
    moe::row_matrix<float> got(T, d);
    ws.reset();
    moe::device::cpu{threads}.dispatch(plan, moe::view(x), bank, moe::view(got), ws);
    INFO("threads " << threads);
    CHECK(bitwise_equal(got, want));
  }
}

TEST_CASE("devices read and write padded rows (outer stride larger than the width)", "[device]") {
  moe_test::rng rng(19);
  const index E = 4, d = 24, f = 16, T = 9, pad = 37;
  const auto w = moe_test::random_swiglu(rng, E, d, f);
  const auto bank = moe_test::make_bank(w);
  const auto xc = rng.matrix(T, d);
  moe::row_matrix<float> xbuf = moe::row_matrix<float>::Constant(T, pad, 1e30f), ybuf = moe::row_matrix<float>::Constant(T, pad, -5.0f);
  xbuf.leftCols(d) = xc;
  moe::routing_plan plan;
  plan.reset(T, 2, E);
  for (index t = 0; t < T; ++t) {
    plan.set(t, 0, static_cast<std::int32_t>(t % E), 0.6f);
    plan.set(t, 1, static_cast<std::int32_t>((t + 1) % E), 0.4f);
  }
  plan.build_expert_major();
  moe::workspace ws;
  ws.reset();
  moe::device::cpu{2}.dispatch(plan, moe::map(static_cast<const float*>(xbuf.data()), T, d, pad), bank,
                               moe::map(ybuf.data(), T, d, pad), ws);
  moe::row_matrix<float> want(T, d);
  ws.reset();
  moe::device::serial{}.dispatch(plan, moe::view(xc), bank, moe::view(want), ws);
  CHECK(ybuf.leftCols(d) == want);
  CHECK((ybuf.rightCols(pad - d).array() == -5.0f).all());  // padding untouched
}

TEST_CASE("devices overwrite y and leave tokens routed nowhere at zero", "[device]") {
  moe_test::rng rng(21);
  const index E = 4, d = 16, f = 8, T = 5;
  const auto w = moe_test::random_swiglu(rng, E, d, f);
  const auto bank = moe_test::make_bank(w);
  const auto x = rng.matrix(T, d);
  moe::routing_plan plan;
  plan.reset(T, 2, E);
  plan.set(0, 0, 1, 1.0f);
  plan.set(3, 1, 2, 0.5f);
  plan.build_expert_major();
  moe::row_matrix<float> y = moe::row_matrix<float>::Constant(T, d, 42.0f);
  moe::workspace ws;
  ws.reset();
  moe::device::cpu{2}.dispatch(plan, moe::view(x), bank, moe::view(y), ws);
  for (const index t : {1, 2, 4}) CHECK(y.row(t).isZero(0.0));
  CHECK_FALSE(y.row(0).isZero(0.0));
  CHECK_FALSE(y.row(3).isZero(0.0));
}

TEST_CASE("devices reject plans without the expert-major view and mismatched shapes", "[device][error]") {
  moe_test::rng rng(22);
  const auto w = moe_test::random_swiglu(rng, 3, 8, 4);
  const auto bank = moe_test::make_bank(w);
  const auto x = rng.matrix(2, 8);
  moe::row_matrix<float> y(2, 8);
  moe::workspace ws;
  moe::routing_plan plan;
  plan.reset(2, 1, 3);
  ws.reset();
  CHECK_THROWS_WITH(moe::device::cpu{}.dispatch(plan, moe::view(x), bank, moe::view(y), ws),
                    Catch::Contains("parameter 'plan' must have its expert-major view built"));
  plan.build_expert_major();
  moe::row_matrix<float> y_bad(3, 8);
  CHECK_THROWS_WITH(moe::device::serial{}.dispatch(plan, moe::view(x), bank, moe::view(y_bad), ws),
                    Catch::Contains("parameter 'y.rows()' must be equal to 2, got 3"));
  moe::routing_plan plan4;
  plan4.reset(2, 1, 4);
  plan4.build_expert_major();
  CHECK_THROWS_WITH(moe::device::serial{}.dispatch(plan4, moe::view(x), bank, moe::view(y), ws),
                    Catch::Contains("parameter 'plan.num_experts()' must be equal to 3, got 4"));
  // In place, overlapping rows of y, and dense passes with bad shapes.
  moe::row_matrix<float> xy = x;
  CHECK_THROWS_WITH(moe::device::cpu{}.dispatch(plan, moe::view(std::as_const(xy)), bank, moe::view(xy), ws),
                    Catch::Contains("parameter 'y' must not overlap 'x'"));
  std::vector<float> rows(100);
  CHECK_THROWS_WITH(moe::device::serial{}.dispatch(plan, moe::view(x), bank, moe::map(rows.data(), 2, 8, 4), ws),
                    Catch::Contains("parameter 'y.outerStride()' must be >= y.cols() = 8, got 4"));
  moe::row_matrix<float> x9(2, 9), y9(2, 9);
  x9.setZero();
  CHECK_THROWS_WITH(moe::device::cpu{}.accumulate_dense(moe::view(std::as_const(x9)), bank, nullptr, moe::view(y9), ws),
                    Catch::Contains("accumulate_dense: parameter 'x.cols()' must be equal to 8, got 9"));
  CHECK_THROWS_WITH(moe::device::serial{}.accumulate_dense(moe::view(x), bank, nullptr, moe::view(y_bad), ws),
                    Catch::Contains("parameter 'y.rows()' must be equal to 2, got 3"));
}

}  // namespace
