// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/losses/load_balance.hpp: the Switch / top-k load-balancing loss of
// docs/routing-spec.md §1.3 (goldens of §2.5 and §12) and its gradient.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <moe/losses/load_balance.hpp>
#include <moe/losses/sequence_balance.hpp>
#include <moe/routing/routers/top_k.hpp>

#include "../support/gradcheck.hpp"
#include "../support/random.hpp"
#include "../support/policies.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;
using moe_test::golden;

namespace {
// Logits of the common example of §2.5.
moe::row_matrix<double> common_z() {
  moe::row_matrix<double> z(3, 4);
  z << 1, 0, -1, 0.5, 0, 1, 0.5, 0.5, 1, 1, -0.5, 1;
  return z;
}

moe::routing_plan top_k_plan(const moe::row_matrix<double>& z, int k) {
  moe::row_matrix<float> w(z.cols(), z.cols());
  w.setIdentity();
  const moe::top_k<> r(w, {.k = k});
  const moe::row_matrix<float> zf = z.cast<float>();
  moe::routing_plan plan;
  moe::workspace ws;
  ws.reset();
  r.route_logits(moe::view(zf), plan, ws);
  return plan;
}

std::vector<double> flat(const moe::row_matrix<double>& m) { return {m.data(), m.data() + m.size()}; }
moe::row_matrix<double> unflat(const std::vector<double>& v, index rows, index cols) {
  moe::row_matrix<double> m(rows, cols);
  std::copy(v.begin(), v.end(), m.data());
  return m;
}
}  // namespace

TEST_CASE("load_balance_loss: goldens of spec §2.5", "[losses][load_balance][golden]") {
  const auto z = common_z();
  // Switch top-1: argmax = [0, 1, 0], f = [2/3, 1/3, 0, 0].
  CHECK(golden(moe::switch_load_balance_loss(z, 1.0), 1.211402));
  const auto plan1 = top_k_plan(z, 1);
  CHECK(golden(moe::load_balance_loss(z, plan1, {.alpha = 1.0}), 1.211402));
  // Top-2: counts [2, 2, 1, 1].
  const auto plan2 = top_k_plan(z, 2);
  CHECK(golden(moe::load_balance_loss(z, plan2, {.alpha = 1.0}), 1.066415));
  CHECK(golden(moe::load_balance_loss(z, plan2, {.alpha = 1.0, .normalization = moe::lbl_normalization::hf_mixtral}),
               2.132831));
  // First-slot counting (GShard / DeepSpeed top-2) of the top-2 plan is the top-1 count.
  CHECK(golden(moe::load_balance_loss(z, plan2, {.alpha = 1.0, .count = moe::lbl_count::first_slot}), 1.211402));
  // DiT-MoE expert-level balance loss (§12), alpha = 0.01.
  CHECK(golden(moe::expert_balance_loss(z, plan2), 0.010664));
  // Float logits give the same values.
  const moe::row_matrix<float> zf = z.cast<float>();
  CHECK(golden(moe::load_balance_loss(zf, plan2, {.alpha = 1.0}), 1.066415));
}

TEST_CASE("switch_load_balance_loss: gradient row 0 of spec §2.5", "[losses][load_balance][golden]") {
  const auto z = common_z();
  moe::row_matrix<double> g(3, 4);
  const double value = moe::switch_load_balance_loss(z, 1.0, moe::view(g));
  CHECK(golden(value, 1.211402));
  const double want[4] = {0.184887, -0.009482, -0.031998, -0.143407};
  for (index j = 0; j < 4; ++j) CHECK(golden(g(0, j), want[j]));
  // The same gradient through load_balance_loss with a top-1 plan.
  moe::row_matrix<double> g2(3, 4);
  moe::load_balance_loss(z, top_k_plan(z, 1), {.alpha = 1.0}, moe::view(g2));
  CHECK(g2.isApprox(g, 1e-12));
}

TEST_CASE("load balancing losses: gradients match finite differences", "[losses][load_balance][gradient]") {
  moe_test::rng rng(701);
  const index T = 9, E = 6;
  moe::row_matrix<double> z = rng.matrix(T, E, 2.0f).cast<double>();
  z(4, 2) = -std::numeric_limits<double>::infinity();  // a -inf logit: p = 0 there, gradient 0
  const auto plan = top_k_plan(z, 2);
  const std::vector<moe::load_balance_options> variants = {
      {.alpha = 0.7},
      {.alpha = 0.7, .normalization = moe::lbl_normalization::hf_mixtral},
      {.alpha = 0.7, .count = moe::lbl_count::first_slot},
      {.alpha = 0.7, .scores = moe::loss_scores::normalized_sigmoid},
  };
  for (std::size_t v = 0; v < variants.size(); ++v) {
    const auto& o = variants[v];
    moe::row_matrix<double> g(T, E);
    moe::load_balance_loss(z, plan, o, moe::view(g));
    auto params = flat(z);
    params[4 * E + 2] = 0;  // finite differences cannot step a -inf: compare that entry separately
    const auto num = moe_test::numerical_gradient(
        [&](const std::vector<double>& p) {
          auto m = unflat(p, T, E);
          m(4, 2) = -std::numeric_limits<double>::infinity();
          return moe::load_balance_loss(m, plan, o);
        },
        params);
    INFO("variant " << v);
    CHECK(moe_test::max_relative_error(flat(g), num) < 1e-3);
    CHECK(g(4, 2) == 0.0);
  }
  moe::row_matrix<double> g(T, E);
  const auto zs = rng.matrix(T, E, 2.0f).cast<double>().eval();
  moe::switch_load_balance_loss(zs, 0.3, moe::view(g));
  const auto num = moe_test::numerical_gradient(
      [&](const std::vector<double>& p) { return moe::switch_load_balance_loss(unflat(p, T, E), 0.3); }, flat(zs));
  CHECK(moe_test::max_relative_error(flat(g), num) < 1e-3);
  const auto plan_s = top_k_plan(zs, 3);
  moe::expert_balance_loss(zs, plan_s, 0.01, moe::view(g));
  const auto num2 = moe_test::numerical_gradient(
      [&](const std::vector<double>& p) { return moe::expert_balance_loss(unflat(p, T, E), plan_s, 0.01); }, flat(zs));
  CHECK(moe_test::max_relative_error(flat(g), num2) < 1e-3);
}

TEST_CASE("load balancing losses: a row with a +inf logit has gradient 0 (its softmax is a constant step)",
          "[losses][load_balance][gradient][inf]") {
  moe_test::rng rng(702);
  const index T = 6, E = 5;
  const double inf = std::numeric_limits<double>::infinity();
  moe::row_matrix<double> z = rng.matrix(T, E, 2.0f).cast<double>();
  z(2, 1) = inf;  // p = one-hot: moving any finite logit of row 2 changes nothing
  z(4, 0) = inf;
  z(4, 3) = inf;  // two +inf: p = 1/2 on each
  const auto plan = top_k_plan(z, 2);
  const auto check = [&](auto&& loss_with_grad, auto&& loss, const char* name) {
    INFO(name);
    moe::row_matrix<double> g(T, E);
    const double v = loss_with_grad(z, moe::view(g));
    CHECK(std::isfinite(v));
    CHECK(g.row(2).isZero(0.0));
    CHECK(g.row(4).isZero(0.0));
    // Elsewhere the gradient is the finite-difference one (+inf ± h stays +inf).
    const auto num = moe_test::numerical_gradient([&](const std::vector<double>& p) { return loss(unflat(p, T, E)); },
                                                  flat(z));
    CHECK(moe_test::max_relative_error(flat(g), num) < 1e-3);
  };
  check([&](const auto& m, auto g) { return moe::load_balance_loss(m, plan, {.alpha = 0.7}, g); },
        [&](const auto& m) { return moe::load_balance_loss(m, plan, {.alpha = 0.7}); }, "load_balance_loss");
  check([&](const auto& m, auto g) { return moe::switch_load_balance_loss(m, 0.3, g); },
        [&](const auto& m) { return moe::switch_load_balance_loss(m, 0.3); }, "switch_load_balance_loss");
  check([&](const auto& m, auto g) { return moe::expert_balance_loss(m, plan, 0.01, g); },
        [&](const auto& m) { return moe::expert_balance_loss(m, plan, 0.01); }, "expert_balance_loss");
  const std::vector<index> starts = {0, 3};
  const moe::route_context ctx{.sequence_starts = starts};
  check([&](const auto& m, auto g) {
          return moe::sequence_balance_loss(m, plan, ctx, {.alpha = 0.5, .scores = moe::loss_scores::softmax}, g);
        },
        [&](const auto& m) {
          return moe::sequence_balance_loss(m, plan, ctx, {.alpha = 0.5, .scores = moe::loss_scores::softmax});
        },
        "sequence_balance_loss (softmax)");
  // Normalised sigmoid scores stay differentiable in the finite logits of such a row (sigmoid(+inf)
  // = 1 has derivative 0 itself): compare with finite differences only.
  moe::row_matrix<double> g(T, E);
  const moe::load_balance_options sig{.alpha = 0.7, .scores = moe::loss_scores::normalized_sigmoid};
  moe::load_balance_loss(z, plan, sig, moe::view(g));
  const auto num = moe_test::numerical_gradient(
      [&](const std::vector<double>& p) { return moe::load_balance_loss(unflat(p, T, E), plan, sig); }, flat(z));
  CHECK(moe_test::max_relative_error(flat(g), num) < 1e-3);
  CHECK(g(2, 1) == 0.0);
}

TEST_CASE("load balancing losses: empty input, degenerate tokens and errors", "[losses][load_balance][error]") {
  const moe::row_matrix<double> empty(0, 4);
  moe::routing_plan plan0;
  plan0.reset(0, 2, 4);
  moe::row_matrix<double> g0(0, 4);
  CHECK(moe::load_balance_loss(empty, plan0) == 0.0);
  CHECK(moe::load_balance_loss(empty, plan0, {}, moe::view(g0)) == 0.0);
  CHECK(moe::switch_load_balance_loss(empty) == 0.0);
  CHECK(moe::expert_balance_loss(empty, plan0) == 0.0);

  // An all -inf token routes nowhere: it has p = 0 and counts for nobody, the loss stays finite.
  auto z = common_z();
  const double ninf = -std::numeric_limits<double>::infinity();
  z.row(1).setConstant(ninf);
  const auto plan = top_k_plan(z, 2);
  CHECK(plan.active_slots(1) == 0);
  moe::row_matrix<double> g(3, 4);
  const double v = moe::load_balance_loss(z, plan, {.alpha = 1.0}, moe::view(g));
  CHECK(std::isfinite(v));
  CHECK(g.row(1).isZero(0.0));
  CHECK(std::isfinite(moe::switch_load_balance_loss(z, 1.0)));

  z(0, 2) = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_WITH(moe::load_balance_loss(z, plan), Catch::Contains("parameter 'logits' has a NaN at (0, 2)"));
  CHECK_THROWS_WITH(moe::switch_load_balance_loss(z), Catch::Contains("parameter 'logits'"));
  const auto zc = common_z();
  CHECK_THROWS_WITH(moe::load_balance_loss(zc, plan0), Catch::Contains("parameter 'plan.num_tokens()'"));
  moe::row_matrix<double> g_bad(3, 5);
  CHECK_THROWS_WITH(moe::load_balance_loss(zc, plan, {}, moe::view(g_bad)), Catch::Contains("parameter 'grad.cols()'"));
  CHECK_THROWS_WITH(moe::load_balance_loss(zc, plan, {.alpha = std::nan("")}), Catch::Contains("parameter 'options.alpha'"));
  CHECK_THROWS_WITH(moe::switch_load_balance_loss(zc, std::numeric_limits<double>::infinity()),
                    Catch::Contains("parameter 'alpha'"));
}

}  // namespace
