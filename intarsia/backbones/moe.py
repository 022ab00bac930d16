"""The mixture-of-experts MLP block: a router picks each token's top-k experts, the
experts (gated MLPs with stacked weights) run through `kernels.fused_experts` (a
Triton grouped GEMM on the GPU), and optional shared experts see every token.

The families differ only in `MoEArgs`: how the router's scores become top-k
weights (softmax then renormalised top-k, DBRX's p-norm, DeepSeek's group-limited
top-k and routed scaling, PhiMoE's sparsemixer), the shared experts and their
gate, and which layers stay dense.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from intarsia import kernels
from intarsia.backbones.layers import GatedMLP, Linear, default_weight_loader


@dataclass(frozen=True)
class MoEArgs:
    num_experts: int
    top_k: int
    intermediate_size: int  # of each routed expert
    routing: str = "softmax"  # "softmax": top-k of the softmax | "sparsemixer" (PhiMoE)
    topk_norm: float | None = 1.0  # p of the norm the top-k weights are divided by; None: keep them
    routed_scale: float = 1.0  # DeepSeek's routed_scaling_factor
    num_groups: int | None = None  # DeepSeek's group-limited routing: experts split in groups,
    topk_groups: int | None = None  # only the groups with the best `topk_groups` maxima eligible
    jitter_eps: float = 0.01  # sparsemixer's relative threshold for the second choice
    shared_intermediate_size: int = 0  # the shared experts as one gated MLP; 0: none
    shared_gate: bool = False  # Qwen2-MoE: shared output times sigmoid(linear(x))
    dense_layers: frozenset[int] = frozenset()  # layers with the dense MLP instead

    def __post_init__(self) -> None:
        if not 0 < self.top_k <= self.num_experts:
            raise ValueError(f"top_k={self.top_k} must be in [1, num_experts={self.num_experts}]")
        if self.routing not in ("softmax", "sparsemixer"):
            raise ValueError(f"unknown MoE routing {self.routing!r}; use softmax or sparsemixer")
        if self.routing == "sparsemixer" and self.top_k != 2:
            raise ValueError(f"sparsemixer routing picks exactly 2 experts, not top_k={self.top_k}")
        if self.num_groups and (self.num_experts % self.num_groups or not self.topk_groups):
            raise ValueError(f"group-limited routing needs num_experts={self.num_experts} divisible "
                             f"by num_groups={self.num_groups} and topk_groups set")

    def is_sparse(self, layer_idx: int | None) -> bool:
        return layer_idx not in self.dense_layers


def route(logits: torch.Tensor, moe: MoEArgs) -> tuple[torch.Tensor, torch.Tensor]:
    """Router logits [tokens, experts] -> (float32 weights, expert ids), both [tokens, top_k]."""
    logits = logits.float()
    if moe.routing == "sparsemixer":
        return sparsemixer(logits, moe.jitter_eps)
    probs = torch.softmax(logits, dim=-1)
    if moe.num_groups:
        # Rank groups by their best expert; experts outside the top groups cannot be picked.
        grouped = probs.view(probs.shape[0], moe.num_groups, -1)
        best_groups = grouped.amax(dim=-1).topk(moe.topk_groups, dim=-1).indices
        keep = torch.zeros_like(grouped[..., 0], dtype=torch.bool).scatter_(1, best_groups, True)
        probs = grouped.masked_fill(~keep[..., None], 0.0).view_as(probs)
    weights, ids = probs.topk(moe.top_k, dim=-1)
    if moe.topk_norm == 1.0:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    elif moe.topk_norm is not None:
        weights = weights / torch.linalg.vector_norm(weights, ord=moe.topk_norm, dim=-1, keepdim=True)
    if moe.routed_scale != 1.0:
        weights = weights * moe.routed_scale
    return weights, ids


def sparsemixer(scores: torch.Tensor, jitter_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PhiMoE's inference-time routing (two experts): the best expert, weighted by its
    softmax among the experts within a relative `2 * jitter_eps` of it, then the same
    for the best remaining expert."""
    weights, ids = [], []
    masked = scores
    for _ in range(2):
        best, best_id = masked.max(dim=-1, keepdim=True)
        far = (best - scores) / scores.abs().clamp(min=best) > 2 * jitter_eps
        gates = torch.softmax(masked.masked_fill(far, float("-inf")), dim=-1)
        weights.append(gates.gather(-1, best_id))
        ids.append(best_id)
        masked = masked.scatter(-1, best_id, float("-inf"))
    return torch.cat(weights, dim=-1), torch.cat(ids, dim=-1)


class ExpertLinear(nn.Module):
    """Every expert's weight matrix stacked, [experts, out, in]. `parts` names row
    blocks (e.g. gate and up), so a checkpoint's per-expert matrices load as shards
    ``"<part>.<expert>"``; a whole stacked tensor loads as is."""

    def __init__(self, num_experts: int, in_features: int, parts: dict[str, int]) -> None:
        super().__init__()
        self.shards: dict[str, tuple[int, int, int]] = {}
        start = 0
        for part, size in parts.items():
            self.shards.update({f"{part}.{e}": (e, start, size) for e in range(num_experts)})
            start += size
        self.weight = nn.Parameter(torch.empty(num_experts, start, in_features), requires_grad=False)
        self.weight.weight_loader = self.load_shard

    def load_shard(self, param: nn.Parameter, loaded: torch.Tensor, shard: str | None = None) -> None:
        if shard is None:
            default_weight_loader(param, loaded)
            return
        expert, start, size = self.shards[shard]
        default_weight_loader(param.data[expert, start:start + size], loaded)  # type: ignore[arg-type]


class Experts(nn.Module):
    """The routed experts' gated-MLP weights, in transformers' stacked layout."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_up_proj = ExpertLinear(num_experts, hidden_size,
                                         {"gate": intermediate_size, "up": intermediate_size})
        self.down_proj = ExpertLinear(num_experts, intermediate_size, {"down": hidden_size})


# transformers' activation names -> the expert kernels' activations.
_EXPERT_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh",
                       "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh"}


class SparseMoE(nn.Module):
    def __init__(self, hidden_size: int, moe: MoEArgs, act: str) -> None:
        super().__init__()
        if act not in _EXPERT_ACTIVATIONS:
            raise ValueError(f"unsupported expert activation {act!r}; known: {sorted(_EXPERT_ACTIVATIONS)}")
        self.moe, self.activation = moe, _EXPERT_ACTIVATIONS[act]
        self.gate = Linear(hidden_size, moe.num_experts)
        self.experts = Experts(moe.num_experts, hidden_size, moe.intermediate_size)
        self.shared_expert = (GatedMLP(hidden_size, moe.shared_intermediate_size, act)
                              if moe.shared_intermediate_size else None)
        self.shared_expert_gate = Linear(hidden_size, 1) if moe.shared_gate else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Routing in float32, so near-ties pick the same experts in any model dtype.
        weights, ids = route(F.linear(x.float(), self.gate.weight.float()), self.moe)
        out = kernels.fused_experts(x, self.experts.gate_up_proj.weight, self.experts.down_proj.weight,
                                    weights, ids, self.activation)
        if self.shared_expert is not None:
            shared = self.shared_expert(x)
            if self.shared_expert_gate is not None:
                shared = torch.sigmoid(self.shared_expert_gate(x)) * shared
            out = out + shared
        return out


# `WeightMap` entries for the checkpoint layouts of expert weights.
STACKED_EXPERT_RENAMES = (  # transformers >= 5 state dicts: experts.gate_up_proj [E, 2I, H]
    (r"\.experts\.(gate_up_proj|down_proj)$", r".experts.\1.weight"),
)
PER_EXPERT_SHARDS = (  # experts.<e>.{gate,up,down}_proj (Qwen2-MoE, OLMoE, DeepSeek) or w1/w3/w2 (Mixtral)
    (r"\.experts\.(\d+)\.(gate_proj|w1)\.weight$", ".experts.gate_up_proj.weight", r"gate.\1"),
    (r"\.experts\.(\d+)\.(up_proj|w3)\.weight$", ".experts.gate_up_proj.weight", r"up.\1"),
    (r"\.experts\.(\d+)\.(down_proj|w2)\.weight$", ".experts.down_proj.weight", r"down.\1"),
)
