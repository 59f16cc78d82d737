// SPDX-License-Identifier: Apache-2.0
#pragma once

// The naive reference, used only by tests: per token, per slot, plain loops, double precision
// wherever the library's exact bits are not the point.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include <moe/core/views.hpp>

namespace moe_test {

using moe::index;

/// One token's route: experts in slot order and their weights.
struct naive_route {
  std::vector<std::int32_t> experts;
  std::vector<double> weights;
};

/// Router logits exactly as the library defines them: sequential fma in float over k.
inline std::vector<float> naive_logits(const moe::row_matrix<float>& w, const float* x) {
  std::vector<float> z(static_cast<std::size_t>(w.rows()));
  for (index e = 0; e < w.rows(); ++e) {
    float acc = 0.0f;
    for (index k = 0; k < w.cols(); ++k) acc = std::fma(x[k], w(e, k), acc);
    z[static_cast<std::size_t>(e)] = acc;
  }
  return z;
}

/// Indices of the k largest keys: stable sort by key descending (ties: lower index), -inf dropped.
inline std::vector<std::int32_t> brute_force_top_k(const std::vector<float>& key, index k) {
  std::vector<std::int32_t> idx(key.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](std::int32_t a, std::int32_t b) { return key[a] > key[b]; });
  std::vector<std::int32_t> out;
  for (auto i : idx) {
    if (static_cast<index>(out.size()) == k) break;
    if (key[i] == -std::numeric_limits<float>::infinity()) break;
    out.push_back(i);
  }
  return out;
}

/// Softmax in double with the library's ±inf rules.
inline std::vector<double> naive_softmax(const std::vector<float>& z) {
  const double inf = std::numeric_limits<double>::infinity();
  double m = -inf;
  for (float v : z) m = std::max(m, static_cast<double>(v));
  std::vector<double> p(z.size(), 0.0);
  if (m == -inf) return p;
  if (m == inf) {
    double n = 0;
    for (float v : z) n += v == inf;
    for (std::size_t i = 0; i < z.size(); ++i) p[i] = z[i] == inf ? 1.0 / n : 0.0;
    return p;
  }
  double s = 0;
  for (std::size_t i = 0; i < z.size(); ++i) s += p[i] = std::exp(static_cast<double>(z[i]) - m);
  for (double& v : p) v /= s;
  return p;
}

inline double naive_sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

/// Top-k routing of one token (softmax or sigmoid gate), spec §2 / §3.
inline naive_route naive_top_k(const std::vector<float>& z, index k, bool sigmoid, bool renormalize,
                               double scale = 1.0) {
  naive_route r;
  r.experts = brute_force_top_k(z, k);
  std::vector<double> p;
  if (sigmoid) {
    for (float v : z) p.push_back(naive_sigmoid(v));
  } else {
    p = naive_softmax(z);
  }
  double total = 0;
  for (auto e : r.experts) total += p[static_cast<std::size_t>(e)];
  for (auto e : r.experts) {
    double w = p[static_cast<std::size_t>(e)];
    if (renormalize) w = total > 0 ? w / total : 0.0;
    r.weights.push_back(w * scale);
  }
  return r;
}

/// SwiGLU expert weights in checkpoint layout, for the naive FFN.
struct naive_swiglu {
  moe::row_matrix<float> gate, up, down;  // [E·f × d], [E·f × d], [E·d × f]
  index experts, d, f;

  /// out += w · Expert_e(x), in double.
  void accumulate(index e, const float* x, double w, double* out) const {
    std::vector<double> h(static_cast<std::size_t>(f));
    for (index j = 0; j < f; ++j) {
      double g = 0, u = 0;
      for (index k = 0; k < d; ++k) {
        g += static_cast<double>(gate(e * f + j, k)) * x[k];
        u += static_cast<double>(up(e * f + j, k)) * x[k];
      }
      h[static_cast<std::size_t>(j)] = g / (1.0 + std::exp(-g)) * u;
    }
    for (index i = 0; i < d; ++i) {
      double acc = 0;
      for (index j = 0; j < f; ++j) acc += static_cast<double>(down(e * d + i, j)) * h[static_cast<std::size_t>(j)];
      out[i] += w * acc;
    }
  }
};

/// Relative Frobenius error ||a - b|| / max(||b||, tiny).
inline double relative_error(const moe::row_matrix<float>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (index i = 0; i < a.rows(); ++i) {
    for (index j = 0; j < a.cols(); ++j) {
      const double r = b[static_cast<std::size_t>(i * a.cols() + j)];
      num += (a(i, j) - r) * (a(i, j) - r);
      den += r * r;
    }
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
}

}  // namespace moe_test
