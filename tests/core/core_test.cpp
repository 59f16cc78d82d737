// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/core/: plan, views, errors, workspace, stats.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <string>

#include <moe/core/error.hpp>
#include <moe/plan.hpp>
#include <moe/core/stats.hpp>
#include <moe/core/views.hpp>
#include <moe/core/workspace.hpp>

#include "../support/random.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;

TEST_CASE("routing_plan: reset fills no_expert, zero weights and one pass", "[core][plan]") {
  moe::routing_plan plan;
  plan.reset(3, 2, 4);
  CHECK(plan.num_tokens() == 3);
  CHECK(plan.max_slots() == 2);
  CHECK(plan.num_experts() == 4);
  for (index t = 0; t < 3; ++t) {
    CHECK(plan.passes(t) == 1);
    CHECK(plan.active_slots(t) == 0);
    for (index s = 0; s < 2; ++s) {
      CHECK(plan.expert(t, s) == moe::no_expert);
      CHECK(plan.weight(t, s) == 0.0f);
    }
  }
  CHECK_FALSE(plan.has_entropy());
  CHECK_FALSE(plan.has_expert_major());
}

TEST_CASE("routing_plan: expert-major view is a stable counting sort", "[core][plan]") {
  moe::routing_plan plan;
  plan.reset(4, 2, 3);
  // token: experts
  plan.set(0, 0, 2, 0.5f); plan.set(0, 1, 0, 0.5f);
  plan.set(1, 0, 0, 1.0f);                         // slot 1 stays no_expert
  plan.set(2, 0, 2, 0.7f); plan.set(2, 1, 1, 0.3f);
  plan.set(3, 0, 0, 0.6f); plan.set(3, 1, 2, 0.4f);
  plan.build_expert_major();
  REQUIRE(plan.has_expert_major());
  const auto off = plan.offsets();
  REQUIRE(off.size() == 4);
  CHECK(off[0] == 0);
  CHECK(off[1] == 3);  // expert 0: tokens 0, 1, 3
  CHECK(off[2] == 4);  // expert 1: token 2
  CHECK(off[3] == 7);  // expert 2: tokens 0, 2, 3
  const auto e0 = plan.entries(0);
  REQUIRE(e0.size() == 3);
  CHECK(e0[0].token == 0); CHECK(e0[0].slot == 1);
  CHECK(e0[1].token == 1); CHECK(e0[1].slot == 0);
  CHECK(e0[2].token == 3); CHECK(e0[2].slot == 0);
  const auto e2 = plan.entries(2);
  CHECK(e2[0].token == 0);
  CHECK(e2[1].token == 2);
  CHECK(e2[2].token == 3); CHECK(e2[2].slot == 1);
  CHECK(plan.load(1) == 1);
  CHECK(plan.total_assignments() == 7);
  plan.set(1, 1, 1, 0.25f);
  CHECK_FALSE(plan.has_expert_major());
}

TEST_CASE("routing_plan: expert-major view matches a brute-force grouping on random plans", "[core][plan]") {
  moe_test::rng rng(7);
  for (int trial = 0; trial < 50; ++trial) {
    const index T = rng.integer(0, 40), K = rng.integer(1, 5), E = rng.integer(1, 9);
    moe::routing_plan plan;
    plan.reset(T, K, E);
    for (index t = 0; t < T; ++t)
      for (index s = 0; s < K; ++s)
        if (rng.integer(0, 3) != 0) {
          // A quarter of the assigned slots have weight ±0: they compute nothing (no entry).
          const int kind = rng.integer(0, 7);
          const float weight = kind == 0 ? 0.0f : kind == 1 ? -0.0f : rng.uniform();
          plan.set(t, s, rng.integer(0, static_cast<int>(E) - 1), weight);
        }
    plan.build_expert_major();
    index pos = 0;
    for (index e = 0; e < E; ++e) {
      CHECK(plan.offsets()[e] == pos);
      for (index t = 0; t < T; ++t)
        for (index s = 0; s < K; ++s)
          if (plan.expert(t, s) == e && plan.weight(t, s) != 0.0f) {
            const auto& entry = plan.entries()[static_cast<std::size_t>(pos++)];
            CHECK(entry.token == t);
            CHECK(entry.slot == s);
            CHECK(entry.weight == plan.weight(t, s));
          }
    }
    CHECK(plan.offsets()[E] == pos);
  }
}

TEST_CASE("routing_plan: an expert id out of range is a moe::error naming the slot", "[core][plan][error]") {
  moe::routing_plan plan;
  plan.reset(2, 2, 4);
  plan.set(1, 1, 4, 1.0f);
  try {
    plan.build_expert_major();
    FAIL("expected moe::error");
  } catch (const moe::error& e) {
    const std::string msg = e.what();
    CHECK(e.id() == "moe.error.plan");
    CHECK(msg.find("expert(1, 1)") != std::string::npos);
    CHECK(msg.find("got 4") != std::string::npos);
  }
}

TEST_CASE("routing_plan: no_expert slots always carry weight 0", "[core][plan]") {
  moe::routing_plan plan;
  plan.reset(1, 1, 2);
  plan.set(0, 0, moe::no_expert, 0.9f);
  CHECK(plan.weight(0, 0) == 0.0f);
}

TEST_CASE("moe::error carries a stable id and derives from std::invalid_argument", "[core][error]") {
  try {
    moe::detail::check_range<index>("moe::thing", "k", 0, 1, 8);
    FAIL("expected moe::error");
  } catch (const std::invalid_argument& e) {
    const std::string msg = e.what();
    CHECK(msg == "[moe.error.config] moe::thing: parameter 'k' must be in [1, 8], got 0");
  }
  CHECK_THROWS_AS(moe::detail::check_extent("moe::thing", "x.cols()", 3, 4), moe::error);
  CHECK_THROWS_WITH(moe::detail::check_extent("moe::thing", "x.cols()", 3, 4),
                    "[moe.error.shape] moe::thing: parameter 'x.cols()' must be equal to 4, got 3");
}

TEST_CASE("views map caller memory without copies", "[core][views]") {
  moe::row_matrix<float> m(3, 4);
  m.setZero();
  auto v = moe::view(m);
  CHECK(v.data() == m.data());
  v(1, 2) = 5.0f;
  CHECK(m(1, 2) == 5.0f);
  const moe::row_matrix<float>& cm = m;
  auto cv = moe::view(cm);
  CHECK(cv.data() == m.data());
  CHECK(cv.outerStride() == 4);
  // A block of rows and columns keeps the parent's stride.
  auto b = moe::view(m.block(1, 1, 2, 2));
  CHECK(b.data() == &m(1, 1));
  CHECK(b.outerStride() == 4);
  float raw[6] = {1, 2, 3, 4, 5, 6};
  auto r = moe::map(raw, 2, 2, 3);
  CHECK(r(1, 1) == 5.0f);
}

TEST_CASE("views of vectors and single rows follow their real strides", "[core][views]") {
  // A column of a row-major matrix: n × 1, consecutive elements one row apart.
  moe::row_matrix<float> m(4, 3);
  for (index i = 0; i < 12; ++i) m.data()[i] = static_cast<float>(i);
  auto col = moe::view(m.col(1));
  CHECK(col.rows() == 4);
  CHECK(col.cols() == 1);
  CHECK(col(2, 0) == m(2, 1));
  // A row of a column-major matrix has strided elements: rejected, not misread.
  Eigen::MatrixXf cm = Eigen::MatrixXf::Random(5, 4);
  CHECK_THROWS_WITH(moe::view(cm.row(2)), Catch::Contains("parameter 'innerStride()' must be 1 (contiguous rows), got 5"));
  // A plain column vector maps as n × 1.
  Eigen::VectorXf v = Eigen::VectorXf::LinSpaced(6, 0, 5);
  const auto vv = moe::view(v);
  CHECK(vv.rows() == 6);
  CHECK(vv(3, 0) == 3.0f);
}

TEST_CASE("routing_plan: pass counts saturate at 0 and 255", "[core][plan]") {
  moe::routing_plan plan;
  plan.reset(2, 1, 1);
  plan.set_passes(0, 300);
  plan.set_passes(1, -2);
  CHECK(plan.passes(0) == 255);
  CHECK(plan.passes(1) == 0);
}

TEST_CASE("workspace: buffers are aligned, grow once, then are reused", "[core][workspace]") {
  moe::workspace ws;
  ws.reset();
  float* a = ws.take<float>(100);
  double* b = ws.take<double>(3);
  CHECK(reinterpret_cast<std::uintptr_t>(a) % 64 == 0);
  CHECK(reinterpret_cast<std::uintptr_t>(b) % 64 == 0);
  a[99] = 1.0f;
  b[2] = 2.0;
  ws.reset();
  const auto cap = ws.capacity();
  CHECK(cap >= 100 * sizeof(float) + 3 * sizeof(double));
  float* a2 = ws.take<float>(100);
  double* b2 = ws.take<double>(3);
  CHECK(ws.capacity() == cap);
  CHECK(reinterpret_cast<char*>(b2) - reinterpret_cast<char*>(a2) == 448);
  int* z = ws.take_zeroed<int>(5);
  for (int i = 0; i < 5; ++i) CHECK(z[i] == 0);
}

TEST_CASE("routing_stats: load, experts per token, entropies", "[core][stats]") {
  moe::routing_plan plan;
  plan.reset(4, 2, 4);
  plan.set(0, 0, 0, 0.5f); plan.set(0, 1, 1, 0.5f);
  plan.set(1, 0, 0, 1.0f);
  plan.set(2, 0, 2, 1.0f); plan.set(2, 1, 3, 1.0f);
  // token 3 routed nowhere
  plan.set_entropy(0, 1.0f); plan.set_entropy(1, 0.0f); plan.set_entropy(2, 2.0f); plan.set_entropy(3, 1.0f);
  plan.set_passes(3, 0);
  const auto s = moe::compute_stats(plan);
  CHECK(s.load == std::vector<index>{2, 1, 1, 1});
  CHECK(s.assignments == 5);
  CHECK(s.mean_experts_per_token == Approx(1.25));
  CHECK(s.tokens_routed_nowhere == 1);
  CHECK(s.tokens_skipped == 1);
  CHECK(s.routing_entropy == Approx(1.0));
  const double q = 0.4, r = 0.2;
  CHECK(s.load_entropy == Approx(-(q * std::log(q) + 3 * r * std::log(r))));
  CHECK(s.max_over_mean_load == Approx(2.0 / 1.25));
  moe::routing_plan empty;
  empty.reset(0, 2, 3);
  const auto e = moe::compute_stats(empty);
  CHECK(e.mean_experts_per_token == 0.0);
  CHECK(std::isnan(e.routing_entropy));
}

}  // namespace
