// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/kernels/{simd/gating.hpp, dispatch.hpp, gating.hpp}: every ISA the machine
// runs gives exactly the bits of the scalar reference.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include <moe/kernels/dispatch.hpp>
#include <moe/kernels/gating.hpp>

#include "../support/naive.hpp"
#include "../support/random.hpp"

namespace {
using moe::index;
constexpr float inf = std::numeric_limits<float>::infinity();
const float nan = std::numeric_limits<float>::quiet_NaN();

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof(float)) == 0; }
bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

// A row of logits: distinct values, many ties, or sprinkled ±inf / NaN.
std::vector<float> random_row(moe_test::rng& rng, index n, int mode) {
  std::vector<float> z(static_cast<std::size_t>(n));
  for (auto& v : z) {
    v = mode == 1 ? static_cast<float>(rng.integer(-3, 3)) * 0.5f : rng.uniform(-8.0f, 8.0f);
    const int c = rng.integer(0, 49);
    if (mode >= 2 && c == 0) v = -inf;
    if (mode >= 2 && c == 1) v = inf;
    if (mode == 3 && c == 2) v = nan;
  }
  return z;
}

const std::vector<moe::kernels::gating_table>& tables() {
  static const auto t = moe::kernels::runnable_gating_tables();
  return t;
}

TEST_CASE("dispatch lists the runnable ISAs best first and runs the best one", "[kernels][simd][dispatch]") {
#if defined(__x86_64__)
  REQUIRE_FALSE(tables().empty());
  CHECK(std::string(moe::kernels::gating_isa()) == tables().front().name);
  CHECK(std::string(tables().back().name) == "sse2");
#else
  // Only x86 ISAs are dispatched today; elsewhere the scalar reference runs.
  CHECK(std::string(moe::kernels::gating_isa()) == (tables().empty() ? "scalar" : tables().front().name));
#endif
  for (const auto& t : tables()) INFO("runnable ISA: " << t.name);
}

// 10^6 rows in the optimised build; the sanitizer build (10x slower per row) checks memory safety on 10^5.
#ifdef MOE_TEST_SANITIZED
constexpr long exactness_rows = 100000;
#else
constexpr long exactness_rows = 1000000;
#endif

TEST_CASE("every ISA selects the same experts and weighs them with the same bits as the scalar reference on 10^6 rows "
          "(10^5 under sanitizers)",
          "[kernels][simd][exactness]") {
  const auto ref = moe::kernels::scalar_gating_table();
  moe_test::rng rng(314159);
  const index sizes[] = {8, 60, 64, 128, 256, 384};
  const index ks[] = {1, 2, 4, 6, 8};
  long rows = 0, mismatches = 0, ties = 0, infs = 0, nans = 0;
  std::vector<float> z, zr, p_ref, p, s_ref, s, key_ref, key;
  std::vector<std::int32_t> i_ref(64), i_isa(64);
  std::vector<float> bias;
  while (rows < exactness_rows) {
    const index E = sizes[rng.integer(0, 5)];
    const index k = ks[rng.integer(0, 4)];
    const int mode = rng.integer(0, 3);
    z = random_row(rng, E, mode);
    bias.resize(static_cast<std::size_t>(E));
    for (auto& b : bias) b = static_cast<float>(rng.integer(-2, 2)) * 0.25f;
    ties += mode == 1;
    nans += mode == 3;
    infs += mode >= 2;
    // Scalar reference: sanitise, select on logits, softmax + entropy, sigmoid, biased keys.
    zr = z;
    ref.nan_to_neg_inf(zr.data(), E);
    p_ref.resize(zr.size());
    s_ref.resize(zr.size());
    float h_ref = 0;
    const index c_ref = ref.top_k(zr.data(), E, k, i_ref.data());
    ref.softmax(zr.data(), E, p_ref.data(), &h_ref);
    ref.sigmoid(zr.data(), E, s_ref.data());
    key_ref.resize(zr.size());
    for (index e = 0; e < E; ++e) key_ref[e] = zr[e] == -inf ? -inf : s_ref[e] + bias[e];
    std::int32_t b_ref[64];
    const index cb_ref = ref.top_k(key_ref.data(), E, k, b_ref);
    for (const auto& isa : tables()) {
      std::vector<float> zi = z;
      bool ok = isa.has_nan(zi.data(), E) == ref.has_nan(z.data(), E);
      isa.nan_to_neg_inf(zi.data(), E);
      ok = ok && same_bits(zi, zr);
      const index c = isa.top_k(zi.data(), E, k, i_isa.data());
      ok = ok && c == c_ref && std::equal(i_ref.begin(), i_ref.begin() + c, i_isa.begin());
      p.assign(zr.size(), 0.0f);
      float h = 0;
      isa.softmax(zi.data(), E, p.data(), &h);
      ok = ok && same_bits(p, p_ref) && same_bits(h, h_ref);
      s.assign(zr.size(), 0.0f);
      isa.sigmoid(zi.data(), E, s.data());
      ok = ok && same_bits(s, s_ref);
      key.resize(zr.size());
      for (index e = 0; e < E; ++e) key[e] = zi[e] == -inf ? -inf : s[e] + bias[e];
      std::int32_t b_isa[64];
      const index cb = isa.top_k(key.data(), E, k, b_isa);
      ok = ok && cb == cb_ref && std::equal(b_ref, b_ref + cb, b_isa);
      if (!ok) {
        ++mismatches;
        UNSCOPED_INFO("ISA " << isa.name << " differs on row " << rows << " (E = " << E << ", k = " << k << ")");
      }
    }
    ++rows;
  }
  CHECK(mismatches == 0);
  CHECK(ties > exactness_rows / 10);
  CHECK(infs > exactness_rows / 10);
  CHECK(nans > exactness_rows / 10);
}

TEST_CASE("every ISA's reductions and elementwise kernels equal the scalar reference bit for bit", "[kernels][simd]") {
  const auto ref = moe::kernels::scalar_gating_table();
  moe_test::rng rng(2718);
  for (index n = 0; n <= 300; n += (n < 40 ? 1 : 37)) {
    std::vector<float> a(static_cast<std::size_t>(n)), b(static_cast<std::size_t>(n)), gamma(static_cast<std::size_t>(n));
    for (index i = 0; i < n; ++i) {
      a[i] = rng.uniform(-4, 4);
      b[i] = rng.uniform(-4, 4);
      gamma[i] = rng.uniform(0.5f, 1.5f);
    }
    std::vector<float> prob(a.size());
    ref.softmax(a.data(), n, prob.data(), nullptr);
    if (n > 3) prob[2] = 0.0f;                                     // a zero probability: 0 log 0 = 0
    if (n > 4) prob[4] = std::numeric_limits<float>::denorm_min();  // subnormal: counts as 0
    for (const auto& isa : tables()) {
      INFO("ISA " << isa.name << ", n = " << n);
      CHECK(same_bits(isa.sum(a.data(), n), ref.sum(a.data(), n)));
      CHECK(same_bits(isa.dot(a.data(), b.data(), n), ref.dot(a.data(), b.data(), n)));
      CHECK(same_bits(isa.max(a.data(), n), ref.max(a.data(), n)));
      CHECK(isa.argmax(a.data(), n) == ref.argmax(a.data(), n));
      CHECK(same_bits(isa.entropy(prob.data(), n), ref.entropy(prob.data(), n)));
      for (const float q : {1.0f, 1.1f, 2.0f}) {
        CHECK(same_bits(isa.tsallis_entropy(prob.data(), n, q, 1e-5f), ref.tsallis_entropy(prob.data(), n, q, 1e-5f)));
      }
      if (n > 0) CHECK(same_bits(isa.cosine(a.data(), b.data(), n, 1e-12f), ref.cosine(a.data(), b.data(), n, 1e-12f)));
      std::vector<float> o1(a.size()), o2(a.size());
      isa.sqrt_softplus(a.data(), n, o1.data());
      ref.sqrt_softplus(a.data(), n, o2.data());
      CHECK(same_bits(o1, o2));
      if (n > 0) {
        CHECK(isa.relu_rmsnorm(a.data(), n, gamma.data(), 1e-5f, o1.data()) == ref.relu_rmsnorm(a.data(), n, gamma.data(), 1e-5f, o2.data()));
        CHECK(same_bits(o1, o2));
        isa.relu_rmsnorm(a.data(), n, nullptr, 1e-5f, o1.data());
        ref.relu_rmsnorm(a.data(), n, nullptr, 1e-5f, o2.data());
        CHECK(same_bits(o1, o2));
      }
      for (const bool renorm : {false, true}) {
        std::vector<float> w1(prob.begin(), prob.begin() + std::min<index>(n, 9)), w2 = w1;
        isa.renormalize_scale(w1.data(), static_cast<index>(w1.size()), renorm, 2.5f);
        ref.renormalize_scale(w2.data(), static_cast<index>(w2.size()), renorm, 2.5f);
        CHECK(same_bits(w1, w2));
      }
    }
  }
}

TEST_CASE("softmax with entropy on every ISA equals the scalar reference for rows of 1 to 40 elements",
          "[kernels][simd]") {
  const auto ref = moe::kernels::scalar_gating_table();
  moe_test::rng rng(5);
  for (index n = 1; n <= 40; ++n) {
    for (int mode = 0; mode < 3; ++mode) {
      const auto z = random_row(rng, n, mode);
      std::vector<float> want(static_cast<std::size_t>(n)), got(static_cast<std::size_t>(n));
      float h_want = 0, h_got = 0;
      const bool ok = ref.softmax(z.data(), n, want.data(), &h_want);
      for (const auto& isa : tables()) {
        INFO("ISA " << isa.name << ", n = " << n << ", mode " << mode);
        CHECK(isa.softmax(z.data(), n, got.data(), &h_got) == ok);
        CHECK(same_bits(got, want));
        CHECK(same_bits(h_got, h_want));
      }
    }
  }
}

TEST_CASE("top-k with k = 0 selects nothing on every ISA", "[kernels][simd][topk]") {
  const float z[3] = {1, 2, 3};
  std::int32_t idx[1] = {-7};
  CHECK(moe::kernels::scalar::top_k(z, 3, 0, idx) == 0);
  for (const auto& isa : tables()) CHECK(isa.top_k(z, 3, 0, idx) == 0);
  CHECK(idx[0] == -7);
}

TEST_CASE("top-k on every ISA equals brute force for E up to 1024 and k up to 64", "[kernels][simd][topk]") {
  moe_test::rng rng(161);
  for (int trial = 0; trial < 400; ++trial) {
    const index E = rng.integer(1, 1100);
    const index k = rng.integer(1, static_cast<int>(std::min<index>(E, 64)));
    auto z = random_row(rng, E, rng.integer(0, 2));
    const auto want = moe_test::brute_force_top_k(z, k);
    for (const auto& isa : tables()) {
      std::vector<std::int32_t> got(static_cast<std::size_t>(k));
      const index c = isa.top_k(z.data(), E, k, got.data());
      REQUIRE(c == static_cast<index>(want.size()));
      for (index i = 0; i < c; ++i) REQUIRE(got[i] == want[i]);
    }
  }
}

TEST_CASE("top-k of rows that fit one register (E <= 16) equals brute force on every ISA: ties, inf, every k",
          "[kernels][simd][topk]") {
  moe_test::rng rng(162);
  for (index E = 1; E <= 16; ++E) {
    for (int trial = 0; trial < 60; ++trial) {
      auto z = random_row(rng, E, trial % 3);  // plain, ties on a coarse grid, +-inf sprinkled
      if (trial == 59) std::fill(z.begin(), z.end(), -inf);  // nothing selectable
      if (trial == 58) std::fill(z.begin(), z.end(), 0.5f);  // one tie across the row
      if (trial == 57) z[static_cast<std::size_t>(rng.integer(0, static_cast<int>(E) - 1))] = -0.0f;
      for (index k = 1; k <= E; ++k) {
        const auto want = moe_test::brute_force_top_k(z, k);
        for (const auto& isa : tables()) {
          std::vector<std::int32_t> got(static_cast<std::size_t>(k), -1);
          const index c = isa.top_k(z.data(), E, k, got.data());
          INFO("ISA " << isa.name << ", E = " << E << ", k = " << k << ", trial " << trial);
          REQUIRE(c == static_cast<index>(want.size()));
          for (index i = 0; i < c; ++i) REQUIRE(got[static_cast<std::size_t>(i)] == want[static_cast<std::size_t>(i)]);
        }
      }
    }
  }
}

TEST_CASE("ReLU+RMSNorm, cosine and Tsallis kernels compute their formulas", "[kernels][simd]") {
  const float r[4] = {1, -1, 2, 0};
  float out[4];
  CHECK(moe::kernels::relu_rmsnorm(r, 4, nullptr, 1e-5f, out) == 2);
  CHECK(out[0] == Approx(0.894424).margin(2e-6));   // docs/routing-spec.md §11 golden r_0
  CHECK(out[2] == Approx(1.788847).margin(2e-6));
  CHECK(out[1] == 0.0f);
  const float none[3] = {-1, -2, 0};
  CHECK(moe::kernels::relu_rmsnorm(none, 3, nullptr, 1e-5f, out) == 0);
  CHECK(out[0] == 0.0f);
  const float x[2] = {1, 1}, p0[2] = {1, 0}, zero[2] = {0, 0};
  CHECK(moe::kernels::cosine(x, p0, 2) == Approx(0.707107).margin(1e-6));
  CHECK(moe::kernels::cosine(zero, p0, 2) == 0.0f);
  const float p[4] = {0.830953f, 0.112457f, 0.041371f, 0.015219f};
  // docs/routing-spec.md §10: H_q normalised by H_max = (1 - 4^-0.1) / 0.1 gives 0.415415.
  const float hq = moe::kernels::tsallis_entropy(p, 4, 1.1f, 1e-5f);
  CHECK(hq / ((1 - std::pow(4.0, -0.1)) / 0.1) == Approx(0.415415).margin(2e-5));
  const float sh = moe::kernels::tsallis_entropy(p, 4, 1.0f, 0.0f);
  double want = 0;
  for (float v : p) want -= v * std::log(double(v));
  CHECK(sh == Approx(want).epsilon(1e-5));
  float s[3];
  const float zz[3] = {0, -inf, 30};
  moe::kernels::sqrt_softplus(zz, 3, s);
  CHECK(s[0] == Approx(std::sqrt(std::log(2.0))).epsilon(1e-6));
  CHECK(s[1] == 0.0f);
  CHECK(s[2] == Approx(std::sqrt(30.0)).epsilon(1e-6));
}

}  // namespace
