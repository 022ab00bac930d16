"""Multimodal embedding: a vision-language generation model loaded with task="embed"
(e5-v style prompts; e5-v itself is a LLaVA-NeXT) against transformers' hidden
states, text-only and image prompts mixed in one batch; tiny random LLaVA-1.5 and
LLaVA-NeXT in float32."""

import pytest
import torch
import torch.nn.functional as F
from mm_reference import random_image
from transformers import AutoModelForImageTextToText, AutoProcessor

from intarsia import LLM
from intarsia.tiny_multimodal import save_tiny_llava, save_tiny_llava_next

# e5-v asks the model to compress the input into one word; its last token is the embedding.
IMAGE_PROMPT = "<image>\nSummary above image in one word:"
TEXT_PROMPT = "{}\nSummary above sentence in one word:"


@pytest.fixture(scope="module", params=[save_tiny_llava, save_tiny_llava_next],
                ids=["llava", "llava_next"])
def llava_path(request, tmp_path_factory):
    return request.param(tmp_path_factory.mktemp("llava_embed") / "model")


def hf_last_token_embedding(model, processor, prompt: str, image=None) -> tuple[list[int], torch.Tensor]:
    inputs = processor(text=prompt, images=[image] if image is not None else None, return_tensors="pt")
    with torch.no_grad():
        hidden = model.model(**inputs).last_hidden_state[0, -1]
    return inputs["input_ids"][0].tolist(), F.normalize(hidden, dim=-1)


def test_llava_embeds_images_and_text_in_one_batch(llava_path):
    processor = AutoProcessor.from_pretrained(llava_path)
    hf = AutoModelForImageTextToText.from_pretrained(llava_path, dtype=torch.float32).eval()
    images = [random_image(40, 30, 0), random_image(24, 64, 1)]
    cases = [(IMAGE_PROMPT, images[0]), (TEXT_PROMPT.format("The quick brown fox " * 4), None),
             (IMAGE_PROMPT, images[1]), (TEXT_PROMPT.format("A photo of a cat"), None)]
    references = [hf_last_token_embedding(hf, processor, prompt, image) for prompt, image in cases]
    prompts = [{"prompt": p, "multi_modal_data": {"image": image} if image is not None else {}}
               for p, image in cases]
    # A budget of 8 tokens splits each image's placeholders over steps.
    for variant in [{}, {"enable_prefix_caching": False, "max_num_batched_tokens": 8}]:
        llm = LLM(str(llava_path), dtype="float32", device="cpu", task="embed", **variant)
        outputs = llm.embed(prompts, use_tqdm=False)
        for out, (ids, want) in zip(outputs, references, strict=True):
            assert out.prompt_token_ids == ids
            cosine = F.cosine_similarity(out.outputs.data, want, dim=0)
            assert cosine >= 0.99999, cosine
        alone = llm.embed(IMAGE_PROMPT, images=images[1], use_tqdm=False)[0]
        torch.testing.assert_close(alone.outputs.data, outputs[2].outputs.data, atol=1e-6, rtol=0)
        engine = llm.engine
        assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
        assert not engine.runner.encoders.outputs


def test_text_queries_rank_images_with_score(llava_path):
    llm = LLM(str(llava_path), dtype="float32", device="cpu", task="embed")
    gallery = [{"prompt": IMAGE_PROMPT, "multi_modal_data": {"image": random_image(32, 32, seed)}}
               for seed in range(3)]
    scores = llm.score(TEXT_PROMPT.format("A red square"), gallery, use_tqdm=False)
    query = llm.embed(TEXT_PROMPT.format("A red square"), use_tqdm=False)[0].outputs.data
    images = torch.stack([o.outputs.data for o in llm.embed(gallery, use_tqdm=False)])
    assert [s.outputs.score for s in scores] == pytest.approx((images @ query).tolist(), abs=1e-5)
