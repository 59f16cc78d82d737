// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// Routed-expert recordings (moe::route_recording) as safetensors files (docs/routing-spec.md
// §19.2), written and read with moe::io::safetensors_writer and moe::io::safetensors_file.
// Needs nlohmann-json, as <moe/io/safetensors.hpp> does.
//
// A file holds:
//   - `routed_experts`: I16 `[tokens, layers, k]`, the expert ids (-1: an empty slot);
//   - `routed_weights`: F32 `[tokens, layers, k]`, the combine weights, only when recorded;
//   - `__metadata__` (strings): `format` = "moe.routes", `format_version` = "1", `tokens`,
//     `layers`, `k`, `experts` (E, "0" if unknown) as decimal integers, and `recorded`, one
//     character per layer, '1' for a recorded layer and '0' for one never recorded.
// The reader checks all of it and every id (in [-1, E) when E is known, -1 in a layer never
// recorded) and weight (finite, 0 on an empty slot); each failure is a moe::error naming the
// field or tensor, the expected value and the actual one. No other tensor may be present.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "moe/config.hpp"
#include "moe/core/error.hpp"
#include "moe/io/safetensors.hpp"
#include "moe/routing/recording.hpp"

namespace moe::io {

/// The `format` metadata of a routed-expert recording, and its version.
inline constexpr std::string_view routes_format = "moe.routes";
inline constexpr std::string_view routes_format_version = "1";
/// Tensor names of a recording file.
inline constexpr std::string_view routes_ids_tensor = "routed_experts";
inline constexpr std::string_view routes_weights_tensor = "routed_weights";

/// The safetensors writer of a recording (to add metadata of one's own before writing).
inline safetensors_writer routes_writer(const route_recording& r) {
  safetensors_writer w;
  w.metadata("format", std::string(routes_format));
  w.metadata("format_version", std::string(routes_format_version));
  w.metadata("tokens", std::to_string(r.num_tokens()));
  w.metadata("layers", std::to_string(r.num_layers()));
  w.metadata("k", std::to_string(r.k()));
  w.metadata("experts", std::to_string(r.num_experts()));
  std::string recorded(static_cast<std::size_t>(r.num_layers()), '0');
  for (index l = 0; l < r.num_layers(); ++l) recorded[static_cast<std::size_t>(l)] = r.recorded(l) ? '1' : '0';
  w.metadata("recorded", recorded);
  const std::vector<std::uint64_t> shape{static_cast<std::uint64_t>(r.num_tokens()),
                                         static_cast<std::uint64_t>(r.num_layers()), static_cast<std::uint64_t>(r.k())};
  w.add(std::string(routes_ids_tensor), "I16", shape, std::as_bytes(r.ids()));
  if (r.has_weights()) w.add(std::string(routes_weights_tensor), "F32", shape, std::as_bytes(r.weights()));
  return w;
}

/// The bytes of the safetensors file of a recording.
inline std::string routes_bytes(const route_recording& r) { return routes_writer(r).bytes(); }

/// Writes a recording to a safetensors file at `path`.
inline void write_routes(const std::string& path, const route_recording& r) { routes_writer(r).write(path); }

namespace detail::routes_impl {

inline constexpr const char* where = "moe::io::read_routes";

[[noreturn]] inline void fail(std::string_view field, std::string_view expected, std::string_view actual) {
  moe::detail::fail_parameter(error_id::input, where, field, expected, actual);
}

inline const std::string& metadata(const safetensors_file& f, const std::string& key) {
  const auto it = f.metadata().find(key);
  if (it == f.metadata().end()) fail(moe::detail::concat("__metadata__.", key), "present", "missing");
  return it->second;
}

/// A decimal integer in [lo, hi] (digits only, no sign, no spaces).
inline index integer(const safetensors_file& f, const std::string& key, index lo, index hi) {
  const std::string& text = metadata(f, key);
  const std::string field = moe::detail::concat("__metadata__.", key);
  const std::string expected = moe::detail::concat("a decimal integer in [", lo, ", ", hi, "]");
  if (text.empty() || text.size() > 18) fail(field, expected, moe::detail::concat("'", text, "'"));
  index v = 0;
  for (const char c : text) {
    if (c < '0' || c > '9') fail(field, expected, moe::detail::concat("'", text, "'"));
    v = v * 10 + (c - '0');
  }
  if (v < lo || v > hi) fail(field, expected, moe::detail::concat("'", text, "'"));
  return v;
}

inline std::string shape_text(const std::vector<std::uint64_t>& shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

inline void check_tensor(const safetensors_tensor& t, std::string_view dtype, const std::vector<std::uint64_t>& shape) {
  if (t.dtype != dtype) fail(moe::detail::concat(t.name, " dtype"), dtype, t.dtype);
  if (t.shape != shape) {
    fail(moe::detail::concat(t.name, " shape"), moe::detail::concat(shape_text(shape), " (tokens, layers, k of __metadata__)"),
         shape_text(t.shape));
  }
}

}  // namespace detail::routes_impl

/// Reads a recording from a parsed safetensors file. `experts` > 0 is the expert count E the
/// ids must be below (and must equal the file's `experts` when the file knows it); 0 takes the
/// file's. Throws moe::error naming the field or tensor on any inconsistency.
inline route_recording read_routes(const safetensors_file& f, index experts = 0) {
  namespace ri = detail::routes_impl;
  if (experts < 0 || experts > route_recording::max_experts) {
    moe::detail::fail_parameter(error_id::config, ri::where, "experts",
                                moe::detail::concat("in [0, ", route_recording::max_experts, "] (0: the file's)"), experts);
  }
  const std::string& format = ri::metadata(f, "format");
  if (format != routes_format) ri::fail("__metadata__.format", moe::detail::concat("'", routes_format, "'"), moe::detail::concat("'", format, "'"));
  const std::string& version = ri::metadata(f, "format_version");
  if (version != routes_format_version) {
    ri::fail("__metadata__.format_version", moe::detail::concat("'", routes_format_version, "'"), moe::detail::concat("'", version, "'"));
  }
  constexpr index big = index{1} << 40;
  const index T = ri::integer(f, "tokens", 0, big);
  const index L = ri::integer(f, "layers", 1, big);
  const index k = ri::integer(f, "k", 1, big);
  const index file_experts = ri::integer(f, "experts", 0, route_recording::max_experts);
  if (experts > 0 && file_experts > 0 && experts != file_experts) {
    ri::fail("__metadata__.experts", moe::detail::concat("equal to the expected expert count ", experts),
             std::to_string(file_experts));
  }
  const index E = experts > 0 ? experts : file_experts;
  const std::string& recorded = ri::metadata(f, "recorded");
  if (static_cast<index>(recorded.size()) != L) {
    ri::fail("__metadata__.recorded", moe::detail::concat(L, " characters (one per layer)"),
             moe::detail::concat(recorded.size(), " characters"));
  }
  for (const char c : recorded) {
    if (c != '0' && c != '1') ri::fail("__metadata__.recorded", "'0' or '1' per layer", moe::detail::concat("'", recorded, "'"));
  }
  for (const auto& t : f.tensors()) {
    if (t.name != routes_ids_tensor && t.name != routes_weights_tensor) {
      ri::fail("tensors", moe::detail::concat("only '", routes_ids_tensor, "' and '", routes_weights_tensor, "'"),
               moe::detail::concat("a tensor '", t.name, "'"));
    }
  }
  if (!f.has(routes_ids_tensor)) ri::fail(std::string(routes_ids_tensor), "present", "missing");
  const std::vector<std::uint64_t> shape{static_cast<std::uint64_t>(T), static_cast<std::uint64_t>(L),
                                         static_cast<std::uint64_t>(k)};
  // The shape check comes first: a shape whose product overflows index cannot match it.
  const auto& ids = f.tensor(routes_ids_tensor);
  ri::check_tensor(ids, "I16", shape);
  const bool with_weights = f.has(routes_weights_tensor);
  if (with_weights) ri::check_tensor(f.tensor(routes_weights_tensor), "F32", shape);

  route_recording r(T, L, k, with_weights);
  const auto id_bytes = f.data(ids);
  // Little-endian, as safetensors stores it; no copy of an empty tensor (its data may be null).
  if (!id_bytes.empty()) std::memcpy(r.ids().data(), id_bytes.data(), id_bytes.size());
  if (with_weights) {
    const auto w_bytes = f.data(f.tensor(routes_weights_tensor));
    if (!w_bytes.empty()) std::memcpy(r.weights().data(), w_bytes.data(), w_bytes.size());
  }
  r.check_ids(moe::detail::concat(ri::where, ": ", routes_ids_tensor), E > 0 ? E : route_recording::max_experts);
  const auto all = r.ids();
  const auto w = r.weights();
  for (std::size_t i = 0; i < all.size(); ++i) {
    const auto slot = static_cast<index>(i);
    const index t = slot / (L * k), l = slot / k % L, s = slot % k;
    const auto name = [&](std::string_view tensor) {
      return moe::detail::concat(tensor, "[", t, ", ", l, ", ", s, "]");
    };
    if (recorded[static_cast<std::size_t>(l)] == '0' && all[i] != -1) {
      ri::fail(name(routes_ids_tensor), "-1 in a layer never recorded (__metadata__.recorded)", std::to_string(all[i]));
    }
    if (with_weights) {
      if (!std::isfinite(w[i])) ri::fail(name(routes_weights_tensor), "finite", moe::detail::concat(w[i]));
      if (all[i] == -1 && w[i] != 0.0f) ri::fail(name(routes_weights_tensor), "0 on an empty slot (id -1)", moe::detail::concat(w[i]));
    }
  }
  for (index l = 0; l < L; ++l) r.set_recorded(l, recorded[static_cast<std::size_t>(l)] == '1');
  r.set_num_experts(E);
  return r;
}

/// Reads a recording from the bytes of a safetensors file (not kept).
inline route_recording read_routes(std::span<const std::byte> bytes, index experts = 0) {
  return read_routes(safetensors_file::from_bytes(bytes), experts);
}

/// Reads a recording from the safetensors file at `path`.
inline route_recording read_routes(const std::string& path, index experts = 0) {
  return read_routes(safetensors_file(path), experts);
}

}  // namespace moe::io
