// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <cmath>
#include <vector>

#include "moe/concepts.hpp"
#include "moe/config.hpp"
#include "moe/core/error.hpp"
#include "moe/core/views.hpp"
#include "moe/kernels/gemm.hpp"
#include "moe/kernels/math.hpp"

namespace moe {

/// Always-on experts applied to every token beside the routed ones.
///
/// Every expert of the bank runs on every token and its output is added with one weight per
/// token: 1 (ungated, DeepSeek / DiT-MoE shared experts), or `sigmoid(w_g · x_t)` (Qwen2-MoE's
/// `shared_expert_gate`, a `[d]` vector).
///
/// @tparam Bank any moe::expert_bank, e.g. moe::swiglu_experts<float>.
template <class Bank>
class shared_experts {
  static_assert(expert_bank<Bank>,
                "moe::shared_experts<Bank>: Bank must model moe::expert_bank (e.g. "
                "moe::swiglu_experts<float>)");

 public:
  using bank_type = Bank;

  /// Ungated: each shared expert is added with weight 1.
  explicit shared_experts(Bank bank) : m_bank(std::move(bank)) {}

  /// Sigmoid-gated (Qwen2-MoE): the shared output of token t is scaled by sigmoid(gate · x_t).
  /// @param gate `[d]` gate weight (copied).
  shared_experts(Bank bank, std::vector<float> gate) : m_bank(std::move(bank)) {
    detail::check_extent("moe::shared_experts", "gate.size()", static_cast<index>(gate.size()),
                         m_bank.hidden());
    m_gate = kernels::pack_panels(gate.data(), 1, m_bank.hidden(), m_bank.hidden(),
                                  kernels::panel_width<kernels::gemm_arch>);
    m_gated = true;
  }

  [[nodiscard]] const Bank& bank() const noexcept { return m_bank; }
  [[nodiscard]] bool gated() const noexcept { return m_gated; }
  [[nodiscard]] index hidden() const noexcept { return m_bank.hidden(); }

  /// Per-token weights `g [T]` (sigmoid of the gate logit), written to `g`; no-op if ungated.
  void gates(const_matrix_map<float> x, float* g, workspace& ws) const {
    detail::check_extent("moe::shared_experts::gates", "x.cols()", x.cols(), hidden());
    if (!m_gated) return;
    kernels::gemm(x.data(), x.rows(), x.outerStride(), m_gate, g, 1, ws);
    for (index t = 0; t < x.rows(); ++t) g[t] = kernels::sigmoid(g[t]);
  }

 private:
  Bank m_bank;
  kernels::packed_weights m_gate;
  bool m_gated = false;
};

}  // namespace moe
