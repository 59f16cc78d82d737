// SPDX-License-Identifier: Apache-2.0
#pragma once

// Naive references of the token-choice policy families, used only by tests: per token, plain
// loops, double precision (the logits are the library's float GEMM values, naive_logits, so that
// selections see the same keys).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <moe/core/views.hpp>

#include "naive.hpp"

namespace moe_test {

/// AdaMoE (§7): softmax over E + m, top-k of the logits, weights renormalised over the selected
/// true experts (`renormalize`) or their raw probabilities; null slots are -1 with weight 0.
inline naive_route naive_null_route(const std::vector<float>& z, index E, index k, bool renormalize = true) {
  naive_route r;
  const auto p = naive_softmax(z);
  const auto sel = brute_force_top_k(z, k);
  double D = 0;
  for (auto c : sel) D += c < E ? p[static_cast<std::size_t>(c)] : 0.0;
  for (auto c : sel) {
    const double w = renormalize ? (D > 0 ? p[static_cast<std::size_t>(c)] / D : 0.0) : p[static_cast<std::size_t>(c)];
    r.experts.push_back(c < E ? c : -1);
    r.weights.push_back(c < E ? w : 0.0);
  }
  return r;
}

/// Similarity-aware routing (§9) of one sequence `x [L × d]` with the scaled dot product (tau),
/// softmax base, top-k, renormalised weights from q (or the own π).
inline std::vector<naive_route> naive_similarity(const moe::row_matrix<float>& w, const moe::row_matrix<float>& x,
                                                 index k, bool causal, bool logit, bool own, double tau) {
  const index T = x.rows(), d = x.cols(), E = w.rows();
  std::vector<std::vector<float>> z(static_cast<std::size_t>(T));
  std::vector<std::vector<double>> pi(static_cast<std::size_t>(T));
  for (index t = 0; t < T; ++t) {
    z[t] = naive_logits(w, x.data() + t * d);
    pi[t] = naive_softmax(z[t]);
  }
  std::vector<naive_route> out(static_cast<std::size_t>(T));
  for (index i = 0; i < T; ++i) {
    const index n = causal ? i + 1 : T;
    std::vector<double> s(static_cast<std::size_t>(n));
    double m = -1e300, total = 0;
    for (index j = 0; j < n; ++j) {
      s[j] = x.row(i).cast<double>().dot(x.row(j).cast<double>()) / tau;
      m = std::max(m, s[j]);
    }
    for (auto& v : s) total += v = std::exp(v - m);
    for (auto& v : s) v /= total;
    std::vector<double> q(static_cast<std::size_t>(E), 0.0);
    for (index j = 0; j < n; ++j)
      for (index e = 0; e < E; ++e) q[e] += s[j] * (logit ? z[j][e] : pi[j][e]);
    if (logit) {
      std::vector<float> qf(q.begin(), q.end());
      q = naive_softmax(qf);
    }
    std::vector<float> key(q.begin(), q.end());
    auto& r = out[i];
    r.experts = brute_force_top_k(key, k);
    double D = 0;
    for (auto e : r.experts) D += own ? pi[i][e] : q[e];
    for (auto e : r.experts) r.weights.push_back((own ? pi[i][e] : q[e]) / D);
  }
  return out;
}

/// ProMoE prototypical routing (§8) of one conditional token: top-k of the scaled cosines,
/// gates identity (0), sigmoid (1) or softmax (2), not renormalised.
inline naive_route naive_prototypical(const moe::row_matrix<float>& P, const float* x, index k, double alpha, int act) {
  const index N = P.rows(), d = P.cols();
  double nx = 0;
  for (index i = 0; i < d; ++i) nx += double(x[i]) * x[i];
  nx = std::max(std::sqrt(nx), 1e-12);
  std::vector<double> zd(static_cast<std::size_t>(N));
  std::vector<float> z(static_cast<std::size_t>(N));
  double total = 0;
  for (index j = 0; j < N; ++j) {
    double dot = 0, np = 0;
    for (index i = 0; i < d; ++i) {
      dot += double(x[i]) * P(j, i);
      np += double(P(j, i)) * P(j, i);
    }
    zd[j] = alpha * dot / (nx * std::max(std::sqrt(np), 1e-12));
    z[j] = static_cast<float>(zd[j]);
    total += std::exp(zd[j]);
  }
  naive_route r;
  r.experts = brute_force_top_k(z, k);
  for (auto e : r.experts) {
    const double v = zd[e];
    r.weights.push_back(act == 0 ? v : act == 1 ? 1 / (1 + std::exp(-v)) : std::exp(v) / total);
  }
  return r;
}

/// DynMoLE (§10) of one token: Tsallis q, top_p, keep_top_k, threshold, eps.
inline naive_route naive_dynmole(const std::vector<float>& z, double q, double top_p, index keep_top_k,
                                 double threshold, double eps = 1e-5) {
  const index E = static_cast<index>(z.size());
  const auto p = naive_softmax(z);
  double s = 0;
  for (double v : p) s += std::pow(v + eps, q);
  const double h = E > 1 ? (1 - s) / (1 - std::pow(double(E), 1 - q)) : 0.0;
  const auto order = brute_force_top_k(z, E);
  index keep = static_cast<index>(order.size());
  if (!(h > threshold) && top_p < 1) {
    double c = 0;
    keep = 0;
    for (index r = 0; r < static_cast<index>(order.size()); ++r) {
      c += p[order[r]];
      if (c <= top_p || r < keep_top_k) keep = r + 1;
    }
  }
  naive_route r;
  for (index i = 0; i < keep; ++i) {
    r.experts.push_back(order[i]);
    r.weights.push_back(p[order[i]]);
  }
  return r;
}

/// BlockFFN (§11) of one token's raw scores: ReLU, RMSNorm (eps), gain; active = r > 0 by
/// descending score.
inline naive_route naive_blockffn(const std::vector<float>& r, const std::vector<float>& gain, double eps = 1e-5) {
  const index E = static_cast<index>(r.size());
  double sq = 0;
  for (float v : r) sq += v > 0 ? double(v) * v : 0.0;
  const double rho = std::sqrt(sq / double(E) + eps);
  std::vector<float> key(r.size());
  for (index e = 0; e < E; ++e) key[e] = r[e] > 0 ? r[e] : -std::numeric_limits<float>::infinity();
  naive_route out;
  out.experts = brute_force_top_k(key, E);
  for (auto e : out.experts) out.weights.push_back(r[e] / rho * (gain.empty() ? 1.0 : gain[e]));
  return out;
}

}  // namespace moe_test
