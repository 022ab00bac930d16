"""Triton paged attention: KV-cache write, split-KV decode and varlen prefill.

Same signatures as `intarsia.kernels.reference`. The KV caches are
``[num_blocks, block_size, num_kv_heads, head_dim]``; every key/value, including
those of the current step, is read from the cache (call `write_kv_cache` first).

Decode (``meta.max_query_len == 1``) follows flash-decoding: the context of each
sequence is cut into up to ``num_splits`` partitions processed by separate programs,
each handling all query heads of one KV head (the GQA group) so K/V are read once;
a second kernel merges the partial softmaxes. The grid size depends only on host
values fixed for a CUDA graph (batch size, `meta.max_seq_len`); how a sequence is
actually partitioned is decided on the device from its length, so the decode path
neither synchronises with the host nor allocates data-dependent shapes.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from intarsia.kernels.metadata import AttentionMetadata
from intarsia.kernels.triton_ops import tanh

_LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)
# Keeps the running max finite so fully masked rows give p = 0, never NaN.
_NEG_BIG: tl.constexpr = tl.constexpr(-1.0e30)

# Decode tuning (benchmarks/gpu_kernels.py --tune, H100): about 4 programs per SM
# is best; fewer splits with more keys each beat extra splits once that is reached
# (batch 64 x 8 KV heads wants a single split), and short contexts at small batch
# want partitions as small as one tile.
_DECODE_BLOCK_N = 64  # keys per loop iteration
_DECODE_MIN_PART = 64  # fewest keys worth a partition of their own
_DECODE_MAX_SPLITS = 64
_DECODE_PROGRAMS_PER_SM = 4


def _pow2(n: int, at_least: int = 1) -> int:
    return max(triton.next_power_of_2(n), at_least)


@functools.cache
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the interpreter on the CPU: any small number


# ----------------------------------------------------------------------------- KV write


@triton.jit
def _write_kv_kernel(
    key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
    stride_kt, stride_kh, stride_kd,
    stride_vt, stride_vh, stride_vd,
    stride_kcb, stride_kcs, stride_kch, stride_kcd,
    stride_vcb, stride_vcs, stride_vch, stride_vcd,
    NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, PAGE: tl.constexpr,
):
    token = tl.program_id(0)
    slot = tl.load(slot_ptr + token).to(tl.int64)
    if slot >= 0:
        page = slot // PAGE
        offset = slot % PAGE
        h = tl.arange(0, BLOCK_H)[:, None]
        d = tl.arange(0, BLOCK_D)[None, :]
        mask = (h < NUM_KV_HEADS) & (d < HEAD_DIM)
        k = tl.load(key_ptr + token * stride_kt + h * stride_kh + d * stride_kd, mask=mask)
        v = tl.load(value_ptr + token * stride_vt + h * stride_vh + d * stride_vd, mask=mask)
        k_dst = k_cache_ptr + page * stride_kcb + offset * stride_kcs
        v_dst = v_cache_ptr + page * stride_vcb + offset * stride_vcs
        tl.store(k_dst + h * stride_kch + d * stride_kcd, k.to(k_cache_ptr.dtype.element_ty),
                 mask=mask)
        tl.store(v_dst + h * stride_vch + d * stride_vcd, v.to(v_cache_ptr.dtype.element_ty),
                 mask=mask)


def write_kv_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Store `key`/`value` ([tokens, kv_heads, head_dim]) at their cache slots (-1 = skip)."""
    num_tokens, num_kv_heads, head_dim = key.shape
    if num_tokens == 0:
        return
    _write_kv_kernel[(num_tokens,)](
        key, value, k_cache, v_cache, slot_mapping,
        *key.stride(), *value.stride(), *k_cache.stride(), *v_cache.stride(),
        NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim,
        BLOCK_H=_pow2(num_kv_heads), BLOCK_D=_pow2(head_dim), PAGE=k_cache.shape[1],
    )


# ----------------------------------------------------------------------------- shared math


@triton.jit
def _scores(q, k, scale, softcap, slopes, rel, USE_SOFTCAP: tl.constexpr,
            USE_ALIBI: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Logits in log2 units: q [M, D] x k [N, D]; `rel` is key minus query position."""
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale
    if USE_SOFTCAP:
        s = softcap * tanh(s / softcap)
    if USE_ALIBI:
        s += slopes[:, None] * rel.to(tl.float32)
    return s * _LOG2E


@triton.jit
def _load_kv_tile(cache_ptr, pages, offs, head, d, mask,
                  stride_b, stride_s, stride_h, stride_d):
    ptrs = (cache_ptr + pages.to(tl.int64)[:, None] * stride_b + offs[:, None] * stride_s
            + head * stride_h + d[None, :] * stride_d)
    return tl.load(ptrs, mask=mask, other=0.0)


# ----------------------------------------------------------------------------- decode


@triton.jit
def _decode_partition(seq_len, window, split, USE_WINDOW: tl.constexpr,
                      NUM_SPLITS: tl.constexpr, MIN_PART: tl.constexpr, BLOCK_N: tl.constexpr):
    """Keys [start, end) of partition `split` of a sequence, and how many partitions it has.

    Computed on the device from the sequence's own length, identically in both kernels.
    """
    lo = 0
    if USE_WINDOW:
        lo = tl.maximum(seq_len - window, 0)
    span = seq_len - lo
    wanted = tl.minimum(tl.maximum(tl.cdiv(span, MIN_PART), 1), NUM_SPLITS)
    part = tl.maximum(tl.cdiv(tl.cdiv(span, wanted), BLOCK_N) * BLOCK_N, BLOCK_N)
    start = lo + split * part
    return start, tl.minimum(start + part, seq_len), tl.cdiv(span, part)


# Block tables are as wide as a step's longest sequence: left unspecialised, that width
# (1, a multiple of 16 or neither) does not compile a kernel variant of its own mid-run.
@triton.jit(do_not_specialize=["stride_bt"])
def _decode_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, part_acc_ptr, part_ml_ptr,
    seq_lens_ptr, block_tables_ptr, query_start_ptr, alibi_ptr,
    scale, softcap, window,
    stride_qt, stride_qh, stride_qd,
    stride_ot, stride_oh, stride_od,
    stride_kb, stride_ks, stride_kh, stride_kd,
    stride_vb, stride_vs, stride_vh, stride_vd,
    stride_bt,
    NUM_HEADS: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, PAGE: tl.constexpr,
    BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr, MIN_PART: tl.constexpr,
    USE_WINDOW: tl.constexpr, USE_SOFTCAP: tl.constexpr, USE_ALIBI: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    start, end, num_parts = _decode_partition(seq_len, window, split, USE_WINDOW, NUM_SPLITS,
                                              MIN_PART, BLOCK_N)
    # Idle splits of short sequences leave at once, and so do entries with no context
    # (the unused decode entries of a captured mixed step, whose rows belong to others).
    if split < num_parts:
        g = tl.arange(0, GROUP_PAD)
        d = tl.arange(0, HEAD_DIM_PAD)
        heads = kv_head * GROUP + g
        g_mask = g < GROUP
        d_mask = d < HEAD_DIM
        row = tl.load(query_start_ptr + seq).to(tl.int64)
        q = tl.load(q_ptr + row * stride_qt + heads[:, None] * stride_qh + d[None, :] * stride_qd,
                    mask=g_mask[:, None] & d_mask[None, :], other=0.0)
        slopes = tl.zeros([GROUP_PAD], tl.float32)
        if USE_ALIBI:
            slopes = tl.load(alibi_ptr + heads, mask=g_mask, other=0.0)
        table = block_tables_ptr + seq.to(tl.int64) * stride_bt

        m_i = tl.full([GROUP_PAD], _NEG_BIG, tl.float32)
        l_i = tl.zeros([GROUP_PAD], tl.float32)
        acc = tl.zeros([GROUP_PAD, HEAD_DIM_PAD], tl.float32)
        for block_start in range(start, end, BLOCK_N):
            n = block_start + tl.arange(0, BLOCK_N)
            n_mask = n < end
            pages = tl.load(table + n // PAGE, mask=n_mask, other=0)
            kv_mask = n_mask[:, None] & d_mask[None, :]
            k = _load_kv_tile(k_cache_ptr, pages, n % PAGE, kv_head, d, kv_mask,
                              stride_kb, stride_ks, stride_kh, stride_kd)
            v = _load_kv_tile(v_cache_ptr, pages, n % PAGE, kv_head, d, kv_mask,
                              stride_vb, stride_vs, stride_vh, stride_vd)
            s = _scores(q, k, scale, softcap, slopes, n[None, :] - (seq_len - 1),
                        USE_SOFTCAP, USE_ALIBI, DOT_PRECISION)
            s = tl.where(n_mask[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.exp2(s - m_new[:, None])
            alpha = tl.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
            m_i = m_new

        if NUM_SPLITS == 1:
            out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
            out_ptrs = out_ptr + row * stride_ot + heads[:, None] * stride_oh
            tl.store(out_ptrs + d[None, :] * stride_od, out.to(out_ptr.dtype.element_ty),
                     mask=g_mask[:, None] & d_mask[None, :])
        else:
            # Partials are [seq, head, split, ...]: unnormalised acc, and (max, sum).
            base = (seq.to(tl.int64) * NUM_HEADS + heads) * NUM_SPLITS + split
            tl.store(part_acc_ptr + base[:, None] * HEAD_DIM_PAD + d[None, :], acc,
                     mask=g_mask[:, None])
            tl.store(part_ml_ptr + base * 2, m_i, mask=g_mask)
            tl.store(part_ml_ptr + base * 2 + 1, l_i, mask=g_mask)


@triton.jit
def _decode_reduce_kernel(
    out_ptr, part_acc_ptr, part_ml_ptr, seq_lens_ptr, query_start_ptr, window,
    stride_ot, stride_oh, stride_od,
    NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr, MIN_PART: tl.constexpr,
    USE_WINDOW: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    seq_len = tl.load(seq_lens_ptr + seq)
    _, _, num_parts = _decode_partition(seq_len, window, 0, USE_WINDOW, NUM_SPLITS, MIN_PART,
                                        BLOCK_N)
    s = tl.arange(0, NUM_SPLITS)
    d = tl.arange(0, HEAD_DIM_PAD)
    s_mask = s < num_parts
    base = (seq.to(tl.int64) * NUM_HEADS + head) * NUM_SPLITS + s
    m = tl.load(part_ml_ptr + base * 2, mask=s_mask, other=_NEG_BIG)
    l_part = tl.load(part_ml_ptr + base * 2 + 1, mask=s_mask, other=0.0)
    acc = tl.load(part_acc_ptr + base[:, None] * HEAD_DIM_PAD + d[None, :],
                  mask=s_mask[:, None], other=0.0)
    weight = tl.exp2(m - tl.max(m, 0))
    total = tl.sum(l_part * weight, 0)
    out = tl.sum(acc * weight[:, None], 0) / tl.where(total == 0.0, 1.0, total)
    row = tl.load(query_start_ptr + seq).to(tl.int64)
    tl.store(out_ptr + row * stride_ot + head * stride_oh + d * stride_od,
             out.to(out_ptr.dtype.element_ty), mask=(d < HEAD_DIM) & (seq_len > 0))


def num_kv_splits(num_seqs: int, num_kv_heads: int, max_seq_len: int, device: torch.device,
                  min_part: int = _DECODE_MIN_PART) -> int:
    """Upper bound on KV partitions per sequence (a power of two): enough programs to
    fill the GPU, never more than `max_seq_len` can use. Depends only on host values
    that stay fixed for a captured CUDA graph (the engine passes max_model_len there)."""
    programs = _DECODE_PROGRAMS_PER_SM * _sm_count(device)
    wanted = programs // max(num_seqs * num_kv_heads, 1)
    usable = triton.cdiv(max(max_seq_len, 1), min_part)
    splits = max(1, min(wanted, usable, _DECODE_MAX_SPLITS))
    return 1 << (splits.bit_length() - 1)


def paged_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    sliding_window: int | None = None,
    softcap: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
    *,
    num_splits: int | None = None,
    block_n: int = _DECODE_BLOCK_N,
    min_part: int = _DECODE_MIN_PART,
    num_warps: int = 4,
    num_stages: int = 2,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """One query row per sequence, on row `meta.query_start_loc[i]` of q (and of `out`,
    which other kernels may be filling too). `num_splits` (a power of two) fixes the
    partition bound; by default it comes from `num_kv_splits`. Keyword-only: tuning knobs, `out`."""
    num_seqs = meta.num_seqs
    _, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    group = num_heads // num_kv_heads
    out = torch.empty_like(q) if out is None else out
    if num_splits is None:
        num_splits = num_kv_splits(num_seqs, num_kv_heads, meta.max_seq_len, q.device, min_part)
    head_dim_pad = _pow2(head_dim, 16)
    common = {"NUM_HEADS": num_heads, "HEAD_DIM": head_dim, "HEAD_DIM_PAD": head_dim_pad,
              "BLOCK_N": block_n, "NUM_SPLITS": num_splits, "MIN_PART": min_part,
              "USE_WINDOW": sliding_window is not None}
    if num_splits > 1:
        part_acc = torch.empty(num_seqs, num_heads, num_splits, head_dim_pad,
                               dtype=torch.float32, device=q.device)
        part_ml = torch.empty(num_seqs, num_heads, num_splits, 2, dtype=torch.float32,
                              device=q.device)
    else:
        part_acc = part_ml = out  # unused
    window = sliding_window or 0
    _decode_kernel[(num_seqs, num_kv_heads, num_splits)](
        q, k_cache, v_cache, out, part_acc, part_ml,
        meta.seq_lens, meta.block_tables, meta.query_start_loc,
        alibi_slopes if alibi_slopes is not None else q,
        scale, softcap or 1.0, window,
        *q.stride(), *out.stride(), *k_cache.stride(), *v_cache.stride(),
        meta.block_tables.stride(0),
        GROUP=group, GROUP_PAD=_pow2(group, 16), PAGE=k_cache.shape[1],
        USE_SOFTCAP=softcap is not None, USE_ALIBI=alibi_slopes is not None,
        DOT_PRECISION=_dot_precision(q.dtype),
        num_warps=num_warps, num_stages=num_stages, **common,
    )
    if num_splits > 1:
        _decode_reduce_kernel[(num_seqs, num_heads)](
            out, part_acc, part_ml, meta.seq_lens, meta.query_start_loc, window,
            *out.stride(), num_warps=4, **common,
        )
    return out


# ----------------------------------------------------------------------------- prefill


@triton.jit(do_not_specialize=["stride_bt"])
def _prefill_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, out_ptr,
    seq_lens_ptr, block_tables_ptr, query_start_ptr, alibi_ptr, prefix_lens_ptr,
    scale, softcap, window,
    stride_qt, stride_qh, stride_qd,
    stride_ot, stride_oh, stride_od,
    stride_kb, stride_ks, stride_kh, stride_kd,
    stride_vb, stride_vs, stride_vh, stride_vd,
    stride_bt,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    PAGE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    USE_WINDOW: tl.constexpr, USE_SOFTCAP: tl.constexpr, USE_ALIBI: tl.constexpr,
    USE_PREFIX: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # Heads vary fastest so the programs of one GQA group run together and share K/V in L2.
    head = tl.program_id(0)
    tile = tl.program_id(1)
    seq = tl.program_id(2)
    q_start = tl.load(query_start_ptr + seq)
    q_len = tl.load(query_start_ptr + seq + 1) - q_start
    if tile * BLOCK_M < q_len:
        seq_len = tl.load(seq_lens_ptr + seq)
        first_pos = seq_len - q_len  # the query rows are the last q_len tokens of the context
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        q_pos = first_pos + rows
        row_mask = rows < q_len
        d = tl.arange(0, HEAD_DIM_PAD)
        d_mask = d < HEAD_DIM
        kv_head = head // GROUP
        q_rows = q_start.to(tl.int64) + rows
        q = tl.load(q_ptr + q_rows[:, None] * stride_qt + head * stride_qh + d[None, :] * stride_qd,
                    mask=row_mask[:, None] & d_mask[None, :], other=0.0)
        slopes = tl.zeros([BLOCK_M], tl.float32)
        if USE_ALIBI:
            slopes += tl.load(alibi_ptr + head)
        table = block_tables_ptr + seq.to(tl.int64) * stride_bt

        # Causality bounds the keys by the tile's last row, the window by its first.
        hi = tl.minimum(seq_len, first_pos + (tile + 1) * BLOCK_M)
        lo = 0
        if USE_WINDOW:
            lo = tl.maximum(first_pos + tile * BLOCK_M - window + 1, 0) // BLOCK_N * BLOCK_N
        prefix_len = 0
        if USE_PREFIX:  # a tile with rows inside the bidirectional prefix sees all of it
            prefix_len = tl.minimum(tl.load(prefix_lens_ptr + seq), seq_len)
            in_prefix = first_pos + tile * BLOCK_M < prefix_len
            hi = tl.where(in_prefix, tl.maximum(hi, prefix_len), hi)
            lo = tl.where(in_prefix, 0, lo)
        m_i = tl.full([BLOCK_M], _NEG_BIG, tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], tl.float32)
        for block_start in range(lo, hi, BLOCK_N):
            n = block_start + tl.arange(0, BLOCK_N)
            n_mask = n < hi
            pages = tl.load(table + n // PAGE, mask=n_mask, other=0)
            kv_mask = n_mask[:, None] & d_mask[None, :]
            k = _load_kv_tile(k_cache_ptr, pages, n % PAGE, kv_head, d, kv_mask,
                              stride_kb, stride_ks, stride_kh, stride_kd)
            v = _load_kv_tile(v_cache_ptr, pages, n % PAGE, kv_head, d, kv_mask,
                              stride_vb, stride_vs, stride_vh, stride_vd)
            rel = n[None, :] - q_pos[:, None]
            s = _scores(q, k, scale, softcap, slopes, rel, USE_SOFTCAP, USE_ALIBI, DOT_PRECISION)
            allowed = (rel <= 0) & n_mask[None, :]
            if USE_WINDOW:
                allowed &= rel > -window
            if USE_PREFIX:
                allowed |= (n[None, :] < prefix_len) & (q_pos[:, None] < prefix_len)
            s = tl.where(allowed, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.exp2(s - m_new[:, None])
            alpha = tl.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
            m_i = m_new

        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        tl.store(out_ptr + q_rows[:, None] * stride_ot + head * stride_oh + d[None, :] * stride_od,
                 out.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & d_mask[None, :])


def paged_prefill(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    sliding_window: int | None = None,
    softcap: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
    *,
    block_m: int = 64,
    block_n: int = 64,
    num_warps: int = 4,
    num_stages: int = 2,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Any number of query rows per sequence (the last rows of its context, rows
    `meta.query_start_loc[i]:[i+1]` of q and `out`), causal except within each
    sequence's `meta.prefix_lens` prefix, which is bidirectional."""
    _, num_heads, head_dim = q.shape
    out = torch.empty_like(q) if out is None else out
    grid = (num_heads, triton.cdiv(meta.max_query_len, block_m), meta.num_seqs)
    _prefill_kernel[grid](
        q, k_cache, v_cache, out,
        meta.seq_lens, meta.block_tables, meta.query_start_loc,
        alibi_slopes if alibi_slopes is not None else q,
        meta.prefix_lens if meta.prefix_lens is not None else meta.seq_lens,
        scale, softcap or 1.0, sliding_window or 0,
        *q.stride(), *out.stride(), *k_cache.stride(), *v_cache.stride(),
        meta.block_tables.stride(0),
        GROUP=num_heads // k_cache.shape[2], HEAD_DIM=head_dim,
        HEAD_DIM_PAD=_pow2(head_dim, 16), PAGE=k_cache.shape[1],
        BLOCK_M=block_m, BLOCK_N=block_n,
        USE_WINDOW=sliding_window is not None, USE_SOFTCAP=softcap is not None,
        USE_ALIBI=alibi_slopes is not None, USE_PREFIX=meta.prefix_lens is not None,
        DOT_PRECISION=_dot_precision(q.dtype), num_warps=num_warps, num_stages=num_stages,
    )
    return out


def _dot_precision(dtype: torch.dtype) -> str:
    # float32 models get exact float32 products; half types use the tensor cores as is.
    return "ieee" if dtype == torch.float32 else "tf32"


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
    """Causal attention of the new query rows over each sequence's paged context.

    q: [num_tokens, num_heads, head_dim] -> same shape. Decode-only batches take
    the split-KV decode kernel; anything else the varlen prefill kernel, except the
    leading decode rows of a mixed step split off by `meta.split_decodes`.
    """
    options = (scale, sliding_window, softcap, alibi_slopes)
    if meta.parts is not None:  # mixed step: each part's kernel fills its own rows of `out`
        decodes, rest = meta.parts
        # Zeros: rows no sequence owns (a captured step's padding) stay finite.
        out = torch.zeros_like(q)
        paged_decode(q, k_cache, v_cache, decodes, *options, out=out)
        paged_prefill(q, k_cache, v_cache, rest, *options, out=out)
        return out
    attend = paged_decode if meta.max_query_len == 1 else paged_prefill
    return attend(q, k_cache, v_cache, meta, *options)
