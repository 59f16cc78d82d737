// SPDX-License-Identifier: Apache-2.0
// libFuzzer target of include/moe/io/safetensors.hpp: any input parses or throws moe::error.
#include <cstddef>
#include <cstdint>
#include <span>

#include <moe/io/safetensors.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto f = moe::io::safetensors_file::from_bytes(std::as_bytes(std::span(data, size)));
    for (const auto& t : f.tensors()) {
      const auto b = f.data(t);
      if (b.size() != t.end - t.begin) __builtin_trap();
      if (!b.empty()) {
        volatile std::byte last = b.back();
        (void)last;
      }
    }
  } catch (const moe::error&) {
  }
  return 0;
}
