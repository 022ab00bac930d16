"""Qwen2-VL against transformers: dynamic resolution, two images of different sizes,
video, M-RoPE, mixed text-only prompts, precomputed embeddings, processor kwargs.

Architectures: Qwen2VLForConditionalGeneration.
"""

import pytest
import torch
from mm_reference import Case, assert_mm_matches_hf, generate_cases, random_image, random_video
from transformers import AutoModelForImageTextToText, AutoProcessor

from intarsia import LLM
from intarsia.tiny_multimodal import save_tiny_qwen2_vl

IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"


@pytest.fixture(scope="module")
def qwen2_vl_path(tmp_path_factory):
    return save_tiny_qwen2_vl(tmp_path_factory.mktemp("qwen2_vl") / "model")


def test_qwen2_vl_matches_transformers(qwen2_vl_path):
    cases = [
        Case(f"<|user|>{IMAGE}What is in this picture?<|end|><|assistant|>",
             {"image": [random_image(56, 84, 0)]}),
        Case(f"{IMAGE} and {IMAGE} compared: the quick brown fox",  # different sizes, 2 grids
             {"image": [random_image(112, 56, 1), random_image(60, 60, 2)]}),
        Case(f"A video: {VIDEO} Describe the scene in one sentence.",
             {"video": [random_video(4, 56, 56, 3)]}),
        Case("Hello, how are you today? " * 3),  # text only, positions in all three rows
    ]
    assert_mm_matches_hf(qwen2_vl_path, cases)


def test_qwen2_vl_precomputed_embeddings_equal_raw_media(qwen2_vl_path):
    image = random_image(84, 56, 4)
    processor = AutoProcessor.from_pretrained(qwen2_vl_path)
    hf = AutoModelForImageTextToText.from_pretrained(qwen2_vl_path, dtype=torch.float32).eval()
    pixels = processor.image_processor(images=[image], return_tensors="pt")
    with torch.no_grad():
        embeds = hf.model.get_image_features(pixels["pixel_values"], pixels["image_grid_thw"])
    embeds = embeds.pooler_output[0] if hasattr(embeds, "pooler_output") else embeds[0]
    precomputed = {"image_embeds": embeds, "image_grid_thw": pixels["image_grid_thw"]}
    llm = LLM(str(qwen2_vl_path), dtype="float32", device="cpu")
    prompt = f"{IMAGE}The capital of France is"
    raw, pre = generate_cases(llm, [Case(prompt, {"image": [image]}),
                                    Case(prompt, {"image": [precomputed]})], 6)
    assert raw.prompt_token_ids == pre.prompt_token_ids
    assert raw.outputs[0].token_ids == pre.outputs[0].token_ids
    for a, b in zip(raw.outputs[0].logprobs, pre.outputs[0].logprobs, strict=True):
        for token, logprob in a.items():
            assert abs(logprob.logprob - b[token].logprob) < 1e-3


def test_qwen2_vl_processor_kwargs_change_resolution(qwen2_vl_path):
    llm = LLM(str(qwen2_vl_path), dtype="float32", device="cpu")
    image = random_image(112, 112, 5)
    small, large = (generate_cases(llm, [Case(IMAGE, {"image": [image]})], 1, mm_processor_kwargs={
        "size": {"shortest_edge": 28 * 28, "longest_edge": max_pixels}})[0]
        for max_pixels in (28 * 28 * 2, 28 * 28 * 12))
    image_pad = llm.processor.placeholder_ids["image"]
    assert small.prompt_token_ids.count(image_pad) < large.prompt_token_ids.count(image_pad)
