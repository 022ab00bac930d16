"""GPU smoke test: tiny Llama through intarsia (Triton kernels, CUDA graphs) vs transformers.

    PYTHONPATH=. python3 benchmarks/gpu_smoke.py

Float32 greedy tokens must equal transformers'; bf16 runs end to end. Prints PASS/FAIL.
"""

from __future__ import annotations

import sys
import tempfile

import torch

sys.path.insert(0, "tests")
from hf_reference import PROMPTS, hf_greedy  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from intarsia import LLM, SamplingParams  # noqa: E402
from intarsia.tiny_models import save_tiny_model, tiny_llama_config  # noqa: E402


def main() -> None:
    path = save_tiny_model(tiny_llama_config(num_hidden_layers=3), tempfile.mkdtemp())
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).cuda().eval()
    ok = True
    for eager in (True, False):
        llm = LLM(str(path), dtype="float32", device="cuda", max_model_len=256, enforce_eager=eager,
                  gpu_memory_utilization=0.3)
        ids = [llm.get_tokenizer()(p).input_ids for p in PROMPTS]
        params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
        outs = llm.generate([{"prompt_token_ids": i} for i in ids], params, use_tqdm=False)
        for i, out in zip(ids, outs, strict=True):
            same = out.outputs[0].token_ids == hf_greedy(hf, i, 24)[0]
            ok &= same
            print(f"eager={eager} prompt_len={len(i)} tokens equal: {same}")
        graphs = llm.engine.runner.graphs
        print(f"eager={eager} graphs captured: {sorted(graphs.graphs) if graphs else None}")
        del llm
    print("PASS" if ok else "FAIL")


if __name__ == "__main__":
    main()
