// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

/// @file Umbrella header: everything a user of moe needs.

#include "moe/concepts.hpp"
#include "moe/config.hpp"
#include "moe/core/context.hpp"
#include "moe/core/error.hpp"
#include "moe/core/plan.hpp"
#include "moe/core/stats.hpp"
#include "moe/core/views.hpp"
#include "moe/core/workspace.hpp"
#include "moe/device/cpu.hpp"
#include "moe/device/serial.hpp"
#include "moe/experts/shared.hpp"
#include "moe/experts/swiglu.hpp"
#include "moe/layer.hpp"
#include "moe/losses/blockffn.hpp"
#include "moe/losses/dynmole.hpp"
#include "moe/losses/lbl_normalization.hpp"
#include "moe/losses/null_experts.hpp"
#include "moe/losses/prototypical.hpp"
#include "moe/routing/blockffn.hpp"
#include "moe/routing/dynmole.hpp"
#include "moe/routing/gates.hpp"
#include "moe/routing/null_experts.hpp"
#include "moe/routing/prototypical.hpp"
#include "moe/routing/similarity_aware.hpp"
#include "moe/routing/token_choice.hpp"
#include "moe/routing/top_k.hpp"
#include "moe/version.hpp"
