// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// GGUF (versions 2 and 3) over a memory map: metadata key/values of every type, arrays, tensor
// infos, the data section aligned by `general.alignment` (default 32). The parser reads nothing
// outside the file and allocates nothing that a count in the file drives beyond what the file's
// remaining bytes could hold; every failure is a moe::error naming the field and its byte
// offset (docs/architecture.md §8; arrays are stored at most 8 bytes per element, so what a file
// makes the parser allocate is a small multiple of its own size): a bad magic or version, a count, string or array longer than
// the rest of the file, an unknown value or tensor type, a nested array, a duplicate key or
// tensor, more than 4 dimensions, a dimension product or byte size that overflows, a row length
// the type's block does not divide, a misaligned offset, tensor data outside the data section,
// overlapping tensors. gguf_writer writes files that the reader (and llama.cpp) read.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <type_traits>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "moe/config.hpp"
#include "moe/core/error.hpp"
#include "moe/io/mapped_file.hpp"

namespace moe::io {

/// GGUF metadata value types.
enum class gguf_value_type : std::uint32_t {
  u8 = 0, i8 = 1, u16 = 2, i16 = 3, u32 = 4, i32 = 5, f32 = 6, boolean = 7, string = 8, array = 9, u64 = 10,
  i64 = 11, f64 = 12,
};

/// GGML tensor types moe knows (values as GGML numbers them) and their block sizes.
struct ggml_type_info {
  std::uint32_t id;
  const char* name;
  std::uint64_t block_values;
  std::uint64_t block_bytes;
};
inline constexpr ggml_type_info ggml_types[] = {
    {0, "F32", 1, 4},      {1, "F16", 1, 2},      {2, "Q4_0", 32, 18},   {3, "Q4_1", 32, 20},
    {6, "Q5_0", 32, 22},   {7, "Q5_1", 32, 24},   {8, "Q8_0", 32, 34},   {9, "Q8_1", 32, 36},
    {10, "Q2_K", 256, 84}, {11, "Q3_K", 256, 110}, {12, "Q4_K", 256, 144}, {13, "Q5_K", 256, 176},
    {14, "Q6_K", 256, 210}, {15, "Q8_K", 256, 292}, {24, "I8", 1, 1},    {25, "I16", 1, 2},
    {26, "I32", 1, 4},     {27, "I64", 1, 8},     {28, "F64", 1, 8},     {30, "BF16", 1, 2},
    {39, "MXFP4", 32, 17},
};
inline const ggml_type_info* find_ggml_type(std::uint32_t id) noexcept {
  for (const auto& t : ggml_types) {
    if (t.id == id) return &t;
  }
  return nullptr;
}

/// One metadata value: a scalar (unsigned and signed integers widened to 64 bits, floats to
/// double), a string, or an array of them, stored compactly (8 bytes per scalar element).
struct gguf_value {
  gguf_value_type type = gguf_value_type::u8;
  gguf_value_type element_type = gguf_value_type::u8;  ///< for arrays
  std::variant<std::uint64_t, std::int64_t, double, bool, std::string, std::vector<std::uint64_t>,
               std::vector<std::int64_t>, std::vector<double>, std::vector<std::string>>
      value;

  [[nodiscard]] bool is_array() const noexcept { return type == gguf_value_type::array; }
  /// Elements of an array (bools as 0 / 1 among the unsigned integers).
  [[nodiscard]] std::size_t size() const noexcept {
    return std::visit(
        [](const auto& v) -> std::size_t {
          if constexpr (requires { v.size(); } && !std::is_same_v<std::decay_t<decltype(v)>, std::string>) {
            return v.size();
          } else {
            return 1;
          }
        },
        value);
  }
};

/// A tensor's description: name, GGML type, dimensions (ne[0] the row length, innermost), its
/// offset in the data section and its byte size.
struct gguf_tensor_info {
  std::string name;
  std::uint32_t type = 0;
  std::vector<std::uint64_t> dims;
  std::uint64_t offset = 0;  ///< from the start of the data section
  std::uint64_t bytes = 0;
  [[nodiscard]] std::uint64_t rows() const noexcept {
    std::uint64_t r = 1;
    for (std::size_t i = 1; i < dims.size(); ++i) r *= dims[i];
    return r;
  }
};

namespace detail::gguf_impl {

inline constexpr std::uint64_t max_dims = 4;

// A bounds-checked little-endian cursor over the file's bytes.
class cursor {
 public:
  explicit cursor(std::span<const std::byte> b) : m_b(b) {}
  [[nodiscard]] std::size_t offset() const noexcept { return m_at; }
  [[nodiscard]] std::size_t remaining() const noexcept { return m_b.size() - m_at; }
  [[noreturn]] void fail(std::string_view field, const std::string& what) const {
    moe::detail::throw_error(error_id::input,
                             moe::detail::concat("moe::io::gguf: ", field, " at byte offset ", m_at, ": ", what));
  }
  template <class T>
  T read(std::string_view field) {
    if (remaining() < sizeof(T)) {
      fail(field, moe::detail::concat("needs ", sizeof(T), " bytes, the file has ", remaining(), " left"));
    }
    T v;
    std::memcpy(&v, m_b.data() + m_at, sizeof(T));
    m_at += sizeof(T);
    return v;
  }
  std::string read_string(std::string_view field) {
    const auto at = m_at;
    const auto n = read<std::uint64_t>(field);
    if (n > remaining()) {
      m_at = at;
      fail(field, moe::detail::concat("string of ", n, " bytes, longer than the ", remaining() - 8, " bytes left in the file"));
    }
    std::string s(reinterpret_cast<const char*>(m_b.data() + m_at), static_cast<std::size_t>(n));
    m_at += static_cast<std::size_t>(n);
    return s;
  }
  void seek(std::size_t at) noexcept { m_at = at; }

 private:
  std::span<const std::byte> m_b;
  std::size_t m_at = 0;
};

inline std::size_t scalar_size(gguf_value_type t) noexcept {
  switch (t) {
    case gguf_value_type::u8: case gguf_value_type::i8: case gguf_value_type::boolean: return 1;
    case gguf_value_type::u16: case gguf_value_type::i16: return 2;
    case gguf_value_type::u32: case gguf_value_type::i32: case gguf_value_type::f32: return 4;
    case gguf_value_type::u64: case gguf_value_type::i64: case gguf_value_type::f64: return 8;
    default: return 0;
  }
}

inline gguf_value read_scalar(cursor& c, gguf_value_type t, std::string_view field) {
  gguf_value v;
  v.type = t;
  switch (t) {
    case gguf_value_type::u8: v.value = std::uint64_t{c.read<std::uint8_t>(field)}; break;
    case gguf_value_type::u16: v.value = std::uint64_t{c.read<std::uint16_t>(field)}; break;
    case gguf_value_type::u32: v.value = std::uint64_t{c.read<std::uint32_t>(field)}; break;
    case gguf_value_type::u64: v.value = c.read<std::uint64_t>(field); break;
    case gguf_value_type::i8: v.value = std::int64_t{c.read<std::int8_t>(field)}; break;
    case gguf_value_type::i16: v.value = std::int64_t{c.read<std::int16_t>(field)}; break;
    case gguf_value_type::i32: v.value = std::int64_t{c.read<std::int32_t>(field)}; break;
    case gguf_value_type::i64: v.value = c.read<std::int64_t>(field); break;
    case gguf_value_type::f32: v.value = double{c.read<float>(field)}; break;
    case gguf_value_type::f64: v.value = c.read<double>(field); break;
    case gguf_value_type::boolean: {
      const auto b = c.read<std::uint8_t>(field);
      if (b > 1) c.fail(field, moe::detail::concat("a bool must be 0 or 1, got ", int{b}));
      v.value = b == 1;
      break;
    }
    case gguf_value_type::string: v.value = c.read_string(field); break;
    default: c.fail(field, moe::detail::concat("unknown value type ", static_cast<std::uint32_t>(t)));
  }
  return v;
}

inline gguf_value read_value(cursor& c, std::string_view field) {
  const auto at = c.offset();
  const auto raw = c.read<std::uint32_t>(field);
  if (raw > static_cast<std::uint32_t>(gguf_value_type::f64)) {
    c.seek(at);
    c.fail(field, moe::detail::concat("unknown value type ", raw, " (known: 0-12)"));
  }
  const auto t = static_cast<gguf_value_type>(raw);
  if (t != gguf_value_type::array) return read_scalar(c, t, field);
  const auto et_at = c.offset();
  const auto et_raw = c.read<std::uint32_t>(field);
  if (et_raw > static_cast<std::uint32_t>(gguf_value_type::f64)) {
    c.seek(et_at);
    c.fail(field, moe::detail::concat("unknown array element type ", et_raw));
  }
  const auto et = static_cast<gguf_value_type>(et_raw);
  if (et == gguf_value_type::array) {
    c.seek(et_at);
    c.fail(field, "arrays of arrays are not supported");
  }
  const auto n_at = c.offset();
  const auto n = c.read<std::uint64_t>(field);
  // Every element takes at least its scalar size (a string at least its 8-byte length).
  const std::size_t least = et == gguf_value_type::string ? 8 : scalar_size(et);
  if (n > c.remaining() / least) {
    c.seek(n_at);
    c.fail(field, moe::detail::concat("array of ", n, " elements cannot fit in the ", c.remaining() - 8,
                                      " bytes left in the file"));
  }
  gguf_value v;
  v.type = t;
  v.element_type = et;
  // Compact storage: at most 8 bytes (or one std::string) per element, and n is bounded by the
  // bytes left, so the allocation is a small multiple of the file's size.
  const auto count = static_cast<std::size_t>(n);
  switch (et) {
    case gguf_value_type::string: {
      std::vector<std::string> els;
      els.reserve(count);
      for (std::size_t i = 0; i < count; ++i) els.push_back(c.read_string(field));
      v.value = std::move(els);
      break;
    }
    case gguf_value_type::f32: case gguf_value_type::f64: {
      std::vector<double> els;
      els.reserve(count);
      for (std::size_t i = 0; i < count; ++i) els.push_back(std::get<double>(read_scalar(c, et, field).value));
      v.value = std::move(els);
      break;
    }
    case gguf_value_type::i8: case gguf_value_type::i16: case gguf_value_type::i32: case gguf_value_type::i64: {
      std::vector<std::int64_t> els;
      els.reserve(count);
      for (std::size_t i = 0; i < count; ++i) els.push_back(std::get<std::int64_t>(read_scalar(c, et, field).value));
      v.value = std::move(els);
      break;
    }
    default: {  // unsigned integers and bools
      std::vector<std::uint64_t> els;
      els.reserve(count);
      for (std::size_t i = 0; i < count; ++i) {
        const auto e = read_scalar(c, et, field);
        els.push_back(et == gguf_value_type::boolean ? std::uint64_t{std::get<bool>(e.value)} : std::get<std::uint64_t>(e.value));
      }
      v.value = std::move(els);
      break;
    }
  }
  return v;
}

}  // namespace detail::gguf_impl

/// A parsed GGUF file (or buffer): its metadata, tensor infos and data section.
class gguf_file {
 public:
  /// Maps and parses the file at `path`.
  explicit gguf_file(const std::string& path) : m_file(path) { parse(m_file.bytes()); }
  /// Parses `bytes` (not copied: they must outlive the object).
  static gguf_file from_bytes(std::span<const std::byte> bytes) { return gguf_file(bytes); }

  [[nodiscard]] std::uint32_t version() const noexcept { return m_version; }
  [[nodiscard]] std::uint64_t alignment() const noexcept { return m_alignment; }
  [[nodiscard]] const std::map<std::string, gguf_value>& metadata() const noexcept { return m_kv; }
  [[nodiscard]] const std::vector<gguf_tensor_info>& tensors() const noexcept { return m_tensors; }

  [[nodiscard]] const gguf_value* find(std::string_view key) const {
    const auto it = m_kv.find(std::string(key));
    return it == m_kv.end() ? nullptr : &it->second;
  }
  /// An integer value (any integer type); throws moe::error naming the key when missing or not
  /// an integer.
  [[nodiscard]] std::int64_t get_int(std::string_view key) const {
    const auto* v = require(key);
    if (const auto* u = std::get_if<std::uint64_t>(&v->value)) {
      if (*u > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) bad_type(key, "an int64");
      return static_cast<std::int64_t>(*u);
    }
    if (const auto* i = std::get_if<std::int64_t>(&v->value)) return *i;
    bad_type(key, "an integer");
  }
  [[nodiscard]] double get_float(std::string_view key) const {
    const auto* v = require(key);
    if (const auto* d = std::get_if<double>(&v->value)) return *d;
    bad_type(key, "a float");
  }
  [[nodiscard]] bool get_bool(std::string_view key) const {
    const auto* v = require(key);
    if (const auto* b = std::get_if<bool>(&v->value)) return *b;
    bad_type(key, "a bool");
  }
  [[nodiscard]] const std::string& get_string(std::string_view key) const {
    const auto* v = require(key);
    if (const auto* s = std::get_if<std::string>(&v->value)) return *s;
    bad_type(key, "a string");
  }

  /// The tensor named `name`; throws moe::error when there is none.
  [[nodiscard]] const gguf_tensor_info& tensor(std::string_view name) const {
    for (const auto& t : m_tensors) {
      if (t.name == name) return t;
    }
    moe::detail::throw_error(error_id::input, moe::detail::concat("moe::io::gguf: no tensor named '", name, "'"));
  }
  [[nodiscard]] bool has_tensor(std::string_view name) const noexcept {
    return std::any_of(m_tensors.begin(), m_tensors.end(), [&](const auto& t) { return t.name == name; });
  }
  /// The bytes of a tensor (in the file's memory; no copy).
  [[nodiscard]] std::span<const std::byte> data(const gguf_tensor_info& t) const noexcept {
    return m_bytes.subspan(static_cast<std::size_t>(m_data_offset + t.offset), static_cast<std::size_t>(t.bytes));
  }
  [[nodiscard]] std::uint64_t data_offset() const noexcept { return m_data_offset; }

 private:
  explicit gguf_file(std::span<const std::byte> bytes) { parse(bytes); }

  const gguf_value* require(std::string_view key) const {
    const auto* v = find(key);
    if (!v) moe::detail::throw_error(error_id::input, moe::detail::concat("moe::io::gguf: missing metadata key '", key, "'"));
    return v;
  }
  [[noreturn]] void bad_type(std::string_view key, const char* want) const {
    moe::detail::throw_error(error_id::input, moe::detail::concat("moe::io::gguf: metadata key '", key, "' must be ", want,
                                                                  " (type ", static_cast<std::uint32_t>(find(key)->type), ")"));
  }

  void parse(std::span<const std::byte> bytes) {
    namespace gi = detail::gguf_impl;
    m_bytes = bytes;
    gi::cursor c(bytes);
    const auto magic = c.read<std::uint32_t>("magic");
    if (magic != 0x46554747u) {  // "GGUF"
      c.seek(0);
      c.fail("magic", moe::detail::concat("expected \"GGUF\", got 0x", std::hex, magic));
    }
    m_version = c.read<std::uint32_t>("version");
    if (m_version != 2 && m_version != 3) {
      c.seek(4);
      c.fail("version", moe::detail::concat("must be 2 or 3, got ", m_version));
    }
    const auto n_tensors = c.read<std::uint64_t>("tensor_count");
    const auto n_kv = c.read<std::uint64_t>("metadata_kv_count");
    // A key/value takes at least 8 (key length) + 4 (type) + 1 bytes; a tensor info 8 + 4 + 4 + 8.
    if (n_kv > c.remaining() / 13) {
      c.seek(16);
      c.fail("metadata_kv_count", moe::detail::concat(n_kv, " key/values cannot fit in the ", c.remaining(), " bytes left"));
    }
    for (std::uint64_t i = 0; i < n_kv; ++i) {
      const auto at = c.offset();
      std::string key = c.read_string("metadata key");
      const std::string field = moe::detail::concat("metadata '", key, "'");
      gguf_value v = gi::read_value(c, field);
      if (m_kv.count(key)) {
        c.seek(at);
        c.fail(field, "duplicate key");
      }
      m_kv.emplace(std::move(key), std::move(v));
    }
    if (const auto* a = find("general.alignment")) {
      const auto* u = std::get_if<std::uint64_t>(&a->value);
      if (!u || *u == 0 || (*u & (*u - 1)) != 0 || *u > 1u << 20) {
        moe::detail::throw_error(error_id::input, "moe::io::gguf: metadata 'general.alignment' must be a power of two "
                                                  "up to 2^20 (an unsigned integer)");
      }
      m_alignment = *u;
    }
    if (n_tensors > c.remaining() / 32) {  // name length 8, n_dims 4, one dim 8, type 4, offset 8
      c.seek(8);
      c.fail("tensor_count", moe::detail::concat(n_tensors, " tensor infos cannot fit in the ", c.remaining(), " bytes left"));
    }
    m_tensors.reserve(static_cast<std::size_t>(n_tensors));
    std::set<std::string> names;
    for (std::uint64_t i = 0; i < n_tensors; ++i) {
      gguf_tensor_info t;
      const auto at = c.offset();
      t.name = c.read_string("tensor name");
      const std::string field = moe::detail::concat("tensor '", t.name, "'");
      const auto n_dims_at = c.offset();
      const auto n_dims = c.read<std::uint32_t>(field);
      if (n_dims == 0 || n_dims > gi::max_dims) {
        c.seek(n_dims_at);
        c.fail(field, moe::detail::concat("n_dims must be in [1, 4], got ", n_dims));
      }
      std::uint64_t elements = 1, nonzero = 1;  // the product of the non-zero dimensions must fit too
      for (std::uint32_t j = 0; j < n_dims; ++j) {
        const auto d_at = c.offset();
        const auto dim = c.read<std::uint64_t>(field);
        if (dim > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()) ||
            (dim != 0 && nonzero > std::numeric_limits<std::uint64_t>::max() / dim)) {
          c.seek(d_at);
          c.fail(field, "the product of the dimensions overflows 64 bits");
        }
        if (dim != 0) nonzero *= dim;
        elements *= dim;
        t.dims.push_back(dim);
      }
      const auto type_at = c.offset();
      t.type = c.read<std::uint32_t>(field);
      const auto* info = find_ggml_type(t.type);
      if (!info) {
        c.seek(type_at);
        c.fail(field, moe::detail::concat("unknown tensor type ", t.type));
      }
      if (t.dims[0] % info->block_values != 0) {
        c.seek(type_at);
        c.fail(field, moe::detail::concat("row length ", t.dims[0], " is not a multiple of the ", info->name, " block (",
                                          info->block_values, ")"));
      }
      const std::uint64_t blocks = elements / info->block_values;
      if (blocks > std::numeric_limits<std::uint64_t>::max() / info->block_bytes) {
        c.seek(type_at);
        c.fail(field, "the byte size overflows 64 bits");
      }
      t.bytes = blocks * info->block_bytes;
      const auto off_at = c.offset();
      t.offset = c.read<std::uint64_t>(field);
      if (t.offset % m_alignment != 0) {
        c.seek(off_at);
        c.fail(field, moe::detail::concat("offset ", t.offset, " is not a multiple of the alignment ", m_alignment));
      }
      if (!names.insert(t.name).second) {
        c.seek(at);
        c.fail(field, "duplicate tensor name");
      }
      m_tensors.push_back(std::move(t));
    }
    const std::uint64_t end_of_infos = c.offset();
    m_data_offset = (end_of_infos + m_alignment - 1) / m_alignment * m_alignment;
    const std::uint64_t size = bytes.size();
    if (m_data_offset > size && !m_tensors.empty()) {
      moe::detail::throw_error(error_id::input, moe::detail::concat("moe::io::gguf: the data section would start at byte offset ",
                                                                    m_data_offset, ", past the end of the ", size, "-byte file"));
    }
    const std::uint64_t data_size = m_data_offset <= size ? size - m_data_offset : 0;
    // Every tensor inside the data section; no two overlap.
    std::vector<std::pair<std::uint64_t, std::uint64_t>> spans;
    for (const auto& t : m_tensors) {
      if (t.offset > data_size || t.bytes > data_size - t.offset) {
        moe::detail::throw_error(
            error_id::input, moe::detail::concat("moe::io::gguf: tensor '", t.name, "' (offset ", t.offset, ", ", t.bytes,
                                                 " bytes) lies outside the data section of ", data_size, " bytes at byte offset ",
                                                 m_data_offset));
      }
      spans.emplace_back(t.offset, t.bytes);
    }
    std::sort(spans.begin(), spans.end());
    for (std::size_t i = 1; i < spans.size(); ++i) {
      if (spans[i].first < spans[i - 1].first + spans[i - 1].second) {
        moe::detail::throw_error(error_id::input, moe::detail::concat("moe::io::gguf: tensors at data offsets ", spans[i - 1].first,
                                                                      " and ", spans[i].first, " overlap"));
      }
    }
  }

  mapped_file m_file;
  std::span<const std::byte> m_bytes;
  std::uint32_t m_version = 0;
  std::uint64_t m_alignment = 32;
  std::uint64_t m_data_offset = 0;
  std::map<std::string, gguf_value> m_kv;
  std::vector<gguf_tensor_info> m_tensors;
};

/// Writes GGUF v3 files: metadata in insertion order, tensors aligned to 32 bytes.
class gguf_writer {
 public:
  void add_uint(std::string key, std::uint32_t v) { kv(std::move(key), gguf_value_type::u32, &v, 4); }
  void add_uint64(std::string key, std::uint64_t v) { kv(std::move(key), gguf_value_type::u64, &v, 8); }
  void add_int(std::string key, std::int32_t v) { kv(std::move(key), gguf_value_type::i32, &v, 4); }
  void add_float(std::string key, float v) { kv(std::move(key), gguf_value_type::f32, &v, 4); }
  void add_bool(std::string key, bool v) {
    const std::uint8_t b = v ? 1 : 0;
    kv(std::move(key), gguf_value_type::boolean, &b, 1);
  }
  void add_string(std::string key, std::string_view v) {
    std::string out;
    put_string(out, key);
    put(out, static_cast<std::uint32_t>(gguf_value_type::string));
    put_string(out, v);
    m_kv.append(out);
    ++m_kv_count;
  }
  /// A tensor of GGML type `type`, dims ne[0] (row length) first, with its bytes (copied).
  void add_tensor(std::string name, std::uint32_t type, std::vector<std::uint64_t> dims, std::span<const std::byte> bytes) {
    m_tensors.push_back({std::move(name), type, std::move(dims), std::vector<std::byte>(bytes.begin(), bytes.end())});
  }
  /// The file's bytes.
  [[nodiscard]] std::string bytes() const {
    std::string out;
    put(out, std::uint32_t{0x46554747u});
    put(out, std::uint32_t{3});
    put(out, static_cast<std::uint64_t>(m_tensors.size()));
    put(out, m_kv_count);
    out += m_kv;
    std::uint64_t offset = 0;
    for (const auto& t : m_tensors) {
      put_string(out, t.name);
      put(out, static_cast<std::uint32_t>(t.dims.size()));
      for (auto d : t.dims) put(out, d);
      put(out, t.type);
      put(out, offset);
      offset += (t.data.size() + 31) / 32 * 32;
    }
    out.resize((out.size() + 31) / 32 * 32, '\0');
    for (const auto& t : m_tensors) {
      out.append(reinterpret_cast<const char*>(t.data.data()), t.data.size());
      out.resize((out.size() + 31) / 32 * 32, '\0');
    }
    return out;
  }
  void write(const std::string& path) const {
    std::ofstream f(path, std::ios::binary);
    const auto b = bytes();
    f.write(b.data(), static_cast<std::streamsize>(b.size()));
    if (!f) moe::detail::throw_error(error_id::input, moe::detail::concat("moe::io::gguf_writer: cannot write '", path, "'"));
  }

 private:
  struct tensor {
    std::string name;
    std::uint32_t type;
    std::vector<std::uint64_t> dims;
    std::vector<std::byte> data;
  };
  template <class T>
  static void put(std::string& out, T v) {
    out.append(reinterpret_cast<const char*>(&v), sizeof v);
  }
  static void put_string(std::string& out, std::string_view s) {
    put(out, static_cast<std::uint64_t>(s.size()));
    out.append(s);
  }
  void kv(std::string key, gguf_value_type t, const void* v, std::size_t n) {
    std::string out;
    put_string(out, key);
    put(out, static_cast<std::uint32_t>(t));
    out.append(static_cast<const char*>(v), n);
    m_kv.append(out);
    ++m_kv_count;
  }
  std::string m_kv;
  std::uint64_t m_kv_count = 0;
  std::vector<tensor> m_tensors;
};

}  // namespace moe::io
