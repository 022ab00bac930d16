"""Triton GEMV: ``x W^T (+ b)`` for a single row x (batch-1 decode).

With one row a linear layer is a pure weight read. cuBLAS runs it as a GEMM tile
schedule that reads the Llama-3.1-8B decode weights at 62-92% of the copy
bandwidth on an H100 (benchmarks/gpu_kernels.py --linear); this kernel streams
each [BLOCK_N, K] slab of W once, in [BLOCK_N, BLOCK_K] tiles, keeping partial
products in registers until one reduction at the end: 73-102% on the same
shapes. With more rows cuBLAS is faster, so the dispatcher sends those there.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _gemv_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr, N, K, stride_wn,
    HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n < N
    k = tl.arange(0, BLOCK_K)
    w_ptrs = w_ptr + n.to(tl.int64)[:, None] * stride_wn + k[None, :]
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            w = tl.load(w_ptrs + k0, mask=n_mask[:, None], other=0.0)
            x = tl.load(x_ptr + k0 + k)
        else:
            k_mask = k0 + k < K
            w = tl.load(w_ptrs + k0, mask=n_mask[:, None] & k_mask[None, :], other=0.0)
            x = tl.load(x_ptr + k0 + k, mask=k_mask, other=0.0)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
    out = tl.sum(acc, 1)
    if HAS_BIAS:
        out += tl.load(b_ptr + n, mask=n_mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + n, out.to(out_ptr.dtype.element_ty), mask=n_mask)


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
         block_n: int = 8, block_k: int = 1024, num_warps: int = 8, num_stages: int = 3) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for x holding one row (any leading dims of size 1)
    and a row-major weight. Tiles: best of a sweep on the H100 (gpu_kernels.py --linear)."""
    k = x.shape[-1]
    n = weight.shape[0]
    if x.numel() != k or weight.stride(-1) != 1:
        raise ValueError(f"gemv takes one row and a row-major weight, got x {tuple(x.shape)}, "
                         f"weight strides {weight.stride()}")
    x1 = x.reshape(k).contiguous()
    out = torch.empty(*x.shape[:-1], n, dtype=x.dtype, device=x.device)
    _gemv_kernel[(triton.cdiv(n, block_n),)](
        x1, weight, bias if bias is not None else weight, out, n, k, weight.stride(0),
        HAS_BIAS=bias is not None, EVEN_K=k % block_k == 0, BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=num_warps, num_stages=num_stages,
    )
    return out
