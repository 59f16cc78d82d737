// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// Gating kernels used by the router policies. Each entry point computes exactly the canonical
// result defined by the scalar reference in kernels/scalar/gating.hpp.

#include "moe/kernels/scalar/gating.hpp"

namespace moe::kernels {

using scalar::argmax;
using scalar::entropy;
using scalar::has_nan;
using scalar::max;
using scalar::nan_to_neg_inf;
using scalar::sigmoid;
using scalar::softmax;
using scalar::sum;
using scalar::top_k;

}  // namespace moe::kernels
