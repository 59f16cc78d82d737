// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/routing/routers/token_choice.hpp: moe::route_by_stages and
// route_logits_by_stages split the rows over route_context::threads, with plans bitwise equal to
// one thread (stage 1 on the threads for linear logits, on the calling thread otherwise), and a
// NaN error names the lowest bad token whatever the threads.
#include <catch2/catch.hpp>

#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include <moe/kernels/gemm.hpp>
#include <moe/moe.hpp>

#include "../../support/naive.hpp"
#include "../../support/policies.hpp"
#include "../../support/random.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;

// A policy whose logits are not linear for the engine (no logits_weight()): stage 1 runs on the
// calling thread, stages 2-5 on the threads. Softmax top-2 over naive logits, NaN an error.
class naive_top2 {
 public:
  using router_type = naive_top2;
  explicit naive_top2(moe::row_matrix<float> w) : m_w(std::move(w)) {}
  index num_experts() const noexcept { return m_w.rows(); }
  index hidden() const noexcept { return m_w.cols(); }
  index max_slots() const noexcept { return 2; }
  void route(moe::const_matrix_map<float> x, const moe::route_context& ctx, moe::routing_plan& plan,
             moe::workspace& ws) const {
    moe::route_by_stages(*this, x, ctx, plan, ws, "naive_top2::route");
  }
  index columns() const noexcept { return m_w.rows(); }
  void logits(moe::const_matrix_map<float> x, float* z, index ldz, moe::workspace&) const {
    for (index t = 0; t < x.rows(); ++t) {
      const auto zt = moe_test::naive_logits(m_w, x.data() + t * x.outerStride());
      std::copy(zt.begin(), zt.end(), z + t * ldz);
    }
  }
  void prepare_row(float* z, index n, index t, std::string_view where, std::string_view param) const {
    moe::detail::apply_nan_policy(z, n, t, moe::nan_policy::error, {.where = where, .param = param, .option = "naive"});
  }
  void prepare_row(float* z, index n, index t) const { prepare_row(z, n, t, "naive_top2", "x"); }
  bool gate_row(const float* z, float* s) const noexcept { return moe::kernels::softmax(z, columns(), s); }
  float row_entropy(const float* s, float*) const noexcept { return moe::kernels::entropy(s, columns()); }
  index select_row(const float* z, const float*, std::int32_t* idx, float*) const noexcept {
    return moe::kernels::top_k(z, columns(), 2, idx);
  }
  void weigh_row(float* s, const std::int32_t* idx, index count, float* w) const noexcept {
    for (index i = 0; i < count; ++i) w[i] = s[idx[i]];
  }
  std::int32_t column_expert(index c) const noexcept { return static_cast<std::int32_t>(c); }

 private:
  moe::row_matrix<float> m_w;  // [E × d]
};
static_assert(moe::token_choice_policy<naive_top2>);
static_assert(!moe::detail::token_choice::linear_logits<naive_top2>);
static_assert(moe::detail::token_choice::linear_logits<moe::top_k<>>);
static_assert(moe::detail::token_choice::linear_logits<moe::null_experts<moe::top_k<>>>);
static_assert(moe::detail::token_choice::transformed_input<moe::rms_scaled_router<>>);

moe::routing_plan route_on(const auto& r, const moe::row_matrix<float>& x, int threads) {
  return moe_test::route(r, x, {.threads = threads});
}

// Plans equal bit for bit: slots, weights, entropies and top-1 scores.
void check_bits(const moe::routing_plan& a, const moe::routing_plan& b) {
  REQUIRE(a.num_tokens() == b.num_tokens());
  REQUIRE(a.max_slots() == b.max_slots());
  CHECK(std::memcmp(a.all_experts().data(), b.all_experts().data(), a.all_experts().size_bytes()) == 0);
  CHECK(std::memcmp(a.all_weights().data(), b.all_weights().data(), a.all_weights().size_bytes()) == 0);
  REQUIRE(a.has_entropy() == b.has_entropy());
  REQUIRE(a.has_top_score() == b.has_top_score());
  for (index t = 0; t < a.num_tokens(); ++t) {
    if (a.has_entropy()) {
      const float ea = a.entropy(t), eb = b.entropy(t);
      CHECK(std::memcmp(&ea, &eb, sizeof ea) == 0);
    }
    if (a.has_top_score()) {
      const float ta = a.top_score(t), tb = b.top_score(t);
      CHECK(std::memcmp(&ta, &tb, sizeof ta) == 0);
    }
  }
}

TEST_CASE("route_by_stages: 1, 2 and 3 threads route bit for bit alike", "[routing][token_choice][threads]") {
  moe_test::rng rng(2401);
  const index E = 12, d = 20;
  const auto w = rng.matrix(E, d);
  const moe::row_matrix<float> w_true = w.topRows(10), w_null = w.bottomRows(2);
  std::vector<float> scale(static_cast<std::size_t>(d)), per_expert(static_cast<std::size_t>(E));
  for (auto& v : scale) v = 0.5f + rng.uniform();
  for (auto& v : per_expert) v = 0.5f + rng.uniform();
  for (const index T : {1, 5, 8, 9, 37, 130}) {  // decode (T <= 8: the panels are split) and prefill
    INFO("T " << T);
    const auto x = rng.matrix(T, d, 2.0f);
    const auto each = [&](const auto& r) {
      const auto one = route_on(r, x, 1);
      check_bits(route_on(r, x, 2), one);
      check_bits(route_on(r, x, 3), one);
      check_bits(route_on(r, x, 0), one);  // 0: the device's threads
    };
    each(moe::null_experts<moe::top_k<>>(w_true, w_null, {.k = 3, .renormalize = true, .temperature = 0.8f}));
    each(moe::topk_softmax(w, {.k = 4}));
    each(moe::group_limited<>(w, {.k = 3, .n_groups = 4, .topk_groups = 2, .selection_bias = per_expert}));
    each(moe::adaptive_k<>(w, {.k_min = 1, .k_max = 4}));
    each(moe::top_p<moe::sigmoid_gate>(w, {.p = 0.5f, .k_max = 5}));
    each(moe::dynmole(w));
    each(moe::sparsemixer(w, {.k = 2}));
    each(moe::rms_scaled_router<>(moe::top_k<>(w, {.k = 4, .renormalize = true}),
                                  {.input_scale = scale, .per_expert_scale = per_expert}));
    each(moe::top_k<moe::sigmoid_gate>(w, {.k = 2, .softcap = 1.5f}));
    each(naive_top2(w));
  }
}

TEST_CASE("route_by_stages on threads equals the stage loop of one thread and top_k::route",
          "[routing][token_choice][threads]") {
  moe_test::rng rng(2402);
  const auto w = rng.matrix(16, 24);
  const auto x = rng.matrix(41, 24);
  const moe::top_k<> r(w, {.k = 4, .renormalize = true});
  moe::routing_plan a, b;
  moe::workspace ws;
  ws.reset();
  r.route(moe::view(x), {.threads = 2}, a, ws);
  ws.reset();
  moe::route_by_stages(r, moe::view(x), {.threads = 2}, b, ws);
  check_bits(a, b);
  // route_logits_by_stages on threads: the same plan from W x.
  const auto packed = moe::kernels::pack_panels(w.data(), w.rows(), w.cols(), w.cols(),
                                                moe::kernels::panel_width<moe::kernels::gemm_arch>);
  moe::row_matrix<float> z(x.rows(), w.rows());
  ws.reset();
  moe::kernels::gemm(x.data(), x.rows(), x.cols(), packed, z.data(), w.rows(), ws);
  for (const int threads : {1, 2, 3}) {
    moe::routing_plan c;
    ws.reset();
    moe::route_logits_by_stages(r, moe::view(std::as_const(z)), c, ws, "test", {.threads = threads});
    check_bits(c, a);
  }
}

TEST_CASE("route_by_stages on threads: a NaN error names the lowest bad token", "[routing][token_choice][threads][nan]") {
  moe_test::rng rng(2403);
  const index E = 6, d = 6, T = 20;
  const auto w = moe_test::eye(E);  // through the GEMM a NaN state makes its token's every logit NaN
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const auto message = [&](const auto& r, const moe::row_matrix<float>& x, int threads) {
    try {
      (void)route_on(r, x, threads);
    } catch (const moe::error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  auto x = rng.matrix(T, d);
  x(17, 3) = nan;  // in the second thread's share only
  auto both = x;
  both(4, 1) = nan;  // and one in the first share
  const moe::row_matrix<float> w_true = w.topRows(5), w_null = w.bottomRows(1);
  const moe::null_experts<moe::top_k<>> ne(w_true, w_null, {.k = 2});
  const naive_top2 nv(w);
  for (const int threads : {1, 2, 3}) {
    INFO("threads " << threads);
    CHECK_THAT(message(ne, x, threads), Catch::Contains("moe::null_experts::route: parameter 'x'") &&
                                            Catch::Contains("token 17, expert 0"));
    CHECK_THAT(message(ne, both, threads), Catch::Contains("token 4, expert 0"));
    CHECK_THAT(message(nv, x, threads), Catch::Contains("naive_top2::route") && Catch::Contains("token 17"));
    CHECK_THAT(message(nv, both, threads), Catch::Contains("token 4"));
  }
  // NaN mapped to -inf: the same plan on every thread count.
  const moe::null_experts<moe::top_k<>> lenient(w_true, w_null, {.k = 2, .nan = moe::nan_policy::to_neg_inf});
  const auto one = route_on(lenient, both, 1);
  CHECK(one.active_slots(4) == 0);  // every logit -inf: nowhere
  CHECK(one.active_slots(17) == 0);
  check_bits(route_on(lenient, both, 2), one);
  check_bits(route_on(lenient, both, 3), one);
  // Policies of their own (their NaN option named).
  const moe::topk_softmax ts(w, {.k = 2});
  const moe::topk_softmax ts_lenient(w, {.k = 2, .nan = moe::nan_policy::to_neg_inf});
  for (const int threads : {1, 2, 3}) {
    INFO("threads " << threads);
    CHECK_THAT(message(ts, x, threads), Catch::Contains("moe::topk_softmax::route: parameter 'x'") &&
                                            Catch::Contains("token 17, expert 0"));
    CHECK_THAT(message(ts, both, threads), Catch::Contains("token 4, expert 0"));
  }
  const auto ts_one = route_on(ts_lenient, both, 1);
  CHECK(ts_one.active_slots(4) == 0);
  CHECK(ts_one.active_slots(5) == 2);
  check_bits(route_on(ts_lenient, both, 2), ts_one);
  const moe::sparsemixer sm(w);
  for (const int threads : {1, 2, 3}) {
    INFO("threads " << threads);
    CHECK_THAT(message(sm, both, threads), Catch::Contains("moe::sparsemixer::route") &&
                                               Catch::Contains("token 4, expert 0"));
  }
}

}  // namespace
