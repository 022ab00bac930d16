"""LLaVA-OneVision against transformers: SigLIP tiles with the anyres_max grid cap and
image_newline, videos pooled bilinearly 2x2 with a closing newline, images and videos
of different sizes and lengths, images and videos in one prompt, mixed text-only
prompts, chunked prefill splitting items; chat with image and video parts, and
precomputed video embeddings.

Architectures: LlavaOnevisionForConditionalGeneration.
"""

import pytest
import torch
from mm_reference import Case, assert_mm_matches_hf, generate_cases, random_image, random_video
from transformers import AutoModelForImageTextToText, AutoProcessor

from intarsia import LLM, SamplingParams
from intarsia.tiny_multimodal import save_tiny_llava_onevision


@pytest.fixture(scope="module")
def onevision_path(tmp_path_factory):
    return save_tiny_llava_onevision(tmp_path_factory.mktemp("llava_onevision") / "model")


def test_llava_onevision_matches_transformers(onevision_path):
    cases = [
        # a square image: a 2x2 tile grid, scaled down to anyres_max_2
        Case("<|user|><image>What is in this picture?<|end|><|assistant|>",
             {"image": [random_image(60, 60, 0)]}),
        # a tall image (a 2x1 grid, kept whole) and a video in one prompt
        Case("<image> and <video>: the quick brown fox", {"image": [random_image(20, 50, 1)],
                                                         "video": [random_video(3, 40, 30, 2)]}),
        # two videos of different sizes, with a length unlike the previous prompt's
        # (transformers batches one prompt's videos, so they share one)
        Case("<video><video> Describe both clips.", {"video": [random_video(2, 28, 28, 3),
                                                               random_video(2, 50, 30, 4)]}),
        Case("Hello, how are you today? The sky is blue and the grass is green."),  # text only
    ]
    assert_mm_matches_hf(onevision_path, cases)


def test_llava_onevision_chat_and_precomputed_video(onevision_path):
    image, video = random_image(50, 30, 5), random_video(3, 36, 36, 6)
    llm = LLM(str(onevision_path), dtype="float32", device="cpu")
    params = SamplingParams(temperature=0, max_tokens=6, logprobs=5, ignore_eos=True)
    [chat] = llm.chat([{"role": "user", "content": [{"type": "image", "image": image},
                                                    {"type": "video", "video": video},
                                                    {"type": "text", "text": "What happens?"}]}],
                      params, use_tqdm=False)
    prompt = "<|user|><image><video>What happens?<|end|><|assistant|>"
    media = {"image": [image], "video": [video]}
    [written] = llm.generate({"prompt": prompt, "add_special_tokens": False, "multi_modal_data": media},
                             params, use_tqdm=False)
    assert chat.prompt_token_ids == written.prompt_token_ids
    assert chat.outputs[0].token_ids == written.outputs[0].token_ids

    processor = AutoProcessor.from_pretrained(onevision_path)
    hf = AutoModelForImageTextToText.from_pretrained(onevision_path, dtype=torch.float32).eval()
    pixels = processor.video_processor(videos=[video], return_tensors="pt")["pixel_values_videos"]
    with torch.no_grad():
        embeds = hf.model.get_video_features(pixels)
    embeds = embeds.pooler_output[0] if hasattr(embeds, "pooler_output") else embeds[0]
    prompt = "<video>Describe the clip."
    raw, pre = generate_cases(llm, [Case(prompt, {"video": [video]}),
                                    Case(prompt, {"video": [{"video_embeds": embeds}]})], 6)
    assert raw.prompt_token_ids == pre.prompt_token_ids
    assert raw.outputs[0].token_ids == pre.outputs[0].token_ids
    for a, b in zip(raw.outputs[0].logprobs, pre.outputs[0].logprobs, strict=True):
        for token, logprob in a.items():
            assert abs(logprob.logprob - b[token].logprob) < 1e-3
