"""LLaVA-NeXT against transformers: any-resolution tiles, unpadding, image_newline.

Architectures: LlavaNextForConditionalGeneration.
"""

from mm_reference import Case, assert_mm_matches_hf, random_image

from intarsia.tiny_multimodal import save_tiny_llava_next


def test_llava_next_matches_transformers(tmp_path):
    path = save_tiny_llava_next(tmp_path / "model")
    cases = [
        Case("USER: <image>\nWhat is in this picture? ASSISTANT:", {"image": [random_image(60, 30, 0)]}),
        # a tall and a square image: different grids and unpadding in one prompt
        Case("<image> and <image>: the quick brown fox", {"image": [random_image(20, 50, 1),
                                                                    random_image(40, 40, 2)]}),
        Case("Hello, how are you today? The sky is blue and the grass is green."),
    ]
    assert_mm_matches_hf(path, cases)
