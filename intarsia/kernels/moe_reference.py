"""Torch reference of the mixture-of-experts expert computation: the CPU path and
the oracle of the Triton grouped GEMM in `intarsia.kernels.triton_moe` (same signature).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

EXPERT_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


def check_expert_inputs(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor,
                        topk_weights: torch.Tensor, topk_ids: torch.Tensor, activation: str) -> None:
    """Shape checks shared by both implementations (a mismatch is a model bug, not bad input)."""
    num_experts, two_inter, hidden = w_gate_up.shape
    if activation not in EXPERT_ACTIVATIONS:
        raise ValueError(f"unsupported expert activation {activation!r}; known: {sorted(EXPERT_ACTIVATIONS)}")
    if x.shape[-1] != hidden or w_down.shape != (num_experts, hidden, two_inter // 2):
        raise ValueError(f"expert weights {tuple(w_gate_up.shape)} / {tuple(w_down.shape)} do not fit "
                         f"hidden states {tuple(x.shape)}")
    if topk_ids.shape != topk_weights.shape or topk_ids.shape[0] != x.shape[0]:
        raise ValueError(f"routing {tuple(topk_ids.shape)} / {tuple(topk_weights.shape)} does not fit "
                         f"{x.shape[0]} tokens")


def fused_experts(
    x: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    activation: str = "silu",
) -> torch.Tensor:
    """Gated-MLP experts applied to each token's routed experts, weighted and summed.

    x: [tokens, hidden]; w_gate_up: [experts, 2 * inter, hidden] (the gate rows, then
    the up rows); w_down: [experts, hidden, inter]; topk_weights: [tokens, k] (any
    float dtype); topk_ids: [tokens, k] expert indices. Returns [tokens, hidden] in
    x's dtype: ``sum_j w[t, j] * down_e(act(gate_e(x_t)) * up_e(x_t))``, e = ids[t, j],
    with the weighted sum accumulated in float32.
    """
    check_expert_inputs(x, w_gate_up, w_down, topk_weights, topk_ids, activation)
    act = EXPERT_ACTIVATIONS[activation]
    top_k = topk_ids.shape[1]
    out = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float32, device=x.device)
    pair_experts = topk_ids.flatten()
    pair_weights = topk_weights.flatten().float()
    # (token, slot) pairs sorted by expert, so each expert runs one matmul over its tokens.
    order = torch.argsort(pair_experts, stable=True)
    counts = torch.bincount(pair_experts, minlength=w_gate_up.shape[0]).tolist()
    start = 0
    for expert, count in enumerate(counts):
        if count == 0:
            continue
        pairs = order[start:start + count]
        start += count
        tokens = pairs // top_k
        gate, up = F.linear(x[tokens], w_gate_up[expert]).chunk(2, dim=-1)
        hidden = F.linear(act(gate) * up, w_down[expert])
        out.index_add_(0, tokens, hidden.float() * pair_weights[pairs, None])
    return out.to(x.dtype)
