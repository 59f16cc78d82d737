// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/routing/wrappers/rms_scaled.hpp against Gemma 4's router: Hugging Face
// transformers, src/transformers/models/gemma4/modeling_gemma4.py, class Gemma4TextRouter
// (`norm = Gemma4RMSNorm(hidden, eps=rms_norm_eps, with_scale=False)`, input
// `norm(x) * scale * hidden**-0.5`, softmax of `proj(...)`, top-k, renormalised to one, times
// `per_expert_scale[top_k_index]`) and Gemma4RMSNorm (`x * (mean(x²) + eps)^-0.5`). The golden
// values below were worked out by hand from those formulas.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include <moe/kernels/gemm.hpp>
#include <moe/moe.hpp>

#include "../../support/conformance.hpp"
#include "../../support/policies.hpp"

namespace {
using moe::index;
using router = moe::rms_scaled_router<moe::top_k<moe::softmax_gate>>;

TEST_CASE("rms_scaled_router: Gemma 4 routing, golden values", "[routing][rms_scaled]") {
  // d = 4 (d^-1/2 = 0.5), E = 3; the weight picks features 0, 2 and 3.
  const auto w = moe_test::fmatrix({{1, 0, 0, 0}, {0, 0, 1, 0}, {0, 0, 0, 1}});
  const router r(moe::top_k<>(w, {.k = 2, .renormalize = true}),
                 {.input_scale = {1, 0.5f, 2, 1}, .eps = 1e-6f, .per_expert_scale = {1, 2, 0.5f}});
  const auto x = moe_test::fmatrix({
      {1, 2, 3, 4},       // mean square 7.5: x̂ = x · (7.5 + 1e-6)^-1/2 · scale · 0.5
      {0, 0, 0, 0},       // x̂ = 0: every logit 0, ties to the lower experts
      {1e3, -1e3, 0, 0},  // x̂ = [1/√2, -1/(2√2), 0, 0]: logits [0.7071, 0, 0], a tie for the second
  });
  const auto xh = r.router_input(moe::view(x));
  CHECK(moe_test::golden(xh(0, 0), 0.1825741736634442));
  CHECK(moe_test::golden(xh(0, 1), 0.1825741736634442));
  CHECK(moe_test::golden(xh(0, 2), 1.0954450419806652));
  CHECK(moe_test::golden(xh(0, 3), 0.7302966946537768));
  CHECK(xh(1, 0) == 0.0f);
  const auto plan = moe_test::route(r, x);
  // Token 0: logits [0.18257, 1.09545, 0.73030] -> experts 1, 2; renormalised softmax
  // [0.590286, 0.409714], times per_expert_scale [2, 0.5].
  moe_test::check_slots(plan, 0, {1, 2}, {1.1805722599529913, 0.2048569350117522});
  moe_test::check_slots(plan, 1, {0, 1}, {0.5, 1.0});
  moe_test::check_slots(plan, 2, {0, 1}, {0.6697615493265006, 0.660476901346999});
  // eps inside the root: x = [1e-4, 0, 0, 0] gives x̂_0 = 1e-4 · (2.5e-9 + 1e-6)^-1/2 · 0.5, not 1.
  const router plain(moe::top_k<>(w, {.k = 2, .renormalize = true}), {});
  CHECK(moe_test::golden(plain.router_input(moe::view(moe_test::fmatrix({{1e-4, 0, 0, 0}})))(0, 0),
                         0.04993761694389224));
  // Without per-expert scales the weights are the base's, bit for bit.
  const auto base = moe_test::route(moe::top_k<>(w, {.k = 2, .renormalize = true}), plain.router_input(moe::view(x)));
  const auto unscaled = moe_test::route(plain, x);
  CHECK(std::memcmp(base.all_weights().data(), unscaled.all_weights().data(), base.all_weights().size_bytes()) == 0);
}

TEST_CASE("rms_scaled_router: route_logits, composition, conformance and errors", "[routing][rms_scaled][error]") {
  moe_test::rng rng(2601);
  const index E = 16, d = 24;
  const auto w = rng.matrix(E, d);
  std::vector<float> scale(static_cast<std::size_t>(d)), per_expert(static_cast<std::size_t>(E));
  for (auto& v : scale) v = 0.5f + rng.uniform();
  for (auto& v : per_expert) v = 0.5f + rng.uniform();
  const router r(moe::top_k<>(w, {.k = 4, .renormalize = true}), {.input_scale = scale, .per_expert_scale = per_expert});
  // route_logits takes the logits of the router input: route_logits(W x̂) == route(x) bit for bit.
  const auto x = rng.matrix(29, d, 3.0f);
  const auto xh = r.router_input(moe::view(x));
  const auto packed = moe::kernels::pack_panels(w.data(), E, d, d, moe::kernels::panel_width<moe::kernels::gemm_arch>);
  moe::row_matrix<float> z(x.rows(), E);
  moe::workspace ws;
  ws.reset();
  moe::kernels::gemm(xh.data(), xh.rows(), d, packed, z.data(), E, ws);
  const auto a = moe_test::route(r, x), b = moe_test::route_logits(r, z);
  CHECK(std::memcmp(a.all_experts().data(), b.all_experts().data(), a.all_experts().size_bytes()) == 0);
  CHECK(std::memcmp(a.all_weights().data(), b.all_weights().data(), a.all_weights().size_bytes()) == 0);
  // The normalisation makes the choice of experts invariant to the scale of the token state (the
  // weights move only through eps, which does not scale).
  const moe::row_matrix<float> x8 = x * 8.0f;
  const auto c = moe_test::route(r, x8);
  CHECK(std::memcmp(a.all_experts().data(), c.all_experts().data(), a.all_experts().size_bytes()) == 0);

  moe_test::check_router_conformance(r);
  // Over other bases: a soft-capped sigmoid top-k, and null experts.
  moe_test::check_router_conformance(moe::rms_scaled_router<moe::topk_sigmoid>(
      moe::topk_sigmoid(w, {.k = 2, .softcap = 2.0f}), {.per_expert_scale = per_expert}));
  const moe::row_matrix<float> w_true = w.topRows(12), w_null = w.bottomRows(4);
  moe_test::check_router_conformance(moe::rms_scaled_router<moe::null_experts<moe::top_k<>>>(
      moe::null_experts<moe::top_k<>>(w_true, w_null, {.k = 3, .renormalize = true}), {.input_scale = scale}));

  const auto throws = [&](moe::rms_scaled_options o, const std::string& text) {
    CHECK_THROWS_WITH(router(moe::top_k<>(w, {.k = 2}), std::move(o)), Catch::Contains(text));
  };
  throws({.eps = 0.0f}, "moe::rms_scaled_router: parameter 'eps' must be finite and > 0, got 0");
  throws({.eps = std::numeric_limits<float>::infinity()}, "parameter 'eps'");
  throws({.input_scale = {1, 2}}, "parameter 'input_scale.size()' must be equal to 24, got 2");
  throws({.per_expert_scale = {1, 2, 3}}, "parameter 'per_expert_scale.size()' must be equal to 16, got 3");
  std::vector<float> bad = per_expert;
  bad[3] = std::numeric_limits<float>::quiet_NaN();
  throws({.per_expert_scale = bad}, "parameter 'per_expert_scale[e]' must be finite");
  // A NaN token state normalises to NaN router inputs: the base's NaN error, naming 'x'.
  auto nan_x = x;
  nan_x(2, 5) = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH(moe_test::route(r, nan_x),
                    Catch::Contains("moe::rms_scaled_router::route: parameter 'x' gives a NaN router logit (token 2"));
}

}  // namespace
