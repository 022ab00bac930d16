"""PaliGemmaForConditionalGeneration against transformers: SigLIP tower, linear
projector, Gemma decoder (PaliGemma 2: Gemma 2 with a sliding window) and prefix-LM
attention (bidirectional over image + prompt), with prefix caching, a token budget
smaller than one prompt, and text-only prompts."""

import pytest
import torch
from mm_reference import Case, assert_mm_matches_hf, generate_cases, hf_inputs, random_image

from intarsia import LLM
from intarsia.tiny_multimodal import save_tiny_paligemma


@pytest.fixture(scope="module")
def paligemma_path(tmp_path_factory):
    return save_tiny_paligemma(tmp_path_factory.mktemp("paligemma") / "model")


def paligemma_inputs(processor, case: Case) -> dict[str, torch.Tensor]:
    """transformers' processor needs an image; a text-only prompt gets the same layout
    (<bos>, text, newline) as a prefix without images."""
    if case.media:
        return hf_inputs(processor, case)
    tokenizer = processor.tokenizer
    ids = tokenizer(tokenizer.bos_token + case.prompt + "\n", add_special_tokens=False,
                    return_tensors="pt").input_ids
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


@pytest.mark.parametrize("gemma2", [False, True], ids=["paligemma", "paligemma2"])
def test_paligemma_matches_transformers(tmp_path, gemma2):
    cases = [
        Case("<image>What is in this picture?", {"image": [random_image(40, 30, 0)]}),
        # two images of different sizes; then one without a placeholder (prepended)
        Case("<image><image>the quick brown fox",
             {"image": [random_image(50, 20, 1), random_image(28, 60, 2)]}),
        Case("Describe the scene in one sentence.", {"image": [random_image(30, 30, 3)]}),
        Case("Hello, how are you today? The sky is blue and the grass is green."),  # text only
    ]
    path = save_tiny_paligemma(tmp_path / "model", gemma2=gemma2)
    assert_mm_matches_hf(path, cases, inputs_of=paligemma_inputs)


def test_paligemma_prefix_cache_reuses_only_whole_prefixes(paligemma_path):
    """Every KV row of a bidirectional prefix depends on the whole prefix: a prompt
    sharing only its first blocks with a cached one must recompute them."""
    image = random_image(40, 40, 4)
    text = "What is in this picture? The quick brown fox jumps over the lazy dog."
    first, same, longer = (Case(f"<image>{t}", {"image": [image]}) for t in (text, text, text + " Why?"))
    cached = LLM(str(paligemma_path), dtype="float32", device="cpu")
    uncached = LLM(str(paligemma_path), dtype="float32", device="cpu", enable_prefix_caching=False)
    generate_cases(cached, [first], 4)
    for case, hit in ((same, True), (longer, False)):
        out, = generate_cases(cached, [case], 6)
        want, = generate_cases(uncached, [case], 6)
        assert (out.num_cached_tokens > 0) == hit
        assert out.outputs[0].token_ids == want.outputs[0].token_ids
        for a, b in zip(out.outputs[0].logprobs, want.outputs[0].logprobs, strict=True):
            for token, logprob in a.items():
                assert abs(logprob.logprob - b[token].logprob) < 1e-4
