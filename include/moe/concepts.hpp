// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// The contracts between the parts of a layer (docs/architecture.md): a router produces a routing
// plan, a device consumes it with an expert bank. Routers and banks know nothing of devices; a
// device says which memory it reads, which workspace it needs, and which experts it serves.

#include <concepts>
#include <cstdint>
#include <type_traits>

#include "moe/config.hpp"
#include "moe/core/context.hpp"
#include "moe/plan.hpp"
#include "moe/core/views.hpp"
#include "moe/core/workspace.hpp"

namespace moe {

/// A router policy: maps token states `x [T × d]` (and the context) to a routing plan.
///
/// `route()` resets the plan to `[T × max_slots()]` over `num_experts()` experts and fills it;
/// it is const (routing does not change the router) and takes its scratch from the workspace.
/// `static constexpr bool needs_whole_batch` says whether a token's route depends on the other
/// tokens of the call (capacity, expert choice, per-sequence depth policies); devices that split
/// a batch over processes (moe::device::mpi) consult it (moe::needs_whole_batch<R>()).
template <class R>
concept router = requires(const R& r, const_matrix_map<float> x, const route_context& ctx,
                          routing_plan& plan, workspace& ws) {
  typename R::router_type;
  { r.num_experts() } -> std::convertible_to<index>;
  { r.hidden() } -> std::convertible_to<index>;
  { r.max_slots() } -> std::convertible_to<index>;
  r.route(x, ctx, plan, ws);
};

/// Whether a router's route of a token depends on the other tokens of the call:
/// `R::needs_whole_batch` when declared, else true (a policy that does not say is assumed to
/// look at the whole batch; every built-in policy says).
template <class R>
constexpr bool needs_whole_batch() {
  if constexpr (requires { R::needs_whole_batch; }) {
    return static_cast<bool>(R::needs_whole_batch);
  } else {
    return true;
  }
}

/// An expert bank describes weights: `num_experts()` experts mapping `hidden()` floats to
/// `hidden()` floats. How they are computed is the device's business: host devices require the
/// packed-kernel interface of moe::detail::host_ffn_bank (device/schedule.hpp).
template <class B>
concept expert_bank = requires(const B& b) {
  { b.num_experts() } -> std::convertible_to<index>;
  { b.hidden() } -> std::convertible_to<index>;
};

/// Memory space of host (CPU) memory: Eigen matrices, maps and blocks live here.
struct host_memory {
  static constexpr const char* name() noexcept { return "host"; }
};

/// The memory space of a view type: host_memory for Eigen types; a view of device memory
/// declares `memory_space`.
template <class View>
struct memory_space_of {
  using type = host_memory;
};
template <class View>
  requires requires { typename View::memory_space; }
struct memory_space_of<View> {
  using type = typename View::memory_space;
};
template <class View>
using memory_space_of_t = typename memory_space_of<std::remove_cvref_t<View>>::type;

/// Whether code running on Device can read memory of Memory (the device's own space; a device
/// that also reads other spaces says so with `template <class M> static constexpr bool
/// can_access`).
template <class Device, class Memory>
inline constexpr bool accessible_from = [] {
  if constexpr (requires { Device::template can_access<Memory>; }) {
    return Device::template can_access<Memory>;
  } else {
    return std::is_same_v<typename Device::memory_space, Memory>;
  }
}();

template <class Bank>
class shared_experts;

/// One pass of a layer over a batch, as the layer hands it to a device: the plan (expert-major
/// view built), the tokens, the experts this process holds, optional shared experts, and which
/// tokens run (null: those with passes(t) != 0).
template <class Bank>
struct layer_pass {
  const routing_plan* plan = nullptr;
  const_matrix_map<float> x{nullptr, 0, 0, Eigen::OuterStride<>(1)};
  const Bank* experts = nullptr;
  const shared_experts<Bank>* shared = nullptr;
  const std::uint8_t* mask = nullptr;

  /// Whether token t runs in this pass.
  [[nodiscard]] bool runs(index t) const noexcept { return mask ? mask[t] != 0 : plan->passes(t) != 0; }
};

/// A device: where a layer's token rows live and its expert work runs. It names itself, the
/// memory it reads (`memory_space`) and the scratch it owns (`workspace_type`).
template <class D>
concept execution_device = requires {
  typename D::device_type;
  typename D::memory_space;
  typename D::workspace_type;
  { D::name() } -> std::convertible_to<const char*>;
};

/// A device that runs a layer over a bank. Every operation that touches token rows after routing
/// is the device's:
///   - `num_experts(bank)`: the logical experts it serves with this bank (all of the bank's on a
///     host device; the placement's on a device that holds a share per process);
///   - `workspace_bytes(pass)`: bytes of workspace run() takes for a pass (queried before use);
///   - `run(pass, y, ws)`: `y_t = s_t · (Σ_slots w · Expert(x_t) + shared(x_t))` for the tokens
///     that run, `y_t = 0` for the others (s_t = plan.output_scale(t));
///   - `add(a, b, out)`: `out = a + b` (the input `x + y` of a repeated pass);
///   - `accumulate(a, mask, out)`: `out_t += a_t` for the tokens with `mask[t] != 0`.
template <class D, class Bank>
concept device_for = execution_device<D> && expert_bank<Bank> &&
    requires(const D& d, const Bank& bank, const layer_pass<Bank>& pass, matrix_map<float> y,
             typename D::workspace_type& ws, const_matrix_map<float> a, const std::uint8_t* mask) {
  { d.num_experts(bank) } -> std::convertible_to<index>;
  { d.workspace_bytes(pass) } -> std::convertible_to<std::size_t>;
  d.run(pass, y, ws);
  d.add(a, a, y);
  d.accumulate(a, mask, y);
};

/// Routing through a device: a device may route on its own hardware (or gather what a
/// whole-batch policy needs) by providing `route(router, x, ctx, plan, ws)`; otherwise the
/// router's own host route() runs. `repeat` selects `route_repeat()` where the router has one.
template <class Device, class Router>
void route_on(const Device& dev, const Router& r, const_matrix_map<float> x, const route_context& ctx,
              routing_plan& plan, workspace& ws, bool repeat = false) {
  if constexpr (requires { dev.route(r, x, ctx, plan, ws, repeat); }) {
    dev.route(r, x, ctx, plan, ws, repeat);
  } else if constexpr (requires { r.route_repeat(x, ctx, plan, ws); }) {
    if (repeat) {
      r.route_repeat(x, ctx, plan, ws);
    } else {
      r.route(x, ctx, plan, ws);
    }
  } else {
    r.route(x, ctx, plan, ws);
  }
}

}  // namespace moe
