// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/kernels/: canonical math, scalar gating reference, canonical GEMM.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include <moe/kernels/gemm.hpp>
#include <moe/kernels/math.hpp>
#include <moe/kernels/scalar/gating.hpp>

#include "../support/naive.hpp"
#include "../support/random.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;
namespace sk = moe::kernels::scalar;
constexpr float inf = std::numeric_limits<float>::infinity();

namespace {
// Distance in units in the last place between two finite floats of the same sign.
long ulp_distance(float a, float b) {
  std::int32_t ia, ib;
  std::memcpy(&ia, &a, 4);
  std::memcpy(&ib, &b, 4);
  if (ia < 0) ia = std::numeric_limits<std::int32_t>::min() - ia;
  if (ib < 0) ib = std::numeric_limits<std::int32_t>::min() - ib;
  return std::labs(static_cast<long>(ia) - static_cast<long>(ib));
}
}  // namespace

TEST_CASE("canonical exp is within 1 ulp of the rounded exact value", "[kernels][math]") {
  long worst = 0;
  for (float x = -87.0f; x < 88.7f; x += 0.0137f) {
    const float want = static_cast<float>(std::exp(static_cast<double>(x)));
    worst = std::max(worst, ulp_distance(moe::kernels::exp(x), want));
  }
  CHECK(worst <= 1);
  CHECK(moe::kernels::exp(0.0f) == 1.0f);
  CHECK(moe::kernels::exp(-inf) == 0.0f);
  CHECK(moe::kernels::exp(inf) == inf);
  CHECK(moe::kernels::exp(89.0f) == inf);
  CHECK(moe::kernels::exp(-104.0f) == 0.0f);
  // Results below FLT_MIN are 0, never subnormal.
  CHECK(moe::kernels::exp(-100.0f) == 0.0f);
  CHECK(moe::kernels::exp(-87.4f) == 0.0f);
  CHECK(moe::kernels::exp(-87.3f) >= std::numeric_limits<float>::min());
  for (float x = -87.4f; x < -87.0f; x = std::nextafter(x, 0.0f)) {
    const float y = moe::kernels::exp(x);
    REQUIRE((y == 0.0f || y >= std::numeric_limits<float>::min()));  // never subnormal
  }
}

TEST_CASE("canonical log is within 1 ulp of the rounded exact value", "[kernels][math]") {
  long worst = 0;
  for (float x = 1e-30f; x < 1e30f; x *= 1.0173f) {
    const float want = static_cast<float>(std::log(static_cast<double>(x)));
    worst = std::max(worst, ulp_distance(moe::kernels::log(x), want));
  }
  CHECK(worst <= 1);
  CHECK(moe::kernels::log(1.0f) == 0.0f);
  CHECK(moe::kernels::log(0.0f) == -inf);
  CHECK(moe::kernels::log(inf) == inf);
}

TEST_CASE("canonical sigmoid, silu and softplus follow the spec's formulas", "[kernels][math]") {
  for (float x = -30.0f; x < 30.0f; x += 0.01f) {
    const double want = 1.0 / (1.0 + std::exp(-static_cast<double>(x)));
    CHECK(moe::kernels::sigmoid(x) == Approx(want).epsilon(2e-7));
    CHECK(moe::kernels::silu(x) == Approx(x * want).epsilon(3e-7).margin(1e-30));
    const double sp = std::log1p(std::exp(static_cast<double>(x)));
    CHECK(moe::kernels::softplus(x) == Approx(sp).epsilon(3e-7));
  }
  CHECK(moe::kernels::sigmoid(inf) == 1.0f);
  CHECK(moe::kernels::sigmoid(-inf) == 0.0f);
  CHECK(moe::kernels::sigmoid(-200.0f) == 0.0f);
  CHECK(moe::kernels::softplus(inf) == inf);
  CHECK(moe::kernels::softplus(-inf) == 0.0f);
}

TEST_CASE("canonical sum uses 16 lanes and a pairwise tree", "[kernels][gating]") {
  std::vector<float> x(37);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = 1.0f / static_cast<float>(i + 1);
  float lane[16] = {};
  for (std::size_t i = 0; i < x.size(); ++i) lane[i % 16] += x[i];
  float l8[8], l4[4], l2[2];
  for (int j = 0; j < 8; ++j) l8[j] = lane[j] + lane[j + 8];
  for (int j = 0; j < 4; ++j) l4[j] = l8[j] + l8[j + 4];
  for (int j = 0; j < 2; ++j) l2[j] = l4[j] + l4[j + 2];
  CHECK(sk::sum(x.data(), 37) == l2[0] + l2[1]);
  CHECK(sk::sum(x.data(), 0) == 0.0f);
}

TEST_CASE("scalar softmax: stable, ±inf rules, degenerate rows", "[kernels][gating]") {
  const std::vector<float> z{1, 0, -1, 0.5f};
  float p[4];
  REQUIRE(sk::softmax(z.data(), 4, p));
  const double want[4] = {0.473991, 0.174371, 0.064148, 0.287490};
  for (int i = 0; i < 4; ++i) CHECK(p[i] == Approx(want[i]).margin(1.5e-6));
  const float big[3] = {1000.0f, 999.0f, -inf};
  REQUIRE(sk::softmax(big, 3, p));
  CHECK(p[0] == Approx(0.7310586).epsilon(1e-6));
  CHECK(p[2] == 0.0f);
  const float infs[4] = {inf, 2.0f, inf, -inf};
  REQUIRE(sk::softmax(infs, 4, p));
  CHECK(p[0] == 0.5f); CHECK(p[1] == 0.0f); CHECK(p[2] == 0.5f); CHECK(p[3] == 0.0f);
  const float none[3] = {-inf, -inf, -inf};
  CHECK_FALSE(sk::softmax(none, 3, p));
  CHECK(p[0] == 0.0f); CHECK(p[1] == 0.0f); CHECK(p[2] == 0.0f);
}

TEST_CASE("scalar entropy: -Σ p log p with 0 log 0 = 0, finite for subnormal p", "[kernels][gating]") {
  const float p[4] = {0.5f, 0.25f, 0.25f, 0.0f};
  CHECK(sk::entropy(p, 4) == Approx(1.5 * std::log(2.0)).epsilon(1e-6));
  const float one[2] = {1.0f, 0.0f};
  CHECK(sk::entropy(one, 2) == 0.0f);
  const float tiny[3] = {0.5f, 0.5f, std::numeric_limits<float>::denorm_min()};
  CHECK(sk::entropy(tiny, 3) == Approx(std::log(2.0)).epsilon(1e-6));
  CHECK(std::isfinite(sk::tsallis_entropy(tiny, 3, 1.0f, 0.0f)));
  CHECK(std::isfinite(sk::tsallis_entropy(tiny, 3, 1.1f, 0.0f)));
  // A softmax over logits 100 apart gives p that would be subnormal: they are 0.
  const float z[2] = {0.0f, -100.0f};
  float q[2];
  REQUIRE(sk::softmax(z, 2, q));
  CHECK(q[1] == 0.0f);
}

TEST_CASE("scalar argmax and max: lower index wins ties", "[kernels][gating]") {
  const float x[5] = {1, 3, 3, -inf, 2};
  CHECK(sk::argmax(x, 5) == 1);
  CHECK(sk::max(x, 5) == 3.0f);
  const float n[2] = {-inf, -inf};
  CHECK(sk::argmax(n, 2) == -1);
}

TEST_CASE("scalar top-k equals brute force on 10,000 random rows with ties, ±inf and NaN", "[kernels][gating][topk]") {
  moe_test::rng rng(2024);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  int nan_rows = 0, short_rows = 0;
  for (int row = 0; row < 10000; ++row) {
    const index E = rng.integer(1, 70);
    const index k = rng.integer(1, static_cast<int>(E));
    const int mode = rng.integer(0, 3);
    std::vector<float> key(static_cast<std::size_t>(E));
    for (auto& v : key) {
      const int c = rng.integer(0, 19);
      if (mode == 0) v = rng.uniform(-5, 5);                        // distinct values
      else v = static_cast<float>(rng.integer(-2, 2));              // many ties
      if (c == 0) v = -inf;
      if (c == 1 && mode == 2) v = inf;
      if (c == 2 && mode == 3) v = nan;
    }
    const bool had_nan = sk::has_nan(key.data(), E);
    nan_rows += had_nan;
    sk::nan_to_neg_inf(key.data(), E);
    CHECK_FALSE(sk::has_nan(key.data(), E));
    std::vector<std::int32_t> got(static_cast<std::size_t>(k), -7);
    const index count = sk::top_k(key.data(), E, k, got.data());
    const auto want = moe_test::brute_force_top_k(key, k);
    REQUIRE(count == static_cast<index>(want.size()));
    short_rows += count < k;
    for (index i = 0; i < count; ++i) REQUIRE(got[static_cast<std::size_t>(i)] == want[static_cast<std::size_t>(i)]);
  }
  CHECK(nan_rows > 100);    // the generator really produced NaN rows
  CHECK(short_rows > 100);  // and rows with fewer than k selectable entries
}

TEST_CASE("canonical GEMM equals the sequential-fma reference bit for bit", "[kernels][gemm]") {
  moe_test::rng rng(11);
  using A = moe::kernels::gemm_arch;
  for (const index n : {1, 5, 32, 33, 70}) {
    for (const index k : {1, 3, 64, 129, 300, 513}) {
      for (const index rows : {1, 2, 11, 12, 13, 30}) {
        auto w = rng.matrix(n, k);
        auto x = rng.matrix(rows, k);
        const auto packed = moe::kernels::pack_panels(w.data(), n, k, k, moe::kernels::panel_width<A>);
        moe::workspace ws;
        ws.reset();
        moe::row_matrix<float> got(rows, n), want(rows, n);
        moe::kernels::gemm(x.data(), rows, k, packed, got.data(), n, ws);
        moe::kernels::gemm_reference(x.data(), rows, k, k, w.data(), n, k, want.data(), n);
        REQUIRE(std::memcmp(got.data(), want.data(), sizeof(float) * static_cast<std::size_t>(rows * n)) == 0);
      }
    }
  }
}

TEST_CASE("canonical GEMM results do not depend on the driver's k-block or row-group sizes", "[kernels][gemm]") {
  moe_test::rng rng(12);
  using A = moe::kernels::gemm_arch;
  const index n = 70, k = 301, rows = 41;
  auto w = rng.matrix(n, k);
  auto x = rng.matrix(rows, k);
  const auto packed = moe::kernels::pack_panels(w.data(), n, k, k, moe::kernels::panel_width<A>);
  std::vector<const float*> ptrs(static_cast<std::size_t>(rows));
  for (index i = 0; i < rows; ++i) ptrs[static_cast<std::size_t>(i)] = x.data() + i * k;
  std::vector<float> packed_rows(moe::kernels::packed_rows_size(rows, k));
  moe::kernels::pack_rows(ptrs.data(), rows, k, packed_rows.data());
  moe::row_matrix<float> want(rows, n);
  moe::kernels::gemm_reference(x.data(), rows, k, k, w.data(), n, k, want.data(), n);
  for (const auto tuning : {moe::kernels::gemm_tuning{7, 1}, moe::kernels::gemm_tuning{64, 2}, moe::kernels::gemm_tuning{1000, 16}}) {
    moe::row_matrix<float> got(rows, n);
    moe::kernels::gemm_packed<A>(packed_rows.data(), rows, packed, 0, packed.panels,
                                 [&](index r0, index mr, index p, const moe::kernels::accumulators<A>& acc) {
                                   moe::kernels::store_tile<A>(acc, mr, got.data() + r0 * n, n, p * packed.width, n);
                                 },
                                 tuning);
    INFO("k_block " << tuning.k_block << ", block_group " << tuning.block_group);
    REQUIRE(std::memcmp(got.data(), want.data(), sizeof(float) * static_cast<std::size_t>(rows * n)) == 0);
  }
}

TEST_CASE("row blocks cover the rows in order, at most mr_max each, sizes within one row", "[kernels][gemm]") {
  using moe::kernels::mr_max;
  using moe::kernels::row_block_begin;
  using moe::kernels::row_blocks;
  CHECK(row_blocks(0) == 0);
  CHECK(row_block_begin(0, 0) == 0);
  for (index rows = 1; rows <= 5 * mr_max + 1; ++rows) {
    INFO("rows " << rows);
    const index blocks = row_blocks(rows);
    REQUIRE(blocks == (rows + mr_max - 1) / mr_max);
    REQUIRE(row_block_begin(rows, 0) == 0);
    REQUIRE(row_block_begin(rows, blocks) == rows);
    index smallest = mr_max, largest = 0;
    for (index b = 0; b < blocks; ++b) {
      const index size = row_block_begin(rows, b + 1) - row_block_begin(rows, b);
      smallest = std::min(smallest, size);
      largest = std::max(largest, size);
    }
    REQUIRE(largest <= mr_max);
    REQUIRE(largest - smallest <= 1);
  }
  // 2·mr_max + 3 rows (27 with 12-row tiles): three equal blocks, not mr_max, mr_max and 3.
  const index r = 2 * mr_max + 3;
  CHECK(row_blocks(r) == 3);
  CHECK(row_block_begin(r, 1) == r / 3);
  CHECK(row_block_begin(r, 2) == 2 * r / 3);
}

TEST_CASE("interleaved packing puts gate and up columns side by side", "[kernels][gemm]") {
  using A = moe::kernels::gemm_arch;
  constexpr index W = moe::kernels::panel_width<A>;
  moe_test::rng rng(3);
  const index n = W / 2 + 3, k = 5;
  auto a = rng.matrix(n, k), b = rng.matrix(n, k);
  const auto p = moe::kernels::pack_panels_interleaved(a.data(), k, b.data(), k, n, k, W);
  CHECK(p.panels == 2);
  CHECK(p.panel(0)[2 * W + 1] == a(1, 2));
  CHECK(p.panel(0)[2 * W + W / 2 + 1] == b(1, 2));
  CHECK(p.panel(1)[4 * W + 2] == a(W / 2 + 2, 4));
  CHECK(p.panel(1)[4 * W + 3] == 0.0f);  // past n: zero padding
}

}  // namespace
