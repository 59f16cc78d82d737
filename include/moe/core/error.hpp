// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

#include "moe/config.hpp"

namespace moe {

/// Error thrown for invalid configuration, shapes or input values on the host API.
///
/// The message starts with a stable id in brackets, then names the entity and the parameter, the
/// expected value and the actual one: `[moe.error.config] moe::top_k: parameter 'k' must be in
/// [1, 8], got 0`. `id()` returns the id alone, for programs that branch on the kind of error.
class error : public std::invalid_argument {
 public:
  error(std::string_view id, const std::string& message)
      : std::invalid_argument(prefixed(id, message)), m_id(id) {}

  /// The stable id, e.g. "moe.error.config", "moe.error.shape", "moe.error.input".
  [[nodiscard]] const std::string& id() const noexcept { return m_id; }

 private:
  static std::string prefixed(std::string_view id, const std::string& message) {
    std::string out;
    out.reserve(id.size() + message.size() + 3);
    out.append(1, '[').append(id).append("] ").append(message);
    return out;
  }
  std::string m_id;
};

/// Stable error ids.
namespace error_id {
inline constexpr std::string_view config = "moe.error.config";  ///< invalid option or parameter
inline constexpr std::string_view shape = "moe.error.shape";    ///< mismatched extents
inline constexpr std::string_view input = "moe.error.input";    ///< invalid values (NaN logits)
inline constexpr std::string_view plan = "moe.error.plan";      ///< a routing plan a device cannot run
}  // namespace error_id

namespace detail {

/// Throws moe::error (or aborts under MOE_NO_EXCEPTIONS). Kept out of line so that checks on hot
/// paths cost one predictable branch.
[[noreturn]] MOE_NOINLINE inline void throw_error(std::string_view id, const std::string& message) {
#ifdef MOE_NO_EXCEPTIONS
  std::fprintf(stderr, "[%.*s] %s\n", static_cast<int>(id.size()), id.data(), message.c_str());
  std::abort();
#else
  throw moe::error(id, message);
#endif
}

template <class... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream out;
  out.precision(9);
  (out << ... << parts);
  return out.str();
}

/// Throws `[id] where: parameter 'param' must be <expected>, got <actual>`.
template <class Actual>
[[noreturn]] MOE_NOINLINE void fail_parameter(std::string_view id, std::string_view where,
                                              std::string_view param, std::string_view expected,
                                              const Actual& actual) {
  throw_error(id, concat(where, ": parameter '", param, "' must be ", expected, ", got ", actual));
}

/// Checks `lo <= value <= hi` for a configuration parameter.
template <class T>
void check_range(std::string_view where, std::string_view param, T value, T lo, T hi) {
  if (!(value >= lo && value <= hi)) {
    fail_parameter(error_id::config, where, param, concat("in [", lo, ", ", hi, "]"), value);
  }
}

/// Checks that an extent equals the expected one.
inline void check_extent(std::string_view where, std::string_view param, index actual,
                         index expected) {
  if (actual != expected) {
    fail_parameter(error_id::shape, where, param, concat("equal to ", expected), actual);
  }
}

}  // namespace detail
}  // namespace moe

/// Debug contracts: compiled out under NDEBUG unless MOE_ENFORCE_CONTRACTS is defined. A program
/// may define MOE_CONTRACT_VIOLATION(cond_text) before including moe to handle violations itself.
#ifndef MOE_CONTRACT_VIOLATION
#define MOE_CONTRACT_VIOLATION(text)                                            \
  (std::fprintf(stderr, "moe: contract violated: %s (%s:%d)\n", text, __FILE__, \
                __LINE__),                                                      \
   std::abort())
#endif
#if !defined(NDEBUG) || defined(MOE_ENFORCE_CONTRACTS)
#define MOE_ASSERT(cond) ((cond) ? static_cast<void>(0) : MOE_CONTRACT_VIOLATION(#cond))
#else
#define MOE_ASSERT(cond) static_cast<void>(0)
#endif
#define MOE_EXPECTS(cond) MOE_ASSERT(cond)
#define MOE_ENSURES(cond) MOE_ASSERT(cond)
