"""Triton grouped GEMM for mixture-of-experts layers.

Same signature as `intarsia.kernels.moe_reference.fused_experts`. Every token
picks k experts, giving ``tokens * k`` (token, slot) *pairs*. The pairs are sorted
by expert and each expert's run is padded to a multiple of BLOCK_M, so that every
BLOCK_M-row tile of the sorted list belongs to a single expert. One kernel launch
then multiplies all tiles with their expert's weight matrix (a grouped GEMM):

1. ``gate_up[pair] = x[token(pair)] @ W_gate_up[expert]^T``  (rows gathered from x)
2. ``act = act(gate) * up``                                   (triton_ops kernel)
3. ``out[pair] = weight[pair] * act[pair] @ W_down[expert]^T``
4. ``y[token] = sum over its k pairs``

The grouping runs on the device with torch ops and a grid sized from host shapes
only (tokens, k, experts), so nothing synchronises with the host and the whole
computation can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from intarsia.kernels import triton_ops
from intarsia.kernels.moe_reference import check_expert_inputs


@triton.jit
def _grouped_gemm_kernel(
    a_ptr, b_ptr, c_ptr, pair_weights_ptr,
    sorted_pairs_ptr, block_expert_ptr, num_padded_ptr,
    N, K, num_pairs, num_m_blocks,
    stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
    A_ROWS_PER_TOKEN: tl.constexpr,  # k when A holds one row per token, 1 when one per pair
    MUL_WEIGHT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """C[pair, :] = (weight[pair] *) A[row(pair), :] @ B[expert(tile)]^T for one tile."""
    pid = tl.program_id(0)
    num_n_blocks = tl.cdiv(N, BLOCK_N)
    # Tiles of GROUP_M consecutive row blocks share their B columns while in L2.
    per_group = GROUP_M * num_n_blocks
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(num_m_blocks - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows
    if pid_m * BLOCK_M >= tl.load(num_padded_ptr):
        return  # the grid covers the worst-case padding; this tile is past the end

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pairs = tl.load(sorted_pairs_ptr + offs_m)
    row_mask = pairs < num_pairs  # padding slots hold num_pairs
    a_rows = (pairs // A_ROWS_PER_TOKEN).to(tl.int64)
    expert = tl.load(block_expert_ptr + pid_m).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)

    a_ptrs = a_ptr + a_rows[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = (b_ptr + expert * stride_be + offs_n[None, :].to(tl.int64) * stride_bn
              + offs_k[:, None] * stride_bk)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_mask = offs_k < K - k0
        a = tl.load(a_ptrs, mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    if MUL_WEIGHT:
        weight = tl.load(pair_weights_ptr + pairs, mask=row_mask, other=0.0).to(tl.float32)
        acc = acc * weight[:, None]
    c_ptrs = c_ptr + pairs.to(tl.int64)[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=row_mask[:, None] & n_mask[None, :])


def align_by_expert(topk_ids: torch.Tensor, num_experts: int,
                    block_m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort the (token, slot) pairs by expert, each expert's run padded to `block_m`.

    Returns ``sorted_pairs`` (int32 pair indices ``token * k + slot``; padding slots
    hold ``tokens * k``), ``block_expert`` (int32, the expert of each `block_m` tile)
    and ``num_padded`` (a one-element int32 tensor: rows in use). Buffer sizes
    depend only on the shapes: the worst case over all routings.
    """
    pair_experts = topk_ids.flatten().long()
    num_pairs = pair_experts.numel()
    device = topk_ids.device
    # scatter_add, not bincount: bincount sizes its output from the data (a host sync).
    counts = torch.zeros(num_experts, dtype=torch.int64, device=device).scatter_add_(
        0, pair_experts, torch.ones_like(pair_experts))
    padded = (counts + block_m - 1) // block_m * block_m
    padded_end = padded.cumsum(0)
    order = torch.argsort(pair_experts, stable=True)
    sorted_experts = pair_experts[order]
    rank_in_expert = torch.arange(num_pairs, device=device) - (counts.cumsum(0) - counts)[sorted_experts]
    # Each used expert wastes less than one tile on padding.
    max_blocks = triton.cdiv(num_pairs, block_m) + min(num_experts, num_pairs)
    sorted_pairs = torch.full((max_blocks * block_m,), num_pairs, dtype=torch.int32, device=device)
    sorted_pairs[(padded_end - padded)[sorted_experts] + rank_in_expert] = order.to(torch.int32)
    block_starts = torch.arange(max_blocks, device=device) * block_m
    block_expert = torch.searchsorted(padded_end, block_starts, right=True).clamp_(max=num_experts - 1)
    return sorted_pairs, block_expert.to(torch.int32), padded_end[-1:].to(torch.int32)


def default_config(num_pairs: int, num_experts: int) -> dict[str, int]:
    """Tile sizes by the expected rows per expert: thin tiles for decode batches, big
    ones for prefill. `benchmarks/moe.py --sweep` times alternatives on a GPU."""
    rows_per_expert = num_pairs / num_experts
    if rows_per_expert <= 16:
        return {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128, "GROUP_M": 1, "num_warps": 4, "num_stages": 4}
    if rows_per_expert <= 128:
        return {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4, "num_stages": 4}
    return {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 3}


def _grouped_gemm(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, a_rows_per_token: int,
                  pair_weights: torch.Tensor | None, sorted_pairs: torch.Tensor,
                  block_expert: torch.Tensor, num_padded: torch.Tensor, config: dict[str, int]) -> None:
    _, n, k = b.shape
    num_m_blocks = block_expert.numel()
    grid = (num_m_blocks * triton.cdiv(n, config["BLOCK_N"]),)
    _grouped_gemm_kernel[grid](
        a, b, c, pair_weights if pair_weights is not None else c,
        sorted_pairs, block_expert, num_padded,
        n, k, c.shape[0], num_m_blocks,
        *a.stride(), *b.stride(), *c.stride(),
        A_ROWS_PER_TOKEN=a_rows_per_token, MUL_WEIGHT=pair_weights is not None,
        DOT_PRECISION="ieee" if a.dtype == torch.float32 else "tf32",
        **config,
    )


_ACT_AND_MUL = {
    "silu": triton_ops.silu_and_mul,
    "gelu": lambda x: triton_ops.gelu_and_mul(x, "none"),
    "gelu_tanh": lambda x: triton_ops.gelu_and_mul(x, "tanh"),
}


def fused_experts(
    x: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    activation: str = "silu",
    config: dict[str, int] | None = None,
) -> torch.Tensor:
    """See `moe_reference.fused_experts`; `config` overrides the tile sizes."""
    check_expert_inputs(x, w_gate_up, w_down, topk_weights, topk_ids, activation)
    num_tokens, top_k = topk_ids.shape
    num_experts, two_inter, hidden = w_gate_up.shape
    if num_tokens == 0:
        return torch.zeros_like(x)
    num_pairs = num_tokens * top_k
    config = config or default_config(num_pairs, num_experts)
    grouping = align_by_expert(topk_ids, num_experts, config["BLOCK_M"])
    x = x if x.stride(-1) == 1 else x.contiguous()
    gate_up = torch.empty(num_pairs, two_inter, dtype=x.dtype, device=x.device)
    _grouped_gemm(x, w_gate_up, gate_up, top_k, None, *grouping, config)
    inner = _ACT_AND_MUL[activation](gate_up)
    out = torch.empty(num_pairs, hidden, dtype=x.dtype, device=x.device)
    _grouped_gemm(inner, w_down, out, 1, topk_weights.flatten().float().contiguous(), *grouping, config)
    return out.view(num_tokens, top_k, hidden).sum(dim=1, dtype=torch.float32).to(x.dtype)
