// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/routing/recording.hpp (docs/routing-spec.md §19.1): the layout
// `[tokens × layers × k]` of int16 ids (and fp32 weights), how empty slots and skipped tokens are
// stored, and every check of record().
#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

#include <moe/plan.hpp>
#include <moe/routing/recording.hpp>
#include <moe/routing/routers/top_k.hpp>

#include "../support/policies.hpp"
#include "../support/random.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;
using Catch::Matchers::Contains;

TEST_CASE("route_recording: records plans into the [tokens x layers x k] layout", "[routing][recording]") {
  const index T = 3, L = 2, k = 3, E = 5;
  moe::route_recorder rec(T, L, k, true);
  CHECK(rec.num_tokens() == T);
  CHECK(rec.num_layers() == L);
  CHECK(rec.k() == k);
  CHECK(rec.has_weights());
  CHECK(rec.num_experts() == 0);
  CHECK(rec.ids().size() == static_cast<std::size_t>(T * L * k));
  CHECK(!rec.recorded(0));
  CHECK(!rec.recorded(1));
  // A plan of two slots (fewer than k) over E experts, for layer 1.
  moe::routing_plan plan;
  plan.reset(T, 2, E);
  plan.set(0, 0, 4, 0.75f);
  plan.set(0, 1, 2, 0.25f);
  plan.set(1, 0, moe::no_expert, 0.0f);  // a null expert
  plan.set(1, 1, 0, 0.0f);               // a zero weight keeps its expert
  plan.set(2, 0, 1, 0.5f);
  plan.set(2, 1, 3, 0.5f);
  plan.set_passes(2, 0);  // a skipped token records nothing
  rec.record(1, plan);
  CHECK(rec.recorded(1));
  CHECK(!rec.recorded(0));
  CHECK(rec.num_experts() == E);
  const std::vector<std::int16_t> want = {
      -1, -1, -1, 4, 2, -1,   // token 0: layer 0 (never recorded), layer 1
      -1, -1, -1, -1, 0, -1,  // token 1
      -1, -1, -1, -1, -1, -1  // token 2: skipped
  };
  CHECK(std::vector<std::int16_t>(rec.ids().begin(), rec.ids().end()) == want);
  CHECK(rec.expert(0, 1, 0) == 4);
  CHECK(rec.expert(1, 1, 1) == 0);
  CHECK(rec.weight(0, 1, 0) == 0.75f);
  CHECK(rec.weight(0, 1, 1) == 0.25f);
  CHECK(rec.weight(1, 1, 1) == 0.0f);
  CHECK(rec.weight(2, 1, 0) == 0.0f);
  // Layer 0 from a top_k plan; recording a layer again overwrites it.
  moe_test::rng rng(1911);
  const moe::top_k<> router(rng.matrix(E, 8), {.k = 3});
  const auto x = rng.matrix(T, 8);
  for (int pass = 0; pass < 2; ++pass) {
    const auto p = moe_test::route(router, pass == 0 ? rng.matrix(T, 8) : x);
    rec.record(0, p);
  }
  const auto p = moe_test::route(router, x);
  for (index t = 0; t < T; ++t) {
    for (index s = 0; s < k; ++s) {
      CHECK(rec.expert(t, 0, s) == p.expert(t, s));
      CHECK(rec.weight(t, 0, s) == p.weight(t, s));
    }
  }
  CHECK(rec.recorded(0));
  // Without weights: weight() is 0, weights() empty.
  moe::route_recording ids_only(T, 1, k);
  ids_only.record(0, p);
  CHECK(!ids_only.has_weights());
  CHECK(ids_only.weights().empty());
  CHECK(ids_only.weight(0, 0, 0) == 0.0f);
  CHECK(ids_only.expert(0, 0, 0) == p.expert(0, 0));
}

TEST_CASE("route_recording: the checks of the constructor and of record name the parameter", "[routing][recording][errors]") {
  CHECK_THROWS_WITH(moe::route_recording(-1, 1, 1), Contains("parameter 'tokens' must be >= 0, got -1"));
  CHECK_THROWS_WITH(moe::route_recording(1, 0, 1), Contains("parameter 'layers' must be >= 1, got 0"));
  CHECK_THROWS_WITH(moe::route_recording(1, 1, 0), Contains("parameter 'k' must be >= 1, got 0"));
  CHECK_THROWS_WITH(moe::route_recording(1, 1, 1, false, 40000), Contains("parameter 'experts' must be in [0, 32767], got 40000"));
  moe::route_recording rec(4, 2, 2, false, 6);
  moe::routing_plan plan;
  plan.reset(3, 2, 6);
  CHECK_THROWS_WITH(rec.record(0, plan), Contains("moe::route_recording::record: parameter 'plan.num_tokens()' must be equal to 4, got 3"));
  plan.reset(4, 3, 6);
  CHECK_THROWS_WITH(rec.record(0, plan), Contains("parameter 'plan.max_slots()' must be <= k = 2, got 3"));
  plan.reset(4, 2, 7);
  CHECK_THROWS_WITH(rec.record(0, plan), Contains("parameter 'plan.num_experts()' must be equal to 6, got 7"));
  plan.reset(4, 2, 40000);
  CHECK_THROWS_WITH(rec.record(0, plan), Contains("parameter 'plan.num_experts()' must be <= 32767 (int16 ids), got 40000"));
  plan.reset(4, 2, 6);
  CHECK_THROWS_WITH(rec.record(2, plan), Contains("parameter 'layer' must be in [0, 1], got 2"));
  plan.experts(2)[1] = 6;  // an id the plan's expert count does not have
  CHECK_THROWS_WITH(rec.record(1, plan), Contains("parameter 'plan.expert(2, 1)' must be in [0, 6) or moe::no_expert, got 6"));
  CHECK(!rec.recorded(1));  // a bad plan records nothing
  CHECK_THROWS_WITH(rec.set_recorded(5), Contains("parameter 'layer' must be in [0, 1], got 5"));
  rec.ids()[3] = 9;
  CHECK_THROWS_WITH(rec.set_num_experts(6), Contains("'expert id of token 0, layer 1, slot 1' must be in [-1, 6), got 9"));
}

}  // namespace
