// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/core/rounding.hpp: the guarded capacity rounding of docs/routing-spec.md errata 1.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

#include <moe/core/rounding.hpp>

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;

TEST_CASE("capacity_ceil: the guard absorbs products that overshoot an integer", "[core][rounding]") {
  CHECK(1.1 * 100 * 1 / 2 > 55.0);  // 55.00000000000001 in double
  CHECK(moe::capacity_ceil(1.1 * 100 * 1 / 2) == 55);
  CHECK(9 * (1 - 0.5 * 6 / 9) > 6.0);
  CHECK(moe::capacity_ceil(9 * (1 - 0.5 * 6 / 9)) == 6);
  CHECK(moe::capacity_ceil(1.2 * 50 / 2) == 30);
  CHECK(moe::capacity_ceil(6 * (1 - 2.0 / 6)) == 4);
  CHECK(moe::capacity_ceil(3.0) == 3);
  CHECK(moe::capacity_ceil(3.01) == 4);
  CHECK(moe::capacity_ceil(0.0) == 0);
  CHECK(moe::capacity_ceil(0.2) == 1);
  CHECK(moe::capacity_ceil(1e6 + 0.5) == 1000001);  // the guard is relative: 1e-3 here
}

TEST_CASE("capacity_floor: the guard pushes up", "[core][rounding]") {
  CHECK(moe::capacity_floor(1.9999999999999998) == 2);
  CHECK(45 * 1.4 / 63 < 1.0);  // 0.9999999999999999 in double
  CHECK(moe::capacity_floor(45 * 1.4 / 63) == 1);
  CHECK(moe::capacity_floor(2.5) == 2);
  CHECK(moe::capacity_floor(0.99) == 0);
  CHECK(moe::capacity_floor(0.0) == 0);
}

TEST_CASE("capacity rounding saturates instead of overflowing the index", "[core][rounding]") {
  constexpr index top = std::numeric_limits<index>::max(), bottom = std::numeric_limits<index>::min();
  CHECK(moe::capacity_ceil(1e300) == top);
  CHECK(moe::capacity_floor(1e300) == top);
  CHECK(moe::capacity_ceil(std::numeric_limits<double>::infinity()) == top);
  CHECK(moe::capacity_ceil(-1e300) == bottom);
  CHECK(moe::capacity_floor(-1e300) == bottom);
  CHECK(moe::capacity_ceil(std::nan("")) == 0);
  CHECK(moe::capacity_floor(std::nan("")) == 0);
  CHECK(moe::capacity_ceil(-2.5) == -2);
  CHECK(moe::capacity_floor(-2.5) == -3);
}

}  // namespace
