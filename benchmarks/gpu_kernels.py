"""GPU check and benchmark of the Triton kernels of `intarsia.kernels`.

    PYTHONPATH=. python3 benchmarks/gpu_kernels.py [--tune] [--md results.md]

1. Correctness: every Triton kernel against its torch reference on CUDA in bf16 and
   fp16 at realistic sizes (max error relative to the reference's largest magnitude),
   including a decode captured in a CUDA graph and replayed on new lengths.
2. Copy bandwidth: a 2 GiB device-to-device copy, bytes read + written.
3. Decode attention over batch 1/16/64 x context 1k/4k/16k (32 q / 8 KV heads, head
   dim 128, bf16), replayed from a CUDA graph: time and KV bytes read / time against
   the copy bandwidth. Prefill kernel at a few sizes against torch SDPA (flash).
`--tune` also sweeps the decode partitioning and tile configurations (graph replay).
`--linear` times the Llama-3.1-8B decode linears on one row: cuBLAS against the Triton GEMV
over its tile configurations (graph replay, weights beyond L2); `--linear-rows 2,8,16` does the
same at those row counts for the candidate in `small_batch_linear.py`.

Timings are medians of `triton.testing.do_bench`, which clears the L2 cache before
every run, so small working sets are not served from L2.
"""

from __future__ import annotations

import argparse
import math
import time
import traceback
from collections.abc import Callable
from functools import partial
from itertools import product

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

from intarsia.kernels import reference as ref
from intarsia.kernels import triton_attention as ta
from intarsia.kernels import triton_linear as tlin
from intarsia.kernels import triton_ops as to
from intarsia.kernels.metadata import AttentionMetadata

DEV = torch.device("cuda")
TOL = {torch.bfloat16: 2e-2, torch.float16: 5e-3}


def bench_ms(fn: Callable[[], object]) -> float:
    return do_bench(fn, warmup=10, rep=60, return_mode="median")


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()


def make_batch(seq_lens: list[int], q_lens: list[int], num_heads: int, num_kv_heads: int,
               head_dim: int, dtype: torch.dtype, block_size: int = 16,
               max_seq_len: int | None = None):
    """Random q and K/V cache with blocks scattered in random order, plus metadata."""
    blocks = [math.ceil(n / block_size) for n in seq_lens]
    num_blocks = sum(blocks)
    order = torch.randperm(num_blocks, device=DEV, dtype=torch.int32)
    tables = torch.zeros(len(seq_lens), max(blocks), dtype=torch.int32, device=DEV)
    first = 0
    for i, n in enumerate(blocks):
        tables[i, :n] = order[first : first + n]
        first += n
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, device=DEV, dtype=dtype)
    v_cache = torch.randn(shape, device=DEV, dtype=dtype)
    starts = [0]
    for q_len in q_lens:
        starts.append(starts[-1] + q_len)
    q = torch.randn(starts[-1], num_heads, head_dim, device=DEV, dtype=dtype)
    meta = AttentionMetadata(
        slot_mapping=torch.zeros(starts[-1], dtype=torch.int64, device=DEV),
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=DEV),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=DEV),
        block_tables=tables, max_query_len=max(q_lens),
        max_seq_len=max_seq_len or max(seq_lens),
        query_start_loc_cpu=starts, seq_lens_cpu=list(seq_lens),
    )
    return q, k_cache, v_cache, meta


# ----------------------------------------------------------------------------- correctness


def check_correctness(rows: list[tuple[str, str, float, bool]]) -> None:
    """Appends (kernel, dtype, relative error, passed) to `rows` as it goes."""

    def record(name: str, dtype: torch.dtype, got: torch.Tensor, want: torch.Tensor) -> None:
        err = rel_err(got, want)
        ok = err <= TOL[dtype] and bool(torch.isfinite(got).all())
        rows.append((name, str(dtype).removeprefix("torch."), err, ok))
        print(f"  {name:<44} {rows[-1][1]:<9} {err:9.2e}  {'PASS' if ok else 'FAIL'}", flush=True)

    torch.manual_seed(0)
    for dtype in (torch.bfloat16, torch.float16):
        tokens, hidden, inter = 4096, 4096, 14336
        x = torch.randn(tokens, hidden, device=DEV, dtype=dtype)
        res = torch.randn_like(x)
        w = torch.randn(hidden, device=DEV, dtype=dtype)
        record("rms_norm 4096x4096", dtype, to.rms_norm(x, w, 1e-6), ref.rms_norm(x, w, 1e-6))
        record("rms_norm gemma offset=1", dtype, to.rms_norm(x, w, 1e-6, 1.0),
               ref.rms_norm(x, w, 1e-6, 1.0))
        got, want = to.fused_add_rms_norm(x, res, w, 1e-6), ref.fused_add_rms_norm(x, res, w, 1e-6)
        record("fused_add_rms_norm (out)", dtype, got[0], want[0])
        record("fused_add_rms_norm (sum)", dtype, got[1], want[1])

        h = torch.randn(tokens, 2 * inter, device=DEV, dtype=dtype)
        record("silu_and_mul 4096x2x14336", dtype, to.silu_and_mul(h), ref.silu_and_mul(h))
        for approx in ("none", "tanh"):
            record(f"gelu_and_mul {approx}", dtype, to.gelu_and_mul(h, approx),
                   ref.gelu_and_mul(h, approx))
        record("quick_gelu 4096x28672", dtype, to.quick_gelu(h), ref.quick_gelu(h))
        for k, n in ((4096, 6144), (14336, 4096), (3584, 37)):  # the last: a masked N tail
            row, weight, bias = (torch.randn(1, k, device=DEV, dtype=dtype),
                                 torch.randn(n, k, device=DEV, dtype=dtype) / k**0.5,
                                 torch.randn(n, device=DEV, dtype=dtype))
            record(f"gemv 1x{k} -> {n} (+bias)", dtype, tlin.gemv(row, weight, bias),
                   ref.linear(row.float(), weight.float(), bias.float()))

        positions = torch.randint(0, 8192, (tokens,), device=DEV)
        for is_neox, rot in ((True, 128), (False, 128), (True, 64)):
            inv_freq = 1.0 / 500000 ** (torch.arange(0, rot, 2, device=DEV).float() / rot)
            angles = torch.arange(8192, device=DEV).float()[:, None] * inv_freq
            cache = torch.cat((angles.cos(), angles.sin()), -1)
            qkv = torch.randn(tokens, 48 * 128, device=DEV, dtype=dtype)  # 32 q + 8 k + 8 v
            q, k = qkv[:, : 32 * 128].view(tokens, 32, 128), qkv[:, 32 * 128 : 40 * 128].view(
                tokens, 8, 128)
            want = ref.rotary_embedding(positions, q.clone(), k.clone(), cache, is_neox)
            got = to.rotary_embedding(positions, q, k, cache, is_neox)
            name = f"rotary {'neox' if is_neox else 'gptj'} rot={rot} (strided q/k)"
            record(name + " q", dtype, got[0], want[0])
            record(name + " k", dtype, got[1], want[1])
            # Fused with the cache write: rotated keys and values go to their slots.
            v = qkv[:, 40 * 128:].view(tokens, 8, 128)
            q, k = qkv[:, : 32 * 128].view(tokens, 32, 128), qkv[:, 32 * 128: 40 * 128].view(tokens, 8, 128)
            slots = torch.randperm(512 * 16, device=DEV)[:tokens]
            caches = [torch.zeros(512, 16, 8, 128, device=DEV, dtype=dtype) for _ in range(4)]
            want_q = ref.rotary_and_write_kv(positions, q.clone(), k, v, cache, is_neox, *caches[:2], slots)
            got_q = to.rotary_and_write_kv(positions, q, k, v, cache, is_neox, *caches[2:], slots)
            name = f"rotary+write_kv {'neox' if is_neox else 'gptj'} rot={rot}"
            record(name + " q", dtype, got_q, want_q)
            record(name + " k cache", dtype, caches[2], caches[0])
            record(name + " v cache", dtype, caches[3], caches[1])

        kv = torch.randn(tokens, 2, 8, 128, device=DEV, dtype=dtype)
        slots = torch.randperm(512 * 16, device=DEV)[:tokens]
        slots[::7] = -1
        caches = [torch.zeros(512, 16, 8, 128, device=DEV, dtype=dtype) for _ in range(4)]
        ref.write_kv_cache(kv[:, 0], kv[:, 1], caches[0], caches[1], slots)
        ta.write_kv_cache(kv[:, 0], kv[:, 1], caches[2], caches[3], slots)
        exact = torch.equal(caches[0], caches[2]) and torch.equal(caches[1], caches[3])
        rows.append(("write_kv_cache (exact)", str(dtype).removeprefix("torch."), 0.0, exact))
        print(f"  write_kv_cache exact: {exact}")

        shapes = [(32, 8, 128), (16, 16, 64), (28, 4, 80)]
        opts = [{}, {"sliding_window": 700, "softcap": 30.0}]
        cases = [(s, o) for s in shapes for o in opts[: 2 if s[2] == 128 else 1]]
        for (nh, nkv, hd), extra in cases:
            extra_alibi = {"alibi_slopes": torch.rand(nh, device=DEV)} if nh == 28 else {}
            extra = {**extra, **extra_alibi}
            label = f"H{nh}/{nkv} D{hd} {','.join(extra) or 'plain'}"
            lens = torch.randint(1, 3000, (24,)).tolist() + [16, 2048, 4095]
            q, kc, vc, meta = make_batch(lens, [1] * len(lens), nh, nkv, hd, dtype)
            got = ta.paged_attention(q, kc, vc, meta, hd**-0.5, **extra)
            record(f"decode {label}", dtype, got,
                   ref.paged_attention(q, kc, vc, meta, hd**-0.5, **extra))
            q_lens = [512, 300, 1, 77, 1024]
            lens = [512, 1300, 900, 2000, 3000]  # fresh prompt, chunks over cached prefixes
            q, kc, vc, meta = make_batch(lens, q_lens, nh, nkv, hd, dtype)
            got = ta.paged_attention(q, kc, vc, meta, hd**-0.5, **extra)
            record(f"prefill {label}", dtype, got,
                   ref.paged_attention(q, kc, vc, meta, hd**-0.5, **extra))

        # CUDA graph: capture a decode sized for max_model_len, then replay it after
        # rewriting lengths and block tables in place (no host values involved).
        q, kc, vc, meta = make_batch([4000] * 8, [1] * 8, 32, 8, 128, dtype, max_seq_len=8192)
        graph, out = capture_decode(q, kc, vc, meta)
        new_lens = torch.randint(1, 4000, (8,), dtype=torch.int32).tolist()
        meta.seq_lens.copy_(torch.tensor(new_lens))
        meta.block_tables.copy_(meta.block_tables[torch.randperm(8, device=DEV)])
        meta.seq_lens_cpu = new_lens
        graph.replay()
        record("decode in CUDA graph, replayed on new lens", dtype, out,
               ref.paged_attention(q, kc, vc, meta, 128**-0.5))


def capture(fn: Callable[[], torch.Tensor]) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """Capture `fn` in a CUDA graph; returns the graph and the output tensor it refills."""
    fn()  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def capture_decode(q, kc, vc, meta) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    return capture(partial(ta.paged_attention, q, kc, vc, meta, q.shape[-1] ** -0.5))


# ----------------------------------------------------------------------------- bandwidth


def copy_bandwidth() -> float:
    """GB/s of a 2 GiB device-to-device copy (bytes read + written)."""
    src = torch.empty(2**30, dtype=torch.int16, device=DEV).random_()
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / ms / 1e6


def time_decode(batch: int, ctx: int, copy_gbs: float) -> dict:
    torch.manual_seed(0)
    q, kc, vc, meta = make_batch([ctx] * batch, [1] * batch, 32, 8, 128, torch.bfloat16)
    kv_bytes = 2 * kc.numel() * kc.element_size()
    graph, _ = capture_decode(q, kc, vc, meta)
    ms = bench_ms(graph.replay)
    eager_ms = bench_ms(partial(ta.paged_attention, q, kc, vc, meta, 128**-0.5))
    gbs = kv_bytes / ms / 1e6
    row = {"batch": batch, "ctx": ctx, "splits": ta.num_kv_splits(batch, 8, ctx, DEV),
           "us": ms * 1e3, "eager_us": eager_ms * 1e3, "gbs": gbs, "pct": 100 * gbs / copy_gbs}
    print(f"  decode b={batch:<3} ctx={ctx:<6} splits={row['splits']:<3} graph {ms * 1e3:8.1f} us"
          f"  eager {eager_ms * 1e3:8.1f} us  {gbs:7.0f} GB/s  {row['pct']:5.1f}% of copy",
          flush=True)
    return row


def time_prefill(batch: int, q_len: int, prefix: int) -> dict:
    torch.manual_seed(0)
    lens = [prefix + q_len] * batch
    q, kc, vc, meta = make_batch(lens, [q_len] * batch, 32, 8, 128, torch.bfloat16)
    ms = bench_ms(partial(ta.paged_attention, q, kc, vc, meta, 128**-0.5))
    # Causal FLOPs: 2 matmuls x 2 flops x rows x visible keys (prefix + q_len/2 on average).
    flops = 4 * batch * 32 * 128 * q_len * (prefix + q_len / 2)
    sdpa_ms = float("nan")
    if prefix == 0:
        qd = q.view(batch, q_len, 32, 128).transpose(1, 2)
        kd = torch.randn(batch, 32, q_len, 128, device=DEV, dtype=torch.bfloat16)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            sdpa_ms = bench_ms(partial(F.scaled_dot_product_attention, qd, kd, kd.clone(),
                                       is_causal=True))
    row = {"batch": batch, "q_len": q_len, "prefix": prefix, "us": ms * 1e3,
           "tflops": flops / ms / 1e9, "sdpa_us": sdpa_ms * 1e3,
           "sdpa_tflops": flops / sdpa_ms / 1e9}
    print(f"  prefill b={batch} q={q_len} prefix={prefix}: {ms * 1e3:8.1f} us "
          f"({row['tflops']:.0f} TFLOP/s), sdpa flash {sdpa_ms * 1e3:8.1f} us", flush=True)
    return row


def op_bandwidth() -> list[tuple[str, float, float]]:
    """(op, us, GB/s) for the element-wise kernels at a prefill-sized batch."""
    tokens, hidden, inter = 8192, 4096, 14336
    x = torch.randn(tokens, hidden, device=DEV, dtype=torch.bfloat16)
    res, w = torch.randn_like(x), torch.randn(hidden, device=DEV, dtype=torch.bfloat16)
    h = torch.randn(tokens, 2 * inter, device=DEV, dtype=torch.bfloat16)
    qkv = torch.randn(tokens, 48 * 128, device=DEV, dtype=torch.bfloat16)
    q, k = qkv[:, : 32 * 128].view(tokens, 32, 128), qkv[:, 32 * 128 : 40 * 128].view(
        tokens, 8, 128)
    pos = torch.randint(0, 8192, (tokens,), device=DEV)
    cache = torch.randn(8192, 128, device=DEV)
    kv = torch.randn(tokens, 2, 8, 128, device=DEV, dtype=torch.bfloat16)
    kc, vc = (torch.empty(tokens // 16, 16, 8, 128, device=DEV, dtype=torch.bfloat16)
              for _ in range(2))
    slots = torch.randperm(tokens, device=DEV)
    size = x.numel() * 2
    cases = [
        ("rms_norm", lambda: to.rms_norm(x, w, 1e-6), 2 * size),
        ("fused_add_rms_norm", lambda: to.fused_add_rms_norm(x, res, w, 1e-6), 4 * size),
        ("silu_and_mul", lambda: to.silu_and_mul(h), h.numel() * 2 * 3 // 2),
        ("rotary (neox)", lambda: to.rotary_embedding(pos, q, k, cache, True),
         2 * (q.numel() + k.numel()) * 2),
        ("write_kv_cache", lambda: ta.write_kv_cache(kv[:, 0], kv[:, 1], kc, vc, slots),
         2 * kv.numel() * 2),
    ]
    rows = []
    for name, fn, nbytes in cases:
        ms = bench_ms(fn)
        rows.append((name, ms * 1e3, nbytes / ms / 1e6))
        print(f"  {name:<20} {ms * 1e3:8.1f} us  {rows[-1][2]:6.0f} GB/s", flush=True)
    return rows


# ----------------------------------------------------------------------------- tuning


def tune_decode(batch: int, ctx: int) -> None:
    q, kc, vc, meta = make_batch([ctx] * batch, [1] * batch, 32, 8, 128, torch.bfloat16)
    kv_bytes = 2 * kc.numel() * kc.element_size()
    default = ta.num_kv_splits(batch, 8, ctx, DEV)
    results = []
    for splits, min_part, block_n, stages in product((1, 2, 4, 8, 16, 32, 64), (64, 128, 256),
                                                     (32, 64), (2, 3)):
        if splits > triton.cdiv(ctx, min_part):
            continue  # same partitions as a smaller bound
        run = partial(ta.paged_decode, q, kc, vc, meta, 128**-0.5, num_splits=splits,
                      min_part=min_part, block_n=block_n, num_stages=stages)
        try:
            ms = bench_ms(capture(run)[0].replay)
        except Exception as exc:  # a config may not fit in shared memory
            print(f"  {splits}/{min_part}/{block_n}/{stages}: {exc!r:.80}")
            continue
        results.append((round(kv_bytes / ms / 1e6), splits, min_part, block_n, stages))
    print(f"  b={batch} ctx={ctx} (default splits {default}): "
          "best (GB/s, splits, min_part, block_n, stages):")
    for r in sorted(results, reverse=True)[:5]:
        print(f"    {r}")


def tune() -> None:
    print("\n== decode tuning (GB/s of KV read, CUDA-graph replay, 4 warps) ==")
    for batch, ctx in ((1, 1024), (1, 4096), (1, 16384), (16, 1024), (16, 4096), (64, 1024),
                       (64, 4096)):
        tune_decode(batch, ctx)
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- linear

# (name, in, out) of the Llama-3.1-8B shape's linears; `lm_head` runs once per step.
DECODE_LINEARS = (("qkv", 4096, 6144), ("o_proj", 4096, 4096), ("gate_up", 4096, 28672),
                  ("down", 14336, 4096), ("lm_head", 4096, 128256))


def time_linear_calls(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                      weights: list[torch.Tensor]) -> float:
    """us per call of `fn(x, w)` replayed from a graph that cycles through `weights`
    (distinct copies, so none is served from L2)."""
    graph, _ = capture(lambda: [fn(x, w) for w in weights][-1])
    return bench_ms(graph.replay) * 1e3 / len(weights)


def sweep_linears(copy_gbs: float, rows: list[int], references: list[tuple[str, Callable]],
                  candidate: Callable[..., torch.Tensor], label: str, configs: list[dict],
                  shown: int) -> None:
    """For each decode linear and row count: the `references` and the `shown` fastest
    `candidate` tile configurations (keyword arguments), with their error against F.linear."""
    for name, k, n in DECODE_LINEARS:
        nbytes = n * k * 2
        copies = max(2, min(8, -(-400_000_000 // nbytes)))
        weights = [torch.randn(n, k, device=DEV, dtype=torch.bfloat16) / 64 for _ in range(copies)]
        for m in rows:
            x = torch.randn(m, k, device=DEV, dtype=torch.bfloat16)
            want = F.linear(x, weights[0])
            results = [(ref_label, time_linear_calls(fn, x, weights)) for ref_label, fn in references]
            for config in configs:
                run = partial(candidate, **config)
                tag = f"{label} {'/'.join(str(v) for v in config.values())}"
                try:
                    err = rel_err(run(x, weights[0]), want)
                    results.append((f"{tag} err {err:.0e}", time_linear_calls(run, x, weights)))
                except Exception as exc:  # a config may not fit in registers / shared memory
                    print(f"    {tag}: {exc!r:.60}")
            print(f"  {name} [{m}x{k}] x [{k}x{n}] ({nbytes / 1e6:.0f} MB); {label} tiles: "
                  f"{'/'.join(configs[0])}", flush=True)
            tried = results[len(references):]
            for tag, us in results[:len(references)] + sorted(tried, key=lambda r: r[1])[:shown]:
                gbs = nbytes / us / 1e3
                print(f"    {tag:<44} {us:8.1f} us {gbs:6.0f} GB/s {100 * gbs / copy_gbs:5.1f}% of copy")
        del weights
        torch.cuda.empty_cache()


def linear_sweep(copy_gbs: float) -> None:
    """One row: cuBLAS and the GEMV with its default tiles, against the GEMV's tile sweep."""
    configs = [dict(block_n=bn, block_k=bk, num_warps=w, num_stages=st)
               for bn, bk, w, st in product((4, 8, 16), (256, 512, 1024), (4, 8), (3, 4))]
    sweep_linears(copy_gbs, [1], [("cublas", F.linear), ("triton gemv (default tiles)", tlin.gemv)],
                  tlin.gemv, "gemv", configs, shown=4)


def small_batch_sweep(copy_gbs: float, rows: list[int]) -> None:
    """cuBLAS against the candidate swap-AB kernel (benchmarks/small_batch_linear.py) at
    2-16 rows, where intarsia still uses cuBLAS."""
    from small_batch_linear import swap_ab_linear

    configs = [dict(block_n=bn, block_k=bk, split_k=sk, num_stages=st)
               for bn, bk, sk, st in product((64, 128), (64, 128, 256), (1, 2, 4), (3, 4))]
    sweep_linears(copy_gbs, rows, [("cublas", F.linear)], swap_ab_linear, "swap-AB", configs, shown=3)


# ----------------------------------------------------------------------------- report


def markdown(card: str, copy_gbs: float, correctness, decode, prefill, ops) -> str:
    lines = [f"Card: {card}; torch {torch.__version__}, triton {triton.__version__}; "
             f"{time.strftime('%Y-%m-%d')}; `PYTHONPATH=. python3 benchmarks/gpu_kernels.py`", "",
             f"Copy bandwidth (2 GiB device-to-device, read + written): **{copy_gbs:.0f} GB/s**",
             "", "Decode attention (32 q / 8 KV heads, head dim 128, bf16, block size 16, "
             "CUDA-graph replay; GB/s = KV bytes read / time):", "",
             "| batch | context | splits | time (us) | eager (us) | GB/s | % of copy |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['batch']} | {r['ctx']} | {r['splits']} | {r['us']:.1f} | "
              f"{r['eager_us']:.1f} | {r['gbs']:.0f} | {r['pct']:.1f}% |" for r in decode]
    lines += ["", "Prefill (32 q / 8 KV heads, head dim 128, bf16, causal) vs torch SDPA flash "
              "(contiguous K/V, same FLOPs):", "",
              "| batch | new tokens | cached prefix | intarsia (us) | TFLOP/s | SDPA flash (us) "
              "| TFLOP/s |", "|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['batch']} | {r['q_len']} | {r['prefix']} | {r['us']:.0f} | "
              f"{r['tflops']:.0f} | {r['sdpa_us']:.0f} | {r['sdpa_tflops']:.0f} |" for r in prefill]
    lines += ["", "Element-wise kernels (bf16, 8192 tokens, hidden 4096 / 14336):", "",
              "| kernel | time (us) | GB/s |", "|---|---:|---:|"]
    lines += [f"| {name} | {us:.1f} | {gbs:.0f} |" for name, us, gbs in ops]
    lines += ["", "Correctness vs the torch reference (max |triton - ref| / max |ref|):", "",
              "| kernel | dtype | rel. error | result |", "|---|---|---:|---|"]
    lines += [f"| {n} | {d} | {e:.2e} | {'PASS' if ok else 'FAIL'} |"
              for n, d, e, ok in correctness]
    return "\n".join(lines) + "\n"


def attempt(fn: Callable, *args):
    """Run one measurement; a failure is printed and skipped so the rest still runs."""
    try:
        return fn(*args)
    except Exception:
        traceback.print_exc()
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tune", action="store_true", help="also sweep tile configurations")
    parser.add_argument("--md", help="write the markdown tables to this file")
    parser.add_argument("--linear", action="store_true", help="only the decode-linear sweep")
    parser.add_argument("--linear-rows", default="",
                        help="comma-separated row counts (2-16): only the small-batch candidate sweep")
    args = parser.parse_args()
    card = torch.cuda.get_device_name()
    print(f"{card}, torch {torch.__version__}, triton {triton.__version__}")
    if args.linear or args.linear_rows:
        copy_gbs = copy_bandwidth()
        print(f"copy bandwidth {copy_gbs:.0f} GB/s\n== decode linears ==")
        if args.linear_rows:
            small_batch_sweep(copy_gbs, [int(r) for r in args.linear_rows.split(",")])
        else:
            linear_sweep(copy_gbs)
        return

    print("\n== correctness (Triton vs torch reference) ==")
    correctness: list[tuple[str, str, float, bool]] = []
    attempt(check_correctness, correctness)
    print("\n== copy bandwidth ==")
    copy_gbs = copy_bandwidth()
    print(f"  {copy_gbs:.0f} GB/s")
    if args.tune:
        attempt(tune)
    print("\n== decode attention ==")
    decode = [attempt(time_decode, b, ctx, copy_gbs) for b in (1, 16, 64)
              for ctx in (1024, 4096, 16384)]
    print("\n== prefill attention ==")
    prefill = [attempt(time_prefill, *case) for case in ((1, 4096, 0), (4, 1024, 0), (16, 512, 0),
                                                         (1, 2048, 2048))]
    print("\n== element-wise kernels ==")
    ops = attempt(op_bandwidth) or []

    report = markdown(card, copy_gbs, correctness, [r for r in decode if r],
                      [r for r in prefill if r], ops)
    print("\n" + report)
    if args.md:
        with open(args.md, "w") as f:
            f.write(report)
    failed = [r for r in correctness if not r[3]]
    print(f"{len(correctness) - len(failed)}/{len(correctness)} correctness checks passed")


if __name__ == "__main__":
    main()
