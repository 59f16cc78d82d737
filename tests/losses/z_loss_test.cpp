// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/losses/z_loss.hpp: the router z-loss of docs/routing-spec.md §1.3 (golden of §2.5)
// and its gradient.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include <moe/losses/z_loss.hpp>

#include "../support/gradcheck.hpp"
#include "../support/random.hpp"
#include "../support/policies.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;
using moe_test::golden;

namespace {
moe::row_matrix<double> common_z() {
  moe::row_matrix<double> z(3, 4);
  z << 1, 0, -1, 0.5, 0, 1, 0.5, 0.5, 1, 1, -0.5, 1;
  return z;
}
std::vector<double> flat(const moe::row_matrix<double>& m) { return {m.data(), m.data() + m.size()}; }
}  // namespace

TEST_CASE("router_z_loss: golden of spec §2.5 and gradient row 0", "[losses][z_loss][golden]") {
  const auto z = common_z();
  // LSE = [1.746567, 1.948154, 2.170353]
  CHECK(golden(moe::router_z_loss(z, 1.0), 3.852078));
  CHECK(golden(moe::router_z_loss(z), 3.852078e-3));  // c_z = 1e-3 by default
  moe::row_matrix<double> g(3, 4);
  CHECK(golden(moe::router_z_loss(z, 1.0, moe::view(g)), 3.852078));
  const double want[4] = {0.551905, 0.203034, 0.074692, 0.334747};
  for (index j = 0; j < 4; ++j) CHECK(golden(g(0, j), want[j]));
  const moe::row_matrix<float> zf = z.cast<float>();
  CHECK(golden(moe::router_z_loss(zf, 1.0), 3.852078));
}

TEST_CASE("router_z_loss: gradient matches finite differences", "[losses][z_loss][gradient]") {
  moe_test::rng rng(711);
  const index T = 8, E = 5;
  const moe::row_matrix<double> z = rng.matrix(T, E, 3.0f).cast<double>();
  moe::row_matrix<double> g(T, E);
  moe::router_z_loss(z, 0.5, moe::view(g));
  const auto num = moe_test::numerical_gradient(
      [&](const std::vector<double>& p) {
        moe::row_matrix<double> m(T, E);
        std::copy(p.begin(), p.end(), m.data());
        return moe::router_z_loss(m, 0.5);
      },
      flat(z));
  CHECK(moe_test::max_relative_error(flat(g), num) < 1e-3);
}

TEST_CASE("router_z_loss: empty input, ±inf and NaN", "[losses][z_loss][error]") {
  const moe::row_matrix<double> empty(0, 3);
  CHECK(moe::router_z_loss(empty) == 0.0);
  const double ninf = -std::numeric_limits<double>::infinity();
  moe::row_matrix<double> z(2, 3);
  z << 0.5, ninf, 1.0,  // a -inf logit adds nothing to the sum
      ninf, ninf, ninf;  // a degenerate token contributes 0
  moe::row_matrix<double> g(2, 3);
  const double lse = std::log(std::exp(0.5) + std::exp(1.0));
  CHECK(moe::router_z_loss(z, 1.0, moe::view(g)) == Approx(lse * lse / 2).epsilon(1e-12));
  CHECK(g.row(1).isZero(0.0));
  CHECK(g(0, 1) == 0.0);
  z(0, 0) = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH(moe::router_z_loss(z), Catch::Contains("parameter 'logits' has a +inf in row 0"));
  z(0, 0) = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_WITH(moe::router_z_loss(z), Catch::Contains("parameter 'logits' has a NaN at (0, 0)"));
  CHECK_THROWS_WITH(moe::router_z_loss(common_z(), std::nan("")), Catch::Contains("parameter 'c_z'"));
  moe::row_matrix<double> g_bad(2, 4);
  CHECK_THROWS_WITH(moe::router_z_loss(common_z(), 1.0, moe::view(g_bad)), Catch::Contains("parameter 'grad.rows()'"));
}

}  // namespace
