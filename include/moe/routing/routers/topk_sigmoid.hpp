// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include "moe/routing/routers/gates.hpp"
#include "moe/routing/routers/token_choice.hpp"
#include "moe/routing/routers/top_k.hpp"

namespace moe {

/// Top-k of the logits weighed by the sigmoid of each selected logit (docs/routing-spec.md §17.4):
/// moe::top_k with moe::sigmoid_gate. The sigmoid is elementwise and monotone, so the top k of
/// the logits are the top k of the sigmoid scores, and `sigmoid(z_sel)` is `top_k<sigmoid_gate>`'s
/// weight; with `renormalize = false` nothing else is applied. Ties go to the lower expert, a -inf
/// logit is never selected, a selected logit whose sigmoid underflows to 0 gets weight 0, NaN
/// logits follow `top_k_options::nan`, and `softcap` may cap the logits first (§17.3).
using topk_sigmoid = top_k<sigmoid_gate>;

/// The options of Llama 4's router (Llama4Router in Hugging Face transformers'
/// `modeling_llama4.py`, used by Llama4TextMoe): the k largest logits (`num_experts_per_tok`, 1
/// in Llama 4 Scout and Maverick), each weighed by its sigmoid, not renormalised, no scale.
///
/// Llama 4 applies this weight to the expert's *input* (Llama4TextMoe multiplies the routed
/// token state by it before the expert), not to the expert's output as moe::layer combines by
/// default; the two differ because the experts are not linear. Which of the two a layer does is
/// the layer's concern, not the router's: the router only produces the weights.
[[nodiscard]] inline top_k_options llama4_router_options(int k = 1) {
  return {.k = k, .renormalize = false, .route_scale = 1.0f};
}

static_assert(router<topk_sigmoid>);
static_assert(token_choice_policy<topk_sigmoid>);

}  // namespace moe
