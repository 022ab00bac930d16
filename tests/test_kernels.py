"""Kernel tests.

1. The torch references against a naive float64 oracle (dense causal attention over
   contiguous K/V, complex-number rotary), in this process.
2. The Triton kernels against the references on the CPU under the Triton interpreter.
   `TRITON_INTERPRET=1` only takes effect if set before triton is imported, so each
   group runs this file as a script in a fresh subprocess (`python test_kernels.py
   GROUP`), whatever else the pytest process has imported.

Inputs are fresh random tensors every run; the seed is printed on failure and
`INTARSIA_TEST_SEED=<seed>` replays it.
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from intarsia.kernels import reference as ref
from intarsia.kernels.metadata import AttentionMetadata

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- inputs


def seed_everything() -> int:
    seed = int(os.environ.get("INTARSIA_TEST_SEED", random.randrange(2**31)))
    print(f"seed {seed}  (INTARSIA_TEST_SEED={seed} replays it)")
    random.seed(seed)
    torch.manual_seed(seed)
    return seed


def make_batch(
    seq_lens: list[int],
    q_lens: list[int],
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype = torch.float32,
    block_size: int = 16,
    max_seq_len: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, AttentionMetadata]:
    """Random q, a randomly paged K/V cache and the metadata of one varlen step.

    Sequence i has `seq_lens[i]` context tokens, the last `q_lens[i]` of them new
    (their slots in `slot_mapping`); blocks are scattered in random order.
    """
    blocks_per_seq = [math.ceil(n / block_size) for n in seq_lens]
    num_blocks = sum(blocks_per_seq) + 2
    order = torch.randperm(num_blocks).tolist()
    width = max(blocks_per_seq)
    tables = torch.randint(0, num_blocks, (len(seq_lens), width), dtype=torch.int32)
    slots = []
    for i, (n, q_len) in enumerate(zip(seq_lens, q_lens, strict=True)):
        tables[i, : blocks_per_seq[i]] = torch.tensor(order[: blocks_per_seq[i]])
        del order[: blocks_per_seq[i]]
        slots += [int(tables[i, t // block_size]) * block_size + t % block_size
                  for t in range(n - q_len, n)]
    k_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim).to(dtype)
    v_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim).to(dtype)
    starts = [0]
    for q_len in q_lens:
        starts.append(starts[-1] + q_len)
    q = torch.randn(starts[-1], num_heads, head_dim).to(dtype)
    meta = AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.int64),
        query_start_loc=torch.tensor(starts, dtype=torch.int32),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        block_tables=tables,
        max_query_len=max(q_lens),
        max_seq_len=max_seq_len or max(seq_lens),
        query_start_loc_cpu=starts,
        seq_lens_cpu=list(seq_lens),
    )
    return q, k_cache, v_cache, meta


def with_prefixes(meta: AttentionMetadata, prefix_lens: list[int]) -> AttentionMetadata:
    """`meta` with bidirectional prefixes (prefix-LM attention, PaliGemma)."""
    meta.prefix_lens = torch.tensor(prefix_lens, dtype=torch.int32)
    meta.prefix_lens_cpu = list(prefix_lens)
    return meta


# Prefix-LM batches (seq_lens, q_lens, prefix_lens): a whole prompt that is all prefix,
# a chunk over a cached part of its prefix ending past it, a decode row after a
# prefix, a sequence without one, and a prefix longer than one prefill tile (BLOCK_M).
PREFIX_BATCH = ([37, 60, 41, 30, 90], [37, 30, 1, 12, 90], [37, 45, 40, 0, 75])


def alibi(num_heads: int) -> torch.Tensor:
    return torch.rand(num_heads) * 0.5


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Max abs error within a dtype-dependent tolerance, relative to magnitudes above 1."""
    # The reference computes softmax in float32 even for float64 inputs: 1e-5, not 1e-6.
    tol = {torch.float64: 1e-5, torch.float32: 2e-4, torch.float16: 1e-2,
           torch.bfloat16: 3e-2}[expected.dtype]
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if not expected.numel():
        return
    err = (actual.double() - expected.double()).abs().max().item()
    scale = max(1.0, expected.double().abs().max().item())
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} > {tol} x {scale:.3g}"


# ----------------------------------------------------------------------------- oracle


def dense_oracle(q, k_cache, v_cache, meta, scale, sliding_window=None, softcap=None,
                 alibi_slopes=None) -> torch.Tensor:
    """Float64 causal attention per sequence over K/V copied token by token out of the cache."""
    out = torch.zeros(q.shape, dtype=torch.float64)
    block_size = k_cache.shape[1]
    group = q.shape[1] // k_cache.shape[2]
    for i, n in enumerate(meta.seq_lens_cpu):
        start, end = meta.query_start_loc_cpu[i], meta.query_start_loc_cpu[i + 1]
        pages = [int(meta.block_tables[i, t // block_size]) for t in range(n)]
        k = torch.stack([k_cache[p, t % block_size] for t, p in enumerate(pages)]).double()
        v = torch.stack([v_cache[p, t % block_size] for t, p in enumerate(pages)]).double()
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)  # [n, H, D]
        prefix = meta.prefix_lens_cpu[i] if meta.prefix_lens_cpu is not None else 0
        for row in range(start, end):
            q_pos = n - (end - row)
            s = torch.einsum("hd,nhd->hn", q[row].double(), k) * scale
            if softcap is not None:
                s = softcap * torch.tanh(s / softcap)
            rel = torch.arange(n, dtype=torch.float64) - q_pos
            if alibi_slopes is not None:
                s = s + alibi_slopes.double()[:, None] * rel
            allowed = rel <= 0
            if sliding_window is not None:
                allowed &= rel > -sliding_window
            if q_pos < prefix:
                allowed |= torch.arange(n) < prefix
            s = s.masked_fill(~allowed, float("-inf"))
            out[row] = torch.einsum("hn,nhd->hd", torch.softmax(s, -1), v)
    return out.to(q.dtype)


ATTENTION_OPTIONS = [
    {},
    {"sliding_window": 7},
    {"sliding_window": 40},
    {"softcap": 3.0},
    {"alibi": True},
    {"sliding_window": 20, "softcap": 5.0, "alibi": True},
]


def attention_options(options: dict, num_heads: int) -> dict:
    opts = {k: v for k, v in options.items() if k != "alibi"}
    if options.get("alibi"):
        opts["alibi_slopes"] = alibi(num_heads)
    return opts


@pytest.mark.parametrize("options", ATTENTION_OPTIONS, ids=str)
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", [(2, 2, 8), (4, 1, 16), (8, 2, 12)])
def test_reference_attention_matches_dense_oracle(options, num_heads, num_kv_heads, head_dim):
    seed_everything()
    # Decode rows, a full prefill, a chunk over a cached prefix crossing a block, a
    # context that is an exact multiple of the block size.
    q, kc, vc, meta = make_batch([33, 1, 20, 48, 32, 17], [1, 1, 20, 13, 1, 5], num_heads,
                                 num_kv_heads, head_dim, torch.float64, block_size=8)
    opts = attention_options(options, num_heads)
    got = ref.paged_attention(q, kc, vc, meta, 0.3, **opts)
    assert_close(got, dense_oracle(q, kc, vc, meta, 0.3, **opts), "reference attention")


@pytest.mark.parametrize("options", ATTENTION_OPTIONS[:2] + ATTENTION_OPTIONS[-1:], ids=str)
def test_reference_prefix_attention_matches_dense_oracle(options):
    seed_everything()
    seq_lens, q_lens, prefix_lens = PREFIX_BATCH
    q, kc, vc, meta = make_batch(seq_lens, q_lens, 4, 2, 8, torch.float64, block_size=8)
    with_prefixes(meta, prefix_lens)
    opts = attention_options(options, 4)
    got = ref.paged_attention(q, kc, vc, meta, 0.3, **opts)
    assert_close(got, dense_oracle(q, kc, vc, meta, 0.3, **opts), "reference prefix attention")


def test_reference_write_kv_cache_skips_negative_slots():
    seed_everything()
    key, value = torch.randn(5, 2, 4), torch.randn(5, 2, 4)
    kc, vc = torch.zeros(3, 4, 2, 4), torch.zeros(3, 4, 2, 4)
    slots = torch.tensor([0, 5, -1, 11, 2])
    ref.write_kv_cache(key, value, kc, vc, slots)
    for t, slot in enumerate(slots.tolist()):
        if slot >= 0:
            assert torch.equal(kc[slot // 4, slot % 4], key[t])
            assert torch.equal(vc[slot // 4, slot % 4], value[t])
    assert int((kc.abs().sum(-1) != 0).sum()) == 4 * 2


@pytest.mark.parametrize("is_neox", [True, False])
def test_reference_rotary_matches_complex_rotation(is_neox):
    seed_everything()
    tokens, heads, head_dim, rot = 5, 3, 12, 8
    positions = torch.randint(0, 20, (tokens,))
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot))
    angles = torch.arange(20, dtype=torch.float64)[:, None] * inv_freq
    cache = torch.cat((angles.cos(), angles.sin()), -1)
    q, k = torch.randn(tokens, heads, head_dim, dtype=torch.float64), torch.randn(tokens, 1, 12)
    got_q, _ = ref.rotary_embedding(positions, q, k, cache, is_neox)
    # Pairs (j, j + rot/2) for neox, (2j, 2j + 1) for GPT-J, rotated by e^{i * angle}.
    pairs = ([(j, j + rot // 2) for j in range(rot // 2)] if is_neox
             else [(2 * j, 2 * j + 1) for j in range(rot // 2)])
    want = q.clone()
    rotation = torch.polar(torch.ones_like(angles), angles)[positions][:, None]  # [t, 1, rot/2]
    for j, (a, b) in enumerate(pairs):
        z = torch.complex(q[..., a], q[..., b]) * rotation[..., j]
        want[..., a], want[..., b] = z.real, z.imag
    assert_close(got_q, want, "reference rotary")


# ----------------------------------------------------------------------------- Triton groups
# Run in a subprocess under the interpreter (see the module docstring).

DTYPES = [torch.float32, torch.float16]


def group_write_kv() -> None:
    from intarsia.kernels import triton_attention as ta

    for dtype in DTYPES:
        qkv = torch.randn(9, 3, 2, 80).to(dtype)  # key/value: strided slices of a fused tensor
        key, value = qkv[:, 1], qkv[:, 2]
        slots = torch.randperm(4 * 16)[:9]
        slots[[2, 5]] = -1
        caches = [torch.randn(4, 16, 2, 80).to(dtype) for _ in range(2)]
        want = [c.clone() for c in caches]
        ref.write_kv_cache(key, value, *want, slots)
        ta.write_kv_cache(key, value, *caches, slots)
        assert torch.equal(caches[0], want[0]) and torch.equal(caches[1], want[1])


def group_rotary_write_kv() -> None:
    """Rotary fused with the cache write == rotary, then the write (the reference)."""
    from intarsia.kernels import triton_ops as to

    for dtype in DTYPES:
        for head_dim, rot, is_neox in ((64, 64, True), (64, 64, False), (80, 32, True), (80, 32, False)):
            qkv = torch.randn(9, 4 + 2 + 2, head_dim).to(dtype)  # GQA 2: strided q/k/v slices
            q, k, v = qkv[:, :4], qkv[:, 4:6], qkv[:, 6:]
            positions = torch.randint(0, 40, (9,))
            table = torch.randn(40, rot)
            slots = torch.randperm(4 * 16)[:9]
            slots[[0, 7]] = -1
            caches = [torch.randn(4, 16, 2, head_dim).to(dtype) for _ in range(2)]
            want_caches = [c.clone() for c in caches]
            k_before = k.clone()
            want_q = ref.rotary_and_write_kv(positions, q.clone(), k.clone(), v, table, is_neox,
                                             *want_caches, slots)
            got_q = to.rotary_and_write_kv(positions, q, k, v, table, is_neox, *caches, slots)
            what = f"rotary+write_kv neox={is_neox} D={head_dim} rot={rot} {dtype}"
            assert_close(got_q, want_q, what + " q")
            assert_close(qkv[:, :4], want_q, what + " q in place")
            assert_close(caches[0], want_caches[0], what + " k cache")
            assert torch.equal(caches[1], want_caches[1]), what + " v cache"
            assert torch.equal(k, k_before), what + ": k itself is left as it was"


def group_decode() -> None:
    from intarsia.kernels import triton_attention as ta

    # (heads, kv heads, head dim): GQA ratios 1, 4, 8 and head dims 64, 80, 128.
    shapes = [(2, 2, 64, torch.float32), (8, 2, 80, torch.float16), (8, 1, 128, torch.float32)]
    for num_heads, num_kv_heads, head_dim, dtype in shapes:
        # Ragged lengths: 1 token, exact multiples of the block size, a partial block.
        seq_lens = [1, 16, 64, 77, random.randint(2, 100)]
        for options in ATTENTION_OPTIONS:
            q, kc, vc, meta = make_batch(seq_lens, [1] * len(seq_lens), num_heads, num_kv_heads,
                                         head_dim, dtype)
            opts = attention_options(options, num_heads)
            want = ref.paged_attention(q, kc, vc, meta, 0.2, **opts)
            what = f"decode H={num_heads} Hkv={num_kv_heads} D={head_dim} {dtype} {options}"
            assert_close(ta.paged_attention(q, kc, vc, meta, 0.2, **opts), want, what)
            # Several splits per sequence, small tiles: partitions of 16..48 keys.
            for splits in (2, 8):
                got = ta.paged_decode(q, kc, vc, meta, 0.2, **opts, num_splits=splits,
                                      block_n=16, min_part=16)
                assert_close(got, want, f"{what} splits={splits}")

    # The CUDA-graph case: the grid is sized for max_seq_len (max_model_len) but the
    # actual contexts are shorter and partitioned on the device; block size 32.
    q, kc, vc, meta = make_batch([300, 5, 600], [1, 1, 1], 4, 1, 64, block_size=32,
                                 max_seq_len=4096)
    assert ta.num_kv_splits(3, 1, 4096, q.device) > 1
    assert_close(ta.paged_attention(q, kc, vc, meta, 0.125),
                 ref.paged_attention(q, kc, vc, meta, 0.125), "decode, graph-sized grid")

    # A mixed step split by the engine: three decode rows through the decode kernel,
    # then a prefill chunk and a whole prompt through the prefill kernel.
    q, kc, vc, meta = make_batch([30, 55, 17, 40, 9], [1, 1, 1, 12, 9], 4, 2, 64)
    want = ref.paged_attention(q, kc, vc, meta, 0.2)
    meta.split_decodes(3, 256)
    assert_close(ta.paged_attention(q, kc, vc, meta, 0.2), want, "mixed step split into parts")

    # Steps laid out as the CUDA graphs lay them out (engine/cuda_graphs.py), through the
    # engine's own code: `StepBuffers.fill` on host buffers, then the graph's metadata over
    # them. Mixed graph of 32 rows: a decode entry per possible decode row (16), those past
    # the real ones with context 0 and pointing at rows the prefills own; 8 prefill entries.
    from intarsia.engine.cuda_graphs import StepBuffers

    for seq_lens, q_lens in (([30, 55, 17, 40, 9], [1, 1, 1, 12, 9]),  # decodes and prefills
                             ([40, 23], [8, 23]),  # no decodes (a step of prompts alone)
                             ([30, 55, 70], [1, 1, 5])):  # one prefill
        q, kc, vc, meta = make_batch(seq_lens, q_lens, 4, 2, 64)
        want = ref.paged_attention(q, kc, vc, meta, 0.2)
        rows, decodes = q.shape[0], q_lens.count(1)
        buffers = StepBuffers(32, 16, meta.block_tables.shape[1] + 2, torch.device("cpu"))
        stale = torch.randint(0, kc.shape[0], buffers.block_tables.shape, dtype=torch.int32)
        buffers.block_tables.copy_(stale)  # what earlier steps left there
        buffers.fill(("mixed", 32), list(range(rows)), list(range(rows)), meta.slot_mapping.tolist(),
                     meta.query_start_loc_cpu, seq_lens, meta.block_tables.tolist(), decodes)
        graph_meta = buffers.mixed_metadata(32, max_seq_len=4096)
        got = ta.paged_attention(torch.cat([q, torch.randn(32 - rows, *q.shape[1:])]), kc, vc,
                                 graph_meta, 0.2)
        what = f"graph layout of q_lens={q_lens}"
        assert_close(got[:rows], want, what)
        assert torch.equal(got[rows:], torch.zeros_like(got[rows:])), what + ": rows no sequence owns"
        assert (buffers.slot_mapping[rows:] == -1).all(), what + ": padding rows write no KV"
        decode_part = graph_meta.parts[0]
        for splits in (1, 4):  # decode entries with no context leave their rows alone
            out = torch.full((32, *q.shape[1:]), 7.0)
            padded_q = torch.cat([q, torch.zeros(32 - rows, *q.shape[1:])])
            ta.paged_decode(padded_q, kc, vc, decode_part, 0.2, num_splits=splits, out=out)
            assert_close(out[:decodes], want[:decodes], f"{what}, decode rows, splits={splits}")
            assert torch.equal(out[decodes:], torch.full_like(out[decodes:], 7.0)), \
                f"{what}: rows of others, splits={splits}"
    # A decode graph of 8 rows running 3 sequences: padding entries have rows of their own.
    q, kc, vc, meta = make_batch([30, 55, 17], [1, 1, 1], 4, 2, 64)
    buffers = StepBuffers(32, 16, meta.block_tables.shape[1], torch.device("cpu"))
    buffers.fill(("decode", 8), [5, 6, 7], [29, 54, 16], meta.slot_mapping.tolist(), meta.query_start_loc_cpu,
                 [30, 55, 17], meta.block_tables.tolist(), 3)
    got = ta.paged_attention(torch.cat([q, torch.randn(5, *q.shape[1:])]), kc, vc,
                             buffers.decode_metadata(8, max_seq_len=4096), 0.2)
    assert_close(got[:3], ref.paged_attention(q, kc, vc, meta, 0.2), "decode graph layout")
    assert buffers.input_ids[:3].tolist() == [5, 6, 7] and (buffers.slot_mapping[3:8] == -1).all()


def group_prefill() -> None:
    from intarsia.kernels import triton_attention as ta

    shapes = [(2, 2, 64, torch.float16), (8, 2, 80, torch.float32), (8, 1, 128, torch.float32)]
    for num_heads, num_kv_heads, head_dim, dtype in shapes:
        # A whole prompt, a chunk over a cached prefix crossing blocks, a decode row in
        # a mixed batch, a chunk ending on a block boundary, a chunk longer than BLOCK_M.
        q_lens = [random.randint(20, 40), 23, 1, 16, 70]
        seq_lens = [q_lens[0], 23 + 37, random.randint(1, 50), 48, 90]
        for options in ATTENTION_OPTIONS:
            q, kc, vc, meta = make_batch(seq_lens, q_lens, num_heads, num_kv_heads, head_dim,
                                         dtype)
            opts = attention_options(options, num_heads)
            want = ref.paged_attention(q, kc, vc, meta, 0.2, **opts)
            what = f"prefill H={num_heads} Hkv={num_kv_heads} D={head_dim} {dtype} {options}"
            assert_close(ta.paged_attention(q, kc, vc, meta, 0.2, **opts), want, what)
        got = ta.paged_prefill(q, kc, vc, meta, 0.2, **opts, block_m=16, block_n=32)
        assert_close(got, want, f"{what} small tiles")

    # Prefix-LM attention: bidirectional within each sequence's prefix.
    seq_lens, q_lens, prefix_lens = PREFIX_BATCH
    for options, dtype in zip((ATTENTION_OPTIONS[0], ATTENTION_OPTIONS[-1]), DTYPES, strict=True):
        q, kc, vc, meta = make_batch(seq_lens, q_lens, 4, 2, 32, dtype)
        with_prefixes(meta, prefix_lens)
        opts = attention_options(options, 4)
        want = ref.paged_attention(q, kc, vc, meta, 0.2, **opts)
        what = f"prefix-LM prefill {dtype} {options}"
        assert_close(ta.paged_attention(q, kc, vc, meta, 0.2, **opts), want, what)
        got = ta.paged_prefill(q, kc, vc, meta, 0.2, **opts, block_m=16, block_n=16)
        assert_close(got, want, f"{what} small tiles")

    # End to end: write the new tokens' K/V through the slot mapping, then attend.
    q, kc, vc, meta = make_batch([50, 33], [18, 33], 4, 2, 64)
    key, value = torch.randn(51, 2, 64), torch.randn(51, 2, 64)
    ref_kc, ref_vc = kc.clone(), vc.clone()
    ref.write_kv_cache(key, value, ref_kc, ref_vc, meta.slot_mapping)
    ta.write_kv_cache(key, value, kc, vc, meta.slot_mapping)
    assert torch.equal(kc, ref_kc) and torch.equal(vc, ref_vc)
    assert_close(ta.paged_attention(q, kc, vc, meta, 0.125),
                 dense_oracle(q, ref_kc, ref_vc, meta, 0.125), "prefill after cache write")


def group_ops() -> None:
    from intarsia.kernels import triton_ops as to

    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        # bf16 rounding in the interpreter may differ by one unit from torch's.
        x = torch.randn(2, 5, 96).to(dtype)
        residual = torch.randn(2, 5, 96).to(dtype)
        weight = torch.randn(96).to(dtype)
        strided = torch.randn(5, 2 * 96).to(dtype)[:, ::2]  # non-contiguous rows
        for offset in (0.0, 1.0):
            assert_close(to.rms_norm(x, weight, 1e-6, offset),
                         ref.rms_norm(x, weight, 1e-6, offset), f"rms_norm {dtype}")
            assert_close(to.rms_norm(strided, weight, 1e-5),
                         ref.rms_norm(strided, weight, 1e-5), f"rms_norm strided {dtype}")
            got = to.fused_add_rms_norm(x, residual, weight, 1e-6, offset)
            want = ref.fused_add_rms_norm(x, residual, weight, 1e-6, offset)
            assert_close(got[0], want[0], f"fused_add_rms_norm out {dtype}")
            assert_close(got[1], want[1], f"fused_add_rms_norm sum {dtype}")

        # Rotary on q/k slices of a fused qkv output; full and partial rotary dims.
        for head_dim, rot in ((64, 64), (80, 32)):
            for is_neox in (True, False):
                qkv = torch.randn(7, (4 + 2 + 2) * head_dim).to(dtype)
                q = qkv[:, : 4 * head_dim].view(7, 4, head_dim)
                k = qkv[:, 4 * head_dim : 6 * head_dim].view(7, 2, head_dim)
                positions = torch.randint(0, 50, (7,))
                cache = torch.randn(50, rot)
                want = ref.rotary_embedding(positions, q.clone(), k.clone(), cache, is_neox)
                got = to.rotary_embedding(positions, q, k, cache, is_neox)
                what = f"rotary neox={is_neox} D={head_dim} rot={rot} {dtype}"
                assert_close(got[0], want[0], what)
                assert_close(got[1], want[1], what)
                in_place = qkv[:, : 4 * head_dim].view(7, 4, head_dim)
                assert_close(in_place, want[0], what + " in place")

        x = torch.randn(3, 4, 2 * 70).to(dtype)
        assert_close(to.silu_and_mul(x), ref.silu_and_mul(x), f"silu_and_mul {dtype}")
        assert_close(to.silu_and_mul(x[:, 1:3]), ref.silu_and_mul(x[:, 1:3]), "silu strided")
        for approximate in ("none", "tanh"):
            assert_close(to.gelu_and_mul(x, approximate), ref.gelu_and_mul(x, approximate),
                         f"gelu_and_mul {approximate} {dtype}")
        assert_close(to.quick_gelu(x), ref.quick_gelu(x), f"quick_gelu {dtype}")
        assert_close(to.quick_gelu(x[:, 1:3]), ref.quick_gelu(x[:, 1:3]), "quick_gelu strided")


def group_linear() -> None:
    """The GEMV == F.linear on one row: K a multiple of the tile or not, N not a multiple
    of the rows per program, bias or not, leading dims kept."""
    import torch.nn.functional as F

    from intarsia.kernels import triton_linear as tlin

    for dtype in DTYPES:
        for k, n, bias in ((128, 48, False), (100, 37, True), (1024, 70, True), (96, 16, False)):
            x = torch.randn(1, 1, k).to(dtype)
            w = (torch.randn(n, k) / k**0.5).to(dtype)
            b = torch.randn(n).to(dtype) if bias else None
            want = F.linear(x.float(), w.float(), None if b is None else b.float()).to(dtype)
            for block_k in (64, 512):
                got = tlin.gemv(x, w, b, block_n=8, block_k=block_k)
                assert_close(got, want, f"gemv {k} -> {n} bias={bias} BLOCK_K={block_k} {dtype}")
    with pytest.raises(ValueError, match="one row"):
        tlin.gemv(torch.randn(2, 8), torch.randn(4, 8))


def group_small_batch_linear() -> None:
    """The candidate small-batch linear (benchmarks/small_batch_linear.py) == F.linear: 1-16
    rows, K split over programs or not, ragged N and K."""
    import torch.nn.functional as F

    from benchmarks.small_batch_linear import swap_ab_linear

    for dtype in DTYPES:
        for rows, k, n, split_k in ((2, 128, 64, 1), (5, 200, 70, 2), (16, 256, 128, 4), (1, 96, 16, 3)):
            x = torch.randn(rows, k).to(dtype)
            w = (torch.randn(n, k) / k**0.5).to(dtype)
            got = swap_ab_linear(x, w, block_n=32, block_k=64, split_k=split_k)
            assert_close(got, F.linear(x.float(), w.float()).to(dtype),
                         f"swap_ab_linear {rows}x{k} -> {n} split {split_k} {dtype}")


GROUPS: dict[str, Callable[[], None]] = {
    "write_kv": group_write_kv,
    "rotary_write_kv": group_rotary_write_kv,
    "decode": group_decode,
    "prefill": group_prefill,
    "ops": group_ops,
    "linear": group_linear,
    "small_batch_linear": group_small_batch_linear,
}


def subprocess_env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


@pytest.mark.parametrize("group", list(GROUPS))
def test_triton_interpreted(group):
    pytest.importorskip("triton")
    env = subprocess_env(TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, __file__, group], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"group {group} failed:\n{proc.stdout}\n{proc.stderr[-6000:]}"


def test_dispatch_without_triton():
    """`import intarsia` works with no triton, and the kernels fall back to the reference."""
    script = """if True:
        import sys
        sys.modules["triton"] = None  # `import triton` now raises ImportError
        import torch
        import intarsia
        import intarsia.kernels as kernels
        from intarsia.kernels import reference
        assert kernels._triton_modules() is None
        x, w = torch.randn(3, 8), torch.randn(8)
        assert torch.equal(kernels.rms_norm(x, w, 1e-6), reference.rms_norm(x, w, 1e-6))
    """
    proc = subprocess.run([sys.executable, "-c", script], env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-6000:]


if __name__ == "__main__":
    os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton
    seed_everything()
    GROUPS[sys.argv[1]]()
    print(f"{sys.argv[1]}: ok")
