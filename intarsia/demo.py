"""`make demo`: build the tiny demo model locally and generate with it.

The demo model has RANDOM weights (nothing can be downloaded here), so its text
is gibberish; it shows the calls and the engine at work. For real output, pass a
real checkpoint: `python -m intarsia.demo --model Qwen/Qwen2-VL-2B-Instruct`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from intarsia import LLM, SamplingParams
from intarsia.tiny_models import save_tiny_model, tiny_llama_config

DEMO_DIR = Path(".cache/intarsia-demo-llama")


def build_demo_model(path: Path = DEMO_DIR) -> Path:
    if not (path / "config.json").exists():
        config = tiny_llama_config(hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                                   num_attention_heads=4, num_key_value_heads=2)
        save_tiny_model(config, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", help="a checkpoint folder or hub id (default: the random demo model)")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    model = args.model or str(build_demo_model())
    if args.model is None:
        print(f"Demo model at {model}: a tiny Llama with RANDOM weights (its text is gibberish).")
    llm = LLM(model=model)
    prompts = ["The capital of France is", "Describe the scene in one sentence:"] * 8
    params = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=args.max_tokens, seed=0)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    for out in outputs[:2]:
        print(f"{out.prompt!r} -> {out.outputs[0].text!r}")
    generated = sum(len(o.outputs[0].token_ids) for o in outputs)
    print(f"{len(prompts)} requests, {generated} tokens in {elapsed:.2f} s: "
          f"{generated / elapsed:.1f} tokens/s on {llm.config.device}")


if __name__ == "__main__":
    main()
