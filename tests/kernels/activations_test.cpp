// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/kernels/activations.hpp: golden values computed by hand (double
// precision, the formulas of each model's code), the clamps of gpt-oss's SwiGLU, accuracy of
// the canonical erf and the identity of the scalar and SIMD evaluations.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include <moe/kernels/activations.hpp>

#include "../support/random.hpp"

namespace {
using moe::index;
namespace k = moe::kernels;

bool close(float got, double want, double rel = 2e-6) { return std::abs(got - want) <= rel * std::abs(want) + 1e-7; }

TEST_CASE("activations: golden values", "[kernels][activations]") {
  // silu(x) = x / (1 + e^-x)
  CHECK(close(moe::act::silu::f(1.0f), 0.7310585786300049));
  CHECK(close(moe::act::silu::f(-2.0f), -0.2384058440442351));
  // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
  CHECK(close(moe::act::gelu_tanh::f(1.0f), 0.8411919906082768));
  CHECK(close(moe::act::gelu_tanh::f(-0.5f), -0.15428599017485606));
  CHECK(close(moe::act::gelu_tanh::f(3.0f), 2.996362607918227));
  // 0.5 x (1 + erf(x / sqrt 2))
  CHECK(close(moe::act::gelu_erf::f(1.0f), 0.8413447460685429));
  CHECK(close(moe::act::gelu_erf::f(-0.5f), -0.15426876936299344));
  CHECK(close(moe::act::gelu_erf::f(3.0f), 2.99595030590511));
  CHECK(moe::act::relu::f(-2.0f) == 0.0f);
  CHECK(moe::act::relu::f(2.5f) == 2.5f);
  CHECK(moe::act::relu2::f(3.0f) == 9.0f);
  CHECK(moe::act::relu2::f(-3.0f) == 0.0f);
  // Gated forms: glu(g, u) = f(g) u.
  CHECK(moe::act::silu::glu(1.0f, 2.0f) == moe::act::silu::f(1.0f) * 2.0f);
  CHECK(moe::act::gelu_tanh::glu(1.0f, -3.0f) == moe::act::gelu_tanh::f(1.0f) * -3.0f);
}

TEST_CASE("activations: gpt-oss clamped SwiGLU clamps g above 7 and u to [-7, 7], adds 1 to u", "[kernels][activations]") {
  using cs = moe::act::clamped_swiglu;
  // (clamp(u) + 1) * min(g, 7) * sigmoid(1.702 * min(g, 7))
  CHECK(close(cs::glu(8.0f, 9.0f), 55.99962502642654));   // both clamped: g = 7, u = 7
  CHECK(cs::glu(8.0f, 9.0f) == cs::glu(7.0f, 7.0f));      // exactly the clamped values
  CHECK(close(cs::glu(2.0f, -9.0f), -11.61395173886525)); // u = -7: (1 - 7) * 2 * sigmoid(3.404)
  CHECK(close(cs::glu(-1.0f, 0.5f), -0.23130635110076805)); // g not clamped below
  CHECK(cs::glu(100.0f, 1000.0f) == cs::glu(7.0f, 7.0f));
}

TEST_CASE("activations: erf within 2.5e-7 of double precision, GELU forms agree with their formulas", "[kernels][activations]") {
  double worst = 0;
  for (int i = -4000; i <= 4000; ++i) {
    const float x = static_cast<float>(i) / 500.0f;
    worst = std::max(worst, std::abs(static_cast<double>(k::erf(x)) - std::erf(static_cast<double>(x))));
    const double xd = x;
    const double ge = 0.5 * xd * (1 + std::erf(xd / std::sqrt(2.0)));
    const double gt = 0.5 * xd * (1 + std::tanh(std::sqrt(2 / M_PI) * (xd + 0.044715 * xd * xd * xd)));
    INFO("x = " << x);
    CHECK(std::abs(k::gelu_erf(x) - ge) <= 4e-7 * std::max(1.0, std::abs(xd)));
    CHECK(std::abs(k::gelu_tanh(x) - gt) <= 4e-7 * std::max(1.0, std::abs(xd)));
  }
  CHECK(worst < 2.5e-7);
  CHECK(k::erf(10.0f) == 1.0f);
  CHECK(k::erf(-10.0f) == -1.0f);
}

TEST_CASE("activations: SIMD evaluation equals the scalar reference bit for bit", "[kernels][activations][determinism]") {
  using A = xsimd::default_arch;
  using batch = xsimd::batch<float, A>;
  constexpr index L = static_cast<index>(batch::size);
  moe_test::rng rng(99);
  std::vector<float> g(static_cast<std::size_t>(64 * L)), u(g.size());
  for (auto& v : g) v = rng.uniform(-12.0f, 12.0f);
  for (auto& v : u) v = rng.uniform(-12.0f, 12.0f);
  const auto same = [&](auto&& simd, auto&& scalar) {
    for (std::size_t i = 0; i < g.size(); i += L) {
      alignas(64) float out[L];
      simd(batch::load_unaligned(&g[i]), batch::load_unaligned(&u[i])).store_aligned(out);
      for (index j = 0; j < L; ++j) {
        const float want = scalar(g[i + j], u[i + j]);
        if (std::memcmp(&out[j], &want, sizeof want) != 0) return false;
      }
    }
    return true;
  };
  CHECK(same([](batch a, batch b) { return moe::act::silu::glu(a, b); }, [](float a, float b) { return moe::act::silu::glu(a, b); }));
  CHECK(same([](batch a, batch b) { return moe::act::gelu_tanh::glu(a, b); },
             [](float a, float b) { return moe::act::gelu_tanh::glu(a, b); }));
  CHECK(same([](batch a, batch b) { return moe::act::gelu_erf::glu(a, b); },
             [](float a, float b) { return moe::act::gelu_erf::glu(a, b); }));
  CHECK(same([](batch a, batch b) { return moe::act::clamped_swiglu::glu(a, b); },
             [](float a, float b) { return moe::act::clamped_swiglu::glu(a, b); }));
  CHECK(same([](batch a, batch) { return moe::act::relu2::f(a); }, [](float a, float) { return moe::act::relu2::f(a); }));
}

}  // namespace
