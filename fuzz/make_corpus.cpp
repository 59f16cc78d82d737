// SPDX-License-Identifier: Apache-2.0
// Writes the seed corpus of the fuzz targets (fuzz/corpus/{gguf,safetensors}/): small valid
// files of each kind that the fuzzers mutate. Run by scripts/fuzz.sh before fuzzing.
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <moe/io/gguf.hpp>
#include <moe/io/safetensors.hpp>

int main(int argc, char** argv) {
  const std::filesystem::path dir = argc > 1 ? argv[1] : "fuzz/corpus";
  std::filesystem::create_directories(dir / "gguf");
  std::filesystem::create_directories(dir / "safetensors");
  {
    moe::io::gguf_writer w;
    w.add_string("general.architecture", "olmoe");
    w.add_uint("olmoe.expert_count", 4);
    w.add_float("olmoe.expert_weights_scale", 1.0f);
    w.add_bool("olmoe.expert_weights_norm", true);
    std::vector<std::byte> a(64 * 4), q(2 * 34), k(144);
    w.add_tensor("blk.0.ffn_gate_inp.weight", 0, {16, 4}, a);
    w.add_tensor("blk.0.ffn_up_exps.weight", 8, {32, 2}, q);
    w.add_tensor("blk.0.ffn_down_exps.weight", 12, {256}, k);
    w.write((dir / "gguf" / "small.gguf").string());
    moe::io::gguf_writer e;
    e.write((dir / "gguf" / "empty.gguf").string());
  }
  {
    moe::io::safetensors_writer w;
    w.metadata("format", "pt");
    std::vector<std::byte> a(24), b(8);
    w.add("a", "F32", {2, 3}, a);
    w.add("b", "BF16", {4}, b);
    w.write((dir / "safetensors" / "small.safetensors").string());
    moe::io::safetensors_writer e;
    e.write((dir / "safetensors" / "empty.safetensors").string());
  }
  return 0;
}
