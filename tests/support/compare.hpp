// SPDX-License-Identifier: Apache-2.0
#pragma once

// The one bitwise comparison of the tests: two blocks of float rows are equal bit for bit (NaN
// payloads and signed zeros included). Safe on empty matrices (memcmp never sees their null data).

#include <cstring>

#include <moe/core/views.hpp>

namespace moe_test {

/// Whether rows [0, a.rows()) of `a` equal rows [begin, begin + a.rows()) of `b` bit for bit
/// (same column count; strides may differ).
inline bool bitwise_equal_rows(moe::const_matrix_map<float> a, moe::const_matrix_map<float> b, moe::index begin = 0) {
  if (a.cols() != b.cols() || begin < 0 || begin + a.rows() > b.rows()) return false;
  const auto bytes = sizeof(float) * static_cast<std::size_t>(a.cols());
  for (moe::index t = 0; t < a.rows(); ++t) {
    if (bytes != 0 &&
        std::memcmp(a.data() + t * a.outerStride(), b.data() + (begin + t) * b.outerStride(), bytes) != 0) {
      return false;
    }
  }
  return true;
}

/// Whether `a` and `b` have the same shape and the same bits.
inline bool bitwise_equal(moe::const_matrix_map<float> a, moe::const_matrix_map<float> b) {
  return a.rows() == b.rows() && bitwise_equal_rows(a, b, 0);
}

template <class A, class B>
bool bitwise_equal(const A& a, const B& b) {
  return bitwise_equal(moe::const_matrix_map<float>(moe::view(a)), moe::const_matrix_map<float>(moe::view(b)));
}
template <class A, class B>
bool bitwise_equal_rows(const A& a, const B& b, moe::index begin) {
  return bitwise_equal_rows(moe::const_matrix_map<float>(moe::view(a)), moe::const_matrix_map<float>(moe::view(b)),
                            begin);
}

}  // namespace moe_test
