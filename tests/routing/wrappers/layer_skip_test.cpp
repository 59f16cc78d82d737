// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/routing/wrappers/layer_skip.hpp and of moe::layer honouring depth decisions
// (docs/routing-spec.md §13): skip, execute, repeat, output scales; MoD over a top-k layer; policies
// written outside the library.
#include <catch2/catch.hpp>

#include <cstring>
#include <memory>
#include <sstream>
#include <vector>

#include <moe/moe.hpp>

#include "../../support/layers.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;

namespace {
using bank = moe::swiglu_experts<float>;
using shared_bank = moe::shared_experts<bank>;

bool rows_equal(const moe::row_matrix<float>& a, index ra, const moe::row_matrix<float>& b, index rb) {
  return std::memcmp(a.data() + ra * a.cols(), b.data() + rb * b.cols(), sizeof(float) * static_cast<std::size_t>(a.cols())) == 0;
}

// A depth policy written outside the library: token t makes `pattern[t % pattern.size()]` passes
// and, when given, its output is scaled by `scale[t % scale.size()]`.
struct pattern_depth {
  using depth_policy_type = pattern_depth;
  static constexpr bool needs_whole_batch = false;
  std::vector<int> pattern;
  std::vector<float> scale = {};
  void decide(moe::const_matrix_map<float> x, const moe::route_context&, moe::routing_plan& plan, moe::workspace&) const {
    for (index t = 0; t < x.rows(); ++t) {
      plan.set_passes(t, pattern[static_cast<std::size_t>(t) % pattern.size()]);
      if (!scale.empty()) plan.set_output_scale(t, scale[static_cast<std::size_t>(t) % scale.size()]);
    }
  }
};
static_assert(moe::depth_policy<pattern_depth>);
static_assert(moe::router<moe::layer_skip<moe::top_k<>, pattern_depth>>);
static_assert(moe::router<moe::layer_skip<moe::top_k<>, moe::mod_capacity>>);
static_assert(moe::router<moe::layer_skip<moe::top_k<moe::sigmoid_gate>, moe::dr_llm>>);
static_assert(moe::router<moe::layer_skip<moe::top_k<>, moe::gamma_mod>>);
static_assert(moe::router<moe::layer_skip<moe::top_k<>, moe::ftp>>);
static_assert(!moe::layer_skip<moe::top_k<>, pattern_depth>::needs_whole_batch);
static_assert(moe::layer_skip<moe::top_k<>, moe::mod_capacity>::needs_whole_batch);

// A whole router written outside the library that sets passes itself (no route_repeat): top-k
// routing from moe::top_k, passes from the sign of the first feature (< -0.5 skip, > 0.5 repeat).
struct sign_router {
  using router_type = sign_router;
  moe::top_k<> inner;
  index num_experts() const { return inner.num_experts(); }
  index hidden() const { return inner.hidden(); }
  index max_slots() const { return inner.max_slots(); }
  void route(moe::const_matrix_map<float> x, const moe::route_context& ctx, moe::routing_plan& plan, moe::workspace& ws) const {
    inner.route(x, ctx, plan, ws);
    for (index t = 0; t < x.rows(); ++t) plan.set_passes(t, x(t, 0) < -0.5f ? 0 : x(t, 0) > 0.5f ? 2 : 1);
  }
};
static_assert(moe::router<sign_router>);

struct fixture {
  moe_test::rng rng{71};
  index E = 8, d = 24, f = 16, k = 2;
  moe_test::naive_swiglu w = moe_test::random_swiglu(rng, E, d, f);
  moe_test::naive_swiglu ws = moe_test::random_swiglu(rng, 1, d, 12);
  moe::row_matrix<float> router_w = rng.matrix(E, d);
  std::vector<float> shared_gate = [this] {
    std::vector<float> g(static_cast<std::size_t>(d));
    for (auto& v : g) v = rng.uniform();
    return g;
  }();

  moe::top_k<> top_k() const { return moe::top_k<>(router_w, {.k = static_cast<int>(k), .renormalize = true}); }
  shared_bank shared() const { return shared_bank(moe_test::make_bank(ws), shared_gate); }
  // The plain top-k layer (with shared experts when asked): the hand-built expectation.
  moe::row_matrix<float> plain(const moe::row_matrix<float>& x, bool with_shared) const {
    moe::row_matrix<float> y(x.rows(), d);
    if (with_shared) {
      moe::layer<moe::top_k<>, bank, moe::device::serial> l(top_k(), moe_test::make_bank(w), shared());
      l.forward(x, y);
    } else {
      moe::layer<moe::top_k<>, bank, moe::device::serial> l(top_k(), moe_test::make_bank(w));
      l.forward(x, y);
    }
    return y;
  }
};
}  // namespace

TEST_CASE("layer_skip: Mixture-of-Depths over a top-k layer: skipped tokens 0, selected r_t times the top-k output",
          "[layer_skip][mod][layer]") {
  fixture fx;
  const index T = 37;
  const auto x = fx.rng.matrix(T, fx.d);
  std::vector<float> mod_w(static_cast<std::size_t>(fx.d));
  for (auto& v : mod_w) v = fx.rng.uniform();
  // r_t = w · x_t (sequential fma, as the canonical GEMM).
  std::vector<float> r(static_cast<std::size_t>(T));
  for (index t = 0; t < T; ++t) {
    float acc = 0;
    for (index i = 0; i < fx.d; ++i) acc = std::fma(x(t, i), mod_w[static_cast<std::size_t>(i)], acc);
    r[static_cast<std::size_t>(t)] = acc;
  }
  const std::vector<index> starts = {0, 10, 30};
  const moe::route_context ctx{.sequence_starts = starts};
  using router = moe::layer_skip<moe::top_k<>, moe::mod_capacity>;
  for (const bool with_shared : {false, true}) {
    for (const auto transform : {moe::mod_weight_transform::identity, moe::mod_weight_transform::sigmoid}) {
      INFO("shared " << with_shared << ", sigmoid " << (transform == moe::mod_weight_transform::sigmoid));
      const router rt(fx.top_k(), moe::mod_capacity(mod_w, {.capacity_fraction = 0.3, .weight_transform = transform}));
      moe::row_matrix<float> y(T, fx.d);
      if (with_shared) {
        moe::layer<router, bank, moe::device::cpu> l(rt, moe_test::make_bank(fx.w), fx.shared(), moe::device::cpu{2});
        l.forward(x, y, ctx);
        CHECK(l.stats().tokens_skipped == T - (3 + 6 + 3));
      } else {
        moe::layer<router, bank, moe::device::cpu> l(rt, moe_test::make_bank(fx.w), moe::device::cpu{2});
        l.forward(x, y, ctx);
        const auto s = l.policy_stats();
        CHECK(s.skipped == T - 12);
        CHECK(s.kept_fraction == Approx(12.0 / T));
      }
      const auto plain = fx.plain(x, with_shared);
      // Expected selection per sequence: ceil(0.3 L) = 3, 6, 3 tokens with the largest r.
      std::vector<int> selected(static_cast<std::size_t>(T), 0);
      for (std::size_t s = 0; s < starts.size(); ++s) {
        const index b = starts[s], e = s + 1 < starts.size() ? starts[s + 1] : T;
        const auto C = static_cast<index>(std::ceil(0.3 * static_cast<double>(e - b) - 1e-9));
        for (index t = b; t < e; ++t) {
          index better = 0;
          for (index u = b; u < e; ++u) better += r[u] > r[t] || (r[u] == r[t] && u < t);
          selected[static_cast<std::size_t>(t)] = better < C;
        }
      }
      for (index t = 0; t < T; ++t) {
        INFO("token " << t);
        if (!selected[static_cast<std::size_t>(t)]) {
          CHECK(y.row(t).isZero(0.0f));
          continue;
        }
        const float rt_ = r[static_cast<std::size_t>(t)];
        const float scale = transform == moe::mod_weight_transform::sigmoid ? moe::kernels::sigmoid(rt_) : rt_;
        const moe::row_matrix<float> want = plain.row(t) * scale;
        CHECK(std::memcmp(want.data(), y.data() + t * fx.d, sizeof(float) * static_cast<std::size_t>(fx.d)) == 0);
      }
    }
  }
}

TEST_CASE("layer_skip: depth decisions come from the block input when the caller supplies it",
          "[layer_skip][mod][layer]") {
  // docs/routing-spec.md §13: the papers decide from the decoder block's input h (before
  // attention); the MoE layer's x is the state after attention. route_context::block_input
  // hands h to the depth policy; the experts still run on x.
  fixture fx;
  const index T = 29;
  const auto x = fx.rng.matrix(T, fx.d);
  const auto h = fx.rng.matrix(T, fx.d);
  std::vector<float> mod_w(static_cast<std::size_t>(fx.d));
  for (auto& v : mod_w) v = fx.rng.uniform();
  const moe::mod_capacity mod(mod_w, {.capacity_fraction = 0.4});
  using router = moe::layer_skip<moe::top_k<>, moe::mod_capacity>;
  moe::layer<router, bank, moe::device::cpu> l(router(fx.top_k(), mod), moe_test::make_bank(fx.w), moe::device::cpu{2});
  moe::row_matrix<float> y(T, fx.d);
  l.forward(x, y, {.block_input = moe::view(h)});
  // The decisions of the depth policy alone on h, and on x.
  const auto decide = [&](const moe::row_matrix<float>& states) {
    moe::routing_plan p;
    p.reset(T, 1, 1);
    moe::workspace ws;
    ws.reset();
    mod.decide(moe::view(states), {}, p, ws);
    return p;
  };
  const auto on_h = decide(h), on_x = decide(x);
  const auto plain = fx.plain(x, false);
  index differ = 0;
  for (index t = 0; t < T; ++t) {
    INFO("token " << t);
    CHECK(l.plan().passes(t) == on_h.passes(t));
    differ += on_h.passes(t) != on_x.passes(t);
    if (on_h.passes(t) == 0) {
      CHECK(y.row(t).isZero(0.0f));
      continue;
    }
    CHECK(l.plan().output_scale(t) == on_h.output_scale(t));
    const moe::row_matrix<float> want = plain.row(t) * on_h.output_scale(t);  // experts on x
    CHECK(std::memcmp(want.data(), y.data() + t * fx.d, sizeof(float) * static_cast<std::size_t>(fx.d)) == 0);
  }
  CHECK(differ > 0);  // h and x decide differently: the test tells them apart
  // Without block_input the policy decides from x.
  l.route(x);
  for (index t = 0; t < T; ++t) CHECK(l.plan().passes(t) == on_x.passes(t));
  // A block input of another row count is an error naming it.
  const auto short_h = fx.rng.matrix(T - 1, fx.d);
  CHECK_THROWS_WITH(l.forward(x, y, {.block_input = moe::view(short_h)}),
                    Catch::Contains("parameter 'ctx.block_input->rows()' must be equal to 29, got 28"));
}

TEST_CASE("layer_skip: skip / execute / repeat in a layer, with and without shared experts", "[layer_skip][layer]") {
  fixture fx;
  const index T = 20;
  const auto x = fx.rng.matrix(T, fx.d);
  using router = moe::layer_skip<moe::top_k<>, pattern_depth>;
  for (const bool with_shared : {false, true}) {
    INFO("shared " << with_shared);
    const router rt(fx.top_k(), pattern_depth{{0, 1, 2, 1}});
    moe::row_matrix<float> y(T, fx.d);
    auto run = [&](auto& l) {
      l.forward(x, y);
      const auto& plan = l.plan();
      for (index t = 0; t < T; ++t) {
        CHECK(plan.passes(t) == std::vector<int>{0, 1, 2, 1}[static_cast<std::size_t>(t % 4)]);
        if (plan.passes(t) == 0) CHECK(plan.active_slots(t) == 0);
        if (plan.passes(t) != 0) CHECK(plan.active_slots(t) == fx.k);
      }
      const auto s = l.policy_stats();
      CHECK(s.skipped == 5);
      CHECK(s.executed == 10);
      CHECK(s.repeated == 5);
      CHECK(s.block_passes == 20);
      CHECK(s.layers_saved == Approx(0.0));
      CHECK(l.stats().tokens_skipped == 5);
    };
    if (with_shared) {
      moe::layer<router, bank, moe::device::cpu> l(rt, moe_test::make_bank(fx.w), fx.shared(), moe::device::cpu{2});
      run(l);
    } else {
      moe::layer<router, bank, moe::device::serial> l(rt, moe_test::make_bank(fx.w));
      run(l);
    }
    // Hand-built: M = the plain layer; skip 0, execute M(x), repeat M(x) + M(x + M(x)).
    const auto m1 = fx.plain(x, with_shared);
    const moe::row_matrix<float> h = x + m1;
    const auto m2 = fx.plain(h, with_shared);
    for (index t = 0; t < T; ++t) {
      INFO("token " << t);
      switch (t % 4) {
        case 0: CHECK(y.row(t).isZero(0.0f)); break;
        case 1:
        case 3: CHECK(rows_equal(y, t, m1, t)); break;
        default: {
          const moe::row_matrix<float> want = m1.row(t) + m2.row(t);
          CHECK(rows_equal(y, t, want, 0));
        }
      }
    }
  }
}

TEST_CASE("layer_skip: output scales apply to routed and shared output, on every pass", "[layer_skip][layer]") {
  fixture fx;
  const index T = 9;
  const auto x = fx.rng.matrix(T, fx.d);
  using router = moe::layer_skip<moe::top_k<>, pattern_depth>;
  // passes 1, 2, 0; scales -0.5, 2, 3 (the second pass routes with the inner router: scale 1).
  moe::layer<router, bank, moe::device::cpu> l(router(fx.top_k(), pattern_depth{{1, 2, 0}, {-0.5f, 2.0f, 3.0f}}),
                                               moe_test::make_bank(fx.w), fx.shared(), moe::device::cpu{2});
  moe::row_matrix<float> y(T, fx.d);
  l.forward(x, y);
  const auto m1 = fx.plain(x, true);
  const moe::row_matrix<float> y1 = m1 * 2.0f;  // scaled first pass of the repeated tokens
  const moe::row_matrix<float> h = x + y1;
  const auto m2 = fx.plain(h, true);
  for (index t = 0; t < T; ++t) {
    INFO("token " << t);
    if (t % 3 == 0) {
      const moe::row_matrix<float> want = m1.row(t) * -0.5f;
      CHECK(rows_equal(y, t, want, 0));
    } else if (t % 3 == 1) {
      const moe::row_matrix<float> want = y1.row(t) + m2.row(t);
      CHECK(rows_equal(y, t, want, 0));
    } else {
      CHECK(y.row(t).isZero(0.0f));
    }
  }
  CHECK(l.policy_stats().mean_output_scale == Approx((3 * -0.5 + 3 * 2.0) / 6));
}

TEST_CASE("layer_skip: a router written outside the library sets passes itself (re-routed with route())",
          "[layer_skip][layer]") {
  fixture fx;
  const index T = 30;
  auto x = fx.rng.matrix(T, fx.d);
  for (index t = 0; t < T; ++t) x(t, 0) = t % 3 == 0 ? -0.9f : t % 3 == 1 ? 0.1f : 0.9f;
  moe::layer<sign_router, bank, moe::device::cpu> l(sign_router{fx.top_k()}, moe_test::make_bank(fx.w), fx.shared(),
                                                    moe::device::cpu{2});
  moe::row_matrix<float> y(T, fx.d);
  l.forward(x, y);
  const auto m1 = fx.plain(x, true);
  const moe::row_matrix<float> h = x + m1;
  const auto m2 = fx.plain(h, true);
  for (index t = 0; t < T; ++t) {
    INFO("token " << t);
    if (t % 3 == 0) {
      CHECK(y.row(t).isZero(0.0f));
    } else if (t % 3 == 1) {
      CHECK(rows_equal(y, t, m1, t));
    } else {
      // The second pass routes h with route(): h_t(0) = 0.9 + M(x)_t(0) decides its passes there;
      // anything but 0 means one pass.
      const bool second = h(t, 0) >= -0.5f;
      const moe::row_matrix<float> want = second ? moe::row_matrix<float>(m1.row(t) + m2.row(t)) : moe::row_matrix<float>(m1.row(t));
      CHECK(rows_equal(y, t, want, 0));
    }
  }
  // route() alone: skipped tokens have no slots.
  const auto& plan = l.route(x);
  CHECK(plan.active_slots(0) == 0);
  CHECK(plan.active_slots(1) == fx.k);
  CHECK(plan.load(0) + plan.load(1) + plan.load(2) + plan.load(3) + plan.load(4) + plan.load(5) + plan.load(6) +
            plan.load(7) ==
        20 * fx.k);
}

TEST_CASE("layer_skip: all tokens skipped gives y = 0, no skip gives the plain layer's bits", "[layer_skip][layer]") {
  fixture fx;
  const index T = 11;
  const auto x = fx.rng.matrix(T, fx.d);
  using router = moe::layer_skip<moe::top_k<>, pattern_depth>;
  moe::row_matrix<float> y(T, fx.d);
  y.setConstant(7.0f);
  moe::layer<router, bank, moe::device::cpu> skip_all(router(fx.top_k(), pattern_depth{{0}}), moe_test::make_bank(fx.w),
                                                      fx.shared(), moe::device::cpu{2});
  skip_all.forward(x, y);
  CHECK(y.isZero(0.0f));
  CHECK(skip_all.stats().assignments == 0);
  CHECK(skip_all.policy_stats().layers_saved == Approx(1.0));
  moe::layer<router, bank, moe::device::cpu> dense(router(fx.top_k(), pattern_depth{{1}}), moe_test::make_bank(fx.w),
                                                   fx.shared(), moe::device::cpu{2});
  dense.forward(x, y);
  CHECK(y == fx.plain(x, true));
  // T = 0.
  moe::row_matrix<float> x0(0, fx.d), y0(0, fx.d);
  dense.forward(x0, y0);
  CHECK(dense.plan().num_tokens() == 0);
  CHECK(dense.policy_stats().tokens == 0);
}

TEST_CASE("layer_skip: configuration errors name the parameter", "[layer_skip][error]") {
  fixture fx;
  std::vector<float> w(static_cast<std::size_t>(fx.d + 1), 0.5f);
  CHECK_THROWS_WITH((moe::layer_skip<moe::top_k<>, moe::mod_capacity>(fx.top_k(), moe::mod_capacity(w))),
                    Catch::Contains("parameter 'depth.hidden()' must be equal to 24, got 25"));
  std::vector<index> bad = {1, 3};
  moe::layer_skip<moe::top_k<>, moe::mod_capacity> rt(fx.top_k(), moe::mod_capacity(std::vector<float>(24, 0.1f)));
  moe::layer<decltype(rt), bank, moe::device::serial> l(rt, moe_test::make_bank(fx.w));
  const auto x = fx.rng.matrix(5, fx.d);
  moe::row_matrix<float> y(5, fx.d);
  CHECK_THROWS_WITH(l.forward(x, y, {.sequence_starts = bad}), Catch::Contains("parameter 'ctx.sequence_starts[0]'"));
  bad = {0, 4, 2};
  CHECK_THROWS_WITH(l.forward(x, y, {.sequence_starts = bad}), Catch::Contains("parameter 'ctx.sequence_starts[2]'"));
  bad = {0, 6};
  CHECK_THROWS_WITH(l.forward(x, y, {.sequence_starts = bad}), Catch::Contains("parameter 'ctx.sequence_starts[1]'"));
}

TEST_CASE("depth statistics: per layer and over a stack", "[layer_skip][stats]") {
  moe::routing_plan plan;
  plan.reset(8, 1, 2);
  const int passes[8] = {0, 1, 2, 1, 0, 1, 1, 2};
  for (index t = 0; t < 8; ++t) plan.set_passes(t, passes[t]);
  plan.set_output_scale(1, 0.5f);
  const auto s = moe::compute_depth_stats(plan);
  CHECK(s.tokens == 8);
  CHECK(s.skipped == 2);
  CHECK(s.executed == 4);
  CHECK(s.repeated == 2);
  CHECK(s.block_passes == 8);
  CHECK(s.skip_rate == 0.25);
  CHECK(s.repeat_rate == 0.25);
  CHECK(s.kept_fraction == 0.75);
  CHECK(s.mean_passes == 1.0);
  CHECK(s.layers_saved == 0.0);
  CHECK(s.mean_output_scale == Approx(5.5 / 6));
  std::vector<float> mask(8);
  moe::executed_mask(plan, std::span<float>(mask));
  CHECK(mask == std::vector<float>{0, 1, 1, 1, 0, 1, 1, 1});

  moe::depth_stack_stats stack;
  stack.add(s);
  moe::routing_plan skip_all;
  skip_all.reset(8, 1, 2);
  for (index t = 0; t < 8; ++t) skip_all.set_passes(t, 0);
  stack.add(moe::compute_depth_stats(skip_all));
  stack.add(moe::compute_depth_stats(skip_all));
  CHECK(stack.num_layers() == 3);
  CHECK(stack.layers_executed() == 1.0);
  CHECK(stack.layers_saved() == 2.0);
  CHECK(stack.skip_rate() == Approx(18.0 / 24));
  CHECK(stack.repeat_rate() == Approx(2.0 / 24));
  std::ostringstream out;
  out << stack;
  CHECK(out.str().find("layers 3, executed/token 1.000, saved/token 2.000") != std::string::npos);
  CHECK(out.str().find("layer 1: tokens 8, skipped 8") != std::string::npos);
  moe::routing_plan empty;
  empty.reset(0, 1, 2);
  CHECK(moe::compute_depth_stats(empty).skip_rate == 0.0);
  CHECK(moe::depth_stack_stats{}.skip_rate() == 0.0);
}

}  // namespace
