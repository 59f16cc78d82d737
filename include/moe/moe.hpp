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
#include "moe/losses/dr_llm.hpp"
#include "moe/losses/ftp.hpp"
#include "moe/losses/gamma_mod.hpp"
#include "moe/losses/mixture_of_depths.hpp"
#include "moe/routing/dr_llm.hpp"
#include "moe/routing/ftp.hpp"
#include "moe/routing/gamma_mod.hpp"
#include "moe/routing/gates.hpp"
#include "moe/routing/layer_skip.hpp"
#include "moe/routing/mixture_of_depths.hpp"
#include "moe/routing/top_k.hpp"
#include "moe/version.hpp"
