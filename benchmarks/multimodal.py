"""Multimodal serving: Qwen2-VL-7B-shaped random weights, N requests each with its
own 448x448 image and a fixed number of output tokens, all arriving at once.

Reports requests/s and mean time-to-first-token for intarsia (continuous batching,
encoder once per image) and transformers (static left-padded batches through
`generate`), on the same weights, images and device in one run. Media processing
(HF image processor) is inside the timed region for both.

    PYTHONPATH=. python3 benchmarks/multimodal.py             # GPU, 7B shape
    PYTHONPATH=. python3 benchmarks/multimodal.py --tiny      # CPU end-to-end check
"""

from __future__ import annotations

import argparse
import cProfile
import math
import pstats
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText
from transformers.generation.streamers import BaseStreamer

from benchmarks.common import sync
from benchmarks.profile_step import timed_steps, top_kernels
from intarsia import LLM, SamplingParams
from intarsia.tiny_multimodal import qwen2_vl_parts

QWEN2_VL_7B_TEXT = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                        num_attention_heads=28, num_key_value_heads=4, rms_norm_eps=1e-6,
                        max_position_embeddings=32768,
                        rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                         "mrope_section": [16, 24, 24]})
QWEN2_VL_7B_VISION = dict(depth=32, embed_dim=1280, hidden_size=3584, num_heads=16, mlp_ratio=4)
PROMPT = "<|user|><|vision_start|><|image_pad|><|vision_end|>Describe this image.<|end|><|assistant|>"


@dataclass
class Timing:
    name: str
    seconds: float
    ttft: list[float]  # per request, from the common arrival time
    requests: int
    ready: list[float] | None = None  # per request, when its prompt was processed (intarsia)

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds


def build(tiny: bool, device: torch.device, dtype: torch.dtype, preprocess_processes: int | None = None):
    """A random transformers Qwen2-VL and an intarsia LLM holding the same weights
    (`preprocess_processes`: intarsia's `mm_preprocess_processes`, None for its default)."""
    if tiny:
        config, processor = qwen2_vl_parts(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
    else:  # the processor's real defaults: a 448x448 image -> 32x32 patches -> 256 tokens
        config, processor = qwen2_vl_parts(56 * 56, 28 * 28 * 1280, QWEN2_VL_7B_TEXT, QWEN2_VL_7B_VISION)
    torch.manual_seed(0)
    with torch.device(device):
        hf = AutoModelForImageTextToText.from_config(config, dtype=dtype).eval()
    with torch.no_grad():
        for param in hf.parameters():
            if param.dim() > 1:
                param.normal_(0, 1 / math.sqrt(param[0].numel()))
    folder = Path(tempfile.mkdtemp(prefix="intarsia-mm-bench-"))
    config.save_pretrained(folder)
    processor.save_pretrained(folder)
    llm = LLM(str(folder), dtype=dtype, device=str(device), load_format="dummy", max_model_len=1024,
              mm_preprocess_processes=preprocess_processes)
    llm.engine.runner.model.load_weights(hf.state_dict().items())
    processor.tokenizer.padding_side = "left"
    return hf, processor, llm


def images(n: int, size: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def run_intarsia(llm: LLM, pictures: list[Image.Image], output_len: int) -> Timing:
    """All requests submitted at t0 through `generate` (prompts are processed on worker
    threads while the engine runs); TTFT is when each request's first token existed."""
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    prompts = [{"prompt": PROMPT, "multi_modal_data": {"image": picture}} for picture in pictures]
    sync(llm.config.device)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    sync(llm.config.device)
    elapsed = time.perf_counter() - start
    assert all(len(o.outputs[0].token_ids) == output_len for o in outputs)
    return Timing("intarsia", elapsed, [o.metrics.first_token_time - start for o in outputs], len(pictures),
                  sorted(o.metrics.arrival_time - start for o in outputs))


def add_processed(llm: LLM, pictures: list[Image.Image], output_len: int) -> None:
    """Process one request per picture now and hand them to the engine (not run yet)."""
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    for picture in pictures:
        llm.engine.add_request(llm._make_request({"prompt": PROMPT, "multi_modal_data": {"image": picture}},
                                                 params, {}))


def run_engine_only(llm: LLM, pictures: list[Image.Image], output_len: int) -> float:
    """Seconds for the engine to serve the requests when every prompt is processed
    beforehand (untimed): the GPU pipeline alone, without preprocessing overlapping it."""
    engine = llm.engine
    add_processed(llm, pictures, output_len)
    sync(llm.config.device)
    start = time.perf_counter()
    while engine.has_unfinished():
        engine.step()
    sync(llm.config.device)
    return time.perf_counter() - start


class FirstTokenClock(BaseStreamer):
    """Records when `generate` emits its first new token (the prompt is put first)."""

    def __init__(self) -> None:
        self.calls, self.first = 0, None

    def put(self, value) -> None:
        self.calls += 1
        if self.calls == 2:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def run_hf(hf, processor, pictures: list[Image.Image], output_len: int, batch_size: int) -> Timing:
    device = next(hf.parameters()).device
    sync(device)
    start = time.perf_counter()
    ttft = []
    for i in range(0, len(pictures), batch_size):
        batch = pictures[i:i + batch_size]
        inputs = processor(text=[PROMPT] * len(batch), images=batch, padding=True,
                           return_tensors="pt").to(device)
        clock = FirstTokenClock()
        with torch.no_grad():
            hf.generate(**inputs, max_new_tokens=output_len, min_new_tokens=output_len, do_sample=False,
                        pad_token_id=2, streamer=clock)
        ttft += [clock.first - start] * len(batch)
    sync(device)
    return Timing("transformers generate", time.perf_counter() - start, ttft, len(pictures))


def profile_intarsia(llm: LLM, pictures: list[Image.Image], output_len: int, use_cprofile: bool) -> None:
    """cProfile (all threads, if `use_cprofile`), plus a timeline: when prompts became requests
    (processed) and how long each engine step took, by its number of scheduled tokens."""
    engine = llm.engine
    # (start, seconds, the engine thread's CPU seconds, scheduled tokens): CPU time well below
    # the wall time means the thread waited (for the GIL, or the GPU).
    steps: list[tuple[float, float, float, int]] = []
    schedule, step = engine.scheduler.schedule, engine.step
    scheduled_tokens = [0]

    def counting_schedule():
        items = schedule()
        scheduled_tokens[0] = sum(item.num_new_tokens for item in items)
        return items

    def timed_step():
        begin, cpu = time.perf_counter(), time.thread_time()
        finished = step()
        sync(llm.config.device)
        steps.append((begin, time.perf_counter() - begin, time.thread_time() - cpu, scheduled_tokens[0]))
        return finished

    engine.scheduler.schedule, engine.step = counting_schedule, timed_step
    compiles = watch_triton_compiles()
    retries = torch.cuda.memory_stats().get("num_alloc_retries", 0) if torch.cuda.is_available() else 0
    profiler = cProfile.Profile()
    if use_cprofile:
        profiler.enable()
    start = time.perf_counter()
    timing = run_intarsia(llm, pictures, output_len)
    profiler.disable()
    engine.scheduler.schedule, engine.step = schedule, step
    print(f"intarsia {timing.seconds:.2f} s, mean TTFT {sum(timing.ttft) / len(timing.ttft):.3f} s, "
          f"first TTFT {min(timing.ttft):.3f} s, last {max(timing.ttft):.3f} s")
    steps = [s for s in steps if s[3]]
    if torch.cuda.is_available():
        retries = torch.cuda.memory_stats().get("num_alloc_retries", 0) - retries
        print(f"CUDA allocator retries (cache flushed to fit an allocation) during the run: {retries}")
    print(f"Triton compilations during the run: {len(compiles)}" + "".join(
        f"\n  at {at - start:.2f} s: {name} {seconds:.2f} s" for at, name, seconds in compiles))
    ready = timing.ready
    print("prompts processed by (s): " + ", ".join(
        f"{q}%: {ready[min(len(ready) - 1, len(ready) * q // 100)]:.2f}"
        for q in (10, 50, 90, 100)))
    print(f"{len(steps)} steps, {sum(s[1] for s in steps):.2f} s inside steps")
    for label, chosen in (("decode-only", [s for s in steps if s[3] <= 256]),
                          ("with prefill", [s for s in steps if s[3] > 256])):
        if chosen:
            print(f"  {label}: {len(chosen)} steps, {sum(s[1] for s in chosen):.2f} s, "
                  f"{sum(s[3] for s in chosen)} tokens, first at {chosen[0][0] - start:.2f} s, "
                  f"last ends {chosen[-1][0] + chosen[-1][1] - start:.2f} s")
    print("timeline (s from start): step start, seconds, engine thread CPU seconds, tokens")
    for begin, seconds, cpu, tokens in steps[:: max(1, len(steps) // 40)]:
        print(f"  {begin - start:7.3f} {seconds:7.4f} {cpu:7.4f} {tokens:6d}")
    if use_cprofile:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(18)
    kernel_tables(llm, images(len(pictures), pictures[0].width, seed=2), output_len)


def watch_triton_compiles() -> list[tuple[float, str, float]]:
    """(start time, kernel, seconds) of every Triton compilation from now on."""
    from triton.runtime.jit import JITFunction

    compiles: list[tuple[float, str, float]] = []
    compile_once = JITFunction._do_compile

    def timed(self, *args, **kwargs):
        begin = time.perf_counter()
        kernel = compile_once(self, *args, **kwargs)
        compiles.append((begin, self.fn.__name__, time.perf_counter() - begin))
        return kernel

    JITFunction._do_compile = timed
    return compiles


def kernel_tables(llm: LLM, pictures: list[Image.Image], output_len: int) -> None:
    """torch.profiler tables of the first prefill step and of decode steps at full batch,
    the requests made beforehand (no processing in the way)."""
    engine = llm.engine
    add_processed(llm, pictures, output_len)
    top_kernels(llm, "first prefill step", steps=1)
    while any(not seq.is_prefill_done for seq in engine.scheduler.running) or engine.scheduler.waiting:
        engine.step()
    timed_steps(llm, 10)  # settle into full-batch decoding
    print(f"\ndecode batch {len(engine.scheduler.running)}: "
          f"{timed_steps(llm, 5):.1f} ms/step without the profiler")
    top_kernels(llm, "decode steps")
    while engine.has_unfinished():
        engine.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="toy model on the CPU (end-to-end check)")
    parser.add_argument("--requests", type=int, default=None, help="default 256 (16 with --tiny)")
    parser.add_argument("--output-len", type=int, default=None, help="default 64 (8 with --tiny)")
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--hf-batch-size", type=int, default=32)
    parser.add_argument("--skip-hf", action="store_true", help="intarsia only")
    parser.add_argument("--preprocess-processes", type=int, default=None,
                        help="intarsia's mm_preprocess_processes (default: its own)")
    parser.add_argument("--engine-threads", type=int, default=None,
                        help="torch.set_num_threads in this (the engine's) process, before the runs")
    parser.add_argument("--engine-only", action="store_true",
                        help="also time intarsia's engine on prompts processed beforehand")
    parser.add_argument("--timeline", action="store_true", help="intarsia only: step timeline, kernel tables")
    parser.add_argument("--profile", action="store_true",
                        help="intarsia only, under cProfile (the engine thread), printing where time goes")
    args = parser.parse_args()
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    n = args.requests or (16 if args.tiny else 256)
    output_len = args.output_len or (8 if args.tiny else 64)
    if args.engine_threads:
        torch.set_num_threads(args.engine_threads)
    hf, processor, llm = build(args.tiny, device, dtype, args.preprocess_processes)
    warm = images(2, args.image_size, seed=1)
    run_intarsia(llm, warm, 2)
    if not args.skip_hf:
        run_hf(hf, processor, warm, 2, args.hf_batch_size)
    pictures = images(n, args.image_size)
    if args.profile or args.timeline:
        profile_intarsia(llm, pictures, output_len, use_cprofile=args.profile)
        return
    tokens = len(processor(text=[PROMPT], images=pictures[:1])["input_ids"][0])
    results = [run_intarsia(llm, pictures, output_len)]
    if not args.skip_hf:
        results.append(run_hf(hf, processor, pictures, output_len, args.hf_batch_size))
    base = results[-1]
    name = "tiny Qwen2-VL (CPU)" if args.tiny else "Qwen2-VL-7B shape, random weights"
    print(f"\n{name}: {n} requests x one {args.image_size}x{args.image_size} image "
          f"({tokens} prompt tokens), {output_len} output tokens, {dtype}, "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; "
          f"transformers batch {args.hf_batch_size}")
    print(f"{'engine':<24}{'seconds':>10}{'req/s':>10}{'mean TTFT s':>14}{'speed-up':>10}")
    for r in results:
        print(f"{r.name:<24}{r.seconds:>10.2f}{r.requests_per_s:>10.2f}{sum(r.ttft) / len(r.ttft):>14.3f}"
              f"{r.requests_per_s / base.requests_per_s:>9.2f}x")
    if args.engine_only:
        print(f"intarsia engine alone, prompts processed beforehand: "
              f"{run_engine_only(llm, images(n, args.image_size, seed=3), output_len):.2f} s")
    print(f"intarsia encoder runs: {llm.engine.runner.encoders.num_items_encoded} "
          f"(images: {n + len(warm)})")


if __name__ == "__main__":
    main()
