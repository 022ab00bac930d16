"""Kernels: Triton on CUDA devices, the torch reference everywhere else.

Every public function takes the same arguments on both paths; `INTARSIA_KERNELS=torch`
forces the reference (useful to bisect a numerical difference on the GPU). Triton
is imported on the first CUDA call only, so `import intarsia` works without it.
"""

from __future__ import annotations

import functools
import os
from types import ModuleType

import torch

from intarsia.kernels import moe_reference, reference
from intarsia.kernels.metadata import AttentionMetadata


@functools.cache
def _triton_modules() -> tuple[ModuleType, ModuleType, ModuleType] | None:
    try:
        from intarsia.kernels import triton_attention, triton_linear, triton_ops
    except ImportError:
        return None
    return triton_attention, triton_ops, triton_linear


@functools.cache
def _triton_moe() -> ModuleType | None:
    try:
        from intarsia.kernels import triton_moe
    except ImportError:
        return None
    return triton_moe


def _triton_for(x: torch.Tensor) -> tuple[ModuleType, ModuleType, ModuleType] | None:
    """The Triton modules if `x` should take the Triton path, else None."""
    if not x.is_cuda or os.environ.get("INTARSIA_KERNELS") == "torch":
        return None
    return _triton_modules()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    mods = _triton_for(x)
    if mods and x.numel() == x.shape[-1] and weight.stride(-1) == 1 and x.dtype == weight.dtype:
        # One row (batch-1 decode): the Triton GEMV. Mixed dtypes stay with F.linear, which rejects them.
        return mods[2].gemv(x, weight, bias)
    return reference.linear(x, weight, bias)


def write_kv_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    mods = _triton_for(key)
    impl = mods[0] if mods else reference
    impl.write_kv_cache(key, value, k_cache, v_cache, slot_mapping)


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    sliding_window: int | None = None,
    softcap: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
) -> torch.Tensor:
    mods = _triton_for(q)
    impl = mods[0] if mods else reference
    return impl.paged_attention(q, k_cache, v_cache, meta, scale, sliding_window, softcap,
                                alibi_slopes)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, offset: float = 0.0
) -> torch.Tensor:
    mods = _triton_for(x)
    return (mods[1] if mods else reference).rms_norm(x, weight, eps, offset)


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, offset: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    mods = _triton_for(x)
    return (mods[1] if mods else reference).fused_add_rms_norm(x, residual, weight, eps, offset)


def rotary_embedding(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    mods = _triton_for(q)
    return (mods[1] if mods else reference).rotary_embedding(positions, q, k, cos_sin_cache,
                                                             is_neox)


def rotary_and_write_kv(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> torch.Tensor:
    mods = _triton_for(q)
    return (mods[1] if mods else reference).rotary_and_write_kv(
        positions, q, k, v, cos_sin_cache, is_neox, k_cache, v_cache, slot_mapping)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    mods = _triton_for(x)
    return (mods[1] if mods else reference).silu_and_mul(x)


def gelu_and_mul(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    mods = _triton_for(x)
    return (mods[1] if mods else reference).gelu_and_mul(x, approximate)


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    mods = _triton_for(x)
    return (mods[1] if mods else reference).quick_gelu(x)


def fused_experts(
    x: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    activation: str = "silu",
) -> torch.Tensor:
    impl = (_triton_moe() if _triton_for(x) else None) or moe_reference
    return impl.fused_experts(x, w_gate_up, w_down, topk_weights, topk_ids, activation)


fused_experts.__doc__ = moe_reference.fused_experts.__doc__


# The dispatchers document themselves through the implementation they stand for.
for _fn in (linear, write_kv_cache, paged_attention, rms_norm, fused_add_rms_norm, rotary_embedding,
            rotary_and_write_kv, silu_and_mul, gelu_and_mul, quick_gelu):
    _fn.__doc__ = getattr(reference, _fn.__name__).__doc__
del _fn

__all__ = [
    "AttentionMetadata",
    "fused_add_rms_norm",
    "fused_experts",
    "gelu_and_mul",
    "linear",
    "paged_attention",
    "quick_gelu",
    "rms_norm",
    "rotary_and_write_kv",
    "rotary_embedding",
    "silu_and_mul",
    "write_kv_cache",
]
