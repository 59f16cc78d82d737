// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

/// @file Umbrella header: everything a user of moe needs.

#include "moe/concepts.hpp"
#include "moe/config.hpp"
#include "moe/core/context.hpp"
#include "moe/core/error.hpp"
#include "moe/core/plan.hpp"
#include "moe/core/rounding.hpp"
#include "moe/core/stats.hpp"
#include "moe/core/views.hpp"
#include "moe/core/workspace.hpp"
#include "moe/device/cpu.hpp"
#include "moe/device/serial.hpp"
#include "moe/experts/shared.hpp"
#include "moe/experts/swiglu.hpp"
#include "moe/layer.hpp"
#include "moe/losses/load_balance.hpp"
#include "moe/losses/sequence_balance.hpp"
#include "moe/losses/z_loss.hpp"
#include "moe/presets.hpp"
#include "moe/routing/adaptive_k.hpp"
#include "moe/routing/capacity.hpp"
#include "moe/routing/expert_choice.hpp"
#include "moe/routing/gates.hpp"
#include "moe/routing/group_limited.hpp"
#include "moe/routing/top_k.hpp"
#include "moe/version.hpp"
