// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <concepts>

#include "moe/config.hpp"
#include "moe/core/context.hpp"
#include "moe/core/plan.hpp"
#include "moe/core/views.hpp"
#include "moe/core/workspace.hpp"

namespace moe {

/// A router policy: maps token states `x [T × d]` (and the context) to a routing plan.
///
/// `route()` resets the plan to `[T × max_slots()]` over `num_experts()` experts and fills it;
/// it is const (routing does not change the router) and takes its scratch from the workspace.
template <class R>
concept router = requires(const R& r, const_matrix_map<float> x, const route_context& ctx,
                          routing_plan& plan, workspace& ws) {
  typename R::router_type;
  { r.num_experts() } -> std::convertible_to<index>;
  { r.hidden() } -> std::convertible_to<index>;
  { r.max_slots() } -> std::convertible_to<index>;
  r.route(x, ctx, plan, ws);
};

/// An expert bank of two-stage FFN experts, as devices drive them.
///
/// Stage 1 (`up`) maps input rows (`x[i]`, hidden() floats each) to the activated intermediate
/// `act [rows × intermediate()]` for a range of up-panels; stage 2 (`down`) maps intermediate rows
/// to `y[i] += weight[i] · out_i` for a range of down-panels. Panels are disjoint column ranges,
/// so threads can split them. Each call packs its rows into `scratch` (scratch_bytes(rows) bytes).
template <class B>
concept expert_bank = requires(const B& b, index e, const float* const* rows, index n, index p0, index p1,
                               float* act, index ld, const float* w, float* const* y, void* scratch) {
  { b.num_experts() } -> std::convertible_to<index>;
  { b.hidden() } -> std::convertible_to<index>;
  { b.intermediate() } -> std::convertible_to<index>;
  { b.up_panels() } -> std::convertible_to<index>;
  { b.down_panels() } -> std::convertible_to<index>;
  { b.scratch_bytes(n) } -> std::convertible_to<std::size_t>;
  b.up(e, rows, n, p0, p1, act, ld, scratch);
  b.down(e, rows, n, p0, p1, w, y, scratch);
};

/// Memory space of host (CPU) memory.
struct host_memory {
  static constexpr const char* name() noexcept { return "host"; }
};

/// A device: where expert work runs. It names itself and its memory space, and computes
/// `y = Σ_slots weight · Expert(x)` from the expert-major view of a plan.
template <class D, class Bank>
concept device_for = expert_bank<Bank> &&
    requires(const D& d, const routing_plan& plan, const_matrix_map<float> x, const Bank& bank,
             matrix_map<float> y, const float* gates, workspace& ws) {
  typename D::device_type;
  typename D::memory_space;
  { D::name() } -> std::convertible_to<const char*>;
  { D::is_gpu } -> std::convertible_to<bool>;
  d.dispatch(plan, x, bank, y, ws);
  d.accumulate_dense(x, bank, gates, y, ws);
};

/// Whether code running on Device can read memory of Memory.
template <class Device, class Memory>
inline constexpr bool accessible_from = std::is_same_v<typename Device::memory_space, Memory>;

}  // namespace moe
