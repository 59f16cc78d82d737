// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/experts/: the SwiGLU bank and shared experts.
#include <catch2/catch.hpp>

#include <cstddef>
#include <cstring>
#include <string>
#include <vector>

#include <moe/device/cpu.hpp>
#include <moe/device/serial.hpp>
#include <moe/experts/shared.hpp>
#include <moe/experts/swiglu.hpp>

#include "../support/layers.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;

TEST_CASE("swiglu_experts: each expert equals the naive FFN", "[experts][swiglu]") {
  moe_test::rng rng(5);
  for (const index d : {1, 16, 33, 72}) {
    for (const index f : {1, 8, 40, 67}) {
      const index E = 3, T = 14;
      const auto w = moe_test::random_swiglu(rng, E, d, f);
      const auto bank = moe_test::make_bank(w);
      CHECK(bank.num_experts() == E);
      CHECK(bank.hidden() == d);
      CHECK(bank.intermediate() == f);
      const auto x = rng.matrix(T, d);
      // Plan: token t goes to expert t % E with weight 0.5 + t/T.
      moe::routing_plan plan;
      plan.reset(T, 1, E);
      for (index t = 0; t < T; ++t) plan.set(t, 0, static_cast<std::int32_t>(t % E), 0.5f + static_cast<float>(t) / T);
      plan.build_expert_major();
      moe::row_matrix<float> y(T, d);
      moe::workspace ws;
      ws.reset();
      moe::device::serial{}.dispatch(plan, moe::view(x), bank, moe::view(y), ws);
      std::vector<double> want(static_cast<std::size_t>(T * d), 0.0);
      for (index t = 0; t < T; ++t) w.accumulate(t % E, x.data() + t * d, 0.5 + static_cast<double>(static_cast<float>(t) / T), want.data() + t * d);
      INFO("d = " << d << ", f = " << f);
      CHECK(moe_test::relative_error(y, want) < 1e-5);
    }
  }
}

TEST_CASE("swiglu_experts::up gives the same act into aligned and unaligned buffers", "[experts][swiglu]") {
  // The schedule's act is register-aligned (non-temporal stores); a device of one's own may pass
  // any buffer and stride, and gets the same values through ordinary stores.
  moe_test::rng rng(9);
  const index E = 2, d = 40, f = 70, rows = 13;
  const auto bank = moe_test::make_bank(moe_test::random_swiglu(rng, E, d, f));
  const auto x = rng.matrix(rows, d);
  std::vector<const float*> ptrs;
  for (index i = 0; i < rows; ++i) ptrs.push_back(x.data() + i * d);
  moe::aligned_buffer<std::byte> scratch(bank.scratch_bytes(rows));
  const index aligned_ld = 80, odd_ld = 71;
  moe::aligned_buffer<float> aligned(static_cast<std::size_t>(rows * aligned_ld));
  moe::aligned_buffer<float> odd(static_cast<std::size_t>(rows * odd_ld + 1));
  bank.up(1, ptrs.data(), rows, 0, bank.up_panels(), aligned.data(), aligned_ld, scratch.data());
  moe::kernels::stream_fence();
  bank.up(1, ptrs.data(), rows, 0, bank.up_panels(), odd.data() + 1, odd_ld, scratch.data());
  for (index i = 0; i < rows; ++i) {
    INFO("row " << i);
    REQUIRE(std::memcmp(aligned.data() + i * aligned_ld, odd.data() + 1 + i * odd_ld, sizeof(float) * f) == 0);
  }
  CHECK(aligned[static_cast<std::size_t>(aligned_ld * 5 + 3)] != 0.0f);
}

TEST_CASE("swiglu_experts: the pointer constructor reads stacked checkpoint arrays", "[experts][swiglu]") {
  moe_test::rng rng(6);
  const auto w = moe_test::random_swiglu(rng, 2, 8, 4);
  const moe::swiglu_experts<float> a = moe_test::make_bank(w);
  const moe::swiglu_experts<float> b(w.gate.data(), w.up.data(), w.down.data(), {.experts = 2, .hidden = 8, .intermediate = 4});
  const auto x = rng.matrix(3, 8);
  moe::routing_plan plan;
  plan.reset(3, 2, 2);
  for (index t = 0; t < 3; ++t) { plan.set(t, 0, 0, 0.25f); plan.set(t, 1, 1, 0.75f); }
  plan.build_expert_major();
  moe::row_matrix<float> ya(3, 8), yb(3, 8);
  moe::workspace ws;
  ws.reset();
  moe::device::serial{}.dispatch(plan, moe::view(x), a, moe::view(ya), ws);
  ws.reset();
  moe::device::serial{}.dispatch(plan, moe::view(x), b, moe::view(yb), ws);
  CHECK(ya == yb);
}

TEST_CASE("swiglu_experts: inconsistent shapes throw moe::error naming the parameter", "[experts][swiglu][error]") {
  moe::row_matrix<float> gate(8, 4), up(8, 4), down(8, 4), bad_up(6, 4), bad_down(7, 4), gate_odd(6, 4);
  gate.setZero(); up.setZero(); down.setZero(); bad_up.setZero(); bad_down.setZero(); gate_odd.setZero();
  // d = 4, f = 4, E = 2: down must be [E·d × f] = [8 × 4].
  CHECK_NOTHROW(moe::swiglu_experts<float>(moe::view(gate), moe::view(up), moe::view(down)));
  CHECK_THROWS_WITH(moe::swiglu_experts<float>(moe::view(gate), moe::view(bad_up), moe::view(down)),
                    Catch::Contains("parameter 'up.rows()' must be equal to 8, got 6"));
  CHECK_THROWS_WITH(moe::swiglu_experts<float>(moe::view(gate), moe::view(up), moe::view(bad_down)),
                    Catch::Contains("parameter 'down.rows()' must be equal to 8, got 7"));
  moe::row_matrix<float> down3(12, 3);
  down3.setZero();
  CHECK_THROWS_WITH(moe::swiglu_experts<float>(moe::view(gate_odd), moe::view(up), moe::view(down3)),
                    Catch::Contains("parameter 'up.rows()'"));
  moe::row_matrix<float> down5(8, 5);
  down5.setZero();
  CHECK_THROWS_WITH(moe::swiglu_experts<float>(moe::view(gate), moe::view(up), moe::view(down5)),
                    Catch::Contains("parameter 'gate.rows()' must be a positive multiple of down.cols() = 5, got 8"));
  CHECK_THROWS_WITH(moe::swiglu_experts<float>(gate.data(), up.data(), down.data(), {.experts = -1, .hidden = 4, .intermediate = 4}),
                    Catch::Contains("parameter 'shape.experts' must be >= 0, got -1"));
  // A bank of no expert (a process that holds none under a placement) is legal and empty.
  const float* no_weights = nullptr;
  const moe::swiglu_experts<float> none(no_weights, no_weights, no_weights, {.experts = 0, .hidden = 4, .intermediate = 4});
  CHECK(none.num_experts() == 0);
  CHECK(none.up_panels() == 0);
  CHECK(none.hidden() == 4);
}

TEST_CASE("shared_experts: ungated and sigmoid-gated (Qwen2-MoE) outputs", "[experts][shared]") {
  moe_test::rng rng(8);
  const index d = 24, f = 20, T = 9;
  const auto w = moe_test::random_swiglu(rng, 2, d, f);  // two shared experts
  const auto x = rng.matrix(T, d);
  std::vector<float> gate(static_cast<std::size_t>(d));
  for (auto& g : gate) g = rng.uniform();
  for (const bool gated : {false, true}) {
    const auto shared = gated ? moe::shared_experts<moe::swiglu_experts<float>>(moe_test::make_bank(w), gate)
                              : moe::shared_experts<moe::swiglu_experts<float>>(moe_test::make_bank(w));
    CHECK(shared.gated() == gated);
    moe::workspace ws;
    ws.reset();
    std::vector<float> g(static_cast<std::size_t>(T), 1.0f);
    shared.gates(moe::view(x), g.data(), ws);
    moe::row_matrix<float> y(T, d);
    y.setZero();
    moe::device::serial{}.accumulate_dense(moe::view(x), shared.bank(), gated ? g.data() : nullptr, moe::view(y), ws);
    std::vector<double> want(static_cast<std::size_t>(T * d), 0.0);
    for (index t = 0; t < T; ++t) {
      double gt = 1.0;
      if (gated) {
        double logit = 0;
        for (index i = 0; i < d; ++i) logit += static_cast<double>(gate[static_cast<std::size_t>(i)]) * x(t, i);
        gt = 1.0 / (1.0 + std::exp(-logit));
        CHECK(g[static_cast<std::size_t>(t)] == Approx(gt).epsilon(1e-5));
      }
      for (index e = 0; e < 2; ++e) w.accumulate(e, x.data() + t * d, gt, want.data() + t * d);
    }
    CHECK(moe_test::relative_error(y, want) < 1e-5);
  }
  CHECK_THROWS_WITH(moe::shared_experts<moe::swiglu_experts<float>>(moe_test::make_bank(w), std::vector<float>(3)),
                    Catch::Contains("parameter 'gate.size()' must be equal to 24, got 3"));
}

}  // namespace

namespace {
using moe::index;

TEST_CASE("swiglu_experts<bf16>: within 1e-2 of fp32, thread-count invariant, built from fp32 or bf16 arrays", "[experts][swiglu][bf16]") {
  moe_test::rng rng(9);
  const index E = 6, d = 96, f = 40, T = 50;
  const auto w = moe_test::random_swiglu(rng, E, d, f);
  const moe::swiglu_experts<float> fp32 = moe_test::make_bank(w);
  const moe::swiglu_experts<moe::bf16> from_float(w.gate, w.up, w.down);
  auto to_bf16 = [](const moe::row_matrix<float>& m) {
    std::vector<moe::bf16> v(static_cast<std::size_t>(m.size()));
    for (index i = 0; i < m.size(); ++i) v[static_cast<std::size_t>(i)] = moe::bf16(m.data()[i]);
    return v;
  };
  const auto g = to_bf16(w.gate), u = to_bf16(w.up), dn = to_bf16(w.down);
  const moe::swiglu_experts<moe::bf16> from_bf16(g.data(), u.data(), dn.data(), {E, d, f});
  CHECK(from_bf16.bytes_per_expert() * 2 == fp32.bytes_per_expert());
  const auto x = rng.matrix(T, d);
  moe::routing_plan plan;
  plan.reset(T, 2, E);
  for (index t = 0; t < T; ++t) {
    plan.set(t, 0, static_cast<std::int32_t>(t % E), 0.7f);
    plan.set(t, 1, static_cast<std::int32_t>((t * 5 + 1) % E), 0.3f);
  }
  plan.build_expert_major();
  moe::workspace ws;
  auto run = [&](const auto& bank, auto device) {
    moe::row_matrix<float> y(T, d);
    ws.reset();
    device.dispatch(plan, moe::view(x), bank, moe::view(y), ws);
    return y;
  };
  const auto y32 = run(fp32, moe::device::serial{});
  const auto yb = run(from_float, moe::device::serial{});
  CHECK((yb - y32).norm() / y32.norm() < 1e-2);
  CHECK((yb - y32).norm() / y32.norm() > 0.0);  // really bf16
  CHECK(run(from_bf16, moe::device::serial{}) == yb);
  CHECK(run(from_float, moe::device::cpu{2}) == yb);
  CHECK(run(from_float, moe::device::cpu{1}) == yb);
}

}  // namespace
