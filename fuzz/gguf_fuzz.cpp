// SPDX-License-Identifier: Apache-2.0
// libFuzzer target of include/moe/io/gguf.hpp: any input parses or throws moe::error; nothing
// else (no crash, no sanitizer report, no other exception, no hang).
#include <cstddef>
#include <cstdint>
#include <span>

#include <moe/io/gguf.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto f = moe::io::gguf_file::from_bytes(std::as_bytes(std::span(data, size)));
    for (const auto& t : f.tensors()) {
      const auto b = f.data(t);
      if (b.size() != t.bytes) __builtin_trap();
      if (!b.empty()) {
        volatile std::byte last = b.back();  // every tensor lies inside the input
        (void)last;
      }
    }
  } catch (const moe::error&) {
  }
  return 0;
}
