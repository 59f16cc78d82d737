// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include "moe/concepts.hpp"
#include "moe/config.hpp"
#include "moe/core/error.hpp"
#include "moe/core/parallel.hpp"
#include "moe/plan.hpp"
#include "moe/core/views.hpp"
#include "moe/core/workspace.hpp"
#include "moe/device/schedule.hpp"

namespace moe::device {

/// Host threads (OpenMP). Every thread works on every expert, on its own range of output
/// columns, so results are bitwise identical to moe::device::serial for any thread count.
///
/// Built without OpenMP (`_OPENMP` undefined), it runs on the calling thread.
class cpu : public detail::host_device_ops<cpu> {
 public:
  using device_type = cpu;
  static constexpr const char* name() noexcept { return "cpu"; }

  /// Uses `omp_get_max_threads()` threads.
  cpu() = default;
  /// @param threads threads per dispatch; 0 = `omp_get_max_threads()`.
  explicit cpu(int threads) : m_threads(threads) {
    if (threads < 0) detail::fail_parameter(error_id::config, "moe::device::cpu", "threads", ">= 0", threads);
  }

  /// Threads a dispatch uses.
  [[nodiscard]] int concurrency() const noexcept {
    return m_threads > 0 ? m_threads : detail::default_threads();
  }

  /// `y = Σ_slots weight · Expert(x)` for every token (y is overwritten).
  template <detail::host_ffn_bank Bank>
  void dispatch(const routing_plan& plan, const_matrix_map<float> x, const Bank& bank,
                matrix_map<float> y, workspace& ws) const {
    detail::check_dispatch("moe::device::cpu::dispatch", plan, x, bank, y);
    const int nt = concurrency();
    const auto work = detail::make_plan_work(plan, x.data(), x.outerStride(), y.data(), y.outerStride(), ws, x.cols());
    const auto scratch = detail::make_ffn_scratch(bank, plan.total_assignments(), nt, ws);
    run_team(bank, work, scratch, y, true, nt);
  }

  /// `y += gates[t] · Σ_e Expert_e(x_t)` over every expert of the bank (gates null: weight 1).
  template <detail::host_ffn_bank Bank>
  void accumulate_dense(const_matrix_map<float> x, const Bank& bank, const float* gates,
                        matrix_map<float> y, workspace& ws) const {
    detail::check_operands("moe::device::cpu::accumulate_dense", x, bank, y);
    const int nt = concurrency();
    const auto work = detail::make_dense_work(bank.num_experts(), x.rows(), x.data(), x.outerStride(),
                                              y.data(), y.outerStride(), gates, ws);
    const auto scratch = detail::make_ffn_scratch(bank, bank.num_experts() * x.rows(), nt, ws);
    run_team(bank, work, scratch, y, false, nt);
  }

 private:
  template <class Bank>
  static void run_team(const Bank& bank, const detail::ffn_work& work, const detail::ffn_scratch& scratch,
                  matrix_map<float> y, bool zero_y, int nt) noexcept {
    detail::parallel_region(nt, [&](int tid, int team, auto&& barrier) {
      detail::run_ffn(bank, work, scratch, y.data(), y.rows(), y.outerStride(), zero_y, tid, team, barrier);
    });
  }

  int m_threads = 0;
};

}  // namespace moe::device
