// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/routing/routers/sparsemixer.hpp against Phi-3.5-MoE's router at inference:
// Hugging Face transformers, src/transformers/models/phimoe/modeling_phimoe.py, function
// `sparsemixer(scores, jitter_eps, training=False)` as PhimoeTopKRouter calls it. Per choice:
// the largest logit m left (`scores.max`), `factor = |scores|.clamp(min=m)`, experts with
// `(m - scores) / factor > 2·jitter_eps` masked to -inf, `softmax(masked)` gathered at the choice;
// the second choice repeats this with the first one's logit set to -inf. The golden values
// below were worked out by hand from those formulas (1 / Σ exp(z_e - m) over the experts kept).
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

TEST_CASE("sparsemixer: Phi-3.5-MoE inference routing, golden values", "[routing][sparsemixer]") {
  const moe::sparsemixer r(moe_test::eye(4), {.k = 2, .jitter_eps = 0.01f});  // threshold 0.02
  const auto z = moe_test::fmatrix({
      {2.0, 1.99, 1.5, -1},      // gaps to 2: 0.005 (kept), 0.25, 1.5 (masked); then 1.99 alone
      {-1.0, -1.01, -1.03, -3},  // negative: factor |z|; gaps 0.0099 kept, 0.029 masked;
                                 // second choice m = -1.01: -1.03 has gap 0.0194 and is kept
      {0.5, 0.5, 0.5, 0.0},      // ties: lower expert first; 0 has gap 1 to 0.5
      {0, 0, -0.001, -5},        // m = 0: the 0/0 gap is not above the threshold, -0.001 has gap 1
  });
  const auto plan = moe_test::route_logits(r, z);
  // w1 = 1 / (1 + e^-0.01), w2 = 1 (the first expert is masked out, 1.5 and -1 are too far).
  moe_test::check_slots(plan, 0, {0, 1}, {0.502499979166875, 1.0});
  // w1 = 1 / (1 + e^-0.01); w2 = 1 / (1 + e^-0.02).
  moe_test::check_slots(plan, 1, {0, 1}, {0.502499979166875, 0.5049998333399998});
  moe_test::check_slots(plan, 2, {0, 1}, {1.0 / 3.0, 0.5});
  moe_test::check_slots(plan, 3, {0, 1}, {0.5, 1.0});
  // Not renormalised: a token's weights may sum past 1.
  CHECK(plan.weight(0, 0) + plan.weight(0, 1) > 1.0f);
  // The plan's top-1 score is the first choice's weight.
  CHECK(plan.top_score(0) == plan.weight(0, 0));

  // A wider gap (jitter_eps 0.2, threshold 0.4) keeps 1.5 in both choices:
  // w1 = 1 / (1 + e^-0.01 + e^-0.5), w2 = 1 / (1 + e^-0.49).
  const auto wide = moe_test::route_logits(moe::sparsemixer(moe_test::eye(4), {.jitter_eps = 0.2f}), z);
  moe_test::check_slots(wide, 0, {0, 1}, {0.38512189493759325, 0.6201064323430902});
  // jitter_eps 0 keeps only the logits equal to the choice's: each weight is 1 here.
  const auto exact = moe_test::route_logits(moe::sparsemixer(moe_test::eye(4), {.jitter_eps = 0.0f}), z);
  moe_test::check_slots(exact, 0, {0, 1}, {1.0, 1.0});
  moe_test::check_slots(exact, 2, {0, 1}, {1.0 / 3.0, 0.5});
  // k = 3 continues the rule: the third choice (1.5) is alone within its gap.
  const auto three = moe_test::route_logits(moe::sparsemixer(moe_test::eye(4), {.k = 3}), z);
  moe_test::check_slots(three, 0, {0, 1, 2}, {0.502499979166875, 1.0, 1.0});
  // k = 1 is the first choice only.
  const auto one = moe_test::route_logits(moe::sparsemixer(moe_test::eye(4), {.k = 1}), z);
  moe_test::check_slots(one, 1, {0}, {0.502499979166875});
}

TEST_CASE("sparsemixer: infinities, route_logits, conformance and errors", "[routing][sparsemixer][error]") {
  const moe::sparsemixer r(moe_test::eye(4));
  const auto z = moe_test::fmatrix({{inf, 1, inf, 0}, {-inf, 3, -inf, -inf}, {-inf, -inf, -inf, -inf}});
  const auto plan = moe_test::route_logits(r, z);
  moe_test::check_slots(plan, 0, {0, 2}, {0.5, 1.0});  // +inf logits share a choice's weight
  CHECK(plan.active_slots(1) == 1);                      // one logit above -inf: one choice
  moe_test::check_slots(plan, 1, {1}, {1.0});
  CHECK(plan.expert(1, 1) == moe::no_expert);
  CHECK(plan.active_slots(2) == 0);  // all -inf: nowhere

  // route_logits(W x) == route(x), bit for bit, with W x by the canonical GEMM.
  moe_test::rng rng(2501);
  const auto w = rng.matrix(16, 24);
  const auto x = rng.matrix(33, 24, 2.0f);
  const auto packed = moe::kernels::pack_panels(w.data(), w.rows(), w.cols(), w.cols(),
                                                moe::kernels::panel_width<moe::kernels::gemm_arch>);
  moe::row_matrix<float> wx(x.rows(), w.rows());
  moe::workspace ws;
  ws.reset();
  moe::kernels::gemm(x.data(), x.rows(), x.cols(), packed, wx.data(), w.rows(), ws);
  const moe::sparsemixer big(w);
  const auto a = moe_test::route(big, x), b = moe_test::route_logits(big, wx);
  CHECK(std::memcmp(a.all_experts().data(), b.all_experts().data(), a.all_experts().size_bytes()) == 0);
  CHECK(std::memcmp(a.all_weights().data(), b.all_weights().data(), a.all_weights().size_bytes()) == 0);
  // The experts are the top 2 of the logits.
  for (index t = 0; t < x.rows(); ++t) {
    std::int32_t idx[2];
    moe::kernels::top_k(wx.data() + t * wx.cols(), wx.cols(), 2, idx);
    CHECK(a.expert(t, 0) == idx[0]);
    CHECK(a.expert(t, 1) == idx[1]);
  }

  moe_test::check_router_conformance(big);
  moe_test::check_router_conformance(moe::sparsemixer(rng.matrix(8, 12), {.k = 3, .jitter_eps = 0.1f}));
  CHECK_THROWS_WITH(moe::sparsemixer(moe_test::eye(4), {.k = 0}), Catch::Contains("moe::sparsemixer: parameter 'k' must be in [1, 4], got 0"));
  CHECK_THROWS_WITH(moe::sparsemixer(moe_test::eye(4), {.jitter_eps = -0.5f}),
                    Catch::Contains("parameter 'jitter_eps' must be finite and >= 0, got -0.5"));
  CHECK_THROWS_WITH(moe::sparsemixer(moe_test::eye(4), {.jitter_eps = inf}), Catch::Contains("'jitter_eps'"));
  auto nan = moe_test::fmatrix({{0, 1, 2, 3}});
  nan(0, 1) = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH(moe_test::route_logits(r, nan),
                    Catch::Contains("moe::sparsemixer::route_logits: parameter 'z' gives a NaN router logit (token 0, expert 1)"));
  const auto lenient = moe_test::route_logits(moe::sparsemixer(moe_test::eye(4), {.nan = moe::nan_policy::to_neg_inf}), nan);
  moe_test::check_slots(lenient, 0, {3, 2}, {1.0, 1.0});  // 3 and 2 are 1/3 and 1/2 apart
}

}  // namespace
