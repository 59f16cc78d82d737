// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "moe/concepts.hpp"
#include "moe/config.hpp"
#include "moe/core/context.hpp"
#include "moe/core/error.hpp"
#include "moe/plan.hpp"
#include "moe/core/sequences.hpp"
#include "moe/core/views.hpp"
#include "moe/core/workspace.hpp"
#include "moe/kernels/gating.hpp"
#include "moe/kernels/gemm.hpp"
#include "moe/kernels/math.hpp"
#include "moe/kernels/pairwise.hpp"
#include "moe/routing/routers/token_choice.hpp"

namespace moe {

/// Where moe::similarity_aware takes the token-to-token weights from.
enum class similarity_source {
  tokens,    ///< a similarity kernel over the token states (Similarity-Aware SMoE, default)
  attention  ///< the caller's head-averaged attention, `route_context::attention` (Attention-Aware)
};

/// What moe::similarity_aware mixes across tokens.
enum class mix_space {
  probability,  ///< `q_i = Σ_j S_ij π_j`, π the base's scores (default)
  logit         ///< `z~_i = Σ_j S_ij z_j`, then the base's gate on z~
};

/// Which scores weigh the selected experts.
enum class combine_weights {
  mixed,  ///< the mixed scores q (renormalised over the selected experts with renormalize = true)
  own     ///< the token's own scores π_i, through the same weigh stage
};

/// Options of moe::similarity_aware (docs/routing-spec.md §9 and its Additions).
struct similarity_aware_options {
  /// Token similarity (default) or the caller's attention.
  similarity_source source = similarity_source::tokens;
  /// Token similarity sees only `j <= i` (decoders; false for encoders and ViT). Attention mode
  /// ignores it: the attention carries its own mask.
  bool causal = true;
  /// Mix probabilities (default) or logits.
  mix_space space = mix_space::probability;
  /// Weigh with the mixed scores (default) or the token's own.
  combine_weights combine = combine_weights::mixed;
  /// Attention sharpness sigma > 0: `S_ij ∝ A_ij^(1/sigma)`, row-renormalised (1: A itself).
  float sharpness = 1.0f;
};

/// A similarity kernel: raw pair scores of the tokens of one sequence, before the row softmax.
/// `scores(x, s, lds, causal, ws)` writes `s[i*lds + j]` for `j <= i` (causal) or all `j`.
template <class K>
concept similarity_kernel = requires(const K& k, const_matrix_map<float> x, float* s, index lds, bool causal,
                                     workspace& ws) { k.scores(x, s, lds, causal, ws); };

/// Scaled dot product of the token states, `x_i · x_j / tau` (the default kernel).
class scaled_dot_similarity {
 public:
  /// Temperature sqrt(d).
  scaled_dot_similarity() = default;
  /// @param tau temperature > 0, or 0 for `sqrt(d)`.
  explicit scaled_dot_similarity(float tau) : m_tau(tau) {
    if (!(tau >= 0.0f) || !std::isfinite(tau)) {
      detail::fail_parameter(error_id::config, "moe::scaled_dot_similarity", "tau", "finite and >= 0 (0: sqrt(d))", tau);
    }
  }
  /// The temperature for hidden size d.
  [[nodiscard]] float tau(index d) const noexcept {
    return m_tau > 0.0f ? m_tau : std::sqrt(static_cast<float>(d));
  }
  /// `s[i][j] = x_i · x_j / tau` for the tokens `x [L × d]` of one sequence.
  void scores(const_matrix_map<float> x, float* s, index lds, bool causal, workspace& ws) const {
    const index L = x.rows();
    // The dot products are symmetric bit for bit (fma(a, b, c) = fma(b, a, c)): compute the lower
    // triangle only and mirror it, which halves the cost of the non-causal case.
    kernels::pairwise_dots(x.data(), L, x.outerStride(), x.data(), L, x.outerStride(), x.cols(), s, lds, true, ws);
    if (!causal) {
      for (index i = 0; i < L; ++i) {
        for (index j = i + 1; j < L; ++j) s[i * lds + j] = s[j * lds + i];
      }
    }
    const float t = tau(x.cols());
    if (t == 1.0f) return;
    for (index i = 0; i < L; ++i) {
      const index n = causal ? i + 1 : L;
      for (index j = 0; j < n; ++j) s[i * lds + j] /= t;
    }
  }

 private:
  float m_tau = 0.0f;
};

/// Bilinear similarity `x_i^T W_s x_j / tau` with a learnt `W_s [d × d]` (docs/routing-spec.md §9).
class bilinear_similarity {
 public:
  /// @param w_s `[d × d]` (copied and packed); @param tau > 0, or 0 for `sqrt(d)`.
  explicit bilinear_similarity(const_matrix_map<float> w_s, float tau = 0.0f) : m_dot(tau), m_hidden(w_s.cols()) {
    detail::check_extent("moe::bilinear_similarity", "w_s.rows()", w_s.rows(), w_s.cols());
    m_packed = kernels::pack_panels(w_s.data(), m_hidden, m_hidden, w_s.outerStride(),
                                    kernels::panel_width<kernels::gemm_arch>);
  }
  /// Convenience: any row-major Eigen matrix `[d × d]`.
  template <class Derived>
  explicit bilinear_similarity(const Eigen::DenseBase<Derived>& w_s, float tau = 0.0f)
      : bilinear_similarity(view(w_s), tau) {}

  /// `s[i][j] = x_i^T W_s x_j / tau` for the tokens `x [L × d]` of one sequence.
  void scores(const_matrix_map<float> x, float* s, index lds, bool causal, workspace& ws) const {
    const index L = x.rows(), d = x.cols();
    detail::check_extent("moe::bilinear_similarity::scores", "x.cols()", d, m_hidden);
    float* y = ws.take<float>(static_cast<std::size_t>(std::max<index>(L * d, 1)));  // [L × d], y_j = W_s x_j
    kernels::gemm(x.data(), L, x.outerStride(), m_packed, y, d, ws);
    kernels::pairwise_dots(x.data(), L, x.outerStride(), y, L, d, d, s, lds, causal, ws);
    const float t = m_dot.tau(d);
    if (t == 1.0f) return;
    for (index i = 0; i < L; ++i) {
      const index n = causal ? i + 1 : L;
      for (index j = 0; j < n; ++j) s[i * lds + j] /= t;
    }
  }

 private:
  scaled_dot_similarity m_dot;
  index m_hidden;
  kernels::packed_weights m_packed;
};

static_assert(similarity_kernel<scaled_dot_similarity>);
static_assert(similarity_kernel<bilinear_similarity>);

/// Fraction of the (token, slot) assignments that differ between two plans of the same batch:
/// `Σ_t (max(|A_t|, |B_t|) − |A_t ∩ B_t|) / Σ_t max(|A_t|, |B_t|)`, where `A_t`, `B_t` are the
/// sets of experts that compute token t in each plan (slot order and weights ignored). 0: the
/// same experts for every token; 1: every assignment moved (also when one plan routes a token
/// nowhere and the other does not). 0 when neither plan routes anything. Used to measure routing
/// fluctuation between two calls (e.g. two training steps on the same batch).
inline double routing_fluctuation(const routing_plan& a, const routing_plan& b) {
  detail::check_extent("moe::routing_fluctuation", "b.num_tokens()", b.num_tokens(), a.num_tokens());
  std::vector<std::int32_t> ea, eb;
  index changed = 0, total = 0;
  for (index t = 0; t < a.num_tokens(); ++t) {
    ea.clear();
    eb.clear();
    for (auto e : a.experts(t)) if (e != no_expert) ea.push_back(e);
    for (auto e : b.experts(t)) if (e != no_expert) eb.push_back(e);
    std::sort(ea.begin(), ea.end());
    std::sort(eb.begin(), eb.end());
    ea.erase(std::unique(ea.begin(), ea.end()), ea.end());
    eb.erase(std::unique(eb.begin(), eb.end()), eb.end());
    index common = 0;
    for (std::size_t i = 0, j = 0; i < ea.size() && j < eb.size();) {
      if (ea[i] == eb[j]) ++common, ++i, ++j;
      else if (ea[i] < eb[j]) ++i;
      else ++j;
    }
    const index n = static_cast<index>(std::max(ea.size(), eb.size()));
    changed += n - common;
    total += n;
  }
  return total > 0 ? static_cast<double>(changed) / static_cast<double>(total) : 0.0;
}

/// What the Graph-of-Tokens paper watches: routing entropy and fluctuation.
struct similarity_aware_stats {
  index tokens = 0;  ///< T
  /// Mean entropy (nats) of the mixed routing distributions the experts were selected from.
  double routing_entropy = 0;
  double mean_experts_per_token = 0;  ///< active (token, slot) pairs / T
  /// routing_fluctuation() against a previous plan of the same batch; NaN without one.
  double fluctuation = std::numeric_limits<double>::quiet_NaN();
};

/// Similarity-aware and attention-aware routing ("Graph of Tokens", docs/routing-spec.md §9, [OURS]).
///
/// Per sequence (`route_context::sequence_starts`), token i adopts the routing of the tokens it
/// resembles: with a row-stochastic `S [L × L]`, the mixed distribution is
/// `q_i = Σ_j S_ij π_j` (π_j the base's scores of token j; `mix_space::logit` mixes the logits
/// instead and gates the mixture). The base then selects on q_i and weighs the selection with q_i
/// (or the token's own π_i with `combine_weights::own`); renormalisation and scaling are the
/// base's options (`{.renormalize = true}` gives the spec's default `q_sel / Σ q_sel`).
///
/// `S` comes from a similarity kernel (default: `softmax_j(x_i · x_j / tau)` over `j <= i` when
/// causal, else over the whole sequence) or, with `similarity_source::attention`, from the
/// caller's head-averaged attention `A` (route_context::attention): `S_ij ∝ A_ij^(1/sigma)`,
/// row-renormalised; an all-zero attention row (padding) routes its token nowhere.
///
/// Rules: a token whose own logits are all -inf routes nowhere; an expert whose own logit is -inf
/// is never selected for that token; in logit space a mixed logit that is NaN (+inf met -inf)
/// counts as -inf. A token whose row of S is exactly its own one-hot (L = 1, the first token of a
/// causal sequence, or every other weight underflowed) is routed exactly as the base routes it.
/// The similarity matrix costs O(L² d) per sequence (a canonical SIMD kernel) and L² floats of
/// workspace. Not batch invariant by design (a token's route depends on its sequence), but
/// sequences are independent and results are deterministic. On up to `route_context::threads`
/// threads: the base's logits, NaN policy and gates over the tokens, then, sequence by
/// sequence, the mixing and routing of its tokens (the similarity kernel or the attention
/// rows of S run on the calling thread); bitwise the same plan as one thread.
///
/// @tparam Base a moe::token_choice_policy: moe::top_k<>, moe::null_experts<moe::top_k<>>, ...
/// @tparam Similarity a moe::similarity_kernel (moe::scaled_dot_similarity by default).
template <token_choice_policy Base, similarity_kernel Similarity = scaled_dot_similarity>
class similarity_aware {
 public:
  using router_type = similarity_aware;
  using base_type = Base;
  /// A token's route depends on the other tokens of its sequence.
  static constexpr bool needs_whole_batch = true;

  /// Wraps a configured base policy; `similarity` is used with similarity_source::tokens.
  explicit similarity_aware(Base base, similarity_aware_options options = {}, Similarity similarity = {})
      : m_base(std::move(base)), m_options(options), m_similarity(std::move(similarity)) {
    if (!(m_options.sharpness > 0.0f) || !std::isfinite(m_options.sharpness)) {
      detail::fail_parameter(error_id::config, "moe::similarity_aware", "sharpness", "finite and > 0",
                             m_options.sharpness);
    }
  }

  /// The base's experts, slots and hidden size.
  [[nodiscard]] index num_experts() const noexcept { return m_base.num_experts(); }
  [[nodiscard]] index hidden() const noexcept { return m_base.hidden(); }
  [[nodiscard]] index max_slots() const noexcept { return m_base.max_slots(); }
  [[nodiscard]] const Base& base() const noexcept { return m_base; }
  [[nodiscard]] const similarity_aware_options& options() const noexcept { return m_options; }

  /// Routes `x [T × d]`, sequence by sequence.
  void route(const_matrix_map<float> x, const route_context& ctx, routing_plan& plan, workspace& ws) const {
    constexpr const char* where = "moe::similarity_aware::route";
    detail::check_extent(where, "x.cols()", x.cols(), hidden());
    const index T = x.rows();
    detail::check_sequence_starts(ctx.sequence_starts, T, where);
    check_attention(ctx, T, where);
    plan.reset(T, max_slots(), num_experts());
    if (T == 0) return;
    const index C = m_base.columns();
    const index K = std::max<index>(m_base.max_slots(), 1);
    const int nt = detail::token_choice::threads_for(ctx, T);
    const auto n = static_cast<std::size_t>(nt);
    float* z = ws.take<float>(static_cast<std::size_t>(T * C));   // [T × C] logits
    float* pi = ws.take<float>(static_cast<std::size_t>(T * C));  // [T × C] own scores
    std::uint8_t* ok = ws.take<std::uint8_t>(static_cast<std::size_t>(T));
    // The base's logits, NaN policy and gate of every token, on the threads.
    const auto own_scores = [&](index t) {  // throws the NaN error of token t
      m_base.prepare_row(z + t * C, C, t);
      ok[t] = m_base.gate_row(z + t * C, pi + t * C) ? 1 : 0;
    };
    detail::token_choice::parallel_rows(T, nt, ws, detail::token_choice::logits_stage(m_base, x, z, nt, ws),
                                        [&](int, index t) noexcept {
      try {
        own_scores(t);
      } catch (...) {
        return false;
      }
      return true;
    }, own_scores);
    const index n_seq = detail::sequence_count(ctx.sequence_starts);
    index L_max = 0;
    for (index q = 0; q < n_seq; ++q) {
      const auto [s0, s1] = detail::sequence_range(ctx.sequence_starts, q, T);
      L_max = std::max(L_max, s1 - s0);
    }
    float* S = ws.take<float>(static_cast<std::size_t>(std::max<index>(L_max * L_max, 1)));  // [L × L]
    std::uint8_t* row_ok = ws.take<std::uint8_t>(static_cast<std::size_t>(std::max<index>(L_max, 1)));
    float* lanes = ws.take<float>(n * 4 * static_cast<std::size_t>(C));  // per thread: mix, q, own, scratch
    auto* idx = ws.take<std::int32_t>(n * static_cast<std::size_t>(K));
    float* w = ws.take<float>(n * static_cast<std::size_t>(K));
    auto* routed = ws.take_zeroed<std::uint8_t>(n);  // per thread: routed a token (top scores recorded)
    const auto buffers = [&](int tid) {
      float* f = lanes + tid * 4 * C;
      return row_buffers{S, row_ok, f, f + C, f + 2 * C, f + 3 * C, idx + tid * K, w + tid * K};
    };
    index attention_offset = 0;
    const auto per_sequence = ws.mark();  // the kernel's scratch is released after each sequence
    for (index q = 0; q < n_seq; ++q) {
      const auto [s0, s1] = detail::sequence_range(ctx.sequence_starts, q, T);
      const index L = s1 - s0;
      if (L == 0) continue;
      mixing_rows(x, ctx, s0, L, attention_offset, S, row_ok, ws);
      ws.rewind(per_sequence);
      attention_offset += L * L;
      // The tokens of the sequence, each from its row of S, on the threads.
      const index first = s0;
      detail::parallel_region(static_cast<int>(std::min<index>(nt, L)), [&](int tid, int team, auto&&) {
        const row_buffers b = buffers(tid);
        const auto rows = detail::share_of(L, tid, team);
        for (index i = rows.begin; i < rows.end; ++i) routed[tid] |= route_token(first, L, i, z, pi, ok, b, plan);
      });
    }
    plan.mark_entropy();
    if (std::any_of(routed, routed + nt, [](std::uint8_t r) { return r != 0; })) plan.mark_top_score();
    plan.invalidate();
  }

  /// The row-stochastic mixing matrix `S [L × L]` of sequence `sequence` (for inspection and
  /// tests; allocates). A row of zeros marks a token that routes nowhere.
  [[nodiscard]] row_matrix<float> mixing_matrix(const_matrix_map<float> x, const route_context& ctx = {},
                                                index sequence = 0) const {
    constexpr const char* where = "moe::similarity_aware::mixing_matrix";
    detail::check_extent(where, "x.cols()", x.cols(), hidden());
    const index T = x.rows();
    detail::check_sequence_starts(ctx.sequence_starts, T, where);
    check_attention(ctx, T, where);
    const index n_seq = detail::sequence_count(ctx.sequence_starts);
    detail::check_range<index>(where, "sequence", sequence, 0, n_seq - 1);
    index offset = 0;
    for (index q = 0; q < sequence; ++q) {
      const auto [a, b] = detail::sequence_range(ctx.sequence_starts, q, T);
      offset += (b - a) * (b - a);
    }
    const auto [s0, s1] = detail::sequence_range(ctx.sequence_starts, sequence, T);
    const index L = s1 - s0;
    row_matrix<float> S = row_matrix<float>::Zero(L, L);
    if (L == 0) return S;
    workspace ws;
    ws.reset();
    std::vector<std::uint8_t> row_ok(static_cast<std::size_t>(L));
    mixing_rows(x, ctx, s0, L, offset, S.data(), row_ok.data(), ws);
    for (index i = 0; i < L; ++i) {
      const index n = row_length(i, L);
      for (index j = n; j < L; ++j) S(i, j) = 0.0f;
      if (!row_ok[static_cast<std::size_t>(i)]) S.row(i).setZero();
    }
    return S;
  }

  /// Convenience: any row-major Eigen matrix.
  template <class X>
  [[nodiscard]] row_matrix<float> mixing_matrix(const Eigen::DenseBase<X>& x, const route_context& ctx = {},
                                                index sequence = 0) const {
    return mixing_matrix(view(x), ctx, sequence);
  }

  /// Mean routing entropy and experts per token of a plan.
  [[nodiscard]] similarity_aware_stats policy_stats(const routing_plan& plan) const {
    similarity_aware_stats s;
    s.tokens = plan.num_tokens();
    index active = 0;
    double entropy = 0;
    for (index t = 0; t < s.tokens; ++t) {
      active += plan.active_slots(t);
      if (plan.has_entropy()) entropy += plan.entropy(t);
    }
    if (s.tokens > 0) {
      s.routing_entropy = entropy / static_cast<double>(s.tokens);
      s.mean_experts_per_token = static_cast<double>(active) / static_cast<double>(s.tokens);
    }
    return s;
  }

  /// As policy_stats(plan), plus the routing fluctuation against `previous` (same batch).
  [[nodiscard]] similarity_aware_stats policy_stats(const routing_plan& plan, const routing_plan& previous) const {
    auto s = policy_stats(plan);
    s.fluctuation = routing_fluctuation(previous, plan);
    return s;
  }

 private:
  struct row_buffers {
    float* S;
    std::uint8_t* row_ok;
    float* mix;
    float* q;
    float* own;
    float* scratch;
    std::int32_t* idx;
    float* w;
  };

  [[nodiscard]] bool uses_attention() const noexcept { return m_options.source == similarity_source::attention; }

  /// Entries of row i of S that may be nonzero.
  [[nodiscard]] index row_length(index i, index L) const noexcept {
    return !uses_attention() && m_options.causal ? i + 1 : L;
  }

  void check_attention(const route_context& ctx, index T, const char* where) const {
    if (!uses_attention()) return;
    if (ctx.attention.empty() && T > 0) {
      detail::fail_parameter(error_id::input, where, "ctx.attention",
                             "the head-averaged attention (similarity_source::attention)", "empty");
    }
    index expected = 0;
    const index n_seq = detail::sequence_count(ctx.sequence_starts);
    for (index q = 0; q < n_seq; ++q) {
      const auto [s0, s1] = detail::sequence_range(ctx.sequence_starts, q, T);
      expected += (s1 - s0) * (s1 - s0);
    }
    detail::check_extent(where, "ctx.attention.size()", static_cast<index>(ctx.attention.size()), expected);
  }

  // Rows of S for the L tokens starting at s0 (row stride L); row_ok[i] = 0 marks a row with
  // no weight (a degenerate similarity row or an all-zero attention row).
  void mixing_rows(const_matrix_map<float> x, const route_context& ctx, index s0, index L, index attention_offset,
                   float* S, std::uint8_t* row_ok, workspace& ws) const {
    if (!uses_attention()) {
      const auto xs = map(x.data() + s0 * x.outerStride(), L, x.cols(), x.outerStride());
      m_similarity.scores(xs, S, L, m_options.causal, ws);
      for (index i = 0; i < L; ++i) {
        float* row = S + i * L;
        const index n = row_length(i, L);
        kernels::nan_to_neg_inf(row, n);
        row_ok[i] = kernels::softmax(row, n, row) ? 1 : 0;
      }
      return;
    }
    const float* A = ctx.attention.data() + attention_offset;
    const float inv_sigma = 1.0f / m_options.sharpness;
    for (index i = 0; i < L; ++i) {
      const float* a = A + i * L;
      float* row = S + i * L;
      float a_max = 0.0f;
      for (index j = 0; j < L; ++j) {
        if (!(a[j] >= 0.0f) || !std::isfinite(a[j])) {
          detail::throw_error(error_id::input,
                              detail::concat("moe::similarity_aware::route: parameter 'ctx.attention' must hold "
                                             "finite values >= 0, got ", a[j], " at row ", s0 + i, ", column ",
                                             s0 + j, " (sequence-local column ", j, ")"));
        }
        a_max = std::max(a_max, a[j]);
      }
      if (a_max == 0.0f) {
        row_ok[i] = 0;
        continue;
      }
      // A^(1/sigma) scaled by its maximum (no overflow), then row-renormalised.
      const float log_max = kernels::log(a_max);
      for (index j = 0; j < L; ++j) {
        if (a[j] == 0.0f) row[j] = 0.0f;
        else if (m_options.sharpness == 1.0f) row[j] = a[j] / a_max;
        else row[j] = kernels::exp((kernels::log(a[j]) - log_max) * inv_sigma);
      }
      const float total = kernels::sum(row, L);
      for (index j = 0; j < L; ++j) row[j] /= total;
      row_ok[i] = 1;
    }
  }

  // Routes token i of the sequence at s0 into its own row of the plan (bulk entropy and
  // top-score arrays, no shared state, so threads route distinct tokens at once); returns whether
  // it recorded a top score.
  bool route_token(index s0, index L, index i, const float* z, const float* pi, const std::uint8_t* ok,
                   const row_buffers& b, routing_plan& plan) const {
    const index C = m_base.columns();
    const index t = s0 + i;
    float* entropy = plan.entropy_data();
    if (!ok[t] || !b.row_ok[i]) {
      entropy[t] = 0.0f;
      return false;  // degenerate own logits, or a row of S with no weight: routes nowhere
    }
    constexpr float neg_inf = -std::numeric_limits<float>::infinity();
    const float* Si = b.S + i * L;
    const index n = row_length(i, L);
    bool trivial = Si[i] == 1.0f;
    for (index j = 0; j < n && trivial; ++j) trivial = j == i || Si[j] == 0.0f;
    const float* zt = z + t * C;
    const float* key = b.mix;
    float* q = b.mix;
    if (trivial) {
      // Exactly the base's route: select on the own logits, weigh the own scores.
      std::copy(pi + t * C, pi + (t + 1) * C, b.mix);
      key = zt;
    } else if (m_options.space == mix_space::probability) {
      std::fill(b.mix, b.mix + C, 0.0f);
      for (index j = 0; j < n; ++j) {
        const float sij = Si[j];
        if (sij == 0.0f) continue;
        const float* pj = pi + (s0 + j) * C;
        for (index c = 0; c < C; ++c) b.mix[c] = kernels::fmadd(sij, pj[c], b.mix[c]);
      }
      for (index c = 0; c < C; ++c) b.q[c] = zt[c] == neg_inf ? neg_inf : b.mix[c];
      key = b.q;
    } else {
      std::fill(b.mix, b.mix + C, 0.0f);
      for (index j = 0; j < n; ++j) {
        const float sij = Si[j];
        if (sij == 0.0f) continue;
        const float* zj = z + (s0 + j) * C;
        for (index c = 0; c < C; ++c) b.mix[c] = kernels::fmadd(sij, zj[c], b.mix[c]);
      }
      for (index c = 0; c < C; ++c) {
        if (zt[c] == neg_inf || std::isnan(b.mix[c])) b.mix[c] = neg_inf;
      }
      if (!m_base.gate_row(b.mix, b.q)) {
        entropy[t] = 0.0f;
        return false;
      }
      key = b.mix;
      q = b.q;
    }
    entropy[t] = m_base.row_entropy(q, b.scratch);
    const index count = m_base.select_row(key, q, b.idx, b.scratch);
    plan.top_score_data()[t] = count > 0 ? q[b.idx[0]] : 0.0f;  // the mixed score the token was routed by
    float* weigh_from = q;
    if (m_options.combine == combine_weights::own) {
      std::copy(pi + t * C, pi + (t + 1) * C, b.own);
      weigh_from = b.own;
    }
    m_base.weigh_row(weigh_from, b.idx, count, b.w);
    for (index s = 0; s < count; ++s) {
      detail::token_choice::write_slot(plan, t, s, m_base.column_expert(b.idx[s]), b.w[s]);
    }
    return true;
  }

  Base m_base;
  similarity_aware_options m_options;
  Similarity m_similarity;
};

static_assert(router<similarity_aware<top_k<softmax_gate>>>);

}  // namespace moe
