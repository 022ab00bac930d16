"""LLaVA-1.5 against transformers (tiny random model, real CLIP image processor).

Architectures: LlavaForConditionalGeneration.
"""

import pytest
from mm_reference import Case, assert_mm_matches_hf, generate_cases, random_image

from intarsia import LLM
from intarsia.tiny_multimodal import save_tiny_llava


@pytest.fixture(scope="module")
def llava_path(tmp_path_factory):
    return save_tiny_llava(tmp_path_factory.mktemp("llava") / "model")


def test_llava_matches_transformers(llava_path):
    cases = [
        Case("USER: <image>\nWhat is in this picture? ASSISTANT:", {"image": [random_image(40, 30, 0)]}),
        # two images of different sizes in one prompt
        Case("<image> and <image>: the quick brown fox", {"image": [random_image(50, 20, 1),
                                                                    random_image(28, 60, 2)]}),
        Case("Hello, how are you today? The sky is blue and the grass is green."),  # text only
    ]
    assert_mm_matches_hf(llava_path, cases)


def test_llava_prepends_missing_placeholder(llava_path):
    llm = LLM(str(llava_path), dtype="float32", device="cpu")
    image = random_image(30, 30, 3)
    implicit, explicit = generate_cases(llm, [Case("What is this?", {"image": [image]}),
                                              Case("<image>What is this?", {"image": [image]})], 4)
    assert implicit.prompt_token_ids == explicit.prompt_token_ids
    assert implicit.outputs[0].token_ids == explicit.outputs[0].token_ids
