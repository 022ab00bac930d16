"""A candidate Triton linear for 2-16 rows (small-batch decode), under evaluation.

Not used by intarsia yet: `gpu_kernels.py --linear-rows` times it against cuBLAS, which
reads the decode weights at 62-92% of the copy bandwidth at any batch up to 16 (the
single-row GEMV in `intarsia/kernels/triton_linear.py` was slower than cuBLAS at 4 rows).
It computes ``out^T = W x^T`` ("swap AB"): a [BLOCK_N, BLOCK_K] tile of W is the
tensor-core operand with many rows, the rows of x (padded to 16) the narrow one, and
K may be split over programs whose float32 partials are summed afterwards.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

ROWS_PAD = 16  # the narrow side of the tensor-core product


@triton.jit
def _swap_ab_kernel(
    x_ptr, w_ptr, part_ptr, M, N, K, stride_xm, stride_wn, k_per_split,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ROWS: tl.constexpr,
):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    split = tl.program_id(1)
    m = tl.arange(0, ROWS)
    k = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_N, ROWS], tl.float32)
    k_begin = split * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)
    for k0 in range(k_begin, k_end, BLOCK_K):
        kk = k0 + k
        k_mask = kk < k_end
        w = tl.load(w_ptr + n.to(tl.int64)[:, None] * stride_wn + kk[None, :],
                    mask=(n < N)[:, None] & k_mask[None, :], other=0.0)
        x_t = tl.load(x_ptr + m[None, :] * stride_xm + kk[:, None],
                      mask=(m < M)[None, :] & k_mask[:, None], other=0.0)  # [BLOCK_K, ROWS]
        acc += tl.dot(w, x_t)
    # partials are [splits, M, N]
    ptrs = part_ptr + (split * M + m[None, :]).to(tl.int64) * N + n[:, None]
    tl.store(ptrs, acc, mask=(n < N)[:, None] & (m < M)[None, :])


def swap_ab_linear(x: torch.Tensor, weight: torch.Tensor, *, block_n: int = 64, block_k: int = 128,
                   split_k: int = 1, num_warps: int = 4, num_stages: int = 3) -> torch.Tensor:
    """``F.linear(x, weight)`` for x [rows <= 16, K] and a row-major weight [N, K]."""
    m, k = x.shape
    n = weight.shape[0]
    if m > ROWS_PAD or x.stride(-1) != 1 or weight.stride(-1) != 1:
        raise ValueError(f"swap_ab_linear takes up to {ROWS_PAD} rows with unit last strides")
    k_per_split = triton.cdiv(triton.cdiv(k, split_k), block_k) * block_k
    splits = triton.cdiv(k, k_per_split)
    partials = torch.empty(splits, m, n, dtype=torch.float32, device=x.device)
    _swap_ab_kernel[(triton.cdiv(n, block_n), splits)](
        x, weight, partials, m, n, k, x.stride(0), weight.stride(0), k_per_split,
        BLOCK_N=block_n, BLOCK_K=block_k, ROWS=ROWS_PAD, num_warps=num_warps, num_stages=num_stages,
    )
    return (partials[0] if splits == 1 else partials.sum(0)).to(x.dtype)
