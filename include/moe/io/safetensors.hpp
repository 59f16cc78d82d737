// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// safetensors over a memory map, with zero-copy typed views, sharded checkpoints
// (model.safetensors.index.json) and a writer. Needs nlohmann-json (header-only, Debian's
// nlohmann-json3-dev). The reader makes every check of the format's reference implementation:
// the 8-byte header length is at most 100 MB and within the file; the header is valid UTF-8 JSON,
// an object whose entries are tensors (`dtype`, `shape`, `data_offsets`) or the string map
// `__metadata__`; dtypes are known; `dtype size × shape` does not overflow and equals
// `end - begin`; tensors sorted by offset start at 0 and follow each other with no gap and no
// overlap, and the last one ends exactly at the end of the file (so every tensor lies inside
// it). Every failure is a moe::error naming the tensor or field.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <new>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "moe/config.hpp"
#include "moe/core/error.hpp"
#include "moe/core/views.hpp"
#include "moe/io/mapped_file.hpp"

namespace moe::io {

/// safetensors dtypes and their sizes in bytes.
struct safetensors_dtype {
  const char* name;
  std::size_t bytes;
};
inline constexpr safetensors_dtype safetensors_dtypes[] = {
    {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"F8_E8M0", 1}, {"I16", 2}, {"U16", 2},
    {"F16", 2},  {"BF16", 2}, {"I32", 4}, {"U32", 4},     {"F32", 4},     {"F64", 8},     {"I64", 8}, {"U64", 8},
    {"C64", 8},
};
inline const safetensors_dtype* find_safetensors_dtype(std::string_view name) noexcept {
  for (const auto& d : safetensors_dtypes) {
    if (name == d.name) return &d;
  }
  return nullptr;
}

struct safetensors_tensor {
  std::string name;
  std::string dtype;
  std::vector<std::uint64_t> shape;
  std::uint64_t begin = 0, end = 0;  ///< offsets in the data section
};

/// One safetensors file (or buffer).
class safetensors_file {
 public:
  /// Largest header the reader accepts (the reference implementation's limit).
  static constexpr std::uint64_t max_header = 100'000'000;

  explicit safetensors_file(const std::string& path) : m_file(std::make_unique<mapped_file>(path)) {
    parse(m_file->bytes());
  }
  /// Parses `bytes` (not copied: they must outlive the object).
  static safetensors_file from_bytes(std::span<const std::byte> bytes) { return safetensors_file(bytes); }

  [[nodiscard]] const std::vector<safetensors_tensor>& tensors() const noexcept { return m_tensors; }
  [[nodiscard]] const std::map<std::string, std::string>& metadata() const noexcept { return m_metadata; }
  [[nodiscard]] bool has(std::string_view name) const noexcept {
    return std::any_of(m_tensors.begin(), m_tensors.end(), [&](const auto& t) { return t.name == name; });
  }
  [[nodiscard]] const safetensors_tensor& tensor(std::string_view name) const {
    for (const auto& t : m_tensors) {
      if (t.name == name) return t;
    }
    moe::detail::throw_error(error_id::input, moe::detail::concat("moe::io::safetensors: no tensor named '", name, "'"));
  }
  /// The bytes of a tensor, in the file's memory.
  [[nodiscard]] std::span<const std::byte> data(const safetensors_tensor& t) const noexcept {
    return m_bytes.subspan(static_cast<std::size_t>(m_data + t.begin), static_cast<std::size_t>(t.end - t.begin));
  }
  /// A zero-copy row-major view of a 2-D F32 tensor (1-D: one row). Throws moe::error if the
  /// dtype is not F32, the rank is above 2, or the data is not aligned to a float.
  [[nodiscard]] const_matrix_map<float> matrix(std::string_view name) const {
    const auto& t = tensor(name);
    constexpr const char* where = "moe::io::safetensors::matrix";
    if (t.dtype != "F32") {
      moe::detail::fail_parameter(error_id::input, where, moe::detail::concat(t.name, " dtype"), "F32", t.dtype);
    }
    if (t.shape.size() > 2 || t.shape.empty()) {
      moe::detail::fail_parameter(error_id::shape, where, moe::detail::concat(t.name, " rank"), "1 or 2", t.shape.size());
    }
    const auto bytes = data(t);
    if (reinterpret_cast<std::uintptr_t>(bytes.data()) % alignof(float) != 0) {
      moe::detail::throw_error(error_id::input, moe::detail::concat(where, ": tensor '", t.name, "' is not 4-byte aligned"));
    }
    const auto rows = static_cast<index>(t.shape.size() == 2 ? t.shape[0] : 1);
    const auto cols = static_cast<index>(t.shape.back());
    return map(reinterpret_cast<const float*>(bytes.data()), rows, cols);
  }

 private:
  explicit safetensors_file(std::span<const std::byte> bytes) { parse(bytes); }

  [[noreturn]] static void fail(const std::string& what) {
    moe::detail::throw_error(error_id::input, moe::detail::concat("moe::io::safetensors: ", what));
  }

  void parse(std::span<const std::byte> bytes) {
    m_bytes = bytes;
    if (bytes.size() < 8) fail(moe::detail::concat("header length: the file has ", bytes.size(), " bytes, fewer than 8"));
    std::uint64_t n = 0;
    std::memcpy(&n, bytes.data(), 8);
    if (n > max_header) fail(moe::detail::concat("header length ", n, " exceeds the limit of ", max_header, " bytes"));
    if (n > bytes.size() - 8) fail(moe::detail::concat("header length ", n, " exceeds the ", bytes.size() - 8, " bytes after it"));
    const std::string_view text(reinterpret_cast<const char*>(bytes.data() + 8), static_cast<std::size_t>(n));
    if (text.empty() || text.front() != '{') fail("header must be a JSON object starting with '{'");
    nlohmann::json header;
    try {
      header = nlohmann::json::parse(text);  // rejects invalid UTF-8 and trailing garbage
    } catch (const nlohmann::json::exception& e) {
      fail(moe::detail::concat("header is not valid JSON: ", e.what()));
    } catch (const std::bad_alloc&) {
      fail(moe::detail::concat("header of ", n, " bytes is too large to parse in memory"));
    }
    if (!header.is_object()) fail("header must be a JSON object");
    m_data = 8 + n;
    const std::uint64_t data_size = bytes.size() - m_data;
    for (auto& item : header.items()) {
      const std::string key = item.key();
      const auto& value = item.value();
      if (key == "__metadata__") {
        if (!value.is_object()) fail("'__metadata__' must be an object of strings");
        for (const auto& [mk, mv] : value.items()) {
          if (!mv.is_string()) fail(moe::detail::concat("'__metadata__' value of '", mk, "' must be a string"));
          m_metadata.emplace(mk, mv.get<std::string>());
        }
        continue;
      }
      safetensors_tensor t;
      t.name = key;
      const auto field = [&](const char* f) { return moe::detail::concat("tensor '", key, "' ", f); };
      if (!value.is_object()) fail(field("must be an object"));
      for (const auto& [k, v] : value.items()) {
        if (k != "dtype" && k != "shape" && k != "data_offsets") fail(field(moe::detail::concat("has an unknown field '", k, "'").c_str()));
      }
      if (!value.contains("dtype") || !value["dtype"].is_string()) fail(field("'dtype' must be a string"));
      t.dtype = value["dtype"].get<std::string>();
      const auto* dt = find_safetensors_dtype(t.dtype);
      if (!dt) fail(field(moe::detail::concat("has an unknown dtype '", t.dtype, "'").c_str()));
      if (!value.contains("shape") || !value["shape"].is_array()) fail(field("'shape' must be an array"));
      std::uint64_t elements = 1;
      for (const auto& d : value["shape"]) {
        if (!d.is_number_unsigned()) fail(field("'shape' must hold non-negative integers"));
        const auto v = d.get<std::uint64_t>();
        if (v > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) fail(field("'shape' has an extent above 2^63 - 1"));
        if (v != 0 && elements > std::numeric_limits<std::uint64_t>::max() / v) fail(field("'shape' overflows 64 bits"));
        elements *= v;
        t.shape.push_back(v);
      }
      if (elements > std::numeric_limits<std::uint64_t>::max() / dt->bytes) fail(field("byte size overflows 64 bits"));
      const auto off = value.find("data_offsets");  // by reference: a copy of a hostile value recurses
      if (off == value.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
          !(*off)[1].is_number_unsigned()) {
        fail(field("'data_offsets' must be [begin, end], non-negative integers"));
      }
      t.begin = (*off)[0].get<std::uint64_t>();
      t.end = (*off)[1].get<std::uint64_t>();
      if (t.end < t.begin) fail(field(moe::detail::concat("'data_offsets' end ", t.end, " is before begin ", t.begin).c_str()));
      if (t.end - t.begin != elements * dt->bytes) {
        fail(field(moe::detail::concat("holds ", t.end - t.begin, " bytes, its dtype and shape need ", elements * dt->bytes).c_str()));
      }
      if (t.end > data_size) {
        fail(field(moe::detail::concat("ends at ", t.end, ", past the ", data_size, " bytes of the data section").c_str()));
      }
      m_tensors.push_back(std::move(t));
    }
    // Contiguous coverage of the data section: sorted by offset, no gap, no overlap, exact end.
    std::vector<const safetensors_tensor*> order;
    for (const auto& t : m_tensors) order.push_back(&t);
    std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->begin != b->begin ? a->begin < b->begin : a->end < b->end; });
    std::uint64_t at = 0;
    for (const auto* t : order) {
      if (t->begin < at) fail(moe::detail::concat("tensor '", t->name, "' overlaps the tensor before it (begins at ", t->begin, ", previous ends at ", at, ")"));
      if (t->begin > at) fail(moe::detail::concat("a gap of ", t->begin - at, " bytes before tensor '", t->name, "'"));
      at = t->end;
    }
    if (at != data_size) fail(moe::detail::concat("the tensors cover ", at, " bytes of a data section of ", data_size));
  }

  std::unique_ptr<mapped_file> m_file;
  std::span<const std::byte> m_bytes;
  std::uint64_t m_data = 0;
  std::vector<safetensors_tensor> m_tensors;
  std::map<std::string, std::string> m_metadata;
};

/// A sharded checkpoint: `model.safetensors.index.json` (its `weight_map` from tensor name to
/// shard file) in a directory, every shard opened.
class safetensors_index {
 public:
  explicit safetensors_index(const std::string& index_path) {
    std::ifstream in(index_path);
    if (!in) moe::detail::throw_error(error_id::input, moe::detail::concat("moe::io::safetensors: cannot open '", index_path, "'"));
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      moe::detail::throw_error(error_id::input, moe::detail::concat("moe::io::safetensors: '", index_path, "' is not valid JSON: ", e.what()));
    }
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object()) {
      moe::detail::throw_error(error_id::input, moe::detail::concat("moe::io::safetensors: '", index_path, "' has no 'weight_map' object"));
    }
    const auto dir = std::filesystem::path(index_path).parent_path();
    for (const auto& [name, file] : j["weight_map"].items()) {
      if (!file.is_string()) {
        moe::detail::throw_error(error_id::input, moe::detail::concat("moe::io::safetensors: weight_map entry '", name, "' must be a file name"));
      }
      const auto f = file.get<std::string>();
      if (f.find('/') != std::string::npos || f == "..") {
        moe::detail::throw_error(error_id::input, moe::detail::concat("moe::io::safetensors: shard '", f, "' must be a file name in the index's directory"));
      }
      if (!m_shards.count(f)) m_shards.emplace(f, std::make_unique<safetensors_file>((dir / f).string()));
      if (!m_shards.at(f)->has(name)) {
        moe::detail::throw_error(error_id::input, moe::detail::concat("moe::io::safetensors: shard '", f, "' has no tensor '", name, "' that the index names"));
      }
      m_where.emplace(name, f);
    }
  }
  [[nodiscard]] const safetensors_file& shard_of(std::string_view name) const {
    const auto it = m_where.find(std::string(name));
    if (it == m_where.end()) {
      moe::detail::throw_error(error_id::input, moe::detail::concat("moe::io::safetensors: no tensor named '", name, "' in the index"));
    }
    return *m_shards.at(it->second);
  }
  [[nodiscard]] std::size_t size() const noexcept { return m_where.size(); }
  [[nodiscard]] bool has(std::string_view name) const { return m_where.count(std::string(name)) != 0; }

 private:
  std::map<std::string, std::unique_ptr<safetensors_file>> m_shards;
  std::map<std::string, std::string> m_where;
};

/// Writes safetensors files: tensors in insertion order, the header padded with spaces to a
/// multiple of 8 bytes (so every F32 tensor of a whole number of 8-byte groups stays aligned).
class safetensors_writer {
 public:
  void add(std::string name, std::string dtype, std::vector<std::uint64_t> shape, std::span<const std::byte> bytes) {
    m_tensors.push_back({std::move(name), std::move(dtype), std::move(shape), std::vector<std::byte>(bytes.begin(), bytes.end())});
  }
  void add(std::string name, const_matrix_map<float> m) {
    std::vector<std::byte> b(static_cast<std::size_t>(m.rows() * m.cols()) * sizeof(float));
    for (index r = 0; r < m.rows(); ++r) {
      std::memcpy(b.data() + static_cast<std::size_t>(r * m.cols()) * sizeof(float), m.data() + r * m.outerStride(),
                  static_cast<std::size_t>(m.cols()) * sizeof(float));
    }
    m_tensors.push_back({std::move(name), "F32", {static_cast<std::uint64_t>(m.rows()), static_cast<std::uint64_t>(m.cols())}, std::move(b)});
  }
  void metadata(std::string key, std::string value) { m_metadata[std::move(key)] = std::move(value); }

  [[nodiscard]] std::string bytes() const {
    nlohmann::ordered_json h = nlohmann::ordered_json::object();
    if (!m_metadata.empty()) h["__metadata__"] = m_metadata;
    std::uint64_t at = 0;
    for (const auto& t : m_tensors) {
      h[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {at, at + t.data.size()}}};
      at += t.data.size();
    }
    std::string text = h.dump();
    text.resize((text.size() + 8 + 7) / 8 * 8 - 8, ' ');
    std::string out(8, '\0');
    const std::uint64_t n = text.size();
    std::memcpy(out.data(), &n, 8);
    out += text;
    for (const auto& t : m_tensors) out.append(reinterpret_cast<const char*>(t.data.data()), t.data.size());
    return out;
  }
  void write(const std::string& path) const {
    std::ofstream f(path, std::ios::binary);
    const auto b = bytes();
    f.write(b.data(), static_cast<std::streamsize>(b.size()));
    if (!f) moe::detail::throw_error(error_id::input, moe::detail::concat("moe::io::safetensors_writer: cannot write '", path, "'"));
  }

 private:
  struct tensor {
    std::string name, dtype;
    std::vector<std::uint64_t> shape;
    std::vector<std::byte> data;
  };
  std::vector<tensor> m_tensors;
  std::map<std::string, std::string> m_metadata;
};

}  // namespace moe::io
