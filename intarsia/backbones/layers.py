"""Building blocks shared by every decoder family: linears, norms, MLPs, attention."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from intarsia import kernels
from intarsia.backbones.context import ForwardContext
from intarsia.backbones.rotary import RotaryEmbedding


def default_weight_loader(param: nn.Parameter, loaded: torch.Tensor) -> None:
    if param.shape != loaded.shape:
        raise ValueError(f"shape mismatch: checkpoint {tuple(loaded.shape)}, model {tuple(param.shape)}")
    param.data.copy_(loaded)


class Linear(nn.Module):
    """`y = x W^T + b`; `shards` names the row blocks of a fused projection so that a
    checkpoint's separate q/k/v (or gate/up) matrices load into one matmul."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 shards: dict[str, tuple[int, int]] | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None
        self.shards = shards or {}
        for param in (self.weight, self.bias):
            if param is not None:
                param.weight_loader = self.load_shard

    def load_shard(self, param: nn.Parameter, loaded: torch.Tensor, shard: str | None = None) -> None:
        if shard is None:
            default_weight_loader(param, loaded)
            return
        start, size = self.shards[shard]
        default_weight_loader(param.data.narrow(0, start, size), loaded)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.linear(x, self.weight, self.bias)


def fused_linear(in_features: int, parts: dict[str, int], bias: bool = False) -> Linear:
    """One Linear whose output rows are the named `parts` stacked in order."""
    shards, start = {}, 0
    for name, size in parts.items():
        shards[name] = (start, size)
        start += size
    return Linear(in_features, start, bias, shards)


class RMSNorm(nn.Module):
    """RMSNorm; `offset=1` for Gemma-style ``(1 + w)`` weights. With a residual it
    adds first and returns the new residual too (one fused kernel on the GPU)."""

    def __init__(self, dim: int, eps: float, offset: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim), requires_grad=False)
        self.eps, self.offset = eps, offset

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if residual is None:
            return kernels.rms_norm(x, self.weight, self.eps, self.offset)
        return kernels.fused_add_rms_norm(x, residual, self.weight, self.eps, self.offset)


class LayerNorm(nn.Module):
    """LayerNorm with optional bias, with the same residual convention as RMSNorm.

    `offset=1` scales by ``(1 + w)`` (Nemotron's layernorm1p); `affine=False` has no
    weight and no bias at all (OLMo's non-parametric norm).
    """

    def __init__(self, dim: int, eps: float, bias: bool = True, offset: float = 0.0,
                 affine: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim), requires_grad=False) if affine else None
        self.bias = nn.Parameter(torch.zeros(dim), requires_grad=False) if bias and affine else None
        self.eps, self.offset = eps, offset

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if residual is not None:
            x = residual = x + residual
        if self.offset:  # (1 + w) is formed in float32, before any rounding
            out = F.layer_norm(x.float(), x.shape[-1:], self.weight.float() + self.offset,
                               None if self.bias is None else self.bias.float(), self.eps).to(x.dtype)
        else:  # torch's kernel accumulates in float32 for half inputs (as nn.LayerNorm)
            out = F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        return out if residual is None else (out, residual)


class HeadNorm(nn.Module):
    """Normalises each head of q or k (``[tokens, heads * head_dim]``) over its own
    `head_dim` features, LayerNorm- or RMS-style; the weight is shared by all heads or,
    with `per_head`, one per head (StableLM, Cohere)."""

    def __init__(self, num_heads: int, head_dim: int, eps: float, norm: str = "layer",
                 per_head: bool = False, bias: bool = False) -> None:
        super().__init__()
        shape = (num_heads, head_dim) if per_head else (head_dim,)
        self.weight = nn.Parameter(torch.ones(shape), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(shape), requires_grad=False) if bias else None
        self.num_heads, self.head_dim, self.eps, self.norm = num_heads, head_dim, eps, norm
        if per_head:  # checkpoints store [heads, head_dim] or one norm per head (StableLM)
            self.shards = {str(i): i for i in range(num_heads)}
            for param in (self.weight, self.bias):
                if param is not None:
                    param.weight_loader = self.load_head

    def load_head(self, param: nn.Parameter, loaded: torch.Tensor, head: str | None = None) -> None:
        default_weight_loader(param if head is None else param.data[int(head)], loaded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heads = x.float().reshape(-1, self.num_heads, self.head_dim)
        if self.norm == "rms":
            heads = heads * torch.rsqrt(heads.pow(2).mean(-1, keepdim=True) + self.eps)
        else:
            heads = F.layer_norm(heads, (self.head_dim,), eps=self.eps)
        heads = heads * self.weight.float()
        if self.bias is not None:
            heads = heads + self.bias.float()
        return heads.reshape(x.shape).to(x.dtype)


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "relu2": lambda x: F.relu(x).square(),
    "quick_gelu": kernels.quick_gelu,  # CLIP, Qwen2-VL vision
}

# Gated activations with a fused "act(gate) * up" kernel.
GATED_KERNELS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": kernels.silu_and_mul,
    "swish": kernels.silu_and_mul,
    "gelu": kernels.gelu_and_mul,
    "gelu_pytorch_tanh": lambda x: kernels.gelu_and_mul(x, "tanh"),
    "gelu_new": lambda x: kernels.gelu_and_mul(x, "tanh"),
    "gelu_fast": lambda x: kernels.gelu_and_mul(x, "tanh"),
}


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class GatedMLP(nn.Module):
    """``down(act(gate(x)) * up(x))`` with gate and up fused into one matmul."""

    def __init__(self, hidden: int, intermediate: int, act: str, bias: bool = False) -> None:
        super().__init__()
        self.gate_up_proj = fused_linear(hidden, {"gate": intermediate, "up": intermediate}, bias)
        self.down_proj = Linear(intermediate, hidden, bias)
        if act in GATED_KERNELS:
            self.act_and_mul = GATED_KERNELS[act]
        else:
            fn = activation(act)
            self.act_and_mul = lambda x: fn(x.chunk(2, -1)[0]) * x.chunk(2, -1)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_and_mul(self.gate_up_proj(x)))


class PlainMLP(nn.Module):
    """``down(act(up(x)))``, as in GPT-2, OPT, Falcon and friends."""

    def __init__(self, hidden: int, intermediate: int, act: str, bias: bool = True) -> None:
        super().__init__()
        self.up_proj = Linear(hidden, intermediate, bias)
        self.down_proj = Linear(intermediate, hidden, bias)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.up_proj(x)))


class PagedAttention(nn.Module):
    """Stores this layer's new K/V in the paged cache and attends over it."""

    def __init__(self, layer_idx: int, num_heads: int, num_kv_heads: int, head_dim: int,
                 scale: float, sliding_window: int | None = None, softcap: float | None = None,
                 alibi_slopes: torch.Tensor | None = None) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale, self.sliding_window, self.softcap = scale, sliding_window, softcap
        self.register_buffer("alibi_slopes", alibi_slopes, persistent=False)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: ForwardContext,
                rope: RotaryEmbedding | None = None, positions: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Attention of q over the cache with k, v added; `rope` (at `positions`) rotates
        q and k first, fused with the cache write."""
        q = q.reshape(-1, self.num_heads, self.head_dim)
        k = k.reshape(-1, self.num_kv_heads, self.head_dim)
        v = v.reshape(-1, self.num_kv_heads, self.head_dim)
        k_cache, v_cache = ctx.kv_caches[self.layer_idx]
        if rope is not None:
            q = rope.rotate_and_cache(positions, q, k, v, k_cache, v_cache, ctx.attn.slot_mapping)
        else:
            kernels.write_kv_cache(k, v, k_cache, v_cache, ctx.attn.slot_mapping)
        out = kernels.paged_attention(q, k_cache, v_cache, ctx.attn, self.scale,
                                      self.sliding_window, self.softcap, self.alibi_slopes)
        return out.reshape(-1, self.num_heads * self.head_dim)
