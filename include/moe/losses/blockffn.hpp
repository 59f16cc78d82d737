// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include <Eigen/Core>

#include "moe/config.hpp"
#include "moe/core/error.hpp"
#include "moe/core/sequences.hpp"
#include "moe/core/views.hpp"
#include "moe/losses/detail/row_math.hpp"
#include "moe/routing/routers/token_choice.hpp"

namespace moe {

/// Options of moe::chunk_sparsification_loss (BlockFFN's released values).
struct chunk_sparsification_options {
  /// Chunk length L_c, >= 1; it must divide the length of every sequence (pad the sequences).
  index chunk_length = 64;
  /// Base coefficient (the online loss-ratio scheduler of the paper is a training-loop concern).
  double coefficient = 5e-2;
  /// The router's RMSNorm epsilon.
  double eps = 1e-5;
  /// Sequence boundaries (route_context::sequence_starts); empty: one sequence.
  std::span<const index> sequence_starts = {};
  /// Per-token flags `[T]`: 0 marks padding (its p is 0); empty: every token is real.
  std::span<const std::uint8_t> valid = {};
};

/// Options of moe::activation_locality_loss (BlockFFN's released values for 0.1B–1.2B).
struct activation_locality_options {
  /// Sigmoid steepness s, finite and > 0 (BlockFFN: 100).
  double steepness = 100;
  /// lambda_AL (2e-3; 1e-3 for the 0.8B model).
  double coefficient = 2e-3;
  /// Sequence boundaries: the first token of a sequence has no predecessor.
  std::span<const index> sequence_starts = {};
};

namespace detail::blockffn {

// Checks the scores are finite and returns them in double, [T × E].
template <class Z>
std::vector<double> finite_scores(const Z& r, const char* where) {
  const index T = r.rows(), E = r.cols();
  std::vector<double> out(static_cast<std::size_t>(T * E));
  for (index t = 0; t < T; ++t) {
    for (index e = 0; e < E; ++e) {
      out[t * E + e] = static_cast<double>(r(t, e));
      loss_math::check_finite(out[t * E + e], where, "scores", t, e);
    }
  }
  return out;
}

}  // namespace detail::blockffn

/// BlockFFN's chunk sparsification loss (docs/routing-spec.md §11): with the sum-normalised routing
/// distribution `p_te = â_te / (Σ_e â_te + 1e-5)` (â the RMSNorm output without gain),
/// `L_CS = coefficient · (1 − mean over chunks c and experts e of Π_{t in c} (1 − p_te + 1e-5))`,
/// the product computed as `exp(Σ log(...))`. Chunks are consecutive `chunk_length` tokens of each
/// sequence. Computed in double.
///
/// @param scores raw router scores `r [T × E]` (finite; float or double).
/// @param grad nullptr or `[T × E]` row-major: receives dL/dr (0 where r <= 0 and for padding).
/// @return the loss; 0 for T = 0.
template <class Derived>
double chunk_sparsification_loss(const Eigen::DenseBase<Derived>& scores,
                                 const chunk_sparsification_options& options = {},
                                 typename Derived::Scalar* grad = nullptr) {
  using Scalar = typename Derived::Scalar;
  static_assert(detail::loss_math::is_loss_scalar<Scalar>,
                "moe::chunk_sparsification_loss: scores must hold float or double");
  constexpr const char* where = "moe::chunk_sparsification_loss";
  const auto rs = view(scores);
  const index T = rs.rows(), E = rs.cols(), Lc = options.chunk_length;
  if (Lc < 1) detail::fail_parameter(error_id::config, where, "chunk_length", ">= 1", Lc);
  if (!(options.eps >= 0) || !std::isfinite(options.eps)) {
    detail::fail_parameter(error_id::config, where, "eps", "finite and >= 0", options.eps);
  }
  if (!std::isfinite(options.coefficient)) {
    detail::fail_parameter(error_id::config, where, "coefficient", "finite", options.coefficient);
  }
  if (!options.valid.empty()) detail::check_extent(where, "valid.size()", static_cast<index>(options.valid.size()), T);
  detail::check_sequence_starts(options.sequence_starts, T, where);
  const index n_seq = detail::sequence_count(options.sequence_starts);
  for (index q = 0; q < n_seq; ++q) {
    const auto [s0, s1] = detail::sequence_range(options.sequence_starts, q, T);
    if ((s1 - s0) % Lc != 0) {
      detail::fail_parameter(error_id::config, where, "chunk_length",
                             detail::concat("a divisor of every sequence length (sequence ", q, " has ", s1 - s0,
                                            " tokens)"),
                             Lc);
    }
  }
  if (T == 0 || E == 0) return 0.0;
  const auto r = detail::blockffn::finite_scores(rs, where);
  constexpr double delta = 1e-5;
  // Forward: â (RMSNorm), p (sum-normalised), per token.
  std::vector<double> a_hat(static_cast<std::size_t>(T * E), 0.0), p(static_cast<std::size_t>(T * E), 0.0),
      rho(static_cast<std::size_t>(T), 1.0), S(static_cast<std::size_t>(T), 0.0);
  for (index t = 0; t < T; ++t) {
    if (!options.valid.empty() && options.valid[static_cast<std::size_t>(t)] == 0) continue;
    double sq = 0;
    for (index e = 0; e < E; ++e) sq += r[t * E + e] > 0 ? r[t * E + e] * r[t * E + e] : 0.0;
    rho[t] = std::sqrt(sq / static_cast<double>(E) + options.eps);
    for (index e = 0; e < E; ++e) {
      a_hat[t * E + e] = r[t * E + e] > 0 && rho[t] > 0 ? r[t * E + e] / rho[t] : 0.0;
      S[t] += a_hat[t * E + e];
    }
    for (index e = 0; e < E; ++e) p[t * E + e] = a_hat[t * E + e] / (S[t] + delta);
  }
  const index chunks = T / Lc;  // every sequence is a whole number of chunks, so chunks tile [0, T)
  std::vector<double> prod(static_cast<std::size_t>(chunks * E));  // Π_{t in c}(1 − p_te + δ)
  double mean = 0;
  for (index c = 0; c < chunks; ++c) {
    for (index e = 0; e < E; ++e) {
      double log_sum = 0;
      for (index t = c * Lc; t < (c + 1) * Lc; ++t) log_sum += std::log(1.0 - p[t * E + e] + delta);
      prod[c * E + e] = std::exp(log_sum);
      mean += prod[c * E + e];
    }
  }
  const double norm = 1.0 / static_cast<double>(chunks * E);
  const double loss = options.coefficient * (1.0 - mean * norm);
  if (grad == nullptr) return loss;

  std::vector<double> G(static_cast<std::size_t>(E)), H(static_cast<std::size_t>(E));
  for (index t = 0; t < T; ++t) {
    Scalar* gt = grad + t * E;
    if ((!options.valid.empty() && options.valid[static_cast<std::size_t>(t)] == 0) || S[t] == 0) {
      std::fill(gt, gt + E, Scalar(0));
      continue;
    }
    const index c = t / Lc;
    // dL/dp, then through p = â / (S + δ), then through â = a / rho, then ReLU.
    double Ga = 0;
    for (index e = 0; e < E; ++e) {
      G[e] = options.coefficient * norm * prod[c * E + e] / (1.0 - p[t * E + e] + delta);
      Ga += G[e] * a_hat[t * E + e];
    }
    const double D = S[t] + delta;
    double Ha = 0;
    for (index e = 0; e < E; ++e) {
      H[e] = G[e] / D - Ga / (D * D);
      Ha += H[e] * (r[t * E + e] > 0 ? r[t * E + e] : 0.0);
    }
    const double rh = rho[t];
    for (index e = 0; e < E; ++e) {
      const double a = r[t * E + e];
      gt[e] = a > 0 ? static_cast<Scalar>(H[e] / rh - a * Ha / (static_cast<double>(E) * rh * rh * rh)) : Scalar(0);
    }
  }
  return loss;
}

/// BlockFFN's activation locality loss (docs/routing-spec.md §11 with errata 7): for each token t with a
/// predecessor t' = t − 1 in the same sequence,
/// `L_AL = coefficient · mean_{t, e} BCEWithLogits(logit = s·r_{t'e}, target = sigmoid(s·r_te))`,
/// averaged over `(T − number of sequences) · E` terms. The target is not detached (as in the
/// authors' code): gradients reach both tokens. Computed in double with a stable softplus.
///
/// @param scores raw router scores `r [T × E]` (finite; float or double).
/// @param grad nullptr or `[T × E]` row-major: receives dL/dr.
/// @return the loss; 0 when no token has a predecessor.
template <class Derived>
double activation_locality_loss(const Eigen::DenseBase<Derived>& scores, const activation_locality_options& options = {},
                                typename Derived::Scalar* grad = nullptr) {
  using Scalar = typename Derived::Scalar;
  static_assert(detail::loss_math::is_loss_scalar<Scalar>,
                "moe::activation_locality_loss: scores must hold float or double");
  constexpr const char* where = "moe::activation_locality_loss";
  const auto rs = view(scores);
  const index T = rs.rows(), E = rs.cols();
  if (!(options.steepness > 0) || !std::isfinite(options.steepness)) {
    detail::fail_parameter(error_id::config, where, "steepness", "finite and > 0", options.steepness);
  }
  if (!std::isfinite(options.coefficient)) {
    detail::fail_parameter(error_id::config, where, "coefficient", "finite", options.coefficient);
  }
  detail::check_sequence_starts(options.sequence_starts, T, where);
  if (grad) std::fill(grad, grad + T * E, Scalar(0));
  const auto r = detail::blockffn::finite_scores(rs, where);
  const double s = options.steepness;
  index pairs = 0;
  const index n_seq = detail::sequence_count(options.sequence_starts);
  for (index q = 0; q < n_seq; ++q) {
    const auto [s0, s1] = detail::sequence_range(options.sequence_starts, q, T);
    pairs += std::max<index>(s1 - s0 - 1, 0);
  }
  if (pairs == 0 || E == 0) return 0.0;
  const double scale = options.coefficient / static_cast<double>(pairs * E);
  double total = 0;
  std::vector<double> g(grad ? static_cast<std::size_t>(T * E) : 0, 0.0);
  for (index q = 0; q < n_seq; ++q) {
    const auto [s0, s1] = detail::sequence_range(options.sequence_starts, q, T);
    for (index t = s0 + 1; t < s1; ++t) {
      for (index e = 0; e < E; ++e) {
        const double x = s * r[(t - 1) * E + e];  // logit from the previous token
        const double y = detail::loss_math::sigmoid(s * r[t * E + e]);  // target from the current token
        total += detail::loss_math::softplus(x) - x * y;
        if (grad) {
          g[(t - 1) * E + e] += scale * s * (detail::loss_math::sigmoid(x) - y);
          g[t * E + e] += scale * (-x) * s * y * (1.0 - y);
        }
      }
    }
  }
  if (grad) {
    for (index i = 0; i < T * E; ++i) grad[i] = static_cast<Scalar>(g[i]);
  }
  return total * scale;
}

}  // namespace moe
