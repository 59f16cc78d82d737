// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <tuple>
#include <utility>

#include "moe/concepts.hpp"
#include "moe/config.hpp"
#include "moe/core/error.hpp"
#include "moe/device/schedule.hpp"

namespace moe {

/// A bank made of other banks: experts 0 .. E₁−1 are the first bank's, E₁ .. E₁+E₂−1 the
/// second's, and so on, so one layer routes among experts of different widths, formats or kinds
/// (Duo-LLM's small and big modules; fp32 experts beside quantized ones) through the same plan
/// and device. Every part must have the same hidden() and model moe::detail::host_ffn_bank.
///
/// For the host schedule the mixed bank reports the largest intermediate width and panel counts
/// of its parts; a thread's panel range `[p0, p1)` of that count is mapped to each part's own
/// panels in proportion (`p · P_part / P_max`, rounded down), which keeps the ranges of the
/// threads disjoint and covering, so every output element is still computed by one thread with
/// its part's arithmetic: the result does not depend on the thread count, and a mixed bank of one
/// part gives that part's bits.
template <class... Banks>
class mixed_experts {
  static_assert(sizeof...(Banks) >= 1, "moe::mixed_experts: give it at least one bank");
  static_assert((detail::host_ffn_bank<Banks> && ...),
                "moe::mixed_experts: every part must model moe::detail::host_ffn_bank (swiglu_experts, gated_mlp_experts, "
                "mlp_experts, or a bank of your own with the host kernel interface)");

 public:
  explicit mixed_experts(Banks... banks) : m_parts(std::move(banks)...) {
    index at = 0, i = 0;
    const index d = std::get<0>(m_parts).hidden();
    std::apply(
        [&](const auto&... b) {
          ((m_first[static_cast<std::size_t>(i++)] = at, at += b.num_experts(),
            detail::check_extent("moe::mixed_experts", detail::concat("part ", i - 1, " hidden()"), b.hidden(), d)),
           ...);
        },
        m_parts);
    m_first[sizeof...(Banks)] = at;
  }

  [[nodiscard]] index num_experts() const noexcept { return m_first[sizeof...(Banks)]; }
  [[nodiscard]] index hidden() const noexcept { return std::get<0>(m_parts).hidden(); }
  /// The largest intermediate width of the parts (the schedule's activation row length).
  [[nodiscard]] index intermediate() const noexcept { return max_of([](const auto& b) { return b.intermediate(); }); }
  [[nodiscard]] index up_panels() const noexcept { return max_of([](const auto& b) { return b.up_panels(); }); }
  [[nodiscard]] index down_panels() const noexcept { return max_of([](const auto& b) { return b.down_panels(); }); }
  [[nodiscard]] std::size_t scratch_bytes(index rows) const noexcept {
    std::size_t m = 0;
    std::apply([&](const auto&... b) { ((m = std::max(m, static_cast<std::size_t>(b.scratch_bytes(rows)))), ...); }, m_parts);
    return m;
  }
  /// Index of the first expert of part i.
  [[nodiscard]] index first_expert(std::size_t part) const noexcept { return m_first[part]; }
  template <std::size_t I>
  [[nodiscard]] const auto& part() const noexcept {
    return std::get<I>(m_parts);
  }

  void up(index e, const float* const* x, index rows, index p0, index p1, float* act, index ld_act,
          void* scratch) const noexcept {
    const index pmax = up_panels();
    visit(e, [&](const auto& b, index local) {
      const index n = b.up_panels();
      const index q0 = p0 * n / pmax, q1 = p1 * n / pmax;
      if (q0 < q1) b.up(local, x, rows, q0, q1, act, ld_act, scratch);
    });
  }
  void down(index e, const float* const* act, index rows, index p0, index p1, const float* w, float* const* y,
            void* scratch) const noexcept {
    const index pmax = down_panels();
    visit(e, [&](const auto& b, index local) {
      const index n = b.down_panels();
      const index q0 = p0 * n / pmax, q1 = p1 * n / pmax;
      if (q0 < q1) b.down(local, act, rows, q0, q1, w, y, scratch);
    });
  }

 private:
  template <class F>
  index max_of(F&& f) const noexcept {
    index m = 0;
    std::apply([&](const auto&... b) { ((m = std::max<index>(m, f(b))), ...); }, m_parts);
    return m;
  }
  // Calls f(part, local expert) for the part that holds expert e.
  template <class F, std::size_t I = 0>
  void visit(index e, F&& f) const noexcept {
    if constexpr (I < sizeof...(Banks)) {
      if (e < m_first[I + 1]) {
        f(std::get<I>(m_parts), e - m_first[I]);
      } else {
        visit<F, I + 1>(e, std::forward<F>(f));
      }
    }
  }

  std::tuple<Banks...> m_parts;
  std::array<index, sizeof...(Banks) + 1> m_first{};
};

}  // namespace moe
