"""The multimodal variant of `hf_reference.assert_matches_hf`.

A case is a prompt plus its media. transformers gets the whole prompt through the
checkpoint's HF processor (which expands the placeholders itself) and generates
greedily with a full forward per step; intarsia gets the raw prompt and media,
all cases in one batch. Prompt token ids must be identical, greedy tokens equal
and top-k logprobs within `atol`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from hf_reference import assert_outputs_match
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from intarsia import LLM, SamplingParams

HF_MEDIA_ARGS = {"image": "images", "video": "videos", "audio": "audio"}
GENERATED_PAD = {"attention_mask": 1, "token_type_ids": 1}  # per-token inputs of generated tokens


@dataclass
class Case:
    prompt: str
    media: dict[str, list] = field(default_factory=dict)  # modality -> items

    @property
    def num_items(self) -> int:
        return sum(len(v) for v in self.media.values())


def random_image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def random_video(frames: int, width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def hf_inputs(processor, case: Case) -> dict[str, torch.Tensor]:
    media = {HF_MEDIA_ARGS[m]: items for m, items in case.media.items()}
    return dict(processor(text=case.prompt, return_tensors="pt", **media))


def hf_mm_greedy(model, inputs: dict[str, torch.Tensor], max_new_tokens: int
                 ) -> tuple[list[int], torch.Tensor]:
    """Greedy tokens and per-step log-softmax, a full forward over the sequence each
    step; per-token inputs (e.g. `mm_token_type_ids`) are extended with text (0), and
    `token_type_ids` with 1: generated tokens are a prefix-LM's causal suffix (PaliGemma)."""
    ids = inputs["input_ids"][0].tolist()
    prompt_len = len(ids)
    per_token = {k for k, v in inputs.items()
                 if k != "input_ids" and v.dim() == 2 and v.shape == (1, prompt_len)}
    rows = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            grown = len(ids) - prompt_len
            kwargs = {k: (torch.nn.functional.pad(v, (0, grown), value=GENERATED_PAD.get(k, 0))
                          if k in per_token else v) for k, v in inputs.items() if k != "input_ids"}
            logits = model(input_ids=torch.tensor([ids]), **kwargs).logits[0, -1].float()
            rows.append(torch.log_softmax(logits, dim=-1))
            ids.append(int(logits.argmax()))
    return ids[prompt_len:], torch.stack(rows)


def generate_cases(llm: LLM, cases: list[Case], max_new_tokens: int, **kwargs):
    params = SamplingParams(temperature=0, max_tokens=max_new_tokens, logprobs=5, ignore_eos=True)
    prompts = [{"prompt": c.prompt, "multi_modal_data": c.media, **kwargs} for c in cases]
    return llm.generate(prompts, params, use_tqdm=False)


def assert_mm_matches_hf(path: Path, cases: list[Case], max_new_tokens: int = 8, atol: float = 1e-3,
                         model_cls=AutoModelForImageTextToText,
                         engine_variants: list[dict] | None = None, inputs_of=hf_inputs) -> LLM:
    """Check intarsia == transformers on `cases` for each engine variant (by default:
    prefix caching on; then off with a token budget of 8, so that chunked prefill
    splits items, where each item must be encoded exactly once). `inputs_of(processor, case)`
    gives transformers' inputs of a case. Returns the last LLM."""
    processor = AutoProcessor.from_pretrained(path)
    hf = model_cls.from_pretrained(path, dtype=torch.float32).eval()
    inputs = [inputs_of(processor, case) for case in cases]
    references = [hf_mm_greedy(hf, x, max_new_tokens) for x in inputs]
    variants = engine_variants or [{}, {"enable_prefix_caching": False, "max_num_batched_tokens": 8}]
    llm = None
    for variant in variants:
        llm = LLM(str(path), dtype="float32", device="cpu", **variant)
        outputs = generate_cases(llm, cases, max_new_tokens)
        for i, (out, x) in enumerate(zip(outputs, inputs, strict=True)):
            assert out.prompt_token_ids == x["input_ids"][0].tolist(), f"case {i}: prompt ids differ"
        assert_outputs_match(outputs, references, atol)
        engine = llm.engine
        assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
        encoders = engine.runner.encoders
        assert not encoders.outputs and not encoders.consumers, "encoder outputs were not released"
        if not variant.get("enable_prefix_caching", True):
            assert encoders.num_items_encoded == sum(c.num_items for c in cases)
    return llm
