// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// Dr.LLM depth routing: skip / execute / repeat per sequence and layer (docs/routing-spec.md §13.1;
// parameterlab/dr-llm, arXiv 2510.12773).
//
// Dispatch, per sequence of T_p prompt tokens entering the layer:
//   1. W' = min(W, T_p) windows of w = floor(T_p / W') tokens, window k = tokens [k w, (k+1) w);
//      the last T_p - W' w tokens are dropped;
//   2. m_k = mean of the window's token states (accumulated in double, then fp32);
//   3. z = (1/W') Σ_k r(m_k), r = Linear(d, h) -> GELU (tanh approximation) -> Linear(h, 3), both
//      with biases (logits are averaged, not probabilities);
//   4. decision = argmax z (ties: lower class, skip before execute before repeat); with the router
//      penalty rho != -0.5 the argmax runs on the interpolated probabilities instead;
//   5. every token of the sequence makes that many passes (0 skip, 1 execute, 2 repeat).

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

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
#include "moe/routing/wrappers/layer_skip.hpp"

namespace moe {

/// A depth decision: how many times a layer runs.
enum class depth_decision : std::uint8_t {
  skip = 0,     ///< the layer is the identity
  execute = 1,  ///< the layer runs once
  repeat = 2    ///< the layer runs twice
};

/// Options of moe::dr_llm.
struct dr_llm_options {
  /// Window count W (paper: 8); a prompt shorter than W uses one token per window.
  index windows = 8;
  /// Router penalty rho in [-1, 1] (released code only): -0.5 is the neutral router (argmax of the
  /// logits); [-1, -0.5) moves the probabilities towards "skip", (-0.5, 0.5] towards "execute"
  /// (0.5: execute everywhere), (0.5, 1] from "execute" towards "repeat".
  float rho = -0.5f;
};

/// Dr.LLM depth router of one layer: a bottleneck MLP `Linear(d, h) -> GELU(tanh) -> Linear(h, 3)`
/// on windowed mean-pooled token states decides, per sequence (route_context::sequence_starts),
/// whether the layer is skipped, executed or repeated.
///
/// The whole sequence is the prompt: route the prefill. Decisions are taken once per input and
/// reused for every generated token: set them with set_forced_decisions() (also the way to
/// teacher-force labels in training). An empty sequence (T_p = 0) throws moe::error; T = 0 gives
/// an empty plan (with or without forced decisions).
///
/// Thread safety: forced decisions are router state, one list for the whole router. decide()
/// only reads them, but set_forced_decisions() / clear_forced_decisions() must not run
/// concurrently with any other call, and concurrent requests that need different decisions need
/// their own dr_llm (copies are cheap next to a layer) or a router without forced decisions. Statistics: moe::depth_stats through layer_skip::policy_stats, and
/// moe::depth_stack_stats for a stack. Training loss: moe::focal_loss (losses/dr_llm.hpp).
class dr_llm {
 public:
  using depth_policy_type = dr_llm;
  /// Decisions are per sequence.
  static constexpr bool needs_whole_batch = true;
  /// skip, execute, repeat.
  static constexpr index classes = 3;

  /// @param w1 `[h × d]` first layer, @param b1 `[h]`, @param w2 `[3 × h]`, @param b2 `[3]` (copied).
  dr_llm(const_matrix_map<float> w1, std::span<const float> b1, const_matrix_map<float> w2,
         std::span<const float> b2, dr_llm_options options = {})
      : m_options(options), m_hidden(w1.cols()), m_bottleneck(w1.rows()), m_b1(b1.begin(), b1.end()),
        m_b2(b2.begin(), b2.end()) {
    constexpr const char* where = "moe::dr_llm";
    if (m_hidden < 1) detail::fail_parameter(error_id::shape, where, "w1.cols()", ">= 1", m_hidden);
    if (m_bottleneck < 1) detail::fail_parameter(error_id::shape, where, "w1.rows()", ">= 1", m_bottleneck);
    detail::check_extent(where, "b1.size()", static_cast<index>(b1.size()), m_bottleneck);
    detail::check_extent(where, "w2.rows()", w2.rows(), classes);
    detail::check_extent(where, "w2.cols()", w2.cols(), m_bottleneck);
    detail::check_extent(where, "b2.size()", static_cast<index>(b2.size()), classes);
    check_finite(where, "w1", w1);
    check_finite(where, "w2", w2);
    check_finite(where, "b1", b1);
    check_finite(where, "b2", b2);
    if (m_options.windows < 1) detail::fail_parameter(error_id::config, where, "windows", ">= 1", m_options.windows);
    if (!(m_options.rho >= -1.0f && m_options.rho <= 1.0f)) {
      detail::fail_parameter(error_id::config, where, "rho", "in [-1, 1]", m_options.rho);
    }
    const index width = kernels::panel_width<kernels::gemm_arch>;
    m_w1 = kernels::pack_panels(w1.data(), m_bottleneck, m_hidden, w1.outerStride(), width);
    m_w2 = kernels::pack_panels(w2.data(), classes, m_bottleneck, w2.outerStride(), width);
  }

  /// Convenience: any row-major Eigen matrices.
  template <class W1, class W2>
  dr_llm(const Eigen::DenseBase<W1>& w1, std::span<const float> b1, const Eigen::DenseBase<W2>& w2,
         std::span<const float> b2, dr_llm_options options = {})
      : dr_llm(view(w1), b1, view(w2), b2, options) {}

  /// d, the token state size.
  [[nodiscard]] index hidden() const noexcept { return m_hidden; }
  /// h, the router's bottleneck width.
  [[nodiscard]] index bottleneck() const noexcept { return m_bottleneck; }
  [[nodiscard]] const dr_llm_options& options() const noexcept { return m_options; }

  /// Logits `z [3]` of one prompt `[T_p × d]`. Throws moe::error if T_p = 0.
  [[nodiscard]] std::array<float, 3> sequence_logits(const_matrix_map<float> prompt, workspace& ws) const {
    constexpr const char* where = "moe::dr_llm::sequence_logits";
    detail::check_extent(where, "prompt.cols()", prompt.cols(), m_hidden);
    if (prompt.rows() < 1) {
      detail::fail_parameter(error_id::input, where, "prompt.rows()", ">= 1 (Dr.LLM needs a prompt)", prompt.rows());
    }
    std::array<float, 3> z{};
    logits_of(prompt, 0, prompt.rows(), z.data(), ws);
    return z;
  }

  /// Number of sequences of a batch of T tokens: those of ctx.sequence_starts (core/sequences.hpp),
  /// none when T = 0.
  [[nodiscard]] static index count_sequences(const route_context& ctx, index T) noexcept {
    return T == 0 ? 0 : detail::sequence_count(ctx.sequence_starts);
  }

  /// Logits `z [S × 3]` (row-major) of the S = count_sequences(ctx, T) sequences of
  /// `x [T × d]`. An empty sequence throws moe::error (Dr.LLM needs a prompt).
  void logits(const_matrix_map<float> x, const route_context& ctx, std::span<float> z, workspace& ws) const {
    constexpr const char* where = "moe::dr_llm::logits";
    detail::check_extent(where, "x.cols()", x.cols(), m_hidden);
    detail::check_sequence_starts(ctx.sequence_starts, x.rows(), where);
    const index S = count_sequences(ctx, x.rows());
    detail::check_extent(where, "z.size()", static_cast<index>(z.size()), classes * S);
    const auto per_sequence = ws.mark();  // each sequence's scratch is released after it
    for (index seq = 0; seq < S; ++seq) {
      const auto [begin, end] = detail::sequence_range(ctx.sequence_starts, seq, x.rows());
      if (end == begin) {
        detail::throw_error(error_id::input, detail::concat(where, ": parameter 'ctx.sequence_starts' gives an "
                                                                   "empty sequence ", seq,
                                                            "; Dr.LLM needs a prompt of >= 1 token"));
      }
      logits_of(x, begin, end, z.data() + seq * classes, ws);
      ws.rewind(per_sequence);
    }
  }

  /// The decision for logits `z [3]`: argmax (ties: lower class), after the rho interpolation.
  [[nodiscard]] depth_decision decision(std::span<const float, 3> z) const noexcept {
    const float rho = m_options.rho;
    // argmax gives -1 only for an all -inf row; torch.argmax gives the first class then.
    if (rho == -0.5f) return static_cast<depth_decision>(std::max<index>(kernels::argmax(z.data(), classes), 0));
    float p[3];
    kernels::softmax(z.data(), classes, p);
    float q[3];
    if (rho < -0.5f) {
      const float t = (rho + 1.0f) / 0.5f;
      for (int c = 0; c < 3; ++c) q[c] = (c == 0 ? 1.0f - t : 0.0f) + t * p[c];
    } else if (rho <= 0.5f) {
      const float t = rho + 0.5f;
      for (int c = 0; c < 3; ++c) q[c] = (1.0f - t) * p[c] + (c == 1 ? t : 0.0f);
    } else {
      const float t = (rho - 0.5f) / 0.5f;
      q[0] = 0.0f;
      q[1] = 1.0f - t;
      q[2] = t;
    }
    return static_cast<depth_decision>(std::max<index>(kernels::argmax(q, classes), 0));
  }

  /// Uses these decisions (one per sequence, each 0, 1 or 2) instead of the router's: decode
  /// steps after a prefill, or teacher forcing with labels. Empty: the router decides. Writes
  /// router state: not concurrently with decide() or any other call on this router.
  void set_forced_decisions(std::vector<depth_decision> decisions) {
    for (std::size_t i = 0; i < decisions.size(); ++i) {
      const auto v = static_cast<int>(decisions[i]);
      if (v > 2) detail::fail_parameter(error_id::config, "moe::dr_llm::set_forced_decisions",
                                        detail::concat("decisions[", i, "]"), "0, 1 or 2", v);
    }
    m_forced = std::move(decisions);
  }
  /// Lets the router decide again (router state, as set_forced_decisions()).
  void clear_forced_decisions() noexcept { m_forced.clear(); }
  [[nodiscard]] std::span<const depth_decision> forced_decisions() const noexcept { return m_forced; }

  /// Sets the passes of every token of `plan` (reset to x.rows() tokens) to its sequence's decision.
  void decide(const_matrix_map<float> x, const route_context& ctx, routing_plan& plan, workspace& ws) const {
    constexpr const char* where = "moe::dr_llm::decide";
    detail::check_extent(where, "x.cols()", x.cols(), m_hidden);
    detail::check_extent(where, "plan.num_tokens()", plan.num_tokens(), x.rows());
    if (x.rows() == 0) return;  // no sequence to decide for, forced or not
    const index S = count_sequences(ctx, x.rows());
    if (!m_forced.empty()) {
      detail::check_extent(where, "forced_decisions().size()", static_cast<index>(m_forced.size()), S);
      index seq = 0;
      detail::for_each_sequence(ctx.sequence_starts, x.rows(), where, [&](index begin, index end) {
        for (index t = begin; t < end; ++t) plan.set_passes(t, static_cast<int>(m_forced[static_cast<std::size_t>(seq)]));
        ++seq;
      });
      return;
    }
    float* z = ws.take<float>(static_cast<std::size_t>(std::max<index>(S * classes, 1)));
    logits(x, ctx, {z, static_cast<std::size_t>(S * classes)}, ws);
    for (index i = 0; i < S * classes; ++i) {
      if (std::isnan(z[i])) {
        detail::throw_error(error_id::input, detail::concat(where, ": parameter 'x' gives a NaN router logit "
                                                                   "(sequence ", i / classes, ", class ", i % classes,
                                                            "); expected finite token states"));
      }
    }
    index seq = 0;
    detail::for_each_sequence(ctx.sequence_starts, x.rows(), where, [&](index begin, index end) {
      const int n = static_cast<int>(decision(std::span<const float, 3>(z + seq * classes, 3)));
      for (index t = begin; t < end; ++t) plan.set_passes(t, n);
      ++seq;
    });
  }

 private:
  static void check_finite(const char* where, const char* name, const_matrix_map<float> m) {
    for (index i = 0; i < m.rows(); ++i) {
      for (index j = 0; j < m.cols(); ++j) {
        if (!std::isfinite(m(i, j))) {
          detail::fail_parameter(error_id::config, where, detail::concat(name, "(", i, ", ", j, ")"), "finite", m(i, j));
        }
      }
    }
  }
  static void check_finite(const char* where, const char* name, std::span<const float> v) {
    for (std::size_t i = 0; i < v.size(); ++i) {
      if (!std::isfinite(v[i])) detail::fail_parameter(error_id::config, where, detail::concat(name, "[", i, "]"), "finite", v[i]);
    }
  }

  // GELU, tanh approximation: 0.5 v (1 + tanh(u)), u = sqrt(2/pi) (v + 0.044715 v^3), written as
  // v sigmoid(2u) (the same function) so that it uses the canonical sigmoid, whose bits do not
  // depend on the ISA or the libm.
  static float gelu_tanh(float v) noexcept {
    constexpr float k = 0.7978845608028654f;
    const float u = k * (v + 0.044715f * v * v * v);
    return v * kernels::sigmoid(2.0f * u);
  }

  // z[3] of the prompt rows [begin, end) of x (end > begin).
  void logits_of(const_matrix_map<float> x, index begin, index end, float* z, workspace& ws) const {
    const index d = m_hidden, h = m_bottleneck;
    const index tp = end - begin;
    const index nw = std::min(m_options.windows, tp);  // W'
    const index w = tp / nw;                             // tokens per window
    float* pooled = ws.take<float>(static_cast<std::size_t>(nw * d));     // [W' × d]
    float* act = ws.take<float>(static_cast<std::size_t>(nw * h));        // [W' × h]
    float* out = ws.take<float>(static_cast<std::size_t>(nw * classes));  // [W' × 3]
    double* acc = ws.take<double>(static_cast<std::size_t>(d));
    for (index k = 0; k < nw; ++k) {
      std::fill_n(acc, d, 0.0);
      for (index t = begin + k * w; t < begin + (k + 1) * w; ++t) {
        for (index i = 0; i < d; ++i) acc[i] += static_cast<double>(x(t, i));
      }
      for (index i = 0; i < d; ++i) pooled[k * d + i] = static_cast<float>(acc[i] / static_cast<double>(w));
    }
    kernels::gemm(pooled, nw, d, m_w1, act, h, ws);
    for (index k = 0; k < nw; ++k) {
      for (index j = 0; j < h; ++j) act[k * h + j] = gelu_tanh(act[k * h + j] + m_b1[static_cast<std::size_t>(j)]);
    }
    kernels::gemm(act, nw, h, m_w2, out, classes, ws);
    for (index c = 0; c < classes; ++c) {
      float sum = 0.0f;
      for (index k = 0; k < nw; ++k) sum += out[k * classes + c] + m_b2[static_cast<std::size_t>(c)];
      z[c] = sum / static_cast<float>(nw);
    }
  }

  dr_llm_options m_options;
  index m_hidden;
  index m_bottleneck;
  std::vector<float> m_b1;
  std::vector<float> m_b2;
  kernels::packed_weights m_w1;
  kernels::packed_weights m_w2;
  std::vector<depth_decision> m_forced;
};

static_assert(depth_policy<dr_llm>);

}  // namespace moe
