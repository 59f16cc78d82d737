// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <algorithm>
#include <cstddef>
#include <span>
#include <cmath>
#include <concepts>
#include <utility>
#include <vector>

#include "moe/concepts.hpp"
#include "moe/config.hpp"
#include "moe/core/error.hpp"
#include "moe/core/views.hpp"
#include "moe/experts/swiglu.hpp"
#include "moe/formats/format.hpp"
#include "moe/kernels/activations.hpp"
#include "moe/kernels/quantized.hpp"

namespace moe {

/// A bank of MLP experts with quantized weights: gated (moe::gated_mlp_experts),
/// `Expert_e(x) = W_down,e · glu(W_gate,e x, W_up,e x)` (glu = Activation::glu: SwiGLU for
/// act::silu, GeGLU for act::gelu_tanh, gpt-oss's clamped SwiGLU for act::clamped_swiglu), or
/// not (moe::mlp_experts), `Expert_e(x) = W_down,e · f(W_up,e x)` (f = Activation::f: ReLU² for
/// Nemotron, GELU or ReLU for Switch-style MLPs).
///
/// @tparam Format     a block format (moe::formats::q8_0, q4_0, mxfp4, q4_k, q6_k).
/// @tparam Activation an activation policy of kernels/activations.hpp.
/// @tparam Gated      whether the experts have a gate matrix.
///
/// Weights come as a GGUF file stores them (the bytes of `ffn_{gate,up,down}_exps`: per expert
/// `f` rows of `d` values for gate and up, `d` rows of `f` values for down, rows of whole blocks)
/// or as fp32 matrices in the layout of moe::swiglu_experts, quantised here (rows zero-padded to
/// whole blocks). Either way they are repacked once into the kernels' panels (one expert at a
/// time: the load needs the packed bank plus one expert's source). Matrix products run on
/// moe::kernels::quant (activations quantised per token to int8 blocks of 32, integer dot products,
/// fp32 accumulation in a fixed order: bitwise the same for any batch, thread count or ISA).
template <block_format Format, class Activation, bool Gated>
class basic_mlp_experts {
 public:
  using format_type = Format;
  using activation_type = Activation;
  static constexpr bool gated = Gated;

  /// fp32 weights, quantised with Format's quantiser: `gate, up [E·f × d]`, `down [E·d × f]`.
  basic_mlp_experts(const_matrix_map<float> gate, const_matrix_map<float> up, const_matrix_map<float> down)
    requires Gated
  {
    init_fp32(&gate, up, down);
  }
  /// Non-gated: `up [E·f × d]`, `down [E·d × f]`.
  basic_mlp_experts(const_matrix_map<float> up, const_matrix_map<float> down)
    requires(!Gated)
  {
    init_fp32(nullptr, up, down);
  }
  template <class G, class U, class D>
    requires(Gated && (!std::is_same_v<G, const_matrix_map<float>> || !std::is_same_v<U, const_matrix_map<float>> ||
                       !std::is_same_v<D, const_matrix_map<float>>))
  basic_mlp_experts(const Eigen::DenseBase<G>& gate, const Eigen::DenseBase<U>& up, const Eigen::DenseBase<D>& down)
      : basic_mlp_experts(view(gate), view(up), view(down)) {}
  template <class U, class D>
    requires(!Gated && (!std::is_same_v<U, const_matrix_map<float>> || !std::is_same_v<D, const_matrix_map<float>>))
  basic_mlp_experts(const Eigen::DenseBase<U>& up, const Eigen::DenseBase<D>& down) : basic_mlp_experts(view(up), view(down)) {}

  /// The bytes of GGUF tensors of type Format: gate and up hold E·f rows of d values, down
  /// E·d rows of f values (d and f multiples of the block). Throws moe::error when a size, a
  /// shape or a scale is wrong.
  basic_mlp_experts(std::span<const std::byte> gate, std::span<const std::byte> up, std::span<const std::byte> down,
                    swiglu_shape shape)
    requires Gated
  {
    init_bytes(&gate, up, down, shape);
  }
  /// Non-gated: up and down.
  basic_mlp_experts(std::span<const std::byte> up, std::span<const std::byte> down, swiglu_shape shape)
    requires(!Gated)
  {
    init_bytes(nullptr, up, down, shape);
  }

  /// Built one expert at a time from bytes that the caller writes in Format's layout (a
  /// checkpoint whose blocks are laid out otherwise: gpt-oss's Hugging Face MXFP4 tensors).
  /// `fill(e, m, out)` writes expert e's matrix m into `out`, exactly its bytes: m = 0 the gate
  /// (gated banks only) and m = 1 up, each f rows of d values, m = 2 down, d rows of f values
  /// (rows of whole blocks, d and f multiples of the block). Each matrix is checked as the GGUF
  /// constructor checks a tensor, then packed; only one matrix's bytes are held at a time.
  template <class Fill>
    requires std::invocable<Fill&, index, int, std::span<std::byte>>
  static basic_mlp_experts from_expert_bytes(swiglu_shape shape, Fill&& fill) {
    constexpr const char* where = "moe::gated_mlp_experts::from_expert_bytes";
    basic_mlp_experts b;
    check_byte_shape(where, shape);
    const index E = shape.experts, d = shape.hidden, f = shape.intermediate;
    for (const auto& [name, k] : {std::pair{"shape.hidden", d}, std::pair{"shape.intermediate", f}}) {
      if (k % Format::block_values != 0) {
        detail::fail_parameter(error_id::shape, where, name,
                               detail::concat("a multiple of ", Format::block_values, " (the ", Format::name, " block)"), k);
      }
    }
    b.m_shape = shape;
    std::vector<std::byte> tmp;
    const auto one = [&](index e, int m, index rows, index cols) {
      tmp.assign(static_cast<std::size_t>(rows) * formats::row_bytes<Format>(cols), std::byte{0});
      fill(e, m, std::span<std::byte>(tmp));
      static constexpr const char* names[3] = {"gate", "up", "down"};
      formats::check_tensor<Format>(where, detail::concat("expert ", e, " ", names[m]), rows, cols, tmp);
      return kernels::quant::pack<Format>(tmp.data(), rows, cols);
    };
    for (index e = 0; e < E; ++e) {
      if constexpr (Gated) b.m_gate.push_back(one(e, 0, f, d));
      b.m_up.push_back(one(e, 1, f, d));
      b.m_down.push_back(one(e, 2, d, f));
    }
    return b;
  }

 private:
  void init_fp32(const const_matrix_map<float>* gate, const_matrix_map<float> up, const_matrix_map<float> down) {
    constexpr const char* where = "moe::gated_mlp_experts";
    m_shape = gate ? detail::ffn_shape(where, *gate, "gate", &up, "up", down) : detail::ffn_shape(where, up, "up", nullptr, "", down);
    const index E = m_shape.experts, d = m_shape.hidden, f = m_shape.intermediate;
    std::vector<std::byte> tmp;
    const auto quantise = [&](const_matrix_map<float> m, index e, index rows, index cols, const char* name) {
      const index kp = formats::blocks_per_row<Format>(cols) * Format::block_values;
      tmp.resize(static_cast<std::size_t>(rows) * formats::row_bytes<Format>(cols));
      formats::quantize_rows<Format>(where, name, m.data() + e * rows * m.outerStride(), rows, cols, m.outerStride(), tmp.data());
      return kernels::quant::pack<Format>(tmp.data(), rows, kp);
    };
    for (index e = 0; e < E; ++e) {
      if (gate) m_gate.push_back(quantise(*gate, e, f, d, "gate"));
      m_up.push_back(quantise(up, e, f, d, "up"));
      m_down.push_back(quantise(down, e, d, f, "down"));
    }
  }

  basic_mlp_experts() = default;  // from_expert_bytes() fills it

  static void check_byte_shape(const char* where, const swiglu_shape& shape) {
    if (shape.experts < 0) detail::fail_parameter(error_id::shape, where, "shape.experts", ">= 0", shape.experts);
    if (shape.hidden < 1) detail::fail_parameter(error_id::shape, where, "shape.hidden", ">= 1", shape.hidden);
    if (shape.intermediate < 1) detail::fail_parameter(error_id::shape, where, "shape.intermediate", ">= 1", shape.intermediate);
    const index E = shape.experts, d = shape.hidden, f = shape.intermediate;
    constexpr index limit = index{1} << 40;  // rows of one tensor: E·f and E·d stay far from overflow
    if (E > limit / f || E > limit / d) {
      detail::fail_parameter(error_id::shape, where, "shape", "E·f and E·d at most 2^40 rows",
                             detail::concat(E, " experts of ", d, " x ", f));
    }
  }

  void init_bytes(const std::span<const std::byte>* gate, std::span<const std::byte> up, std::span<const std::byte> down,
                  swiglu_shape shape) {
    constexpr const char* where = "moe::gated_mlp_experts";
    check_byte_shape(where, shape);
    const index E = shape.experts, d = shape.hidden, f = shape.intermediate;
    if (gate) formats::check_tensor<Format>(where, "gate", E * f, d, *gate);
    formats::check_tensor<Format>(where, "up", E * f, d, up);
    formats::check_tensor<Format>(where, "down", E * d, f, down);
    m_shape = shape;
    const std::size_t gu = static_cast<std::size_t>(f) * formats::row_bytes<Format>(d);
    const std::size_t dn = static_cast<std::size_t>(d) * formats::row_bytes<Format>(f);
    for (index e = 0; e < E; ++e) {
      if (gate) m_gate.push_back(kernels::quant::pack<Format>(gate->data() + e * gu, f, d));
      m_up.push_back(kernels::quant::pack<Format>(up.data() + e * gu, f, d));
      m_down.push_back(kernels::quant::pack<Format>(down.data() + e * dn, d, f));
    }
  }

 public:

  [[nodiscard]] index num_experts() const noexcept { return m_shape.experts; }
  [[nodiscard]] index hidden() const noexcept { return m_shape.hidden; }
  [[nodiscard]] index intermediate() const noexcept { return m_shape.intermediate; }
  [[nodiscard]] const swiglu_shape& shape() const noexcept { return m_shape; }
  /// Panels of 16 intermediate columns (gate and up together).
  [[nodiscard]] index up_panels() const noexcept { return (m_shape.intermediate + 15) / 16; }
  /// Panels of 16 output columns.
  [[nodiscard]] index down_panels() const noexcept { return (m_shape.hidden + 15) / 16; }
  /// FLOPs of one token through one expert (three matrices, two when not gated).
  [[nodiscard]] double flops_per_row() const noexcept {
    return (Gated ? 6.0 : 4.0) * static_cast<double>(m_shape.hidden) * static_cast<double>(m_shape.intermediate);
  }
  /// Bytes of packed weights of one expert (what a token's pass through it reads).
  [[nodiscard]] double bytes_per_expert() const noexcept {
    if (m_up.empty()) return 0.0;
    return static_cast<double>((Gated ? m_gate[0].bytes() : 0) + m_up[0].bytes() + m_down[0].bytes());
  }
  /// Per-expert biases added to the matrix products, as gpt-oss's experts have them:
  /// `gate_bias, up_bias [E·f]` (gate_bias empty for a non-gated bank) before the activation,
  /// `down_bias [E·d]` to each expert's output before its combine weight, so that
  /// `Expert_e(x) = W_down,e act(W_gate,e x + b_gate,e, W_up,e x + b_up,e) + b_down,e`.
  /// Empty vectors (the default): no bias. Throws moe::error for another size or a non-finite bias.
  void set_biases(std::vector<float> gate_bias, std::vector<float> up_bias, std::vector<float> down_bias) {
    constexpr const char* where = "moe::gated_mlp_experts::set_biases";
    const index E = m_shape.experts, d = m_shape.hidden, f = m_shape.intermediate;
    const auto check = [&](const std::vector<float>& b, index n, const char* name) {
      if (b.empty()) return;
      detail::check_extent(where, detail::concat(name, ".size()"), static_cast<index>(b.size()), n);
      for (float v : b) {
        if (!std::isfinite(v)) detail::fail_parameter(error_id::config, where, detail::concat(name, "[i]"), "finite", v);
      }
    };
    if (!Gated && !gate_bias.empty()) detail::fail_parameter(error_id::config, where, "gate_bias.size()", "0 (a non-gated bank)", gate_bias.size());
    check(gate_bias, E * f, "gate_bias");
    check(up_bias, E * f, "up_bias");
    check(down_bias, E * d, "down_bias");
    m_gate_bias = std::move(gate_bias);
    m_up_bias = std::move(up_bias);
    m_down_bias = std::move(down_bias);
  }
  [[nodiscard]] bool has_biases() const noexcept { return !m_gate_bias.empty() || !m_up_bias.empty() || !m_down_bias.empty(); }

  /// Forces the scalar kernel (tests: the ISAs agree bit for bit).
  void set_force_scalar(bool on) noexcept { m_scalar = on; }

  /// Bytes of scratch that up() or down() needs for `rows` rows.
  [[nodiscard]] std::size_t scratch_bytes(index rows) const noexcept {
    return kernels::quant::activation_bytes(rows, std::max(padded(m_shape.hidden), padded(m_shape.intermediate))) +
           static_cast<std::size_t>(rows) * 2 * 16 * sizeof(float) + 64;
  }

  /// Stage 1 for expert e: `act[i][c] = glu(gate_c · x_i, up_c · x_i)` for the columns of
  /// panels [p0, p1).
  void up(index e, const float* const* x, index rows, index p0, index p1, float* act, index ld_act,
          void* scratch) const noexcept {
    const index f = m_shape.intermediate;
    const auto xq = kernels::quant::quantize_activation(x, rows, m_shape.hidden, padded(m_shape.hidden), scratch);
    float* tg = tail(scratch, rows, padded(m_shape.hidden));
    float* tu = tg + rows * 16;
    for (index p = p0; p < p1; ++p) {
      if constexpr (Gated) kernels::quant::panel(m_gate[e], p, xq, rows, tg, 16, m_scalar);
      kernels::quant::panel(m_up[e], p, xq, rows, tu, 16, m_scalar);
      const index c0 = p * 16, n = std::min<index>(16, f - c0);
      add_bias(m_gate_bias, e * f + c0, n, tg, rows);
      add_bias(m_up_bias, e * f + c0, n, tu, rows);
      using batch = xsimd::batch<float>;
      constexpr index L = static_cast<index>(batch::size);
      for (index i = 0; i < rows; ++i) {
        index j = 0;
        if constexpr (16 % L == 0) {  // the canonical activation, L lanes at a time (same bits)
          for (; j + L <= n; j += L) {
            const batch u = batch::load_unaligned(tu + i * 16 + j);
            if constexpr (Gated) {
              Activation::glu(batch::load_unaligned(tg + i * 16 + j), u).store_unaligned(act + i * ld_act + c0 + j);
            } else {
              Activation::f(u).store_unaligned(act + i * ld_act + c0 + j);
            }
          }
        }
        for (; j < n; ++j) {
          if constexpr (Gated) {
            act[i * ld_act + c0 + j] = Activation::glu(tg[i * 16 + j], tu[i * 16 + j]);
          } else {
            act[i * ld_act + c0 + j] = Activation::f(tu[i * 16 + j]);
          }
        }
      }
    }
  }

  /// Stage 2 for expert e: `y[i][c] = fma(w[i], down_c · act_i, y[i][c])` for the output columns of
  /// panels [p0, p1).
  void down(index e, const float* const* act, index rows, index p0, index p1, const float* w, float* const* y,
            void* scratch) const noexcept {
    const index d = m_shape.hidden;
    const auto xq = kernels::quant::quantize_activation(act, rows, m_shape.intermediate, padded(m_shape.intermediate), scratch);
    float* to = tail(scratch, rows, padded(m_shape.intermediate));
    for (index p = p0; p < p1; ++p) {
      kernels::quant::panel(m_down[e], p, xq, rows, to, 16, m_scalar);
      const index c0 = p * 16, n = std::min<index>(16, d - c0);
      add_bias(m_down_bias, e * d + c0, n, to, rows);
      for (index i = 0; i < rows; ++i) {
        float* dst = y[i] + c0;
        for (index j = 0; j < n; ++j) dst[j] = std::fma(w[i], to[i * 16 + j], dst[j]);
      }
    }
  }

 private:
  // A row of k values as the panels store it: whole blocks of the format.
  static index padded(index k) noexcept { return formats::blocks_per_row<Format>(k) * Format::block_values; }

  // `out[i*16 + j] += b[at + j]` for the rows of a panel's outputs (a bias, when there is one).
  static void add_bias(const std::vector<float>& b, index at, index n, float* out, index rows) noexcept {
    if (b.empty()) return;
    for (index i = 0; i < rows; ++i) {
      for (index j = 0; j < n; ++j) out[i * 16 + j] += b[static_cast<std::size_t>(at + j)];
    }
  }

  // The panel outputs' scratch, after the quantised activations of `rows` rows of k values.
  static float* tail(void* scratch, index rows, index k) noexcept {
    auto* p = static_cast<std::byte*>(scratch) + kernels::quant::activation_bytes(rows, k);
    return reinterpret_cast<float*>((reinterpret_cast<std::uintptr_t>(p) + 63) / 64 * 64);
  }

  swiglu_shape m_shape;
  std::vector<kernels::quant::quant_panels<Format>> m_gate, m_up, m_down;
  std::vector<float> m_gate_bias, m_up_bias, m_down_bias;  // [E·f], [E·f], [E·d] or empty
  bool m_scalar = false;
};

/// Gated MLP experts (SwiGLU with act::silu) of a block format.
template <block_format Format, class Activation = act::silu>
using gated_mlp_experts = basic_mlp_experts<Format, Activation, true>;
/// Non-gated MLP experts of a block format (`W_down f(W_up x)`).
template <block_format Format, class Activation = act::relu2>
using mlp_experts = basic_mlp_experts<Format, Activation, false>;

static_assert(expert_bank<gated_mlp_experts<formats::q8_0>>);
static_assert(expert_bank<mlp_experts<formats::q8_0>>);

}  // namespace moe
