// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "moe/config.hpp"
#include "moe/core/error.hpp"
#include "moe/plan.hpp"
#include "moe/core/views.hpp"
#include "moe/losses/detail/row_math.hpp"

namespace moe {

/// Options of moe::routing_contrastive_loss.
struct rcl_options {
  /// Temperature tau, finite and > 0 (ProMoE: 0.07).
  double tau = 0.07;
  /// A token belongs to the clusters of all its routed experts (ProMoE's released configs), or
  /// only to that of its first slot.
  bool use_topk = true;
  /// lambda_RCL (ProMoE: 1).
  double coefficient = 1.0;
  /// Norm floor of the cosines, as F.normalize.
  double eps = 1e-12;
};

/// ProMoE's routing contrastive loss (docs/routing-spec.md §8), over the conditional tokens of a batch.
///
/// Token t belongs to the cluster of each routed expert `j < N_E` of its slots in `plan` (only
/// slot 0 without `use_topk`; unconditional tokens route to experts >= N_E and belong to
/// none). For each populated cluster, `m_j` is the mean of its members' raw states; V lists
/// those clusters in ascending order and, if `|V| >= 2`,
/// `L = coefficient · (1/|V|) Σ_a [ -log softmax_b(cos(p_{V_a}, m_{V_b}) / tau)_a ]`, else 0.
/// Computed in double with the log-sum-exp of the margins, so small tau stays accurate.
///
/// @param x `[T × d]` token states the plan was routed from (float or double).
/// @param prototypes `[N_E × d]` (same scalar type).
/// @param plan the plan of moe::prototypical for x (`T` tokens).
/// @param grad_x nullptr or `[T × d]` row-major: receives dL/dx (through the cluster means).
/// @param grad_prototypes nullptr or `[N_E × d]` row-major: receives dL/dprototypes.
/// @return the loss; 0 when fewer than two clusters are populated (T = 0, no conditional token).
template <class X, class P>
double routing_contrastive_loss(const Eigen::DenseBase<X>& x, const Eigen::DenseBase<P>& prototypes,
                                const routing_plan& plan, const rcl_options& options = {},
                                typename X::Scalar* grad_x = nullptr, typename X::Scalar* grad_prototypes = nullptr) {
  using Scalar = typename X::Scalar;
  static_assert(detail::loss_math::is_loss_scalar<Scalar> && std::is_same_v<Scalar, typename P::Scalar>,
                "moe::routing_contrastive_loss: x and prototypes must both hold float or both double");
  constexpr const char* where = "moe::routing_contrastive_loss";
  const auto xs = view(x);
  const auto ps = view(prototypes);
  const index T = xs.rows(), d = xs.cols(), N = ps.rows();
  detail::check_extent(where, "prototypes.cols()", ps.cols(), d);
  detail::check_extent(where, "plan.num_tokens()", plan.num_tokens(), T);
  if (!(options.tau > 0) || !std::isfinite(options.tau)) {
    detail::fail_parameter(error_id::config, where, "tau", "finite and > 0", options.tau);
  }
  if (!std::isfinite(options.coefficient)) {
    detail::fail_parameter(error_id::config, where, "coefficient", "finite", options.coefficient);
  }
  if (!(options.eps >= 0) || !std::isfinite(options.eps)) {
    detail::fail_parameter(error_id::config, where, "eps", "finite and >= 0", options.eps);
  }
  if (grad_x) std::fill(grad_x, grad_x + T * d, Scalar(0));
  if (grad_prototypes) std::fill(grad_prototypes, grad_prototypes + N * d, Scalar(0));

  // Clusters: members of each routed expert, and their mean raw state.
  std::vector<std::vector<index>> members(static_cast<std::size_t>(N));
  const index slots = options.use_topk ? plan.max_slots() : std::min<index>(plan.max_slots(), 1);
  for (index t = 0; t < T; ++t) {
    for (index s = 0; s < slots; ++s) {
      const auto e = plan.expert(t, s);
      if (e >= 0 && e < N) members[static_cast<std::size_t>(e)].push_back(t);
    }
  }
  std::vector<index> V;
  for (index j = 0; j < N; ++j) {
    if (!members[static_cast<std::size_t>(j)].empty()) V.push_back(j);
  }
  const index n = static_cast<index>(V.size());
  if (n < 2) return 0.0;

  using dvec = std::vector<double>;
  const double eps = options.eps;
  // Unit vectors (eps-floored) and the norms they were divided by.
  auto normalise = [&](const dvec& v, dvec& unit) {
    double sq = 0;
    for (double e : v) sq += e * e;
    const double norm = std::sqrt(sq);
    const double div = std::max(norm, eps);
    unit.resize(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) unit[i] = div > 0 ? v[i] / div : 0.0;
    return std::pair<double, bool>{div, norm > eps};  // (divisor, on the sphere)
  };
  std::vector<dvec> pu(static_cast<std::size_t>(n)), mu(static_cast<std::size_t>(n));
  std::vector<std::pair<double, bool>> pn(static_cast<std::size_t>(n)), mn(static_cast<std::size_t>(n));
  for (index a = 0; a < n; ++a) {
    const index j = V[static_cast<std::size_t>(a)];
    dvec p(static_cast<std::size_t>(d)), m(static_cast<std::size_t>(d), 0.0);
    for (index i = 0; i < d; ++i) {
      p[i] = static_cast<double>(ps(j, i));
      detail::loss_math::check_finite(p[i], where, "prototypes", j, i);
    }
    const auto& mem = members[static_cast<std::size_t>(j)];
    for (index t : mem) {
      for (index i = 0; i < d; ++i) {
        const double v = static_cast<double>(xs(t, i));
        detail::loss_math::check_finite(v, where, "x", t, i);
        m[i] += v;
      }
    }
    for (double& v : m) v /= static_cast<double>(mem.size());
    pn[a] = normalise(p, pu[a]);
    mn[a] = normalise(m, mu[a]);
  }
  // Logits l[a][b] = cos(p_a, m_b) / tau and the per-row loss by log-sum-exp of the margins.
  dvec l(static_cast<std::size_t>(n * n)), soft(static_cast<std::size_t>(n * n));
  for (index a = 0; a < n; ++a) {
    for (index b = 0; b < n; ++b) {
      double c = 0;
      for (index i = 0; i < d; ++i) c += pu[a][i] * mu[b][i];
      l[a * n + b] = c / options.tau;
    }
  }
  double loss = 0;
  for (index a = 0; a < n; ++a) {
    const double* row = l.data() + a * n;
    const double diag = row[a];
    double M = diag;
    for (index b = 0; b < n; ++b) M = std::max(M, row[b]);
    double rest = 0;  // Σ_{b≠a} exp(l_ab - M)
    for (index b = 0; b < n; ++b) {
      if (b != a) rest += std::exp(row[b] - M);
    }
    const double self = std::exp(diag - M);
    // -log softmax_a = log(Σ_b exp(l_ab - M)) - (l_aa - M); exact for a dominant diagonal.
    loss += M == diag ? std::log1p(rest) : (M - diag) + std::log(self + rest);
    const double total = self + rest;
    for (index b = 0; b < n; ++b) soft[a * n + b] = std::exp(row[b] - M) / total;
  }
  const double scale = options.coefficient / static_cast<double>(n);
  loss *= scale;
  if (!grad_x && !grad_prototypes) return loss;

  // dL/dsim = scale · (softmax - onehot) / tau; chain through the eps-floored normalisation.
  auto through_normalise = [&](const dvec& g, const dvec& unit, std::pair<double, bool> norm, dvec& out) {
    out.assign(g.size(), 0.0);
    if (norm.first == 0) return;  // eps = 0 and a zero vector: no direction, gradient 0
    if (!norm.second) {  // below the floor: unit = v / eps, a linear map
      for (std::size_t i = 0; i < g.size(); ++i) out[i] = g[i] / norm.first;
      return;
    }
    double gu = 0;
    for (std::size_t i = 0; i < g.size(); ++i) gu += g[i] * unit[i];
    for (std::size_t i = 0; i < g.size(); ++i) out[i] = (g[i] - gu * unit[i]) / norm.first;
  };
  dvec gp(static_cast<std::size_t>(d)), gm(static_cast<std::size_t>(d)), out;
  for (index a = 0; a < n; ++a) {
    const index j = V[static_cast<std::size_t>(a)];
    // Prototype V_a: Σ_b G_ab mu_b; cluster mean V_a: Σ_b G_ba pu_b.
    std::fill(gp.begin(), gp.end(), 0.0);
    std::fill(gm.begin(), gm.end(), 0.0);
    for (index b = 0; b < n; ++b) {
      const double gab = scale * (soft[a * n + b] - (a == b ? 1.0 : 0.0)) / options.tau;
      const double gba = scale * (soft[b * n + a] - (a == b ? 1.0 : 0.0)) / options.tau;
      for (index i = 0; i < d; ++i) {
        gp[i] += gab * mu[b][i];
        gm[i] += gba * pu[b][i];
      }
    }
    if (grad_prototypes) {
      through_normalise(gp, pu[a], pn[a], out);
      for (index i = 0; i < d; ++i) grad_prototypes[j * d + i] = static_cast<Scalar>(out[i]);
    }
    if (grad_x) {
      through_normalise(gm, mu[a], mn[a], out);
      const auto& mem = members[static_cast<std::size_t>(j)];
      const double share = 1.0 / static_cast<double>(mem.size());
      for (index t : mem) {
        for (index i = 0; i < d; ++i) grad_x[t * d + i] += static_cast<Scalar>(share * out[i]);
      }
    }
  }
  return loss;
}

}  // namespace moe
