// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/kernels/pairwise.hpp: canonical pairwise dot products.
#include <catch2/catch.hpp>

#include <cstring>
#include <vector>

#include <moe/kernels/gemm.hpp>
#include <moe/kernels/pairwise.hpp>

#include "../support/random.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;

TEST_CASE("pairwise_dots equals the canonical GEMM reference bit for bit", "[kernels][pairwise]") {
  moe_test::rng rng(901);
  for (const index n : {1, 7, 33, 70}) {
    for (const index m : {1, 9, 32, 65}) {
      for (const index k : {1, 5, 64, 130}) {
        const auto a = rng.matrix(n, k + 3);  // padded rows: stride k + 3
        const auto b = rng.matrix(m, k + 1);
        std::vector<float> want(static_cast<std::size_t>(n * m));
        moe::kernels::gemm_reference(a.data(), n, k, k + 3, b.data(), m, k + 1, want.data(), m);
        for (const bool lower : {false, true}) {
          std::vector<float> got(static_cast<std::size_t>(n * (m + 2)), -7.0f);
          moe::workspace ws;
          ws.reset();
          moe::kernels::pairwise_dots(a.data(), n, k + 3, b.data(), m, k + 1, k, got.data(), m + 2, lower, ws);
          INFO("n " << n << " m " << m << " k " << k << " lower " << lower);
          bool equal = true;
          for (index i = 0; i < n; ++i) {
            for (index j = 0; j < (lower ? std::min(i + 1, m) : m); ++j) {
              equal &= std::memcmp(&got[i * (m + 2) + j], &want[i * m + j], sizeof(float)) == 0;
            }
            equal &= got[i * (m + 2) + m] == -7.0f;  // nothing written past column m
          }
          CHECK(equal);
        }
      }
    }
  }
}

}  // namespace
