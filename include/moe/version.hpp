// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

/// Major version of moe.
#define MOE_VERSION_MAJOR 0
/// Minor version of moe.
#define MOE_VERSION_MINOR 1
/// Patch version of moe.
#define MOE_VERSION_PATCH 0

namespace moe {
/// The library version as "major.minor.patch".
inline constexpr const char* version_string = "0.1.0";
}  // namespace moe
