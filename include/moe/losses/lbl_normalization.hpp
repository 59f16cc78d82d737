// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

namespace moe {

/// How a load-balancing loss normalises the expert counts `c_j` (routing-spec §1.3).
enum class lbl_normalization {
  per_assignment,  ///< `f_j = c_j / Σ_i c_i` (= c_j / (T·k)): the fractions sum to 1 (default)
  hf_mixtral       ///< `f_j = c_j / T`, as HF Mixtral's function: k times per_assignment
};

}  // namespace moe
