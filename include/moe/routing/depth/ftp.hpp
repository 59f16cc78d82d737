// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// FTP: fine-grained token-wise pruning with a token router (docs/routing-spec.md §13.4; arXiv
// 2412.11494). No code or paper body was available: the features, the decision and the losses are
// the spec's [OURS] definition.
//
// Dispatch, per sequence of L tokens at block l with target skip fraction s_l:
//   1. features of token t: phi1 = t / (L-1) (0 if L = 1); phi2 = a_t, the mean over query rows
//      q >= t of the head-averaged attention A[q, t] (route_context::attention); phi3 =
//      rank(a_t) / (L-1), rank 0 for the largest a_t (ties: lower position); phi4 = s_l;
//   2. keep probability pi_t = sigmoid(w2 · ReLU(W1 phi + b1) + b2), one global router
//      (4 -> 64 -> 1) shared by every block;
//   3. keep iff pi_t >= 0.5 (errata 9: FTP's own comparison), decided on the pre-sigmoid value as
//      u_t >= 0 (a rounded sigmoid would turn a tiny negative u_t into 0.5); skipped tokens pass
//      through.
// The static router keeps the first ceil((1 - s_l) L) tokens of the priority list
// [0, L-1, L-2, ..., 1] (it guides training; moe::ftp_mode::static_priority uses it to route).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "moe/config.hpp"
#include "moe/core/context.hpp"
#include "moe/core/error.hpp"
#include "moe/plan.hpp"
#include "moe/core/rounding.hpp"
#include "moe/core/sequences.hpp"
#include "moe/core/views.hpp"
#include "moe/core/workspace.hpp"
#include "moe/kernels/math.hpp"
#include "moe/routing/wrappers/layer_skip.hpp"

namespace moe {

/// Number of FTP token features (position, attention score, attention rank, sparsity target).
inline constexpr index ftp_feature_count = 4;

/// Writes the FTP features `phi [L × 4]` (row-major) of one sequence of L tokens from its
/// head-averaged attention probabilities `attention [L × L]` (query rows, key columns) and the
/// block's target skip fraction. Attention means are accumulated in double. Throws moe::error
/// naming the parameter for sizes or non-finite attention values.
inline void ftp_features(std::span<const float> attention, index L, float sparsity, std::span<float> phi) {
  constexpr const char* where = "moe::ftp_features";
  if (L < 0) detail::fail_parameter(error_id::shape, where, "L", ">= 0", L);
  detail::check_extent(where, "attention.size()", static_cast<index>(attention.size()), L * L);
  detail::check_extent(where, "phi.size()", static_cast<index>(phi.size()), L * ftp_feature_count);
  const float denom = L > 1 ? static_cast<float>(L - 1) : 1.0f;
  for (index t = 0; t < L; ++t) {
    double sum = 0;
    for (index q = t; q < L; ++q) {
      const float a = attention[static_cast<std::size_t>(q * L + t)];
      if (!std::isfinite(a)) {
        detail::fail_parameter(error_id::input, where, detail::concat("attention[", q, ", ", t, "]"), "finite", a);
      }
      sum += a;
    }
    float* f = phi.data() + t * ftp_feature_count;
    f[0] = L > 1 ? static_cast<float>(t) / denom : 0.0f;
    f[1] = static_cast<float>(sum / static_cast<double>(L - t));
    f[3] = sparsity;
  }
  for (index t = 0; t < L; ++t) {
    const float at = phi[static_cast<std::size_t>(t * ftp_feature_count + 1)];
    index rank = 0;
    for (index u = 0; u < L; ++u) {
      const float au = phi[static_cast<std::size_t>(u * ftp_feature_count + 1)];
      rank += au > at || (au == at && u < t);
    }
    phi[static_cast<std::size_t>(t * ftp_feature_count + 2)] = L > 1 ? static_cast<float>(rank) / denom : 0.0f;
  }
}

/// The FTP static router for one sequence of L tokens: `mask[t] = 1` for the first
/// `ceil((1 - sparsity) L)` tokens (double, §1.2 guard) of the priority list [0, L-1, ..., 1],
/// else 0. Throws moe::error naming 'sparsity' (outside [0, 1]) or 'mask.size()'.
template <class Scalar>
void ftp_static_mask(index L, double sparsity, std::span<Scalar> mask) {
  constexpr const char* where = "moe::ftp_static_mask";
  if (!(sparsity >= 0.0 && sparsity <= 1.0)) detail::fail_parameter(error_id::config, where, "sparsity", "in [0, 1]", sparsity);
  detail::check_extent(where, "mask.size()", static_cast<index>(mask.size()), L);
  const index keep = std::clamp<index>(capacity_ceil((1.0 - sparsity) * static_cast<double>(L)), 0, L);
  for (index t = 0; t < L; ++t) {
    // Position 0 is first in the list, then L-1, L-2, ...: t >= 1 is at list index L - t.
    const bool kept = t == 0 ? keep >= 1 : L - t < keep;
    mask[static_cast<std::size_t>(t)] = kept ? Scalar(1) : Scalar(0);
  }
}

/// The FTP token router `pi = sigmoid(w2 · ReLU(W1 phi + b1) + b2)`, `W1 [h × 4]` (paper: h = 64),
/// one per model, shared by every block: hold it in a `std::shared_ptr` and give the same pointer
/// to every block's moe::ftp. Arithmetic in fp32 with sequential fused multiply-adds.
class ftp_router {
 public:
  /// @param w1 `[h × 4]`, @param b1 `[h]`, @param w2 `[h]`, @param b2 scalar (copied).
  ftp_router(const_matrix_map<float> w1, std::span<const float> b1, std::span<const float> w2, float b2)
      : m_units(w1.rows()), m_b1(b1.begin(), b1.end()), m_w2(w2.begin(), w2.end()), m_b2(b2) {
    constexpr const char* where = "moe::ftp_router";
    if (m_units < 1) detail::fail_parameter(error_id::shape, where, "w1.rows()", ">= 1", m_units);
    detail::check_extent(where, "w1.cols()", w1.cols(), ftp_feature_count);
    detail::check_extent(where, "b1.size()", static_cast<index>(b1.size()), m_units);
    detail::check_extent(where, "w2.size()", static_cast<index>(w2.size()), m_units);
    if (!std::isfinite(b2)) detail::fail_parameter(error_id::config, where, "b2", "finite", b2);
    m_w1.resize(static_cast<std::size_t>(m_units * ftp_feature_count));
    for (index j = 0; j < m_units; ++j) {
      for (index i = 0; i < ftp_feature_count; ++i) {
        if (!std::isfinite(w1(j, i))) detail::fail_parameter(error_id::config, where, detail::concat("w1(", j, ", ", i, ")"), "finite", w1(j, i));
        m_w1[static_cast<std::size_t>(j * ftp_feature_count + i)] = w1(j, i);
      }
      const auto jj = static_cast<std::size_t>(j);
      if (!std::isfinite(b1[jj])) detail::fail_parameter(error_id::config, where, detail::concat("b1[", j, "]"), "finite", b1[jj]);
      if (!std::isfinite(w2[jj])) detail::fail_parameter(error_id::config, where, detail::concat("w2[", j, "]"), "finite", w2[jj]);
    }
  }
  /// Convenience: any row-major Eigen `w1 [h × 4]`.
  template <class Derived>
  ftp_router(const Eigen::DenseBase<Derived>& w1, std::span<const float> b1, std::span<const float> w2, float b2)
      : ftp_router(view(w1), b1, w2, b2) {}

  /// h, the hidden width.
  [[nodiscard]] index hidden_units() const noexcept { return m_units; }

  /// The router's pre-sigmoid value `u = w2 · ReLU(W1 phi + b1) + b2` of one token from its
  /// features `phi [4]`: the token is kept iff `u >= 0` (i.e. `sigmoid(u) >= 0.5`, decided
  /// before the sigmoid rounds).
  [[nodiscard]] float keep_logit(const float* phi) const noexcept {
    float u = m_b2;
    for (index j = 0; j < m_units; ++j) {
      const float* w = m_w1.data() + j * ftp_feature_count;
      float a = m_b1[static_cast<std::size_t>(j)];
      for (index i = 0; i < ftp_feature_count; ++i) a = kernels::fmadd(w[i], phi[i], a);
      u = kernels::fmadd(m_w2[static_cast<std::size_t>(j)], std::max(a, 0.0f), u);
    }
    return u;
  }

  /// Keep probability `pi = sigmoid(keep_logit(phi))` of one token from its features `phi [4]`.
  [[nodiscard]] float keep_probability(const float* phi) const noexcept { return kernels::sigmoid(keep_logit(phi)); }

 private:
  index m_units;
  std::vector<float> m_w1;  // [h × 4]
  std::vector<float> m_b1;
  std::vector<float> m_w2;
  float m_b2;
};

/// How an FTP block decides.
enum class ftp_mode {
  router,          ///< the token router: keep iff pi >= 0.5, decided as u >= 0 (pi = sigmoid(u))
  static_priority  ///< the static router: the first ceil((1 - s_l) L) of [0, L-1, ..., 1]
};

/// Options of moe::ftp.
struct ftp_options {
  /// s_l: the block's target skip fraction in [0, 1] (feature phi4, as a float; the static
  /// router's budget). A double, so that the static router's capacity `ceil((1 - s_l) L)` keeps
  /// the guard of errata 1 (as a float, 0.7 would keep 4 of 10 tokens instead of 3).
  double sparsity = 0.0;
  ftp_mode mode = ftp_mode::router;
};

/// FTP depth policy of one block: per sequence, the shared token router keeps the tokens with
/// `pi >= 0.5`, decided on its pre-sigmoid value as `u >= 0` (or the static router its priority prefix); the others skip the layer (output 0,
/// the residual passes them through). Kept tokens are not scaled (the hard mask of the forward
/// pass). Router mode needs route_context::attention; a missing or mis-sized one throws
/// moe::error naming 'ctx.attention.size()'. Losses: losses/ftp.hpp.
class ftp {
 public:
  using depth_policy_type = ftp;
  static constexpr bool needs_whole_batch = true;

  /// @param router the shared token router (may be null in static_priority mode).
  ftp(std::shared_ptr<const ftp_router> router, ftp_options options = {})
      : m_router(std::move(router)), m_options(options) {
    constexpr const char* where = "moe::ftp";
    if (!(m_options.sparsity >= 0.0 && m_options.sparsity <= 1.0)) {
      detail::fail_parameter(error_id::config, where, "sparsity", "in [0, 1]", m_options.sparsity);
    }
    if (!m_router && m_options.mode == ftp_mode::router) {
      detail::fail_parameter(error_id::config, where, "router", "not null in ftp_mode::router", "nullptr");
    }
  }

  [[nodiscard]] const std::shared_ptr<const ftp_router>& router() const noexcept { return m_router; }
  [[nodiscard]] const ftp_options& options() const noexcept { return m_options; }

  /// Keep probabilities `pi [T]` of the T tokens of a batch (sequences from ctx) from
  /// ctx.attention. Needs the router.
  void keep_probabilities(index T, const route_context& ctx, std::span<float> pi, workspace& ws) const {
    router_values(T, ctx, pi, ws, "moe::ftp::keep_probabilities", true);
  }

  /// The router's pre-sigmoid values `u [T]` (keep iff `u >= 0`; `pi = sigmoid(u)`) of the T
  /// tokens of a batch, from ctx.attention. Needs the router.
  void keep_logits(index T, const route_context& ctx, std::span<float> u, workspace& ws) const {
    router_values(T, ctx, u, ws, "moe::ftp::keep_logits", false);
  }

  /// Sets the passes of `plan` (reset to x.rows() tokens); x itself is not read.
  void decide(const_matrix_map<float> x, const route_context& ctx, routing_plan& plan, workspace& ws) const {
    constexpr const char* where = "moe::ftp::decide";
    const index T = x.rows();
    detail::check_extent(where, "plan.num_tokens()", plan.num_tokens(), T);
    if (m_options.mode == ftp_mode::static_priority) {
      auto* mask = ws.take<std::uint8_t>(static_cast<std::size_t>(std::max<index>(T, 1)));
      detail::for_each_sequence(ctx.sequence_starts, T, where, [&](index begin, index end) {
        ftp_static_mask<std::uint8_t>(end - begin, m_options.sparsity,
                                      {mask + begin, static_cast<std::size_t>(end - begin)});
      });
      for (index t = 0; t < T; ++t) plan.set_passes(t, mask[t]);
      return;
    }
    float* u = ws.take<float>(static_cast<std::size_t>(std::max<index>(T, 1)));
    keep_logits(T, ctx, {u, static_cast<std::size_t>(T)}, ws);
    decide_logits({u, static_cast<std::size_t>(T)}, plan);
  }

  /// The decision from given pre-sigmoid router values `u [T]`: keep iff u >= 0, i.e.
  /// sigmoid(u) >= 0.5 (errata 9, decided before the sigmoid rounds). What decide() does.
  static void decide_logits(std::span<const float> u, routing_plan& plan) {
    detail::check_extent("moe::ftp::decide", "plan.num_tokens()", plan.num_tokens(), static_cast<index>(u.size()));
    for (index t = 0; t < plan.num_tokens(); ++t) plan.set_passes(t, u[static_cast<std::size_t>(t)] >= 0.0f ? 1 : 0);
  }

  /// The decision from given keep probabilities `pi [T]`: keep iff pi >= 0.5. On probabilities
  /// that were rounded to float a tiny negative u gives pi = 0.5 and is kept: prefer
  /// decide_logits() when u is at hand.
  static void decide_probabilities(std::span<const float> pi, routing_plan& plan) {
    detail::check_extent("moe::ftp::decide", "plan.num_tokens()", plan.num_tokens(), static_cast<index>(pi.size()));
    // Errata 9: FTP's own comparison, >=.
    for (index t = 0; t < plan.num_tokens(); ++t) plan.set_passes(t, pi[static_cast<std::size_t>(t)] >= 0.5f ? 1 : 0);
  }

 private:
  // keep_probabilities() (probability) or keep_logits() into out [T].
  void router_values(index T, const route_context& ctx, std::span<float> out, workspace& ws, const char* where,
                     bool probability) const {
    if (!m_router) detail::fail_parameter(error_id::config, where, "router", "not null", "nullptr");
    detail::check_extent(where, probability ? "pi.size()" : "u.size()", static_cast<index>(out.size()), T);
    index expected = 0;
    index longest = 0;
    detail::for_each_sequence(ctx.sequence_starts, T, where, [&](index begin, index end) {
      expected += (end - begin) * (end - begin);
      longest = std::max(longest, end - begin);
    });
    detail::check_extent(where, "ctx.attention.size()", static_cast<index>(ctx.attention.size()), expected);
    float* phi = ws.take<float>(static_cast<std::size_t>(std::max<index>(longest * ftp_feature_count, 1)));
    index offset = 0;
    detail::for_each_sequence(ctx.sequence_starts, T, where, [&](index begin, index end) {
      const index L = end - begin;
      ftp_features(ctx.attention.subspan(static_cast<std::size_t>(offset), static_cast<std::size_t>(L * L)), L,
                   static_cast<float>(m_options.sparsity), {phi, static_cast<std::size_t>(L * ftp_feature_count)});
      for (index t = 0; t < L; ++t) {
        const float u = m_router->keep_logit(phi + t * ftp_feature_count);
        out[static_cast<std::size_t>(begin + t)] = probability ? kernels::sigmoid(u) : u;
      }
      offset += L * L;
    });
  }

  std::shared_ptr<const ftp_router> m_router;
  ftp_options m_options;
};

static_assert(depth_policy<ftp>);

}  // namespace moe
