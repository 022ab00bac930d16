"""GPU smoke test: tiny Llama (decode and mixed steps in CUDA graphs) and tiny Qwen2-VL
(images of two sizes, M-RoPE, decode steps in CUDA graphs) through intarsia (Triton
kernels, eager and CUDA graphs) vs transformers.

    PYTHONPATH=. python3 benchmarks/gpu_smoke.py

Float32 greedy tokens must equal transformers'. Prints PASS/FAIL.
"""

from __future__ import annotations

import sys
import tempfile
from collections import Counter
from collections.abc import Callable

import torch

sys.path.insert(0, "tests")
from hf_reference import PROMPTS, hf_greedy  # noqa: E402
from mm_reference import Case, generate_cases, hf_inputs, hf_mm_greedy, random_image  # noqa: E402
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor  # noqa: E402

from intarsia import LLM, SamplingParams  # noqa: E402
from intarsia.tiny_models import save_tiny_model, tiny_llama_config  # noqa: E402
from intarsia.tiny_multimodal import save_tiny_qwen2_vl  # noqa: E402

IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"


def check_qwen2_vl() -> bool:
    """transformers runs on the CPU (the reference); intarsia on the GPU."""
    path = save_tiny_qwen2_vl(tempfile.mkdtemp())
    cases = [Case(f"<|user|>{IMAGE}What is in this picture?<|end|><|assistant|>",
                  {"image": [random_image(56, 84, 0)]}),
             Case(f"{IMAGE} and {IMAGE} compared: the quick brown fox",
                  {"image": [random_image(112, 56, 1), random_image(60, 60, 2)]}),
             Case("Hello, how are you today? " * 3)]
    processor = AutoProcessor.from_pretrained(path)
    hf = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    references = [hf_mm_greedy(hf, hf_inputs(processor, case), 24)[0] for case in cases]
    ok = True
    for eager in (True, False):
        llm = LLM(str(path), dtype="float32", device="cuda", enforce_eager=eager, gpu_memory_utilization=0.3)
        for case, out, reference in zip(cases, generate_cases(llm, cases, 24), references, strict=True):
            same = out.outputs[0].token_ids == reference
            ok &= same
            print(f"qwen2-vl eager={eager} items={case.num_items} tokens equal: {same}")
        del llm
    return ok


def counting(run: Callable, replays: Counter) -> Callable:
    """`StepGraphs.run` that also counts the replays of each graph family."""
    def counted(key: tuple[str, int], rows: int) -> torch.Tensor:
        replays[key[0]] += 1
        return run(key, rows)
    return counted


def main() -> None:
    path = save_tiny_model(tiny_llama_config(num_hidden_layers=3), tempfile.mkdtemp())
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).cuda().eval()
    ok = True
    # A token budget of 16 chunks the prompts, so decodes and prompt chunks share steps:
    # with graphs on, those replay the mixed-step graphs.
    for eager, budget in ((True, None), (False, None), (True, 16), (False, 16)):
        llm = LLM(str(path), dtype="float32", device="cuda", max_model_len=256, enforce_eager=eager,
                  max_num_batched_tokens=budget, gpu_memory_utilization=0.3)
        replays = Counter()
        graphs = llm.engine.runner.graphs
        if graphs:
            graphs.run = counting(graphs.run, replays)
        ids = [llm.get_tokenizer()(p).input_ids for p in PROMPTS]
        params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
        outs = llm.generate([{"prompt_token_ids": i} for i in ids], params, use_tqdm=False)
        for i, out in zip(ids, outs, strict=True):
            same = out.outputs[0].token_ids == hf_greedy(hf, i, 24)[0]
            ok &= same
            print(f"eager={eager} budget={budget} prompt_len={len(i)} tokens equal: {same}")
        print(f"eager={eager} budget={budget} graphs captured: {sorted(graphs.graphs) if graphs else None}, "
              f"steps replayed: {dict(replays)}")
        ok &= eager or replays["mixed" if budget else "decode"] > 0
        del llm
    ok &= check_qwen2_vl()
    print("PASS" if ok else "FAIL")


if __name__ == "__main__":
    main()
