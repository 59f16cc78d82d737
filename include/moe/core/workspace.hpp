// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <type_traits>
#include <vector>

#include "moe/config.hpp"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace moe {

namespace detail {
/// Frees memory from aligned_allocate() or huge_allocate().
struct aligned_delete {
  bool huge = false;  ///< from std::aligned_alloc (2 MiB blocks), else from aligned operator new
  void operator()(void* p) const noexcept {
    if (huge) {
      std::free(p);
    } else {
      ::operator delete(p, std::align_val_t{buffer_alignment});
    }
  }
};
using aligned_ptr = std::unique_ptr<std::byte, aligned_delete>;

/// `bytes` aligned to buffer_alignment, from operator new (counted by allocation tests).
inline aligned_ptr aligned_allocate(std::size_t bytes) {
  if (bytes == 0) return {};
  return aligned_ptr(static_cast<std::byte*>(::operator new(bytes, std::align_val_t{buffer_alignment})));
}

/// Allocates `bytes` for long-lived data (packed weights). Large blocks are 2 MiB aligned and
/// marked for transparent huge pages where the OS offers them: weights stream through the TLB
/// once per call, and 4 KiB pages cost a page walk every 4 KiB.
inline aligned_ptr huge_allocate(std::size_t bytes) {
  constexpr std::size_t huge_page = std::size_t{1} << 21;
  if (bytes < huge_page) return aligned_allocate(bytes);
  const std::size_t rounded = (bytes + huge_page - 1) / huge_page * huge_page;
  void* p = std::aligned_alloc(huge_page, rounded);
  if (!p) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  madvise(p, rounded, MADV_HUGEPAGE);
#endif
  return aligned_ptr(static_cast<std::byte*>(p), aligned_delete{true});
}
constexpr std::size_t round_up(std::size_t n, std::size_t to) { return (n + to - 1) / to * to; }
}  // namespace detail

/// An owned, 64-byte aligned array of trivially copyable values (packed weights, tables).
template <class T>
class aligned_buffer {
  static_assert(std::is_trivially_copyable_v<T>,
                "moe::aligned_buffer<T>: T must be trivially copyable (float, int32, ...)");

 public:
  aligned_buffer() = default;
  /// Allocates `n` zero-initialised values (2 MiB aligned, on huge pages where possible, when large).
  explicit aligned_buffer(std::size_t n) : m_data(detail::huge_allocate(n * sizeof(T))), m_size(n) {
    if (n) std::memset(m_data.get(), 0, n * sizeof(T));
  }
  /// Allocates `n` values left uninitialised (the caller writes every one: packing a checkpoint
  /// without a zeroing pass over memory it overwrites).
  struct uninitialized_t {};
  aligned_buffer(std::size_t n, uninitialized_t) : m_data(detail::huge_allocate(n * sizeof(T))), m_size(n) {}
  aligned_buffer(aligned_buffer&&) noexcept = default;
  aligned_buffer& operator=(aligned_buffer&&) noexcept = default;
  aligned_buffer(const aligned_buffer& other) : aligned_buffer(other.m_size) {
    if (m_size) std::memcpy(data(), other.data(), m_size * sizeof(T));
  }
  aligned_buffer& operator=(const aligned_buffer& other) {
    if (this != &other) *this = aligned_buffer(other);
    return *this;
  }

  [[nodiscard]] T* data() noexcept { return reinterpret_cast<T*>(m_data.get()); }
  [[nodiscard]] const T* data() const noexcept { return reinterpret_cast<const T*>(m_data.get()); }
  [[nodiscard]] std::size_t size() const noexcept { return m_size; }
  T& operator[](std::size_t i) noexcept { return data()[i]; }
  const T& operator[](std::size_t i) const noexcept { return data()[i]; }

 private:
  detail::aligned_ptr m_data;
  std::size_t m_size = 0;
};

/// Reusable scratch memory for one forward pass: a bump allocator that grows on first use and is
/// then reused, so that a steady-state forward allocates nothing.
///
/// `reset()` starts a new pass. A pass that needs more than the current block takes extra blocks
/// from the heap; the next `reset()` replaces everything by one block of the peak size. Buffers
/// returned by `take()` are 64-byte aligned and uninitialised; they stay valid until `reset()`.
class workspace {
 public:
  workspace() = default;
  workspace(const workspace&) = delete;
  workspace& operator=(const workspace&) = delete;
  workspace(workspace&&) noexcept = default;
  workspace& operator=(workspace&&) noexcept = default;

  /// Starts a new pass; invalidates every buffer taken since the last reset. If the last pass
  /// overflowed, the block is replaced here by one of the peak size (the only allocation).
  void reset() {
    if (!m_overflow.empty() || m_peak > m_capacity) {
      m_overflow.clear();
      m_capacity = detail::round_up(std::max(m_peak, m_capacity), 4096);
      m_block = detail::aligned_allocate(m_capacity);
    }
    m_used = 0;
    m_peak_this_pass = 0;
  }

  /// Makes room for `bytes` more in the current pass (a device's workspace query): with nothing
  /// taken yet and too small a block, the block is replaced now by one of that size; otherwise
  /// the next reset() provides it. Buffers taken later in the pass then need no extra blocks.
  void reserve(std::size_t bytes) {
    const std::size_t want = m_used + bytes;
    if (want <= m_capacity) return;
    if (m_used == 0 && m_overflow.empty()) {
      m_capacity = detail::round_up(want, 4096);
      m_block = detail::aligned_allocate(m_capacity);
    }
    m_peak = std::max(m_peak, want);
  }

  /// Returns uninitialised, aligned storage for `n` values of `T`.
  template <class T>
  [[nodiscard]] T* take(std::size_t n) {
    static_assert(std::is_trivially_copyable_v<T>, "moe::workspace::take<T>: T must be trivial");
    const std::size_t bytes = detail::round_up(std::max<std::size_t>(n * sizeof(T), 1), buffer_alignment);
    m_peak_this_pass += bytes;
    m_peak = std::max(m_peak, m_peak_this_pass);
    if (m_used + bytes <= m_capacity) {
      std::byte* p = m_block.get() + m_used;
      m_used += bytes;
      return reinterpret_cast<T*>(p);
    }
    m_overflow.push_back(detail::aligned_allocate(bytes));
    return reinterpret_cast<T*>(m_overflow.back().get());
  }

  /// Like take(), zero-filled.
  template <class T>
  [[nodiscard]] T* take_zeroed(std::size_t n) {
    T* p = take<T>(n);
    if (n) std::memset(static_cast<void*>(p), 0, n * sizeof(T));
    return p;
  }

  /// A position in the current pass, for scoped scratch (see rewind()).
  struct checkpoint {
    std::size_t used = 0;
    std::size_t peak_this_pass = 0;
  };
  /// The current position: buffers taken after it can be released together by rewind().
  [[nodiscard]] checkpoint mark() const noexcept { return {m_used, m_peak_this_pass}; }
  /// Releases every buffer taken since `c` (they must no longer be used; earlier buffers stay
  /// valid), so that scratch taken in a loop does not add up. The peak size still counts them.
  void rewind(const checkpoint& c) noexcept {
    m_used = c.used;
    m_peak_this_pass = c.peak_this_pass;
  }

  /// Bytes held by the main block.
  [[nodiscard]] std::size_t capacity() const noexcept { return m_capacity; }

 private:
  detail::aligned_ptr m_block;
  std::vector<detail::aligned_ptr> m_overflow;
  std::size_t m_capacity = 0;
  std::size_t m_used = 0;
  std::size_t m_peak = 0;
  std::size_t m_peak_this_pass = 0;
};

}  // namespace moe
