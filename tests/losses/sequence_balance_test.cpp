// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/losses/sequence_balance.hpp: DeepSeek-V3's sequence-wise balance loss
// (docs/routing-spec.md §4 golden) and its gradient.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include <moe/losses/sequence_balance.hpp>
#include <moe/routing/routers/group_limited.hpp>

#include "../support/gradcheck.hpp"
#include "../support/random.hpp"
#include "../support/policies.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;
using moe_test::golden;
using moe_test::route_logits;

namespace {
std::vector<double> flat(const moe::row_matrix<double>& m) { return {m.data(), m.data() + m.size()}; }
moe::row_matrix<double> unflat(const std::vector<double>& v, index rows, index cols) {
  moe::row_matrix<double> m(rows, cols);
  std::copy(v.begin(), v.end(), m.data());
  return m;
}

}  // namespace

TEST_CASE("sequence_balance_loss: golden of spec §4", "[losses][sequence_balance][golden]") {
  // Logits of the common example; the §4 router (2 groups, 1 kept, k = 2, bias [0, 0, 0.3, 0.1]).
  moe::row_matrix<double> z(3, 4);
  z << 1, 0, -1, 0.5, 0, 1, 0.5, 0.5, 1, 1, -0.5, 1;
  moe::row_matrix<float> w(4, 4);
  w.setIdentity();
  const moe::group_limited<> r(w, {.k = 2, .n_groups = 2, .topk_groups = 1, .route_scale = 2.5f,
                                   .selection_bias = {0.0f, 0.0f, 0.3f, 0.1f}});
  const auto plan = route_logits(r, z.cast<float>());
  // f = [0, 0, 2, 2], P = [0.276920, 0.271739, 0.174991, 0.276350]
  CHECK(golden(moe::sequence_balance_loss(z, plan, {}, {.alpha = 1.0}), 0.902683));
  CHECK(golden(moe::sequence_balance_loss(z, plan), 0.902683e-4));  // alpha = 1e-4 by default
  const index starts[] = {0};
  CHECK(golden(moe::sequence_balance_loss(z, plan, {.sequence_starts = starts}, {.alpha = 1.0}), 0.902683));
}

TEST_CASE("sequence_balance_loss: per sequence, averaged over sequences", "[losses][sequence_balance]") {
  moe_test::rng rng(721);
  const index T = 10, E = 8;
  const moe::row_matrix<double> z = rng.matrix(T, E, 2.0f).cast<double>();
  moe::row_matrix<float> w(E, E);
  w.setIdentity();
  const moe::group_limited<> r(w, {.k = 3, .n_groups = 4, .topk_groups = 2});
  const auto plan = route_logits(r, z.cast<float>());
  const index starts[] = {0, 4, 5};
  const double all = moe::sequence_balance_loss(z, plan, {.sequence_starts = starts}, {.alpha = 1.0});
  // Each sequence alone (routing is batch invariant, so the sub-plans are the plan's rows).
  double sum = 0;
  const std::pair<index, index> ranges[] = {{0, 4}, {4, 5}, {5, 10}};
  for (const auto& [b, e] : ranges) {
    const moe::row_matrix<double> zs = z.middleRows(b, e - b);
    sum += moe::sequence_balance_loss(zs, route_logits(r, zs.cast<float>()), {}, {.alpha = 1.0});
  }
  CHECK(all == Approx(sum / 3).epsilon(1e-12));
  CHECK(all != Approx(moe::sequence_balance_loss(z, plan, {}, {.alpha = 1.0})));
}

TEST_CASE("sequence_balance_loss: gradients match finite differences", "[losses][sequence_balance][gradient]") {
  moe_test::rng rng(722);
  const index T = 9, E = 8;
  const moe::row_matrix<double> z = rng.matrix(T, E, 2.0f).cast<double>();
  moe::row_matrix<float> w(E, E);
  w.setIdentity();
  const moe::group_limited<> r(w, {.k = 2, .n_groups = 2, .topk_groups = 1});
  const auto plan = route_logits(r, z.cast<float>());
  const index starts[] = {0, 3};
  for (const auto scores : {moe::loss_scores::normalized_sigmoid, moe::loss_scores::softmax}) {
    const moe::sequence_balance_options o{.alpha = 0.8, .scores = scores};
    const moe::route_context ctx{.sequence_starts = starts};
    moe::row_matrix<double> g(T, E);
    moe::sequence_balance_loss(z, plan, ctx, o, moe::view(g));
    const auto num = moe_test::numerical_gradient(
        [&](const std::vector<double>& p) { return moe::sequence_balance_loss(unflat(p, T, E), plan, ctx, o); },
        flat(z));
    CHECK(moe_test::max_relative_error(flat(g), num) < 1e-3);
  }
}

TEST_CASE("sequence_balance_loss: empty sequences are legal and count for nothing (the routers' rule)",
          "[losses][sequence_balance]") {
  moe_test::rng rng(91);
  const index T = 7, E = 4;
  const moe::row_matrix<double> z = rng.matrix(T, E, 2.0f).cast<double>();
  const moe::row_matrix<float> w = moe::row_matrix<float>::Identity(E, E);
  const moe::group_limited<> r(w, {.k = 2, .n_groups = 2, .topk_groups = 1});
  const auto plan = route_logits(r, z.cast<float>());
  const std::vector<index> two = {0, 3};
  const double want = moe::sequence_balance_loss(z, plan, {.sequence_starts = two}, {.alpha = 1.0});
  CHECK(want > 0.0);
  // Empty sequences before, between and after the two: same loss (averaged over 2 sequences).
  for (const std::vector<index>& starts : std::vector<std::vector<index>>{{0, 0, 3}, {0, 3, 3}, {0, 3, 7}, {0, 0, 3, 3, 7, 7}}) {
    INFO("starts of " << starts.size() << " sequences");
    moe::row_matrix<double> g(T, E), g2(T, E);
    CHECK(moe::sequence_balance_loss(z, plan, {.sequence_starts = starts}, {.alpha = 1.0}, moe::view(g)) == want);
    moe::sequence_balance_loss(z, plan, {.sequence_starts = two}, {.alpha = 1.0}, moe::view(g2));
    CHECK(g == g2);
  }
  // A start equal to T is an empty last sequence; {0, 7} is then the whole batch.
  const std::vector<index> whole = {0, 7};
  CHECK(moe::sequence_balance_loss(z, plan, {.sequence_starts = whole}, {.alpha = 1.0}) ==
        moe::sequence_balance_loss(z, plan, {}, {.alpha = 1.0}));
}

TEST_CASE("sequence_balance_loss: empty input and errors", "[losses][sequence_balance][error]") {
  const moe::row_matrix<double> empty(0, 4);
  moe::routing_plan plan0;
  plan0.reset(0, 2, 4);
  CHECK(moe::sequence_balance_loss(empty, plan0) == 0.0);
  moe::row_matrix<double> z(3, 4);
  z.setZero();
  moe::routing_plan plan;
  plan.reset(3, 2, 4);
  const index bad_first[] = {1};
  CHECK_THROWS_WITH(moe::sequence_balance_loss(z, plan, {.sequence_starts = bad_first}),
                    Catch::Contains("parameter 'ctx.sequence_starts[0]'"));
  const index descending[] = {0, 2, 1};
  CHECK_THROWS_WITH(moe::sequence_balance_loss(z, plan, {.sequence_starts = descending}),
                    Catch::Contains("parameter 'ctx.sequence_starts[2]'"));
  const index past_end[] = {0, 4};
  CHECK_THROWS_WITH(moe::sequence_balance_loss(z, plan, {.sequence_starts = past_end}),
                    Catch::Contains("parameter 'ctx.sequence_starts[1]'"));
  CHECK_THROWS_WITH(moe::sequence_balance_loss(z, plan0), Catch::Contains("parameter 'plan.num_tokens()'"));
  // All sigmoid scores 0 (every logit -inf): s~ = 0 by the zero-denominator rule, loss 0, no NaN.
  z.setConstant(-std::numeric_limits<double>::infinity());
  moe::row_matrix<double> g(3, 4);
  CHECK(moe::sequence_balance_loss(z, plan, {}, {.alpha = 1.0}, moe::view(g)) == 0.0);
  CHECK(g.isZero(0.0));
}

}  // namespace
