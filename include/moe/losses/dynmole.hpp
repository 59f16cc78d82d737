// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <cmath>
#include <vector>

#include <Eigen/Core>

#include "moe/config.hpp"
#include "moe/core/error.hpp"
#include "moe/plan.hpp"
#include "moe/core/views.hpp"
#include "moe/losses/detail/row_math.hpp"
#include "moe/routing/routers/dynmole.hpp"

namespace moe {

/// Coefficients of moe::dynmole_loss (DynMoLE's released config).
struct dynmole_loss_options {
  double entropy_coefficient = 0.01;   ///< router_dyn_loss_coef
  double balance_coefficient = 0.001;  ///< router_aux_loss_coef
};

/// The parts of moe::dynmole_loss.
struct dynmole_loss_value {
  double entropy = 0;       ///< L_ent = mean_t H(p_t), the normalised entropy of §10
  double load_balance = 0;  ///< L_LB = E · Σ_e f_e · P_e
  double total = 0;         ///< entropy_coefficient · L_ent + balance_coefficient · L_LB
};

/// DynMoLE's auxiliary losses (docs/routing-spec.md §10) for the tokens of a plan routed by moe::dynmole:
/// `L_ent = mean_t H(p_t)` (the normalised entropy the router thresholds), and
/// `L_LB = E Σ_e f_e P_e` with `f_e = mean_t p_te·mask_te` (masked probability, not counts) and
/// `P_e = mean_t p_te`. The masks are the plan's routes (constants); p, f and P are
/// differentiable. Computed in double. A token whose logits are all -inf counts with p = 0 and
/// H = 0; a row whose maximum is +inf has a constant softmax (gradient 0).
///
/// @param logits `[T × E]` router logits (float or double).
/// @param plan the plan moe::dynmole produced from these logits (T tokens over E experts).
/// @param router the router's options (q, entropy_eps, entropy kind).
/// @param grad nullptr or `[T × E]` row-major: receives `d total / d logits`.
template <class Derived>
dynmole_loss_value dynmole_loss(const Eigen::DenseBase<Derived>& logits, const routing_plan& plan,
                                const dynmole_options& router, const dynmole_loss_options& options = {},
                                typename Derived::Scalar* grad = nullptr) {
  using Scalar = typename Derived::Scalar;
  static_assert(detail::loss_math::is_loss_scalar<Scalar>, "moe::dynmole_loss: logits must hold float or double");
  constexpr const char* where = "moe::dynmole_loss";
  const auto z = view(logits);
  const index T = z.rows(), E = z.cols();
  detail::check_extent(where, "plan.num_tokens()", plan.num_tokens(), T);
  detail::check_extent(where, "plan.num_experts()", plan.num_experts(), E);
  if (!std::isfinite(options.entropy_coefficient)) {
    detail::fail_parameter(error_id::config, where, "entropy_coefficient", "finite", options.entropy_coefficient);
  }
  if (!std::isfinite(options.balance_coefficient)) {
    detail::fail_parameter(error_id::config, where, "balance_coefficient", "finite", options.balance_coefficient);
  }
  dynmole_loss_value out;
  if (T == 0 || E == 0) return out;
  const double q = router.q, eps = router.entropy_eps;
  std::vector<double> p(static_cast<std::size_t>(T * E)), mask(static_cast<std::size_t>(T * E), 0.0);
  std::vector<int> state(static_cast<std::size_t>(T));
  std::vector<double> row(static_cast<std::size_t>(E)), f(static_cast<std::size_t>(E), 0.0),
      P(static_cast<std::size_t>(E), 0.0);
  for (index t = 0; t < T; ++t) {
    for (index e = 0; e < E; ++e) {
      row[e] = static_cast<double>(z(t, e));
      detail::loss_math::check_not_nan(row[e], where, "logits", t, e);
    }
    double* pt = p.data() + t * E;
    state[t] = detail::loss_math::softmax(row.data(), E, pt);
    for (auto e : plan.experts(t)) {
      if (e != no_expert) mask[t * E + e] = 1.0;
    }
    if (state[t] != 0) out.entropy += detail::dynmole::normalised_entropy(pt, E, q, eps, router.entropy);
    for (index e = 0; e < E; ++e) {
      f[e] += pt[e] * mask[t * E + e];
      P[e] += pt[e];
    }
  }
  const double inv_T = 1.0 / static_cast<double>(T);
  out.entropy *= inv_T;
  for (index e = 0; e < E; ++e) {
    f[e] *= inv_T;
    P[e] *= inv_T;
    out.load_balance += f[e] * P[e];
  }
  out.load_balance *= static_cast<double>(E);
  out.total = options.entropy_coefficient * out.entropy + options.balance_coefficient * out.load_balance;
  if (grad == nullptr) return out;

  // dTotal/dp_te = c_ent/T · dH_t/dp_te + c_lb·E/T · (mask_te P_e + f_e); then through softmax.
  std::vector<double> dh(static_cast<std::size_t>(E)), g(static_cast<std::size_t>(E));
  for (index t = 0; t < T; ++t) {
    const double* pt = p.data() + t * E;
    if (state[t] != 1) {
      for (index e = 0; e < E; ++e) grad[t * E + e] = Scalar(0);
      continue;
    }
    detail::dynmole::normalised_entropy_gradient(pt, E, q, eps, router.entropy, dh.data());
    double gp = 0;
    for (index e = 0; e < E; ++e) {
      g[e] = inv_T * (options.entropy_coefficient * dh[e] +
                      options.balance_coefficient * static_cast<double>(E) * (mask[t * E + e] * P[e] + f[e]));
      gp += g[e] * pt[e];
    }
    for (index e = 0; e < E; ++e) grad[t * E + e] = static_cast<Scalar>(pt[e] * (g[e] - gp));
  }
  return out;
}

}  // namespace moe
