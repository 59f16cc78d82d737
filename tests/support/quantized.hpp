// SPDX-License-Identifier: Apache-2.0
#pragma once

// Helpers of the quantized-weight tests: a matrix quantised to a block format (the bytes a GGUF
// tensor would hold), the same matrix after a round trip (what the kernels compute with), and
// the per-slot reference of a routed batch.

#include <cstddef>
#include <vector>

#include <moe/formats/format.hpp>
#include <moe/plan.hpp>

#include "naive.hpp"

namespace moe_test {

/// `m [rows × cols]` quantised to F (rows of whole blocks, zero-padded).
template <class F>
std::vector<std::byte> quantised(const moe::row_matrix<float>& m) {
  std::vector<std::byte> b(static_cast<std::size_t>(m.rows()) * moe::formats::row_bytes<F>(m.cols()));
  moe::formats::quantize_rows<F>("test", "w", m.data(), m.rows(), m.cols(), m.cols(), b.data());
  return b;
}

/// `m` quantised to F and dequantised back (the same shape).
template <class F>
moe::row_matrix<float> dequantised(const moe::row_matrix<float>& m) {
  const auto b = quantised<F>(m);
  moe::row_matrix<float> out(m.rows(), m.cols());
  moe::formats::dequantize_rows<F>(b.data(), m.rows(), m.cols(), out.data(), m.cols());
  return out;
}

/// The expert weights of `w` after a round trip through F.
template <class F>
naive_swiglu dequantised(const naive_swiglu& w) {
  naive_swiglu d = w;
  d.gate = dequantised<F>(w.gate);
  d.up = dequantised<F>(w.up);
  d.down = dequantised<F>(w.down);
  return d;
}

/// `y_t = Σ_slots w · Expert_e(x_t)` over the plan's slots, in double: `accumulate(e, x_t, w, y_t)`
/// adds one expert's weighted output.
template <class Accumulate>
std::vector<double> plan_reference(const moe::routing_plan& plan, const moe::row_matrix<float>& x, Accumulate&& accumulate) {
  const moe::index T = x.rows(), d = x.cols();
  std::vector<double> y(static_cast<std::size_t>(T * d), 0.0);
  for (moe::index t = 0; t < T; ++t) {
    for (moe::index s = 0; s < plan.max_slots(); ++s) {
      const auto e = plan.expert(t, s);
      if (e != moe::no_expert) accumulate(e, x.data() + t * d, static_cast<double>(plan.weight(t, s)), y.data() + t * d);
    }
  }
  return y;
}

}  // namespace moe_test
