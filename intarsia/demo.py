"""`make demo`: build the tiny demo vision-language model locally and generate with it.

The demo model (a tiny Qwen2-VL) has RANDOM weights (nothing can be downloaded
here), so its text is gibberish; it shows the calls and the engine at work:
images of different sizes inlaid into prompts, batched with text-only prompts.
For real output, pass a real checkpoint:
`python -m intarsia.demo --model Qwen/Qwen2-VL-2B-Instruct`.
"""

from __future__ import annotations

import argparse
import time

from PIL import Image, ImageDraw

from intarsia import LLM, SamplingParams
from intarsia.tiny_multimodal import build_demo_vlm


def demo_image(width: int, height: int, color: str) -> Image.Image:
    """A drawn picture (no files needed): a sun over a hill."""
    image = Image.new("RGB", (width, height), "skyblue")
    draw = ImageDraw.Draw(image)
    draw.ellipse((width * 0.6, height * 0.1, width * 0.85, height * 0.35), fill="gold")
    draw.rectangle((0, height * 0.7, width, height), fill=color)
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", help="a checkpoint folder or hub id (default: the random demo model)")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    model = args.model or str(build_demo_vlm())
    if args.model is None:
        print(f"Demo model at {model}: a tiny Qwen2-VL with RANDOM weights (its text is gibberish).")
    llm = LLM(model=model, max_model_len=1024)
    images = [[demo_image(112, 84, "green")], [demo_image(56, 112, "brown"), demo_image(84, 84, "olive")],
              None, [demo_image(140, 56, "green")]] * 4
    prompts = ["Describe this picture.", "What differs between these two pictures?",
               "The capital of France is", "Where is the sun?"] * 4
    params = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=args.max_tokens, seed=0)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, images=images, use_tqdm=False)
    elapsed = time.perf_counter() - start
    for out, items in zip(outputs[:3], images[:3], strict=True):
        print(f"{out.prompt!r} + {len(items or [])} image(s) ({len(out.prompt_token_ids)} prompt tokens)"
              f"\n  -> {out.outputs[0].text!r}")
    generated = sum(len(o.outputs[0].token_ids) for o in outputs)
    print(f"{len(prompts)} requests ({sum(len(i or []) for i in images)} images), {generated} tokens in "
          f"{elapsed:.2f} s: "
          f"{generated / elapsed:.1f} tokens/s on {llm.config.device}")


if __name__ == "__main__":
    main()
