// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/routing/routers/topk_sigmoid.hpp against Llama 4's router: Hugging Face
// transformers, src/transformers/models/llama4/modeling_llama4.py, class Llama4Router
// (`router_logits = W x`; `topk(router_logits, top_k)`; the selected logits scattered into a row
// of -inf, then `sigmoid`, so the weight of a selected expert is the sigmoid of its logit and the
// others get sigmoid(-inf) = 0; no renormalisation), as Llama4TextMoe uses it. Golden values
// worked out by hand from that formula.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <limits>

#include <moe/kernels/gemm.hpp>
#include <moe/moe.hpp>

#include "../../support/conformance.hpp"
#include "../../support/policies.hpp"

namespace {
using moe::index;
const float inf = std::numeric_limits<float>::infinity();

TEST_CASE("topk_sigmoid: Llama 4 routing, golden values", "[routing][topk_sigmoid]") {
  const auto z = moe_test::fmatrix({
      {1, 3, 2, -1},            // top-1: expert 1, sigmoid(3)
      {2, 2, 0, 0},             // a tie: the lower expert
      {-200, -inf, -300, -inf}, // selected logits whose sigmoid underflows: weight 0
  });
  const moe::topk_sigmoid llama4(moe_test::eye(4), moe::llama4_router_options());
  CHECK(llama4.options().k == 1);
  CHECK_FALSE(llama4.options().renormalize);
  const auto plan = moe_test::route_logits(llama4, z);
  moe_test::check_slots(plan, 0, {1}, {0.9525741268224334});
  moe_test::check_slots(plan, 1, {0}, {0.8807970779778823});
  CHECK(plan.expert(2, 0) == 0);
  CHECK(plan.weight(2, 0) == 0.0f);  // the slot keeps its expert and computes nothing
  // k = 2: sigmoid(3), sigmoid(2), not renormalised (they sum past 1).
  const auto two = moe_test::route_logits(moe::topk_sigmoid(moe_test::eye(4), moe::llama4_router_options(2)), z);
  moe_test::check_slots(two, 0, {1, 2}, {0.9525741268224334, 0.8807970779778823});
  CHECK(two.weight(0, 0) + two.weight(0, 1) > 1.0f);
  moe_test::check_slots(two, 2, {0, 2}, {0.0, 0.0});  // -inf never selected, finite ones are
  // Every weight is the sigmoid of the selected logit, on random logits (the reference's formula).
  moe_test::rng rng(2701);
  const auto w = rng.matrix(16, 20);
  const auto x = rng.matrix(25, 20, 2.0f);
  const moe::topk_sigmoid r(w, moe::llama4_router_options(2));
  const auto packed = moe::kernels::pack_panels(w.data(), 16, 20, 20, moe::kernels::panel_width<moe::kernels::gemm_arch>);
  moe::row_matrix<float> wx(25, 16);
  moe::workspace ws;
  ws.reset();
  moe::kernels::gemm(x.data(), 25, 20, packed, wx.data(), 16, ws);
  const auto p = moe_test::route(r, x);
  for (index t = 0; t < 25; ++t) {
    for (index s = 0; s < 2; ++s) {
      const double zs = wx(t, p.expert(t, s));
      CHECK(moe_test::golden(p.weight(t, s), 1.0 / (1.0 + std::exp(-zs))));
    }
    CHECK(wx(t, p.expert(t, 0)) >= wx(t, p.expert(t, 1)));
  }
  const auto q = moe_test::route_logits(r, wx);
  CHECK(std::memcmp(p.all_weights().data(), q.all_weights().data(), p.all_weights().size_bytes()) == 0);
  moe_test::check_router_conformance(r);
  CHECK_THROWS_WITH(moe::topk_sigmoid(moe_test::eye(4), moe::llama4_router_options(5)),
                    Catch::Contains("moe::top_k: parameter 'k' must be in [1, 4], got 5"));
}

}  // namespace
