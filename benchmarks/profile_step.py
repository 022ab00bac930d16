"""Where a step's time goes on the GPU, for the Llama-3.1-8B shape (random bf16 weights).

    PYTHONPATH=. python3 benchmarks/profile_step.py

Prints: the CUDA-graph replay time of a decode step alone vs the whole engine
step (the difference is host time the GPU waits for), the time of mixed steps (decode
rows plus a new prompt) from CUDA graphs and eager against their GPU kernel time, and the top kernels
of a decode step at batch 1 / 256 and of a prefill step, from torch.profiler.
"""

from __future__ import annotations

import itertools
import time

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import LlamaConfig

from benchmarks.common import sync
from intarsia import LLM, SamplingParams
from intarsia.engine.sequence import Request


def build(max_num_batched_tokens: int) -> LLM:
    import tempfile

    from intarsia.tiny_models import train_tokenizer

    config = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096,
                         rope_theta=500000.0, architectures=["LlamaForCausalLM"])
    folder = tempfile.mkdtemp()
    config.save_pretrained(folder)
    train_tokenizer(512).save_pretrained(folder)
    return LLM(folder, dtype="bfloat16", load_format="dummy", max_model_len=4096,
               max_num_batched_tokens=max_num_batched_tokens, gpu_memory_utilization=0.85)


_request_ids = itertools.count()


def add(llm: LLM, n: int, prompt_len: int, max_tokens: int) -> None:
    """`n` requests whose prompts share no prefix with any earlier one (no cache hits)."""
    for _ in range(n):
        i = next(_request_ids)
        ids = [(i * 7919 + j) % 120000 + 3 for j in range(prompt_len)]
        llm.engine.add_request(Request(f"r{i}", None, ids, SamplingParams(
            temperature=0, max_tokens=max_tokens, ignore_eos=True)))


def mixed_steps(llm: LLM, steps: int) -> float:
    """Mean wall time (ms) of `steps` mixed steps: one new 256-token prompt joins the
    running decodes before each (what serving many requests looks like)."""
    sync(llm.config.device)
    start = time.perf_counter()
    for _ in range(steps):
        add(llm, 1, 256, 4000)
        llm.engine.step()
    sync(llm.config.device)
    return (time.perf_counter() - start) / steps * 1000


def timed_steps(llm: LLM, steps: int) -> float:
    """Mean wall time of the next `steps` engine steps, in ms."""
    sync(llm.config.device)
    start = time.perf_counter()
    for _ in range(steps):
        llm.engine.step()
    sync(llm.config.device)
    return (time.perf_counter() - start) / steps * 1000


def top_kernels(llm: LLM, label: str, steps: int = 3) -> None:
    """torch.profiler's table of the next `steps` engine steps."""
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            llm.engine.step()
        sync(llm.config.device)
    print(f"\n== {label}: top kernels over {steps} steps ==")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))


def main() -> None:
    llm = build(8192)
    graphs = llm.engine.runner.graphs
    for batch in (1, 64, 256):
        add(llm, batch, 128, 4000)
        scheduler = llm.engine.scheduler
        while scheduler.waiting or any(not s.is_prefill_done for s in scheduler.running):
            llm.engine.step()
        for _ in range(3):
            llm.engine.step()
        step_ms = timed_steps(llm, 20)
        graph = graphs.graphs[graphs.key_for(batch, batch, batch)][0]
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(20):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        print(f"decode batch {batch:>3}: engine step {step_ms:6.2f} ms, graph replay alone "
              f"{start.elapsed_time(end) / 20:6.2f} ms")
        if batch in (1, 256):
            top_kernels(llm, f"decode batch {batch}")
        for seq in list(llm.engine.scheduler.running):
            llm.engine.scheduler.finish(seq)
    # Mixed steps: replayed from the mixed CUDA graphs, then eagerly (32 layers of launches).
    add(llm, 200, 128, 4000)
    while llm.engine.scheduler.waiting or any(not s.is_prefill_done for s in llm.engine.scheduler.running):
        llm.engine.step()
    for mode in ("CUDA graph", "eager"):
        if mode == "eager":
            graphs.token_sizes = []  # no mixed graph fits any more: the runner goes eager
        mixed_steps(llm, 3)  # warm-up
        print(f"\nmixed steps ({mode}; about 200 decode rows + one 256-token prompt): "
              f"{mixed_steps(llm, 20):.2f} ms per engine step")
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            mixed_steps(llm, 3)
        cuda_ms = sum(e.self_device_time_total for e in prof.key_averages()) / 1000 / 3
        print(f"  under the profiler: {cuda_ms:.2f} ms of GPU kernels per step (if well below the "
              f"step time above, the host's launches bound these steps)")
    for seq in list(llm.engine.scheduler.running):
        llm.engine.scheduler.finish(seq)
    add(llm, 32, 256, 1)
    torch.cuda.synchronize()
    start = time.perf_counter()
    llm.engine.step()
    torch.cuda.synchronize()
    print(f"\nprefill step of 8192 tokens (32 x 256): {(time.perf_counter() - start) * 1000:.1f} ms "
          f"(floor at 790 TFLOP/s: {2 * 8.03e9 * 8192 / 790e12 * 1000:.1f} ms)")
    add(llm, 32, 256, 1)
    top_kernels(llm, "prefill 8192 tokens", steps=1)


if __name__ == "__main__":
    main()
