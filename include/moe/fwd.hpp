// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

/// @file Forward declarations and default aliases, for headers that only name moe types.

#include <cstdint>

#include "moe/config.hpp"

namespace moe {
class error;
class routing_plan;
class workspace;
struct route_context;
struct routing_stats;
struct softmax_gate;
struct sigmoid_gate;
struct top_k_options;
template <class Gate>
class top_k;
struct group_limited_options;
template <class Gate>
class group_limited;
struct capacity_options;
template <class Base>
class capacity;
struct expert_choice_options;
class expert_choice;
struct adaptive_k_options;
template <class Gate>
class adaptive_k;
struct top_p_options;
template <class Gate>
class top_p;
class prototypical;
class scaled_dot_similarity;
class dynmole;
class blockffn;
template <class Scalar>
class swiglu_experts;
template <class Bank>
class shared_experts;
namespace device {
struct serial;
class cpu;
}  // namespace device
template <class Router, class Experts, class Device>
class layer;

/// The default device: host threads.
using default_device = device::cpu;
}  // namespace moe
