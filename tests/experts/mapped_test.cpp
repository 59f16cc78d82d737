// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/experts/mapped.hpp: experts computed in place from row-major weights.
#include <catch2/catch.hpp>

#include <cstddef>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <moe/device/cpu.hpp>
#include <moe/device/serial.hpp>
#include <moe/experts/mapped.hpp>
#include <moe/experts/shared.hpp>
#include <moe/layer.hpp>
#include <moe/routing/routers/top_k.hpp>

#include "../support/compare.hpp"
#include "../support/layers.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;

/// `m` (row-major) as bytes of element type t, each row padded to `ld` elements, starting
/// `offset` bytes into the buffer (to test unaligned tensors).
std::vector<std::byte> encode(const moe::row_matrix<float>& m, moe::element_type t, index ld, std::size_t offset) {
  const std::size_t es = moe::element_bytes(t);
  std::vector<std::byte> b(offset + static_cast<std::size_t>(m.rows() * ld) * es, std::byte{0x7f});
  for (index r = 0; r < m.rows(); ++r) {
    for (index c = 0; c < m.cols(); ++c) {
      std::byte* p = b.data() + offset + static_cast<std::size_t>(r * ld + c) * es;
      const float v = m(r, c);
      if (t == moe::element_type::f32) {
        std::memcpy(p, &v, 4);
      } else {
        const std::uint16_t bits = t == moe::element_type::bf16 ? moe::bf16(v).bits : moe::f16(v).bits;
        std::memcpy(p, &bits, 2);
      }
    }
  }
  return b;
}

/// `m` rounded through element type t (what the in-place bank reads, widened).
moe::row_matrix<float> rounded(moe::row_matrix<float> m, moe::element_type t) {
  for (index i = 0; i < m.size(); ++i) {
    float& v = m.data()[i];
    if (t == moe::element_type::bf16) v = static_cast<float>(moe::bf16(v));
    if (t == moe::element_type::f16) v = static_cast<float>(moe::f16(v));
  }
  return m;
}

/// Weights of a naive bank held as encoded bytes, and an in-place bank over them.
struct encoded_bank {
  std::shared_ptr<std::vector<std::byte>> gate, up, down;
  moe::mapped_swiglu_experts bank;
};

encoded_bank encode_bank(const moe_test::naive_swiglu& w, moe::element_type t, index pad = 0, std::size_t offset = 0) {
  const index E = w.experts, d = w.d, f = w.f;
  auto g = std::make_shared<std::vector<std::byte>>(encode(w.gate, t, d + pad, offset));
  auto u = std::make_shared<std::vector<std::byte>>(encode(w.up, t, d + pad, offset));
  auto dn = std::make_shared<std::vector<std::byte>>(encode(w.down, t, f + pad, offset));
  auto src = [&](const std::vector<std::byte>& b, index rows, index cols) {
    auto s = moe::weight_source::stacked(t, b.data() + offset, E, rows, cols);
    s.row_stride = cols + pad;
    s.expert_stride = rows * (cols + pad);
    return s;
  };
  struct owner {
    std::shared_ptr<std::vector<std::byte>> a, b, c;
  };
  auto keep = std::make_shared<const owner>(owner{g, u, dn});
  moe::mapped_swiglu_experts bank(src(*g, f, d), src(*u, f, d), src(*dn, d, f), keep);
  return {g, u, dn, std::move(bank)};
}

/// Plan: token t to experts t % E (weight 0.7) and (5t + 1) % E (weight 0.3).
moe::routing_plan two_slot_plan(index T, index E) {
  moe::routing_plan plan;
  plan.reset(T, 2, E);
  for (index t = 0; t < T; ++t) {
    plan.set(t, 0, static_cast<std::int32_t>(t % E), 0.7f);
    plan.set(t, 1, static_cast<std::int32_t>((t * 5 + 1) % E), 0.3f);
  }
  plan.build_expert_major();
  return plan;
}

template <class Bank, class Device>
moe::row_matrix<float> dispatch(const moe::routing_plan& plan, const moe::row_matrix<float>& x, const Bank& bank, Device device) {
  moe::row_matrix<float> y(x.rows(), x.cols());
  moe::workspace ws;
  device.dispatch(plan, moe::view(x), bank, moe::view(y), ws);
  return y;
}

TEST_CASE("mapped_experts: fp32, bf16 and fp16 weights equal the naive FFN of the same values", "[experts][mapped]") {
  moe_test::rng rng(41);
  for (const auto t : {moe::element_type::f32, moe::element_type::bf16, moe::element_type::f16}) {
    for (const index d : {1, 16, 33, 72, 130}) {
      for (const index f : {1, 8, 40, 67}) {
        const index E = 3, T = 14;
        auto w = moe_test::random_swiglu(rng, E, d, f);
        const auto eb = encode_bank(w, t);
        CHECK(eb.bank.num_experts() == E);
        CHECK(eb.bank.hidden() == d);
        CHECK(eb.bank.intermediate() == f);
        CHECK(eb.bank.weight_type() == t);
        CHECK(eb.bank.bytes_per_expert() == 3.0 * static_cast<double>(d * f * static_cast<index>(moe::element_bytes(t))));
        w.gate = rounded(w.gate, t);
        w.up = rounded(w.up, t);
        w.down = rounded(w.down, t);
        const auto x = rng.matrix(T, d);
        moe::routing_plan plan;
        plan.reset(T, 1, E);
        for (index i = 0; i < T; ++i) plan.set(i, 0, static_cast<std::int32_t>(i % E), 0.5f + static_cast<float>(i) / T);
        plan.build_expert_major();
        const auto y = dispatch(plan, x, eb.bank, moe::device::serial{});
        std::vector<double> want(static_cast<std::size_t>(T * d), 0.0);
        for (index i = 0; i < T; ++i) {
          w.accumulate(i % E, x.data() + i * d, 0.5 + static_cast<double>(static_cast<float>(i) / T), want.data() + i * d);
        }
        INFO(moe::element_name(t) << ", d = " << d << ", f = " << f);
        CHECK(moe_test::relative_error(y, want) < 1e-5);
      }
    }
  }
}

TEST_CASE("mapped_experts: widened bf16 and fp16 weights give the bits of fp32 weights of the same values", "[experts][mapped]") {
  moe_test::rng rng(42);
  const index E = 4, d = 70, f = 45, T = 23;
  const auto w = moe_test::random_swiglu(rng, E, d, f);
  const auto plan = two_slot_plan(T, E);
  const auto x = rng.matrix(T, d);
  for (const auto t : {moe::element_type::bf16, moe::element_type::f16}) {
    auto r = w;
    r.gate = rounded(w.gate, t);
    r.up = rounded(w.up, t);
    r.down = rounded(w.down, t);
    INFO(moe::element_name(t));
    CHECK(moe_test::bitwise_equal(dispatch(plan, x, encode_bank(w, t).bank, moe::device::serial{}),
                                  dispatch(plan, x, encode_bank(r, moe::element_type::f32).bank, moe::device::serial{})));
  }
}

TEST_CASE("mapped_experts: padded rows, unaligned tensors, batch and thread counts give the same bits", "[experts][mapped]") {
  moe_test::rng rng(43);
  const index E = 5, d = 67, f = 50, T = 61;
  const auto w = moe_test::random_swiglu(rng, E, d, f);
  const auto plan = two_slot_plan(T, E);
  const auto x = rng.matrix(T, d);
  for (const auto t : {moe::element_type::f32, moe::element_type::bf16}) {
    INFO(moe::element_name(t));
    const auto base = encode_bank(w, t);
    const auto want = dispatch(plan, x, base.bank, moe::device::serial{});
    CHECK(moe_test::bitwise_equal(dispatch(plan, x, encode_bank(w, t, 3, 1).bank, moe::device::serial{}), want));
    CHECK(moe_test::bitwise_equal(dispatch(plan, x, base.bank, moe::device::cpu{1}), want));
    CHECK(moe_test::bitwise_equal(dispatch(plan, x, base.bank, moe::device::cpu{2}), want));
    CHECK(moe_test::bitwise_equal(dispatch(plan, x, base.bank, moe::device::cpu{3}), want));
    // Each token alone gives its row of the batch.
    for (const index i : {index{0}, index{17}, T - 1}) {
      moe::routing_plan one;
      one.reset(1, 2, E);
      one.set(0, 0, static_cast<std::int32_t>(i % E), 0.7f);
      one.set(0, 1, static_cast<std::int32_t>((i * 5 + 1) % E), 0.3f);
      one.build_expert_major();
      const moe::row_matrix<float> xi = x.row(i);
      const auto yi = dispatch(one, xi, base.bank, moe::device::cpu{2});
      INFO("token " << i);
      CHECK(std::memcmp(yi.data(), want.data() + i * d, sizeof(float) * static_cast<std::size_t>(d)) == 0);
    }
  }
}

TEST_CASE("mapped_experts: one tensor per expert, shared experts and a layer over host devices", "[experts][mapped]") {
  moe_test::rng rng(44);
  const index E = 6, d = 48, f = 20, T = 31;
  const auto w = moe_test::random_swiglu(rng, E, d, f);
  const auto ws = moe_test::random_swiglu(rng, 1, d, 2 * f);
  std::vector<const void*> g, u, dn;
  for (index e = 0; e < E; ++e) {
    g.push_back(w.gate.data() + e * f * d);
    u.push_back(w.up.data() + e * f * d);
    dn.push_back(w.down.data() + e * d * f);
  }
  using f32 = moe::weight_source;
  const moe::mapped_swiglu_experts separate(f32::separate(moe::element_type::f32, g, f, d),
                                            f32::separate(moe::element_type::f32, u, f, d),
                                            f32::separate(moe::element_type::f32, dn, d, f));
  const auto stacked = encode_bank(w, moe::element_type::f32);
  const moe::mapped_swiglu_experts shared_bank(f32::stacked(moe::element_type::f32, ws.gate.data(), 1, 2 * f, d),
                                               f32::stacked(moe::element_type::f32, ws.up.data(), 1, 2 * f, d),
                                               f32::stacked(moe::element_type::f32, ws.down.data(), 1, d, 2 * f));
  const moe::shared_experts<moe::mapped_swiglu_experts> shared(shared_bank);
  const auto router_w = rng.matrix(E, d);
  const auto x = rng.matrix(T, d);
  // The naive layer: top-2 softmax over the router, plus the shared expert.
  auto want = moe_test::naive_layer(router_w, w, x, 2, false);
  for (index i = 0; i < T; ++i) ws.accumulate(0, x.data() + i * d, 1.0, want.data() + i * d);
  moe::row_matrix<float> y1(T, d), y2(T, d), y3(T, d);
  moe::layer<moe::top_k<>, moe::mapped_swiglu_experts, moe::device::serial>(moe::top_k<>(router_w, {.k = 2}), separate, shared)
      .forward(x, y1);
  moe::layer<moe::top_k<>, moe::mapped_swiglu_experts, moe::device::cpu>(moe::top_k<>(router_w, {.k = 2}), stacked.bank, shared,
                                                                        moe::device::cpu{2})
      .forward(x, y2);
  moe::layer<moe::top_k<>, moe::mapped_swiglu_experts, moe::device::cpu>(moe::top_k<>(router_w, {.k = 2}), stacked.bank, shared,
                                                                        moe::device::cpu{1})
      .forward(x, y3);
  CHECK(moe_test::relative_error(y1, want) < 1e-5);
  CHECK(moe_test::bitwise_equal(y1, y2));
  CHECK(moe_test::bitwise_equal(y1, y3));
}

TEST_CASE("mapped_experts: the owner keeps the weights alive", "[experts][mapped]") {
  moe_test::rng rng(45);
  const index E = 2, d = 20, f = 9, T = 7;
  const auto w = moe_test::random_swiglu(rng, E, d, f);
  const auto plan = two_slot_plan(T, E);
  const auto x = rng.matrix(T, d);
  auto eb = encode_bank(w, moe::element_type::bf16);
  const auto want = dispatch(plan, x, eb.bank, moe::device::serial{});
  const moe::mapped_swiglu_experts copy = eb.bank;
  eb = encode_bank(moe_test::random_swiglu(rng, E, d, f), moe::element_type::bf16);  // the original's buffers are gone
  CHECK(moe_test::bitwise_equal(dispatch(plan, x, copy, moe::device::serial{}), want));
  CHECK_FALSE(moe_test::bitwise_equal(dispatch(plan, x, eb.bank, moe::device::serial{}), want));
}

TEST_CASE("mapped_experts: layouts it cannot read in place and inconsistent sources throw moe::error", "[experts][mapped][error]") {
  const index E = 2, d = 8, f = 4;
  std::vector<float> a(static_cast<std::size_t>(E * f * d)), b(a.size()), c(a.size());
  using src = moe::weight_source;
  const auto F = moe::element_type::f32;
  const auto throws = [&](const src& g, const src& u, const src& dn, const std::string& what) {
    INFO(what);
    CHECK_THROWS_AS(moe::mapped_swiglu_experts(g, u, dn), moe::error);
    CHECK_THROWS_WITH(moe::mapped_swiglu_experts(g, u, dn), Catch::Contains(what));
  };
  throws(src::stacked_transposed(F, a.data(), E, f, d), src::stacked(F, b.data(), E, f, d), src::stacked(F, c.data(), E, d, f),
         "gate.col_stride");
  throws(src::stacked(F, a.data(), E, f, d), src::stacked(F, b.data(), E, f, d), src::stacked_transposed(F, c.data(), E, d, f),
         "down.col_stride");
  throws(src::stacked(F, a.data(), E, f, d), src::stacked(moe::element_type::bf16, b.data(), E, f, d),
         src::stacked(F, c.data(), E, d, f), "up.type");
  throws(src::stacked(F, a.data(), E, f, d), src::stacked(F, b.data(), E, f, d), src::stacked(F, c.data(), E, d, f + 1), "down.cols");
  throws(src::stacked(F, a.data(), E, f, d), src::stacked(F, b.data(), E + 1, f, d), src::stacked(F, c.data(), E, d, f), "up.experts");
  auto short_rows = src::stacked(F, a.data(), E, f, d);
  short_rows.row_stride = d - 1;
  throws(short_rows, src::stacked(F, b.data(), E, f, d), src::stacked(F, c.data(), E, d, f), "row_stride");
  throws(src::stacked(F, nullptr, E, f, d), src::stacked(F, b.data(), E, f, d), src::stacked(F, c.data(), E, d, f), "gate.data");
}

}  // namespace
