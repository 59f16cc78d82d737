// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// Device memory of moe::device::cuda (docs/architecture.md §5.4): the memory space, an owning
// buffer (cudaMalloc / cudaFree, RAII) and non-owning views that carry the memory space, so that
// moe::accessible_from<host device, view> is false at compile time.
//
// Status: compiled by nvcc in every build that has the CUDA toolkit; NOT run in this repository's
// CI (no GPU). bench/gpu/run.sh runs it on a GPU.

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "moe/config.hpp"
#include "moe/core/error.hpp"

namespace moe {

/// Memory space of CUDA device memory (cudaMalloc). Host devices cannot read it.
struct cuda_memory {
  static constexpr const char* name() noexcept { return "cuda"; }
};

namespace detail {
/// Throws moe::error naming `what` when a CUDA runtime call failed (host API only; kernels and
/// launch paths report through their return value).
inline void cuda_check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw_error(error_id::config, concat(what, ": CUDA error ", static_cast<int>(status), " (",
                                         cudaGetErrorString(status), ")"));
  }
}
}  // namespace detail

/// A non-owning view of `size` elements of T in device memory.
template <class T>
struct cuda_span {
  using memory_space = cuda_memory;
  using value_type = T;
  T* ptr = nullptr;
  index count = 0;
  [[nodiscard]] T* data() const noexcept { return ptr; }
  [[nodiscard]] index size() const noexcept { return count; }
};

/// A non-owning row-major matrix view `[rows × cols]` (row stride ld) in device memory: what
/// moe::device::cuda takes where host devices take an Eigen map.
template <class T>
struct cuda_matrix_view {
  using memory_space = cuda_memory;
  using value_type = T;
  T* ptr = nullptr;
  index n_rows = 0;
  index n_cols = 0;
  index ld = 0;
  [[nodiscard]] T* data() const noexcept { return ptr; }
  [[nodiscard]] index rows() const noexcept { return n_rows; }
  [[nodiscard]] index cols() const noexcept { return n_cols; }
  [[nodiscard]] index outerStride() const noexcept { return ld; }
};

/// An owning buffer of `size` elements of T in device memory (cudaMalloc; uninitialised).
/// Move-only. Throws moe::error when the allocation fails.
template <class T>
class cuda_buffer {
 public:
  using memory_space = cuda_memory;
  using value_type = T;

  cuda_buffer() = default;
  explicit cuda_buffer(index n) { resize(n); }
  cuda_buffer(const cuda_buffer&) = delete;
  cuda_buffer& operator=(const cuda_buffer&) = delete;
  cuda_buffer(cuda_buffer&& o) noexcept : m_ptr(std::exchange(o.m_ptr, nullptr)), m_size(std::exchange(o.m_size, 0)) {}
  cuda_buffer& operator=(cuda_buffer&& o) noexcept {
    if (this != &o) {
      release();
      m_ptr = std::exchange(o.m_ptr, nullptr);
      m_size = std::exchange(o.m_size, 0);
    }
    return *this;
  }
  ~cuda_buffer() { release(); }

  /// Reallocates to n elements when n > size() (contents are not kept).
  void reserve(index n) {
    if (n > m_size) resize(n);
  }
  /// Reallocates to exactly n elements (contents are not kept).
  void resize(index n) {
    release();
    if (n <= 0) return;
    void* p = nullptr;
    detail::cuda_check(cudaMalloc(&p, static_cast<std::size_t>(n) * sizeof(T)), "moe::cuda_buffer: cudaMalloc");
    m_ptr = static_cast<T*>(p);
    m_size = n;
  }

  [[nodiscard]] T* data() const noexcept { return m_ptr; }
  [[nodiscard]] index size() const noexcept { return m_size; }
  [[nodiscard]] cuda_span<T> span() const noexcept { return {m_ptr, m_size}; }
  /// A `[rows × cols]` row-major view of the first rows·cols elements.
  [[nodiscard]] cuda_matrix_view<T> matrix(index rows, index cols) const noexcept { return {m_ptr, rows, cols, cols}; }

  /// Copies n elements from host memory (stream-ordered; the host data must stay alive until the
  /// stream reaches the copy).
  void upload(const T* host, index n, cudaStream_t stream = nullptr) {
    reserve(n);
    detail::cuda_check(cudaMemcpyAsync(m_ptr, host, static_cast<std::size_t>(n) * sizeof(T), cudaMemcpyHostToDevice, stream),
                       "moe::cuda_buffer::upload");
  }
  /// Copies n elements to host memory and waits for the stream.
  void download(T* host, index n, cudaStream_t stream = nullptr) const {
    detail::cuda_check(cudaMemcpyAsync(host, m_ptr, static_cast<std::size_t>(n) * sizeof(T), cudaMemcpyDeviceToHost, stream),
                       "moe::cuda_buffer::download");
    detail::cuda_check(cudaStreamSynchronize(stream), "moe::cuda_buffer::download");
  }

 private:
  void release() noexcept {
    if (m_ptr) cudaFree(m_ptr);
    m_ptr = nullptr;
    m_size = 0;
  }
  T* m_ptr = nullptr;
  index m_size = 0;
};

/// Scratch of moe::device::cuda: one device buffer that grows to the largest request (sized by
/// the device's workspace_bytes() query) and is carved in 256-byte pieces.
class cuda_workspace {
 public:
  /// Makes room for `bytes` (reallocating when larger than before) and restarts carving.
  void reserve(std::size_t bytes) {
    m_buffer.reserve(static_cast<index>((bytes + 255) / 256));
    m_used = 0;
  }
  /// Restarts carving (the pieces taken before are reused).
  void reset() noexcept { m_used = 0; }
  /// The next n elements of T; throws moe::error when the reservation is exceeded.
  template <class T>
  T* take(std::size_t n) {
    const std::size_t blocks = (n * sizeof(T) + 255) / 256;
    if (m_used + blocks > static_cast<std::size_t>(m_buffer.size())) {
      throw_error_too_small(blocks);
    }
    T* p = reinterpret_cast<T*>(m_buffer.data() + m_used);
    m_used += blocks;
    return p;
  }
  [[nodiscard]] std::size_t capacity_bytes() const noexcept { return static_cast<std::size_t>(m_buffer.size()) * 256; }

 private:
  struct alignas(256) block {
    unsigned char bytes[256];
  };
  [[noreturn]] void throw_error_too_small(std::size_t blocks) const {
    detail::throw_error(error_id::config,
                        detail::concat("moe::cuda_workspace::take: needs ", (m_used + blocks) * 256, " bytes, reserved ",
                                       capacity_bytes(), " (reserve workspace_bytes() first)"));
  }
  cuda_buffer<block> m_buffer;
  std::size_t m_used = 0;
};

}  // namespace moe
