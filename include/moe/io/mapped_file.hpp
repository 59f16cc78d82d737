// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// A read-only memory map of a whole file (POSIX mmap): the checkpoint readers parse and view
// tensors in place, so a load copies nothing until a bank packs its weights.

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <span>
#include <string>
#include <utility>

#include "moe/core/error.hpp"

namespace moe::io {

class mapped_file {
 public:
  mapped_file() = default;
  /// Maps `path` read-only. Throws moe::error naming the path and the system's reason.
  explicit mapped_file(const std::string& path) : m_path(path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail("cannot open");
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      ::close(fd);
      fail("cannot stat");
    }
    m_size = static_cast<std::size_t>(st.st_size);
    if (m_size > 0) {
      void* p = ::mmap(nullptr, m_size, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        ::close(fd);
        fail("cannot map");
      }
      m_data = static_cast<const std::byte*>(p);
    }
    ::close(fd);
  }
  mapped_file(const mapped_file&) = delete;
  mapped_file& operator=(const mapped_file&) = delete;
  mapped_file(mapped_file&& o) noexcept
      : m_path(std::move(o.m_path)), m_data(std::exchange(o.m_data, nullptr)), m_size(std::exchange(o.m_size, 0)) {}
  mapped_file& operator=(mapped_file&& o) noexcept {
    if (this != &o) {
      release();
      m_path = std::move(o.m_path);
      m_data = std::exchange(o.m_data, nullptr);
      m_size = std::exchange(o.m_size, 0);
    }
    return *this;
  }
  ~mapped_file() { release(); }

  [[nodiscard]] std::span<const std::byte> bytes() const noexcept { return {m_data, m_size}; }
  [[nodiscard]] const std::string& path() const noexcept { return m_path; }

 private:
  [[noreturn]] void fail(const char* what) const {
    detail::throw_error(error_id::input, detail::concat("moe::io: ", what, " '", m_path, "': ", std::strerror(errno)));
  }
  void release() noexcept {
    if (m_data) ::munmap(const_cast<std::byte*>(m_data), m_size);
    m_data = nullptr;
  }
  std::string m_path;
  const std::byte* m_data = nullptr;
  std::size_t m_size = 0;
};

}  // namespace moe::io
