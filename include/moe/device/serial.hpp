// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include "moe/concepts.hpp"
#include "moe/config.hpp"
#include "moe/plan.hpp"
#include "moe/core/views.hpp"
#include "moe/core/workspace.hpp"
#include "moe/device/schedule.hpp"

namespace moe::device {

/// One host thread: the reference for determinism. Produces the same bits as moe::device::cpu
/// with any number of threads.
struct serial : detail::host_device_ops<serial> {
  using device_type = serial;
  static constexpr const char* name() noexcept { return "serial"; }

  /// Threads used.
  [[nodiscard]] static constexpr int concurrency() noexcept { return 1; }

  /// `y = Σ_slots weight · Expert(x)` for every token (y is overwritten).
  template <detail::host_ffn_bank Bank>
  void dispatch(const routing_plan& plan, const_matrix_map<float> x, const Bank& bank,
                matrix_map<float> y, workspace& ws) const {
    detail::check_dispatch("moe::device::serial::dispatch", plan, x, bank, y);
    const auto work = detail::make_plan_work(plan, x.data(), x.outerStride(), y.data(), y.outerStride(), ws, x.cols());
    const auto scratch = detail::make_ffn_scratch(bank, plan.total_assignments(), 1, ws);
    detail::run_ffn(bank, work, scratch, y.data(), y.rows(), y.outerStride(), true, 0, 1, [] {});
  }

  /// `y += gates[t] · Σ_e Expert_e(x_t)` over every expert of the bank (gates null: weight 1).
  template <detail::host_ffn_bank Bank>
  void accumulate_dense(const_matrix_map<float> x, const Bank& bank, const float* gates,
                        matrix_map<float> y, workspace& ws) const {
    detail::check_operands("moe::device::serial::accumulate_dense", x, bank, y);
    const auto work = detail::make_dense_work(bank.num_experts(), x.rows(), x.data(), x.outerStride(),
                                              y.data(), y.outerStride(), gates, ws);
    const auto scratch = detail::make_ffn_scratch(bank, bank.num_experts() * x.rows(), 1, ws);
    detail::run_ffn(bank, work, scratch, y.data(), y.rows(), y.outerStride(), false, 0, 1, [] {});
  }
};

}  // namespace moe::device
