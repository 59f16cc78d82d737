// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include <moe/core/views.hpp>

namespace moe_test {

/// Deterministic random numbers for tests (fixed seeds, same sequence on every platform).
class rng {
 public:
  explicit rng(std::uint64_t seed) : m_engine(seed) {}
  float uniform(float lo = -1.0f, float hi = 1.0f) {
    return lo + (hi - lo) * static_cast<float>(static_cast<double>(m_engine() >> 11) * 0x1.0p-53);
  }
  int integer(int lo, int hi) {  // inclusive
    return lo + static_cast<int>(m_engine() % static_cast<std::uint64_t>(hi - lo + 1));
  }
  moe::row_matrix<float> matrix(moe::index rows, moe::index cols, float scale = 1.0f) {
    moe::row_matrix<float> m(rows, cols);
    for (moe::index i = 0; i < rows; ++i)
      for (moe::index j = 0; j < cols; ++j) m(i, j) = uniform(-scale, scale);
    return m;
  }
  std::mt19937_64& engine() { return m_engine; }

 private:
  std::mt19937_64 m_engine;
};

}  // namespace moe_test
