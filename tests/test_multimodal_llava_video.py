"""LLaVA-NeXT-Video against transformers: videos pooled 2x2 per frame (average and
conv resamplers), any-resolution images, videos of different sizes and lengths, images
and videos in one prompt, mixed text-only prompts, chunked prefill splitting items.

Architectures: LlavaNextVideoForConditionalGeneration.
"""

import pytest
from mm_reference import Case, assert_mm_matches_hf, random_image, random_video

from intarsia.tiny_multimodal import save_tiny_llava_next_video

CASES = [
    Case("USER: <video>\nWhy is this video funny? ASSISTANT:", {"video": [random_video(4, 40, 30, 0)]}),
    # two videos of different sizes (and a length unlike the first prompt's; transformers
    # batches one prompt's videos, so they share one) and a wide image (a 1x2 tile grid)
    Case("<video> then <video>, and <image>: the quick brown fox",
         {"video": [random_video(2, 28, 50, 1), random_video(2, 64, 64, 2)],
          "image": [random_image(60, 30, 3)]}),
    Case("USER: <image>\nWhat is in this picture? ASSISTANT:", {"image": [random_image(40, 40, 4)]}),
    Case("Hello, how are you today? The sky is blue and the grass is green."),  # text only
]


@pytest.mark.parametrize("spatial_pool_mode", ["average", "conv"])
def test_llava_next_video_matches_transformers(tmp_path, spatial_pool_mode):
    path = save_tiny_llava_next_video(tmp_path / "model", spatial_pool_mode=spatial_pool_mode)
    variants = None if spatial_pool_mode == "average" else [{}]  # the conv resampler: weights load
    assert_mm_matches_hf(path, CASES, engine_variants=variants)
